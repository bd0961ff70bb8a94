package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/berth-dev/berth/integration/hostcgroup"
)

// nodeName is the one node's name; kubelet registers it with nodeIP as
// its InternalIP, where the API server reaches it.
const nodeName = "berth-e2e"

// kubeletSysctls are the kernel settings kubelet sets at start
// (setupKernelTunables in pkg/kubelet/cm). The harness puts back the
// host's values when the cluster stops: this machine is not a node.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// startKubelet runs kubelet with its root, logs and cgroup root of its own
// against the test's containerd, and waits until its node is Ready.
func startKubelet(dir, bin, endpoint string, p *pki, api *apiServer, cs kubernetes.Interface) (*process, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	if err := makeCgroupRoot(); err != nil {
		return nil, err
	}
	kubeconfig, err := kubeletKubeconfig(dir, p, api)
	if err != nil {
		return nil, err
	}
	ip, err := nodeIP()
	if err != nil {
		return nil, err
	}
	config, err := kubeletConfig(dir, endpoint, ip, p)
	if err != nil {
		return nil, err
	}
	k := newProcess(dir, "kubelet", filepath.Join(bin, "kubelet"),
		"--config", config, "--kubeconfig", kubeconfig,
		"--root-dir", filepath.Join(dir, "root"),
		"--hostname-override", nodeName, "--node-ip", ip.String(),
		"--v", "2")
	if err := k.start(); err != nil {
		return k, err
	}
	return k, waitNodeReady(k, cs)
}

// waitNodeReady waits for the node's Ready condition.
func waitNodeReady(k *process, cs kubernetes.Interface) error {
	return k.waitFor(3*time.Minute, "node Ready", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		node, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("node not ready: %s", cond.Message)
			}
		}
		return fmt.Errorf("node has no Ready condition")
	})
}

// kubeletKubeconfig writes kubelet's kubeconfig: the API server, with a
// node's client certificate.
func kubeletKubeconfig(dir string, p *pki, api *apiServer) (string, error) {
	cert, key, err := p.issue(certSpec{name: "kubelet-client", cn: "system:node:" + nodeName, orgs: []string{"system:nodes"}})
	if err != nil {
		return "", err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["berth-e2e"] = &clientcmdapi.Cluster{Server: api.url, CertificateAuthority: p.caFile()}
	cfg.AuthInfos["kubelet"] = &clientcmdapi.AuthInfo{ClientCertificate: cert, ClientKey: key}
	cfg.Contexts["kubelet"] = &clientcmdapi.Context{Cluster: "berth-e2e", AuthInfo: "kubelet"}
	cfg.CurrentContext = "kubelet"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("write kubelet kubeconfig: %w", err)
	}
	return path, nil
}

// kubeletConfig writes kubelet's KubeletConfiguration (JSON, which kubelet
// reads as YAML). What differs from a node's is said beside it.
func kubeletConfig(dir, endpoint string, ip net.IP, p *pki) (string, error) {
	cert, key, err := p.issue(certSpec{
		name: "kubelet", cn: nodeName, server: true,
		ips: []net.IP{ip}, dns: []string{nodeName},
	})
	if err != nil {
		return "", err
	}
	cfg := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"containerRuntimeEndpoint": endpoint,
		// This host has cgroup v1 and no systemd; containerd's runc
		// options have no SystemdCgroup, so the drivers match.
		"cgroupDriver": "cgroupfs",
		"failCgroupV1": false,
		"failSwapOn":   false,
		// Its own cgroup root, so that everything kubelet makes is found
		// (and removed) under it.
		"cgroupRoot": *cgroupRoot,
		// The node IP only, on ports of its own; the API server checks the
		// serving certificate and kubelet the API server's client one.
		"address":            ip.String(),
		"port":               *kubeletPrt,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        *kubeletPrt + 1,
		"tlsCertFile":        cert,
		"tlsPrivateKeyFile":  key,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": false},
			"x509":      map[string]any{"clientCAFile": p.caFile()},
		},
		"authorization": map[string]any{"mode": "AlwaysAllow"},
		"podLogsDir":    filepath.Join(dir, "pod-logs"),
		// Not this host's iptables: no kube-proxy needs kubelet's chains.
		"makeIPTablesUtilChains": false,
		// The test images are imported, never pulled: no image GC, and no
		// eviction for a disk that other work on this machine fills.
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
		},
		// Pod status reaches the API server quickly, so the tests wait less.
		"syncFrequency":             "10s",
		"nodeStatusUpdateFrequency": "4s",
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("write kubelet config: %w", err)
	}
	return path, nil
}

