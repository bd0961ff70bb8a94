package events

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"weak"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
)

var errFail = errors.New("attempt failed")

// run is one recorded attempt run, at a time relative to the recorder's start.
type run struct {
	name string
	at   time.Duration
	ok   bool
}

// recorder records attempt runs. Create it inside the synctest bubble so that
// its start is on the bubble's clock.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	runs  []run
}

func newRecorder() *recorder {
	return &recorder{start: time.Now()}
}

// attempt returns an attempt that fails its first fails runs; fails < 0 fails
// forever. If gate is not nil, each run first waits for it.
func (r *recorder) attempt(name string, fails int, gate <-chan struct{}) Step {
	n := 0
	return func(ctx context.Context) error {
		if gate != nil {
			<-gate
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		ok := fails >= 0 && n >= fails
		n++
		r.runs = append(r.runs, run{name: name, at: time.Since(r.start), ok: ok})
		if !ok {
			return errFail
		}
		return nil
	}
}

func (r *recorder) get() []run {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.runs)
}

func (r *recorder) check(t *testing.T, want ...run) {
	t.Helper()
	if got := r.get(); !slices.Equal(got, want) {
		t.Fatalf("runs:\n got %v\nwant %v", got, want)
	}
}

// config is the backoff the tests start from: berth's defaults.
func backoff(change ...func(*Backoff)) Backoff {
	c := Backoff{InitialDelay: time.Second, Factor: 2, MaxDelay: 5 * time.Minute, AttemptTimeout: 10 * time.Second}
	for _, f := range change {
		f(&c)
	}
	return c
}

func TestFirstRetryAfterInitialDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff(func(c *Backoff) { c.InitialDelay = 3 * time.Second }))
		defer m.Stop()
		r := newRecorder()

		m.Add(t.Context(), "a", "step", r.attempt("a", 0, nil))
		time.Sleep(3*time.Second - time.Nanosecond)
		synctest.Wait()
		r.check(t)

		time.Sleep(time.Nanosecond)
		synctest.Wait()
		r.check(t, run{"a", 3 * time.Second, true})
	})
}

func TestBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff(func(c *Backoff) { c.MaxDelay = 10 * time.Second }))
		defer m.Stop()
		r := newRecorder()

		m.Add(t.Context(), "a", "step", r.attempt("a", -1, nil))
		time.Sleep(45 * time.Second)
		synctest.Wait()
		// Delays 1s, 2s, 4s, 8s, then capped at 10s.
		var want []run
		for _, at := range []time.Duration{1, 3, 7, 15, 25, 35, 45} {
			want = append(want, run{"a", at * time.Second, false})
		}
		r.check(t, want...)
	})
}

func TestFailThenSucceed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff())
		defer m.Stop()
		r := newRecorder()

		const fails = 4
		m.Add(t.Context(), "a", "step", r.attempt("a", fails, nil))
		time.Sleep(time.Hour)
		synctest.Wait()
		r.check(t,
			run{"a", 1 * time.Second, false},
			run{"a", 3 * time.Second, false},
			run{"a", 7 * time.Second, false},
			run{"a", 15 * time.Second, false},
			run{"a", 31 * time.Second, true},
		)

		// The key was forgotten: a new retry starts at InitialDelay again.
		m.Add(t.Context(), "a", "step", r.attempt("a again", 0, nil))
		time.Sleep(time.Second)
		synctest.Wait()
		if got := r.get(); got[len(got)-1] != (run{"a again", time.Hour + time.Second, true}) {
			t.Fatalf("retry of a forgotten key ran as %v, want at 1h1s", got[len(got)-1])
		}
	})
}

// TestNow runs a key's waiting steps at once, and backs the key off further
// when they fail, as a retry at its time would.
func TestNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff())
		defer m.Stop()
		r := newRecorder()

		m.Add(t.Context(), "a", "step", r.attempt("a", 2, nil))
		m.Now("b") // no steps: nothing to run
		time.Sleep(500 * time.Millisecond)
		m.Now("a")
		synctest.Wait()
		r.check(t, run{"a", 500 * time.Millisecond, false})

		// Failed now: the delay doubled from there (1s to 2s).
		time.Sleep(2*time.Second - time.Nanosecond)
		synctest.Wait()
		r.check(t, run{"a", 500 * time.Millisecond, false})
		time.Sleep(time.Second)
		m.Now("a")
		synctest.Wait()
		r.check(t,
			run{"a", 500 * time.Millisecond, false},
			run{"a", 2500 * time.Millisecond, false},
			run{"a", 3500*time.Millisecond - time.Nanosecond, true},
		)
	})
}

