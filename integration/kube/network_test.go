package kube

import (
	"fmt"
	"net"
	"os/exec"
)

// nodeIP is the node's InternalIP: the gateway address of the pod
// network's bridge (the first address of the subnet, as the CNI bridge
// plugin gives it). kubelet refuses a loopback node IP, and the API server
// reaches kubelet at the node IP; an address on the tests' own bridge keeps
// that traffic on this machine.
func nodeIP() (net.IP, error) {
	ip, _, err := net.ParseCIDR(*subnet)
	if err != nil {
		return nil, fmt.Errorf("subnet %s: %w", *subnet, err)
	}
	ip = ip.To4()
	if ip == nil {
		return nil, fmt.Errorf("subnet %s is not IPv4", *subnet)
	}
	gw := make(net.IP, len(ip))
	copy(gw, ip)
	gw[3]++
	return gw, nil
}

// makeBridge makes the pod network's bridge with the node IP before
// kubelet starts, so that kubelet finds its address on a host interface.
// The CNI bridge plugin takes the bridge over as it is.
func makeBridge() error {
	ip, err := nodeIP()
	if err != nil {
		return err
	}
	_, network, _ := net.ParseCIDR(*subnet)
	ones, _ := network.Mask.Size()
	for _, args := range [][]string{
		{"link", "add", *bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", ip, ones), "dev", *bridge},
		{"link", "set", *bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %w: %s", args, err, out)
		}
	}
	return nil
}

// deleteBridge removes the bridge; one left by an earlier run may carry
// another subnet's address.
func deleteBridge() {
	_ = exec.Command("ip", "link", "delete", *bridge).Run()
}
