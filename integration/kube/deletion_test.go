package kube

import (
	"testing"
	"time"
)

// TestGracefulDeletion deletes pods with their own grace period: a
// container that exits on SIGTERM goes at once, one that ignores it is
// killed when terminationGracePeriodSeconds is up, not before; then nothing
// of either pod is left on the node.
func TestGracefulDeletion(t *testing.T) {
	const grace = 4
	for _, rc := range []string{"berth", "berth-builtin", ""} {
		t.Run("runtimeclass-"+rc, func(t *testing.T) {
			for _, tc := range []struct {
				name     string
				cmd      string
				min, max time.Duration
			}{
				// sh runs the trap once its foreground sleep returns.
				{"exits-on-term", "trap 'exit 0' TERM; while :; do sleep 1; done", 0, grace * time.Second},
				{"ignores-term", "trap '' TERM; while :; do sleep 1; done", grace * time.Second, (grace + 15) * time.Second},
			} {
				t.Run(tc.name, func(t *testing.T) {
					pod := busyboxPod(t, rc, "sh", "-c", tc.cmd)
					pod.Spec.TerminationGracePeriodSeconds = new(int64(grace))
					pod = runPod(t, pod)
					sandbox := sandboxOf(t, pod).GetId()
					took := deletePod(t, pod, -1)
					if took < tc.min || took > tc.max {
						t.Errorf("deletion with a grace period of %ds took %s, want %s..%s", grace, took, tc.min, tc.max)
					}
					assertPodGone(t, pod, sandbox)
				})
			}
		})
	}
}
