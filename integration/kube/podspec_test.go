package kube

import (
	"os"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestShareProcessNamespace runs a pod whose containers share one PID
// namespace, the pause's: each sees the other's processes.
func TestShareProcessNamespace(t *testing.T) {
	for _, rc := range []string{"berth", "berth-builtin", ""} {
		t.Run("runtimeclass-"+rc, func(t *testing.T) {
			pod := busyboxPod(t, rc, "sleep", "3600")
			pod.Spec.ShareProcessNamespace = new(true)
			side := pod.Spec.Containers[0]
			side.Name, side.Command = "side", []string{"sleep", "3601"}
			pod.Spec.Containers = append(pod.Spec.Containers, side)
			pod = runPod(t, pod)
			ps, err := execIn(pod, "app", "", "ps")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(ps, "sleep 3601") {
				t.Errorf("app does not see side's process: %s", ps)
			}
			init, err := execIn(pod, "app", "", "cat", "/proc/1/cmdline")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(init, "sleep") {
				t.Errorf("pid 1 of the shared namespace is %q, not the pause", init)
			}
		})
	}
}

// TestHostNetwork runs a pod in the node's network namespace.
func TestHostNetwork(t *testing.T) {
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, rc := range []string{"berth", "berth-builtin", ""} {
		t.Run("runtimeclass-"+rc, func(t *testing.T) {
			pod := busyboxPod(t, rc, "sleep", "3600")
			pod.Spec.HostNetwork = true
			pod = runPod(t, pod)
			ns, err := execIn(pod, "app", "", "readlink", "/proc/self/ns/net")
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(ns) != host {
				t.Errorf("network namespace %s, want the node's %s", strings.TrimSpace(ns), host)
			}
			if ip, _ := nodeIP(); pod.Status.PodIP != ip.String() {
				t.Errorf("pod IP %s, want the node's %s", pod.Status.PodIP, ip)
			}
		})
	}
}

// TestUserNamespace runs a pod with hostUsers: false where containerd
// reports user namespaces for the handler. berth's built-in pause cannot
// run in a pod's user namespace yet (see the README), so berth-builtin is
// not among them.
func TestUserNamespace(t *testing.T) {
	for _, tc := range []struct{ rc, handler string }{{"berth", "berth"}, {"", "runc"}} {
		t.Run("runtimeclass-"+tc.rc, func(t *testing.T) {
			if !userNamespaces(t, tc.handler) {
				t.Skipf("containerd reports no user namespace support for handler %s", tc.handler)
			}
			pod := busyboxPod(t, tc.rc, "sleep", "3600")
			pod.Spec.HostUsers = new(false)
			pod = runPod(t, pod)
			m, err := execIn(pod, "app", "", "cat", "/proc/self/uid_map")
			if err != nil {
				t.Fatal(err)
			}
			if f := strings.Fields(m); len(f) != 3 || f[0] != "0" || f[1] == "0" {
				t.Errorf("uid_map %q: root in the pod is the host's root", m)
			}
		})
	}
}

// userNamespaces reports what CRI tells kubelet about a handler's support
// for pod user namespaces.
func userNamespaces(t *testing.T, handler string) bool {
	t.Helper()
	st, err := c.containerd.runtime.Status(ctxT(t), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatalf("CRI Status: %v", err)
	}
	for _, h := range st.GetRuntimeHandlers() {
		if h.GetName() == handler {
			return h.GetFeatures().GetUserNamespaces()
		}
	}
	return false
}
