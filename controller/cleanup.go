package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/berth-dev/berth/failpoint"
)

// cleanupTimeout bounds each undo and cleanup step, which run on a context
// the caller cannot cancel: a half-made sandbox must not be left behind
// because the caller gave up.
const cleanupTimeout = 30 * time.Second

// rollback is a stack of undo steps, pushed as a Start makes things.
type rollback []undoStep

type undoStep struct {
	// what names the step in logs and errors.
	what string
	fn   func(context.Context) error
}

func (r *rollback) push(what string, fn func(context.Context) error) {
	*r = append(*r, undoStep{what, fn})
}

// run undoes the steps, last first, each on a context the caller cannot
// cancel, bounded by cleanupTimeout. It stops at the first step that fails
// and returns it and the steps below it, to be run again: what was made
// before may depend on it being gone (a container with a task cannot be
// deleted).
func (r rollback) run(ctx context.Context) (rollback, error) {
	ctx = context.WithoutCancel(ctx)
	for i := len(r) - 1; i >= 0; i-- {
		stepCtx, cancel := context.WithTimeout(ctx, cleanupTimeout)
		err := r[i].fn(stepCtx)
		cancel()
		if err != nil {
			return r[:i+1], fmt.Errorf("%s: %w", r[i].what, err)
		}
	}
	return nil, nil
}

// rollBack runs undo for sandbox id. Steps that fail are run again by the
// retry queue until they succeed, so that a failed Start never leaves
// anything behind: CRI forgets a sandbox whose Start failed and will not
// ask again.
func (c *Controller) rollBack(ctx context.Context, id string, undo rollback) {
	rest, err := undo.run(ctx)
	if err == nil {
		failpoint.Clear(id)
		return
	}
	log.G(ctx).WithError(err).Warn("roll back sandbox start; retrying")
	c.events.Retry(ctx, id, "rollback", func(ctx context.Context) error {
		if rest, err = rest.run(ctx); err != nil {
			return err
		}
		failpoint.Clear(id)
		log.G(ctx).Info("rolled back sandbox start")
		return nil
	})
}

func ignoreNotFound(err error) error {
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}