// cgroupHierarchies are this host's cgroup hierarchies: the v1 ones and
// the v2 mount beside them (where kubelet makes its root too), or the one
// v2 hierarchy of a unified host.
func cgroupHierarchies() []string {
	if hostcgroup.Unified() {
		return []string{"/sys/fs/cgroup"}
	}
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return out
}

// makeCgroupRoot makes kubelet's cgroup root in every hierarchy: kubelet
// refuses a root that does not exist. cpuset needs its CPUs and memory
// nodes before a child can take tasks.
func makeCgroupRoot() error {
	for _, h := range cgroupHierarchies() {
		dir := filepath.Join(h, *cgroupRoot)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("make cgroup root: %w", err)
		}
		if filepath.Base(h) != "cpuset" {
			continue
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				return fmt.Errorf("cgroup root %s: %w", f, err)
			}
		}
	}
	return nil
}

// removeCgroupRoot removes kubelet's cgroup root and what is left under
// it, deepest first; it returns the cgroups that still held processes.
func removeCgroupRoot() []string {
	var busy []string
	for _, h := range cgroupHierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, *cgroupRoot), func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				busy = append(busy, dirs[i]+": "+err.Error())
			}
		}
	}
	return busy
}

// podCgroups lists the pod cgroups (pod<uid>) kubelet has under kubepods
// in any hierarchy.
func podCgroups() []string {
	var out []string
	for _, h := range cgroupHierarchies() {
		kubepods := filepath.Join(h, *cgroupRoot, "kubepods")
		for _, qos := range []string{"", "burstable", "besteffort"} {
			entries, _ := os.ReadDir(filepath.Join(kubepods, qos))
			for _, e := range entries {
				if e.IsDir() && strings.HasPrefix(e.Name(), "pod") {
					out = append(out, filepath.Join(kubepods, qos, e.Name()))
				}
			}
		}
	}
	return out
}

// saveSysctls reads the host's values of kubeletSysctls.
func saveSysctls() (map[string]string, error) {
	saved := map[string]string{}
	for _, s := range kubeletSysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", s))
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s: %w", s, err)
		}
		saved[s] = strings.TrimSpace(string(b))
	}
	return saved, nil
}

// restoreSysctls writes the saved values back.
func restoreSysctls(saved map[string]string) error {
	for s, v := range saved {
		if err := os.WriteFile(filepath.Join("/proc/sys", s), []byte(v), 0o644); err != nil {
			return fmt.Errorf("restore sysctl %s=%s: %w", s, v, err)
		}
	}
	return nil
}

// kubeletHealthz is kubelet's healthz URL.
func kubeletHealthz() string {
	return "http://127.0.0.1:" + strconv.Itoa(*kubeletPrt+1) + "/healthz"
}

// restartKubelet restarts kubelet with feature gates set in its config
// (nil: none), and waits until its node is Ready again.
func restartKubelet(gates map[string]bool) error {
	path := filepath.Join(c.dir, "kubelet", "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("kubelet config: %w", err)
	}
	cfg["featureGates"] = gates
	if b, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write kubelet config: %w", err)
	}
	c.kubelet.stop()
	if err := c.kubelet.start(); err != nil {
		return err
	}
	if err := c.kubelet.waitFor(time.Minute, "healthz", func() error {
		return httpOK(http.DefaultClient, kubeletHealthz())
	}); err != nil {
		return err
	}
	return waitNodeReady(c.kubelet, c.cs)
}
