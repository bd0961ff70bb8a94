// Package rollback is the rollback of something made in steps (a sandbox's
// Start, a shim keeper's making): each step that makes something pushes
// its undo, and a failure runs them back, last first, the ones that fail
// again run by the event monitor until they succeed, so that nothing half
// made is left behind.
package rollback

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/log"

	"github.com/berth-dev/berth/events"
)

// StepTimeout bounds each undo step, which runs on a context the caller
// cannot cancel: a half-made sandbox must not be left behind because the
// caller gave up.
const StepTimeout = 30 * time.Second

// Stack is a stack of undo steps.
type Stack []step

type step struct {
	// what names the step in logs and errors.
	what string
	fn   func(context.Context) error
}

// Push adds the undo of a step just done, named what.
func (s *Stack) Push(what string, fn func(context.Context) error) {
	*s = append(*s, step{what, fn})
}

// Run undoes the steps, last first, each on a context the caller cannot
// cancel, bounded by StepTimeout. It stops at the first step that fails
// and returns it and the steps below it, to be run again: what was made
// before may depend on it being gone (a container with a task cannot be
// deleted).
func (s Stack) Run(ctx context.Context) (Stack, error) {
	return s.run(context.WithoutCancel(ctx))
}

// run is Run on ctx as it is: a retry's attempt, which the retry queue
// bounds (AttemptTimeout) and cancels (Stop).
func (s Stack) run(ctx context.Context) (Stack, error) {
	for i := len(s) - 1; i >= 0; i-- {
		stepCtx, cancel := context.WithTimeout(ctx, StepTimeout)
		err := s[i].fn(stepCtx)
		cancel()
		if err != nil {
			return s[:i+1], fmt.Errorf("%s: %w", s[i].what, err)
		}
	}
	return nil, nil
}

// Retrier runs a step that failed again until it succeeds: the event
// monitor.
type Retrier interface {
	Retry(ctx context.Context, key, name string, step events.Step)
}

// RunOrRetry runs s for key; the steps that fail are run again by retrier,
// keyed by key, until they succeed. done, if set, is called once every
// step has run.
func (s Stack) RunOrRetry(ctx context.Context, key string, retrier Retrier, done func()) {
	rest, err := s.Run(ctx)
	if err == nil {
		if done != nil {
			done()
		}
		return
	}
	log.G(ctx).WithError(err).Warn("roll back; retrying")
	retrier.Retry(ctx, key, "rollback", func(ctx context.Context) error {
		if rest, err = rest.run(ctx); err != nil {
			return err
		}
		if done != nil {
			done()
		}
		log.G(ctx).Info("rolled back")
		return nil
	})
}
