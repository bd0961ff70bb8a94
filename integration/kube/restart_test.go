package kube

import (
	"encoding/json"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestContainerdRestart kills containerd (SIGKILL, a crash) under a running
// kubelet and starts it again: berth's pods and the built-in's keep their
// sandboxes and containers, Running with no restart.
func TestContainerdRestart(t *testing.T) {
	pods := runRestartPods(t)
	c.containerd.kill(syscall.SIGKILL, 0)
	// Long enough for kubelet's relist to find the runtime gone.
	time.Sleep(3 * time.Second)
	if err := c.containerd.restart(); err != nil {
		t.Fatal(err)
	}
	if err := waitNodeReady(c.kubelet, c.cs); err != nil {
		t.Fatal(err)
	}
	checkUnchanged(t, pods)
}

// TestKubeletRestart restarts kubelet under running pods: it finds them as
// they were.
func TestKubeletRestart(t *testing.T) {
	pods := runRestartPods(t)
	if err := restartKubelet(nil); err != nil {
		t.Fatal(err)
	}
	checkUnchanged(t, pods)
}

// restartPod is a running pod and the sandbox and container IDs it had
// before a restart.
type restartPod struct {
	pod       *corev1.Pod
	sandbox   string
	container string
}

func runRestartPods(t *testing.T) []restartPod {
	t.Helper()
	var out []restartPod
	for _, rc := range []string{"berth", "berth-builtin", ""} {
		pod := runPod(t, busyboxPod(t, rc, "sleep", "3600"))
		out = append(out, restartPod{pod: pod, sandbox: sandboxOf(t, pod).GetId(), container: pod.Status.ContainerStatuses[0].ContainerID})
	}
	return out
}

// checkUnchanged watches the pods for 30s, a few of kubelet's sync
// periods: each must stay Running and ready on its old sandbox and
// container, restartCount 0.
func checkUnchanged(t *testing.T, pods []restartPod) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, rp := range pods {
			p, err := c.cs.CoreV1().Pods(namespace).Get(ctxT(t), rp.pod.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cs := p.Status.ContainerStatuses[0]
			if p.Status.Phase != corev1.PodRunning || cs.State.Running == nil || !cs.Ready {
				t.Fatalf("pod %s: phase %s, container %+v", p.Name, p.Status.Phase, cs.State)
			}
			if cs.RestartCount != 0 || cs.ContainerID != rp.container {
				t.Fatalf("pod %s: container %s restarted %d times, was %s", p.Name, cs.ContainerID, cs.RestartCount, rp.container)
			}
			if id := sandboxOf(t, p).GetId(); id != rp.sandbox {
				t.Fatalf("pod %s: sandbox %s replaced by %s", p.Name, rp.sandbox, id)
			}
		}
		time.Sleep(2 * time.Second)
	}
}

// TestPauseKilled kills a pod's pause process, as the OOM killer might:
// the sandbox turns NotReady, and kubelet makes a new one and starts the
// pod's container again in it.
func TestPauseKilled(t *testing.T) {
	for _, rc := range []string{"berth", "berth-builtin", ""} {
		t.Run("runtimeclass-"+rc, func(t *testing.T) {
			pod := busyboxPod(t, rc, "sleep", "3600")
			// kubelet stops the container before it makes the new sandbox;
			// sleep, pid 1, ignores SIGTERM.
			pod.Spec.TerminationGracePeriodSeconds = new(int64(1))
			pod = runPod(t, pod)
			old := sandboxOf(t, pod).GetId()
			if err := syscall.Kill(pausePid(t, old), syscall.SIGKILL); err != nil {
				t.Fatalf("kill the pause: %v", err)
			}
			waitPod(t, pod, 2*time.Minute, "on a new sandbox", func(p *corev1.Pod) bool {
				cs := p.Status.ContainerStatuses
				return p.Status.Phase == corev1.PodRunning && len(cs) == 1 && cs[0].Ready && cs[0].RestartCount > 0 &&
					cs[0].ContainerID != pod.Status.ContainerStatuses[0].ContainerID
			})
			if id := sandboxOf(t, pod).GetId(); id == old {
				t.Errorf("sandbox %s is still the ready one after its pause was killed", id)
			}
		})
	}
}

// pausePid is the pause process's pid, from the sandbox's verbose status.
func pausePid(t *testing.T, sandboxID string) int {
	t.Helper()
	resp, err := c.containerd.runtime.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandboxID, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(resp.GetInfo()["info"]), &info); err != nil || info.Pid <= 0 {
		t.Fatalf("no pause pid in the verbose status of %s: %v", sandboxID, err)
	}
	return info.Pid
}