// TestNowWhileRunning: a Now that finds the key's step running runs it
// again at once if it fails, rather than after the delay; further failures
// back off as usual. Before, the Now was dropped, and Shutdown, which waits
// on the step, could time out behind a slow attempt.
func TestNowWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff())
		defer m.Stop()
		r := newRecorder()
		gate := make(chan struct{})

		m.Add(t.Context(), "a", "step", r.attempt("a", 2, gate))
		time.Sleep(5 * time.Second)
		synctest.Wait() // a is running since 1s, held by gate.
		m.Now("a")
		close(gate)
		time.Sleep(time.Hour)
		synctest.Wait()
		// Delays 2s (skipped for the Now), then 4s.
		r.check(t,
			run{"a", 5 * time.Second, false},
			run{"a", 5 * time.Second, false},
			run{"a", 9 * time.Second, true},
		)
	})
}

func TestOrder(t *testing.T) {
	t.Run("appended and requeued", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			m := NewQueue(backoff())
			defer m.Stop()
			r := newRecorder()
			gate := make(chan struct{})

			m.Add(t.Context(), "k", "step", r.attempt("a1", 0, gate))
			time.Sleep(time.Second / 2)
			// Joins the waiting queue, so runs at the same time as a1.
			m.Add(t.Context(), "k", "step", r.attempt("a2", 1, nil))
			m.Add(t.Context(), "k", "step", r.attempt("a3", 0, nil))
			time.Sleep(time.Second / 2)
			synctest.Wait() // a1 is running, held by gate.
			m.Add(t.Context(), "k", "step", r.attempt("a4", 0, nil))
			close(gate)
			time.Sleep(time.Hour)
			synctest.Wait()
			// a2 failed: it and a3 go back ahead of a4, which was appended
			// while the batch ran.
			r.check(t,
				run{"a1", time.Second, true},
				run{"a2", time.Second, false},
				run{"a2", 3 * time.Second, true},
				run{"a3", 3 * time.Second, true},
				run{"a4", 3 * time.Second, true},
			)
		})
	})

	t.Run("appended after success", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			m := NewQueue(backoff())
			defer m.Stop()
			r := newRecorder()
			gate := make(chan struct{})

			m.Add(t.Context(), "k", "step", r.attempt("a1", 0, gate))
			time.Sleep(5 * time.Second)
			m.Add(t.Context(), "k", "step", r.attempt("a2", 0, nil))
			close(gate)
			synctest.Wait()
			// a2 waited behind a1, not for a delay of its own.
			r.check(t,
				run{"a1", 5 * time.Second, true},
				run{"a2", 5 * time.Second, true},
			)
		})
	})
}

func TestManyKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff())
		defer m.Stop()
		r := newRecorder()

		const keys = 100
		for i := range keys {
			key := fmt.Sprint(i)
			m.Add(t.Context(), key, "step", r.attempt(key, i%4, nil))
		}
		// The slowest keys fail 3 times: they succeed at 1+2+4+8 = 15s.
		time.Sleep(15 * time.Second)
		synctest.Wait()

		runs := make(map[string]int)
		for _, ru := range r.get() {
			runs[ru.name]++
		}
		for i := range keys {
			key := fmt.Sprint(i)
			if runs[key] != i%4+1 {
				t.Errorf("key %s ran %d times, want %d", key, runs[key], i%4+1)
			}
		}
	})
}

func TestKeysIndependent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff(func(c *Backoff) { c.AttemptTimeout = time.Hour }))
		defer m.Stop()
		r := newRecorder()

		blocked := func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}
		m.Add(t.Context(), "a", "step", blocked)
		time.Sleep(time.Second)
		synctest.Wait() // a is running, and stays so.

		m.Add(t.Context(), "b", "step", r.attempt("b", 0, nil))
		time.Sleep(time.Second)
		synctest.Wait()
		r.check(t, run{"b", 2 * time.Second, true})
	})
}

// TestAttemptContextValues: a step runs with its caller's namespace and
// logger, and nothing else of the call: not its cancellation, nor the call
// values (gRPC metadata, a lease) it would hold until the step succeeds.
func TestAttemptContextValues(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff())
		defer m.Stop()
		type key struct{}
		ctx, cancel := context.WithCancel(context.WithValue(namespaces.WithNamespace(t.Context(), "k8s.io"), key{}, "call"))
		var mu sync.Mutex
		var got []string
		m.Add(ctx, "a", "step", func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			ns, _ := namespaces.Namespace(ctx)
			got = append(got, fmt.Sprint(ns, " ", ctx.Value(key{})))
			return ctx.Err()
		})
		cancel()
		time.Sleep(time.Hour)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		// One run: had the caller's cancellation reached it, it would have
		// failed and run again.
		if want := []string{"k8s.io <nil>"}; !slices.Equal(got, want) {
			t.Fatalf("runs saw namespace and call value %q, want %q", got, want)
		}
	})
}

