package kube

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostproc"
)

// assertPodGone checks that nothing of a deleted pod is left on the node:
// no sandbox or container in CRI or containerd, no shim, no mount, no pod
// cgroup, no kubelet pod directory, no logs. kubelet removes some of these
// after the API object is gone (the sandbox and containers in its garbage
// collection, once a minute), so it polls until deadline.
func assertPodGone(t *testing.T, pod *corev1.Pod, sandboxID string, deadline time.Time) {
	t.Helper()
	var leaks []string
	for {
		leaks = podLeaks(t, pod, sandboxID)
		if len(leaks) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, l := range leaks {
		t.Errorf("leak of pod %s: %s", pod.Name, l)
	}
}

func podLeaks(t *testing.T, pod *corev1.Pod, sandboxID string) []string {
	var leaks []string
	ctx := ctxT(t)
	sbs, err := c.containerd.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(pod.UID)},
	}})
	if err != nil || len(sbs.GetItems()) > 0 {
		leaks = append(leaks, fmt.Sprintf("CRI sandboxes %v (%v)", sbs.GetItems(), err))
	}
	ctrs, err := c.containerd.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sandboxID}})
	if err != nil || len(ctrs.GetContainers()) > 0 {
		leaks = append(leaks, fmt.Sprintf("CRI containers %v (%v)", ctrs.GetContainers(), err))
	}
	if _, err := c.containerd.client.SandboxStore().Get(ctx, sandboxID); err == nil {
		leaks = append(leaks, "containerd sandbox record "+sandboxID)
	}
	if _, err := c.containerd.client.ContainerService().Get(ctx, sandboxID); err == nil {
		leaks = append(leaks, "containerd container "+sandboxID)
	}
	if pids := hostproc.IdleShims(c.containerd.socket(), sandboxID); len(pids) > 0 {
		leaks = append(leaks, fmt.Sprintf("shims %v", pids))
	}
	for _, m := range hostproc.Mounts("/") {
		if strings.Contains(m, sandboxID) || strings.Contains(m, string(pod.UID)) {
			leaks = append(leaks, "mount "+m)
		}
	}
	for _, h := range cgroupHierarchies() {
		if p := podCgroup(pod, strings.TrimPrefix(h, "/sys/fs/cgroup")); exists(p) {
			leaks = append(leaks, "cgroup "+p)
		}
	}
	kubeletDir := filepath.Join(c.dir, "kubelet")
	for _, p := range []string{
		filepath.Join(kubeletDir, "root", "pods", string(pod.UID)),
		filepath.Join(kubeletDir, "pod-logs", namespace+"_"+pod.Name+"_"+string(pod.UID)),
	} {
		if exists(p) {
			leaks = append(leaks, p)
		}
	}
	links, _ := filepath.Glob(filepath.Join(logLinks, pod.Name+"_"+namespace+"_*"))
	leaks = append(leaks, links...)
	return leaks
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
