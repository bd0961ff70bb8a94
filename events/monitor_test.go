package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// fakeTask is a task whose exit the test sends.
type fakeTask struct {
	exits chan containerd.ExitStatus
	err   error
	// ctx is the context Wait was called with.
	ctx context.Context
}

func (f *fakeTask) Wait(ctx context.Context) (<-chan containerd.ExitStatus, error) {
	f.ctx = ctx
	return f.exits, f.err
}

// waitOn begins a wait on a fake task of a test monitor's.
func waitOn(t *testing.T, ctx context.Context) (*fakeTask, *Wait) {
	t.Helper()
	task := &fakeTask{exits: make(chan containerd.ExitStatus, 1)}
	w, err := testMonitor(t).WaitFor(ctx, task)
	if err != nil {
		t.Fatal(err)
	}
	return task, w
}

func testMonitor(t *testing.T, opts ...Option) *Monitor {
	m := NewMonitor(Backoff{InitialDelay: time.Millisecond, Factor: 1, MaxDelay: time.Millisecond, AttemptTimeout: time.Second}, opts...)
	t.Cleanup(m.Stop)
	return m
}

func TestWaitHandlesExit(t *testing.T) {
	callCtx, cancelCall := context.WithCancel(namespaces.WithNamespace(context.Background(), "k8s.io"))
	task, w := waitOn(t, callCtx)
	// The call that began the wait ends; the wait goes on, in its
	// namespace.
	cancelCall()
	if ns, _ := namespaces.Namespace(task.ctx); ns != "k8s.io" || task.ctx.Err() != nil {
		t.Fatalf("wait context: namespace %q, err %v; want k8s.io and live", ns, task.ctx.Err())
	}
	got := make(chan Exit, 1)
	w.Handle(func(_ context.Context, e Exit) { got <- e })
	at := time.Unix(100, 0)
	task.exits <- *containerd.NewExitStatus(3, at, nil)
	select {
	case e := <-got:
		if e.Code != 3 || !e.At.Equal(at) || e.Lost != nil {
			t.Errorf("exit %+v, want code 3 at %s", e, at)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("exit not handled")
	}
	if task.ctx.Err() == nil {
		t.Error("the wait's context lives on after its exit was handled")
	}
}

func TestWaitLostStatus(t *testing.T) {
	task, w := waitOn(t, context.Background())
	got := make(chan Exit, 1)
	w.Handle(func(_ context.Context, e Exit) { got <- e })
	shimDied := errors.New("ttrpc: closed")
	task.exits <- *containerd.NewExitStatus(0, time.Time{}, shimDied)
	e := <-got
	if e.Code != UnknownExitCode || e.At.IsZero() || !errors.Is(e.Lost, shimDied) {
		t.Errorf("lost exit %+v, want code %d, a time and the wait's error", e, UnknownExitCode)
	}
}

func TestWaitStopped(t *testing.T) {
	task, w := waitOn(t, context.Background())
	w.Stop()
	handled := make(chan struct{})
	w.Handle(func(context.Context, Exit) { close(handled) })
	task.exits <- *containerd.NewExitStatus(0, time.Now(), nil)
	select {
	case <-handled:
		t.Error("a stopped wait handled an exit")
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := testMonitor(t).WaitFor(context.Background(), &fakeTask{err: errors.New("no task")}); err == nil {
		t.Error("WaitFor of a task whose wait fails succeeded")
	}
}

func TestRetryCounted(t *testing.T) {
	var mu sync.Mutex
	counts := map[string]int{}
	count := func(what string) func(string) {
		return func(step string) {
			mu.Lock()
			defer mu.Unlock()
			counts[what+" "+step]++
		}
	}
	m := testMonitor(t, WithRetryCounters(count("retried"), count("failed again")))
	done := make(chan struct{})
	tries := 0
	m.Retry(context.Background(), "sb", "kill", func(context.Context) error {
		if tries++; tries < 3 {
			return errors.New("not yet")
		}
		close(done)
		return nil
	})
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("step not retried to success")
	}
	mu.Lock()
	defer mu.Unlock()
	if counts["retried kill"] != 1 || counts["failed again kill"] != 2 {
		t.Errorf("counts %v, want kill retried once and failed again twice", counts)
	}
}
