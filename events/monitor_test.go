package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	// The context ends once handle has returned.
	select {
	case <-task.ctx.Done():
	case <-time.After(5 * time.Second):
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

// restartingTask answers its waits in turn, as a containerd that restarts
// under the wait would: each entry is either the error of Wait itself or
// the status its channel gets.
type restartingTask struct {
	mu      sync.Mutex
	answers []any
	waits   int
}

func (r *restartingTask) Wait(context.Context) (<-chan containerd.ExitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits++
	if len(r.answers) == 0 {
		// containerd answers no more: the wait blocks.
		return make(chan containerd.ExitStatus), nil
	}
	a := r.answers[0]
	r.answers = r.answers[1:]
	if err, ok := a.(error); ok {
		return nil, err
	}
	ch := make(chan containerd.ExitStatus, 1)
	ch <- a.(containerd.ExitStatus)
	return ch, nil
}

func handled(t *testing.T, task *restartingTask) (*Wait, <-chan Exit) {
	t.Helper()
	w, err := testMonitor(t).WaitFor(context.Background(), task)
	if err != nil {
		t.Fatal(err)
	}
	w.rewaitFirst, w.rewaitMax = time.Millisecond, 4*time.Millisecond
	got := make(chan Exit, 1)
	w.Handle(func(_ context.Context, e Exit) { got <- e })
	return w, got
}

// TestWaitContainerdRestarts checks that a wait containerd did not answer
// is begun again, as often as containerd does not answer, and that the
// task's real exit then comes; and that an answer other than Unavailable
// to a wait begun again is a lost exit.
func TestWaitContainerdRestarts(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "error reading from server: EOF")
	at := time.Unix(200, 0)
	task := &restartingTask{answers: []any{
		*containerd.NewExitStatus(UnknownExitCode, time.Time{}, unavailable),
		unavailable,
		unavailable,
		*containerd.NewExitStatus(7, at, nil),
	}}
	_, got := handled(t, task)
	select {
	case e := <-got:
		if e.Code != 7 || !e.At.Equal(at) || e.Lost != nil {
			t.Errorf("exit %+v, want the task's own, 7 at %s", e, at)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after containerd answered")
	}
	if task.waits != 4 {
		t.Errorf("%d waits, want 4", task.waits)
	}

	gone := status.Error(codes.NotFound, "no running task found")
	_, got = handled(t, &restartingTask{answers: []any{
		*containerd.NewExitStatus(UnknownExitCode, time.Time{}, unavailable),
		gone,
	}})
	if e := <-got; e.Code != UnknownExitCode || e.Lost == nil {
		t.Errorf("exit %+v, want a lost one", e)
	}
}

// TestWaitStoppedWhileContainerdAway checks that a wait stopped while it
// waits for containerd to answer again hands nothing on.
func TestWaitStoppedWhileContainerdAway(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "connection refused")
	task := &restartingTask{answers: []any{*containerd.NewExitStatus(UnknownExitCode, time.Time{}, unavailable)}}
	for range 100 {
		task.answers = append(task.answers, unavailable)
	}
	w, got := handled(t, task)
	time.Sleep(20 * time.Millisecond)
	w.Stop()
	select {
	case e := <-got:
		t.Errorf("a stopped wait handed on %+v", e)
	case <-time.After(50 * time.Millisecond):
	}
}