// callValue stands for what a call's context carries (its gRPC metadata,
// peer and logger fields), which a retry that outlives the call must not
// hold.
type callValue struct{ _ [4 << 10]byte }

type callValueKey struct{}

// collected reports whether p's value is garbage once the collector has
// run a few times.
func collected[T any](p weak.Pointer[T]) bool {
	for range 5 {
		runtime.GC()
		if p.Value() == nil {
			return true
		}
	}
	return false
}

// TestNothingHeldOfTheCall checks that a step waiting out its backoff holds
// nothing of its caller's context, whether the context has a logger or
// not: a failing retry waits for minutes, and forever on a wedged shim.
// Before, the step's logger was the caller's, which holds its context.
func TestNothingHeldOfTheCall(t *testing.T) {
	for _, withLogger := range []bool{false, true} {
		t.Run(fmt.Sprint("logger ", withLogger), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m := NewQueue(backoff())
				defer m.Stop()
				value := new(callValue)
				held := weak.Make(value)
				ctx := context.WithValue(t.Context(), callValueKey{}, value)
				if withLogger {
					ctx = log.WithLogger(ctx, log.G(ctx).WithField("pid", 1))
				}
				m.Add(ctx, "a", "step", func(context.Context) error { return errFail })
				value, ctx = nil, nil
				time.Sleep(time.Second)
				synctest.Wait() // failed again, and waits out its backoff.
				if !collected(held) {
					t.Error("the caller's context is held while its step waits")
				}
			})
		})
	}
}

func TestAttemptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff(func(c *Backoff) { c.AttemptTimeout = 3 * time.Second }))
		defer m.Stop()
		start := time.Now()

		type end struct {
			at  time.Duration
			err error
		}
		ends := make(chan end, 2)
		m.Add(t.Context(), "a", "step", func(ctx context.Context) error {
			<-ctx.Done()
			ends <- end{time.Since(start), ctx.Err()}
			return ctx.Err()
		})
		time.Sleep(time.Hour)
		synctest.Wait()

		// Runs at 1s, times out at 4s; runs again at 6s, times out at 9s.
		for _, want := range []time.Duration{4 * time.Second, 9 * time.Second} {
			got := <-ends
			if got.at != want || !errors.Is(got.err, context.DeadlineExceeded) {
				t.Fatalf("attempt ended at %v with %v, want %v with %v", got.at, got.err, want, context.DeadlineExceeded)
			}
		}
	})
}

func TestStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff())
		r := newRecorder()

		var inFlight error
		m.Add(t.Context(), "a", "step", func(ctx context.Context) error {
			<-ctx.Done()
			inFlight = ctx.Err()
			return inFlight
		})
		// Queued behind the running attempt, and on a key still waiting.
		m.Add(t.Context(), "a", "step", r.attempt("a2", 0, nil))
		time.Sleep(time.Second)
		m.Add(t.Context(), "b", "step", r.attempt("b", 0, nil))
		synctest.Wait()

		m.Stop()
		if !errors.Is(inFlight, context.Canceled) {
			t.Fatalf("in-flight attempt ended with %v, want %v", inFlight, context.Canceled)
		}
		m.Add(t.Context(), "c", "step", r.attempt("c", 0, nil))
		time.Sleep(time.Hour)
		synctest.Wait()
		r.check(t)
		m.Stop()
	})
}

// TestStopRestOfBatch checks that Stop waits for an attempt that ignores its
// context, and that the attempts queued after it do not run.
func TestStopRestOfBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewQueue(backoff())
		r := newRecorder()
		gate := make(chan struct{})

		m.Add(t.Context(), "a", "step", r.attempt("a1", 0, gate))
		m.Add(t.Context(), "a", "step", r.attempt("a2", 0, nil))
		time.Sleep(time.Second)
		synctest.Wait() // a1 is running, held by gate.

		stopped := make(chan struct{})
		go func() {
			m.Stop()
			close(stopped)
		}()
		synctest.Wait()
		select {
		case <-stopped:
			t.Fatal("Stop returned while an attempt was running")
		default:
		}
		close(gate)
		<-stopped
		r.check(t, run{"a1", time.Second, true})
	})
}
