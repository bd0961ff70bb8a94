package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/failpoint"
)

// startSteps are the failpoints of Start's steps, with the undo failpoint
// of the step each one's failure leaves made.
var startSteps = []struct{ point, undo string }{
	{failpoint.StartFiles, "files"},
	{failpoint.StartSnapshot, "snapshot"},
	{failpoint.StartContainer, "container"},
	{failpoint.StartTask, "task"},
	{failpoint.StartTaskStart, "task"},
}

// withFailpoints sets berth failpoints on a pod, point -> count.
func withFailpoints(points map[string]int) podOpt {
	return func(c *runtimeapi.PodSandboxConfig) {
		for p, n := range points {
			c.Annotations[failpoint.AnnotationPrefix+p] = fmt.Sprint(n)
		}
	}
}

// skipSnapshotOnBuiltinPause: the built-in pause has no snapshot step.
func skipSnapshotOnBuiltinPause(t *testing.T, point string) {
	if point == failpoint.StartSnapshot && handlerBerth == handlerBuiltinPause {
		t.Skip("the built-in pause makes no snapshot")
	}
}

// TestFailpointStartSteps fails each step of Start once it is done: the
// RunPodSandbox error is the step's, and its rollback leaves nothing.
func TestFailpointStartSteps(t *testing.T) {
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	for _, step := range startSteps {
		t.Run(step.point, func(t *testing.T) {
			skipSnapshotOnBuiltinPause(t, step.point)
			cfg := podConfig(t, withFailpoints(map[string]int{step.point: 1}))
			_, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handlerBerth})
			if s, _ := status.FromError(err); s.Code() != codes.Unavailable {
				t.Fatalf("RunPodSandbox = %v, want the failpoint's Unavailable", err)
			}
			assertNothingLeft(t)
		})
	}
}

// TestFailpointRollbackRetried fails each step of Start and then the undo
// of what the step made, twice: RunPodSandbox fails at once with the
// step's error, and the retry queue finishes the rollback (after 1s and
// 2s), leaving nothing.
func TestFailpointRollbackRetried(t *testing.T) {
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	for _, step := range startSteps {
		t.Run(step.point, func(t *testing.T) {
			skipSnapshotOnBuiltinPause(t, step.point)
			before := scrapeMetrics(t)
			cfg := podConfig(t, withFailpoints(map[string]int{step.point: 1, failpoint.UndoPrefix + step.undo: 2}))
			start := time.Now()
			_, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handlerBerth})
			if s, _ := status.FromError(err); s.Code() != codes.Unavailable {
				t.Fatalf("RunPodSandbox = %v, want the failpoint's Unavailable", err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("RunPodSandbox returned after %s: it waited for the rollback's retries", took)
			}
			const series = `berth_sandbox_retries_total{step="rollback"}`
			eventually(t, 30*time.Second, "rollback retried", func() bool { return scrapeMetrics(t)[series] == before[series]+1 })
			failures := `berth_sandbox_retry_failures_total{step="rollback"}`
			eventually(t, 30*time.Second, "rollback retried to the end", func() bool {
				return scrapeMetrics(t)[failures] == before[failures]+1 && noContainers(t) && noSandboxFiles()
			})
			assertNothingLeft(t)
		})
	}
}

// TestFailpointRollbackAcrossRestart fails the undo of a Start for good,
// then restarts containerd: CRI forgot the sandbox, and recovery removes
// the pause container, task and shim no sandbox record owns.
func TestFailpointRollbackAcrossRestart(t *testing.T) {
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	cfg := podConfig(t, withFailpoints(map[string]int{
		failpoint.StartTaskStart:           1,
		failpoint.UndoPrefix + "task":      1000,
		failpoint.UndoPrefix + "container": 1000,
		failpoint.UndoPrefix + "snapshot":  1000,
		failpoint.UndoPrefix + "files":     1000,
	}))
	if _, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handlerBerth}); err == nil {
		t.Fatal("RunPodSandbox succeeded")
	}
	if noContainers(t) || len(shimsOf("")) == 0 {
		t.Fatal("the failed rollback left no pause container and shim to recover")
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "orphan removed", func() bool { return noContainers(t) && len(shimsOf("")) == 0 })
	assertNothingLeft(t)
}

// noSandboxFiles says whether no sandbox has files, in berth's directories
// or CRI's.
func noSandboxFiles() bool {
	for _, dir := range []string{daemon.criRoot(), daemon.criState(), daemon.berthRoot(), daemon.berthState()} {
		if entries, _ := os.ReadDir(filepath.Join(dir, "sandboxes")); len(entries) > 0 {
			return false
		}
	}
	return true
}

// noContainers says whether containerd has no containers.
func noContainers(t *testing.T) bool {
	cs, err := daemon.client.Containers(ctxT(t))
	return err == nil && len(cs) == 0
}
