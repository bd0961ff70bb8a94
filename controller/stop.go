package controller

import (
	"context"
	"fmt"
	"syscall"

	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/berth-dev/berth/store"
)

// Stop kills the pause task and returns once it has exited, so CRI can tear
// down the pod network knowing no pause process holds it. It succeeds for a
// sandbox that is already stopped, never started, or unknown.
func (c *Controller) Stop(ctx context.Context, id string, opts ...sandbox.StopOpt) error {
	defer c.telemetry.timeOperation("stop")()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox_id", id))
	var o sandbox.StopOptions
	for _, opt := range opts {
		opt(&o)
	}
	timeout := c.config.StopTimeout
	// The sandbox API sends a zero timeout when its caller set none.
	if o.Timeout != nil && *o.Timeout > 0 && *o.Timeout < timeout {
		timeout = *o.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	unlock, err := c.locks.lock(ctx, id)
	if err != nil {
		return fmt.Errorf("stop sandbox %q: %w", id, err)
	}
	defer unlock()

	sb, err := c.store.Get(id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.stop(ctx, sb)
}

// stop does Stop's work with the sandbox's lock held.
func (c *Controller) stop(ctx context.Context, sb *store.Sandbox) error {
	status := sb.Status()
	if status.State == store.StateReady {
		// Stop only kills the task; its exit goroutine deletes it.
		kill := func(ctx context.Context) error {
			return ignoreNotFound(status.Instance.Task.Kill(ctx, syscall.SIGKILL))
		}
		if err := kill(ctx); err != nil {
			// A wedged shim: keep killing in the background, so that the
			// pod dies as soon as the shim answers again.
			c.retry(context.WithoutCancel(ctx), sb.ID, kill)
			if ctx.Err() != nil {
				// The shim's error text says deadline; its class is lost on
				// the way. Give the caller the class to branch on.
				err = fmt.Errorf("%w: %v", ctx.Err(), err)
			}
			return fmt.Errorf("stop sandbox %q: kill pause task (retrying in the background): %w", sb.ID, err)
		}
	}
	if status.State != store.StateCreated {
		// The exit, not the task's deletion: the pause process is gone, and
		// its exit goroutine deletes the task (runc delete, shim shutdown)
		// while CRI tears down the pod network. Shutdown waits for that
		// deletion.
		select {
		case <-sb.Exited():
		case <-ctx.Done():
			return fmt.Errorf("stop sandbox %q: pause task has not exited (killing in the background): %w", sb.ID, ctx.Err())
		}
	}
	// No process uses the pod's /dev/shm any more; app containers have their
	// own bind of it, which keeps it alive until they are gone.
	if err := c.config.Dirs.Files(sb.ID).UnmountShm(); err != nil {
		return fmt.Errorf("stop sandbox %q: %w", sb.ID, err)
	}
	return nil
}
