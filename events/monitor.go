package events

import (
	"context"
	"fmt"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
)

// Monitor waits for tasks' exits and runs handling that failed again with
// a backoff (Retry) until it succeeds.
type Monitor struct {
	queue *Queue
	// retried and failedAgain, if set, count the steps queued for a retry,
	// and the retried runs that failed again, by step name.
	retried, failedAgain func(step string)
}

// Option configures a Monitor.
type Option func(*Monitor)

// WithRetryCounters has retried told of every step queued for a retry,
// and failedAgain of every retried run that failed again, by step name.
func WithRetryCounters(retried, failedAgain func(step string)) Option {
	return func(m *Monitor) { m.retried, m.failedAgain = retried, failedAgain }
}

// NewMonitor starts a monitor whose retries back off as b says; b must be
// valid (see Backoff).
func NewMonitor(b Backoff, opts ...Option) *Monitor {
	m := &Monitor{queue: NewQueue(b)}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Stop drops the retries queued, and waits for the running ones.
func (m *Monitor) Stop() { m.queue.Stop() }

// Retry queues step, named name, for key: it already failed once.
func (m *Monitor) Retry(ctx context.Context, key, name string, step Step) {
	if m.retried != nil {
		m.retried(name)
	}
	m.queue.Add(ctx, key, name, func(ctx context.Context) error {
		err := step(ctx)
		if err != nil && m.failedAgain != nil {
			m.failedAgain(name)
		}
		return err
	})
}

// RetryNow runs the steps queued for key at once (Queue.Now).
func (m *Monitor) RetryNow(key string) { m.queue.Now(key) }

// Task is what the monitor waits on: a containerd task.
type Task interface {
	Wait(ctx context.Context) (<-chan containerd.ExitStatus, error)
}

// Exit is a task's exit as the handler gets it.
type Exit struct {
	Code uint32
	At   time.Time
	// Lost is why the exit status is lost (the wait itself failed: its
	// shim died); Code and At are then UnknownExitCode and the time the
	// loss was seen.
	Lost error
}

// UnknownExitCode is the exit code of an exit whose status is lost, as in
// containerd.
const UnknownExitCode = 255

// Backoff of a wait begun again while containerd does not answer.
const (
	rewaitFirst = 100 * time.Millisecond
	rewaitMax   = 2 * time.Second
)

// Wait is a wait for a task's exit, begun before the task starts so that
// no exit is missed. Hand it a handler (Handle), or Stop it.
type Wait struct {
	task   Task
	exitCh <-chan containerd.ExitStatus
	// rewaitFirst and rewaitMax back off the waits begun again while
	// containerd does not answer.
	rewaitFirst, rewaitMax time.Duration
	// ctx outlives the call that began the wait; cancel ends it.
	ctx    context.Context
	cancel context.CancelFunc
}

// WaitFor begins waiting for task's exit. The wait, and the handling of
// the exit, hold nothing of ctx's call but its namespace and logger: a
// wait lasts a pod's life.
func (m *Monitor) WaitFor(ctx context.Context, task Task) (*Wait, error) {
	waitCtx, cancel := context.WithCancel(Detached(ctx))
	exitCh, err := task.Wait(waitCtx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("wait for task exit: %w", err)
	}
	return &Wait{task: task, exitCh: exitCh, ctx: waitCtx, cancel: cancel, rewaitFirst: rewaitFirst, rewaitMax: rewaitMax}, nil
}

// Stop ends a wait that was never handed a handler, or one whose handler
// is no longer wanted.
func (w *Wait) Stop() { w.cancel() }

// Handle hands the exit to handle, on a goroutine of its own, the moment
// it comes; handle gets the wait's context. A wait stopped first never
// calls it.
//
// A wait that fails because containerd does not answer (Unavailable: it
// is restarting, and berth runs beside it as berthd) is no exit: the task
// runs on in its shim, which keeps its exit status until the task is
// deleted, so the wait is begun again, backing off, until containerd
// answers with the exit or says what became of the task.
func (w *Wait) Handle(handle func(ctx context.Context, e Exit)) {
	go func() {
		defer w.cancel()
		delay := w.rewaitFirst
		for {
			var st containerd.ExitStatus
			select {
			case st = <-w.exitCh:
			case <-w.ctx.Done():
				return
			}
			if w.ctx.Err() != nil {
				// Stopped: what came is the wait's own end, not the task's.
				return
			}
			code, at, err := st.Result()
			if err != nil && isUnavailable(err) {
				log.G(w.ctx).WithError(err).WithField("retry_in", delay).Warn("containerd does not answer a wait for a task's exit; waiting again")
				if !w.rewait(delay) {
					return
				}
				delay = min(2*delay, w.rewaitMax)
				continue
			}
			if err != nil {
				code, at = UnknownExitCode, time.Now()
			}
			handle(w.ctx, Exit{Code: code, At: at, Lost: err})
			return
		}
	}()
}

// rewait begins the wait again after delay, until it is begun or the wait
// stopped; it reports whether it was begun. A wait that cannot be begun
// for a reason other than containerd's silence is begun as a failed one,
// for Handle to hand on as a lost exit.
func (w *Wait) rewait(delay time.Duration) bool {
	for {
		select {
		case <-time.After(delay):
		case <-w.ctx.Done():
			return false
		}
		exitCh, err := w.task.Wait(w.ctx)
		if err == nil {
			w.exitCh = exitCh
			return true
		}
		if !isUnavailable(err) {
			failed := make(chan containerd.ExitStatus, 1)
			failed <- *containerd.NewExitStatus(UnknownExitCode, time.Time{}, err)
			w.exitCh = failed
			return true
		}
		delay = min(2*delay, w.rewaitMax)
	}
}

// isUnavailable says whether err, from containerd's API, says containerd
// did not answer: its connection is down, or it is shutting down.
func isUnavailable(err error) bool {
	return errdefs.IsUnavailable(errgrpc.ToNative(err))
}

// Detached returns a context for work that outlives the call ctx belongs
// to: it has ctx's namespace and logger and nothing else of the call (its
// gRPC metadata, deadline, lease), which the work would otherwise hold for
// as long as it runs, a pod's whole life for the wait on its pause task.
func Detached(ctx context.Context) context.Context {
	out := log.WithLogger(context.Background(), log.G(ctx))
	if ns, ok := namespaces.Namespace(ctx); ok {
		out = namespaces.WithNamespace(out, ns)
	}
	return out
}
