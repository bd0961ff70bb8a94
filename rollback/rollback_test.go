package rollback

import (
	"context"
	"errors"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/berth-dev/berth/events"
)

// retrier runs a retried step again at once, until it succeeds.
type retrier struct{ retries int }

func (r *retrier) Retry(ctx context.Context, _, _ string, step events.Step) {
	for {
		r.retries++
		if step(ctx) == nil {
			return
		}
	}
}

func TestRunOrRetry(t *testing.T) {
	var ran []string
	fails := 2
	var s Stack
	s.Push("first", func(context.Context) error { ran = append(ran, "first"); return nil })
	s.Push("flaky", func(context.Context) error {
		ran = append(ran, "flaky")
		if fails > 0 {
			fails--
			return errors.New("not yet")
		}
		return nil
	})
	s.Push("last", func(ctx context.Context) error {
		if ctx.Err() != nil {
			t.Error("an undo step runs on a cancelled context")
		}
		ran = append(ran, "last")
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &retrier{}
	done := 0
	s.RunOrRetry(ctx, "sb", r, func() { done++ })
	// Last first; the failed step and those below it again, never the
	// steps already undone.
	if want := []string{"last", "flaky", "flaky", "flaky", "first"}; !slices.Equal(ran, want) {
		t.Errorf("ran %v, want %v", ran, want)
	}
	if r.retries != 2 || done != 1 {
		t.Errorf("%d retries, done %d times; want 2 and once", r.retries, done)
	}
}

func TestRunStopsAtFailure(t *testing.T) {
	var s Stack
	s.Push("made first", func(context.Context) error { t.Error("a step below a failed one ran"); return nil })
	s.Push("fails", func(context.Context) error { return errors.New("busy") })
	rest, err := s.Run(context.Background())
	if err == nil || err.Error() != "fails: busy" || len(rest) != 2 {
		t.Errorf("Run = %d steps left, %v; want both, the failed step named", len(rest), err)
	}
}

// TestRetriedUndoHonoursQueue: a retried undo step runs on the retry
// queue's attempt context, bounded by AttemptTimeout and cancelled by the
// queue's Stop (the controller's Close), not detached for StepTimeout as
// the first run is.
func TestRetriedUndoHonoursQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := events.NewMonitor(events.Backoff{InitialDelay: time.Second, Factor: 2, MaxDelay: time.Minute, AttemptTimeout: 5 * time.Second})
		tries := 0
		retried := make(chan time.Duration, 1)
		var s Stack
		s.Push("wedged shim", func(ctx context.Context) error {
			tries++
			if tries == 1 {
				return errors.New("busy")
			}
			d, _ := ctx.Deadline()
			retried <- time.Until(d)
			<-ctx.Done()
			return ctx.Err()
		})
		s.RunOrRetry(context.Background(), "sb", m, nil)
		if left := <-retried; left > 5*time.Second {
			t.Errorf("retried undo step has %v to run, want at most the queue's AttemptTimeout (5s)", left)
		}
		start := time.Now()
		m.Stop()
		if took := time.Since(start); took > 0 {
			t.Errorf("the queue's Stop waited %v for a retried undo step, want it cancelled at once", took)
		}
	})
}
