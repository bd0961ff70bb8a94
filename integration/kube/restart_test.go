package kube

import (
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
