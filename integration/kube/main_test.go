// Package kube tests berth under a real Kubernetes: a one-node cluster on
// loopback (etcd, kube-apiserver, kubelet) around the project's containerd,
// driven through the API server with client-go, as kubectl drives it. It
// needs root, the binaries `make build` puts in bin/ and the ones `make kube`
// adds (kubelet, kube-apiserver, etcd). No scheduler runs: pods name their
// node.
package kube

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

var (
	binDir = flag.String("bin", "../../bin", "directory with containerd, runc, the shim, kubelet, kube-apiserver, etcd and images/")
	keep   = flag.Bool("keep", false, "keep the cluster's directory after the tests, for debugging")
	// berthdMode runs berth as berthd beside containerd's own build
	// (bin/containerd-stock) instead of in bin/containerd.
	berthdMode = flag.Bool("berthd", false, "run berth as berthd beside bin/containerd-stock instead of in bin/containerd")
	// Everything the cluster binds or creates on the host is a flag, so that
	// two runs (two worktrees) can share a machine.
	bridge     = flag.String("bridge", "berthk8s0", "CNI bridge of the pod network")
	subnet     = flag.String("subnet", "10.91.0.0/16", "subnet of the pod network")
	metrics    = flag.String("metrics", "127.0.0.1:1341", "where containerd serves Prometheus metrics")
	etcdPort   = flag.Int("etcd-port", 12379, "etcd's client port on 127.0.0.1 (the peer port is the next one)")
	apiPort    = flag.Int("apiserver-port", 16443, "kube-apiserver's port on 127.0.0.1")
	kubeletPrt = flag.Int("kubelet-port", 10350, "kubelet's API port on the node IP (healthz is the next one, on 127.0.0.1)")
	cgroupRoot = flag.String("cgroup-root", "/berthk8s", "kubelet's cgroup root; kubepods is made under it")
)

// c is the cluster the tests run against.
var c *cluster

func TestMain(m *testing.M) {
	flag.Parse()
	// client-go logs as errors the ends of the attach streams the tests
	// detach from; the tests judge streams by what they return.
	klog.SetLogger(logr.Discard())
	if os.Geteuid() != 0 {
		fmt.Println("kube tests need root: skipped")
		os.Exit(0)
	}
	var err error
	c, err = startCluster()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start cluster:", err)
		if c != nil {
			if err := c.stop(); err != nil {
				fmt.Fprintln(os.Stderr, "stop cluster:", err)
			}
		}
		os.Exit(1)
	}
	code := m.Run()
	if err := c.stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop cluster:", err)
		code = 1
	}
	os.Exit(code)
}
