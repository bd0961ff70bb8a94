package kube

import (
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestGracefulDeletion deletes pods with their own grace period: a
// container that exits on SIGTERM goes well before its long grace period is
// up, one that ignores it is killed when its short one is up, not before;
// then nothing of any pod is left on the node. The pods go together: kubelet removes
// the sandboxes of deleted pods in its garbage collection, once a minute,
// so the leak check waits that minute once.
func TestGracefulDeletion(t *testing.T) {
	type deletion struct {
		pod      *corev1.Pod
		sandbox  string
		grace    int64
		min, max time.Duration
		took     time.Duration
	}
	var all []*deletion
	for _, rc := range []string{"berth", "berth-builtin", ""} {
		for _, tc := range []struct {
			name     string
			cmd      string
			grace    int64
			min, max time.Duration
		}{
			// sh runs the trap once its foreground sleep returns; the rest
			// is kubelet's teardown.
			{"exits", "trap 'exit 0' TERM; while :; do sleep 1; done", 30, 0, 15 * time.Second},
			{"ignores", "trap '' TERM; while :; do sleep 1; done", 4, 4 * time.Second, 19 * time.Second},
		} {
			pod := busyboxPod(t, rc, "sh", "-c", tc.cmd)
			pod.Name = podName(t, tc.name+"-"+rc)
			pod.Spec.TerminationGracePeriodSeconds = &tc.grace
			all = append(all, &deletion{pod: createPod(t, pod), grace: tc.grace, min: tc.min, max: tc.max})
		}
	}
	for _, d := range all {
		d.pod = waitRunning(t, d.pod)
		d.sandbox = sandboxOf(t, d.pod).GetId()
	}
	var wg sync.WaitGroup
	for _, d := range all {
		wg.Go(func() { d.took = deletePod(t, d.pod, -1) })
	}
	wg.Wait()
	for _, d := range all {
		if d.took < d.min || d.took > d.max {
			t.Errorf("%s: deletion with a grace period of %ds took %s, want %s..%s", d.pod.Name, d.grace, d.took, d.min, d.max)
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, d := range all {
		assertPodGone(t, d.pod, d.sandbox, deadline)
	}
}
