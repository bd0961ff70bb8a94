package controller

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/log"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/store"
)

// Stop kills the pause task and returns once it has exited, so CRI can tear
// down the pod network knowing no pause process holds it. It succeeds for a
// sandbox that is already stopped, never started, or unknown. Errors do not
// name the sandbox: CRI does.
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

	sb, unlock, err := c.locked(ctx, id)
	if err != nil {
		return ignoreNotFound(err)
	}
	defer unlock()
	return c.stop(ctx, sb)
}

// stop does Stop's work with the sandbox's lock held.
func (c *Controller) stop(ctx context.Context, sb *store.Sandbox) error {
	status := sb.Status()
	if status.State == store.StateReady {
		// Stop only kills the task; its watcher deletes it. A shim that
		// died under the kill has its pods' exits recorded (shimDied, or
		// containerd's cleanup) and the pause ended by containerd's
		// cleanup: waited for below, as after a kill.
		if err := c.reaper.Kill(ctx, sb, status.Instance.Task); err != nil && !shimproc.IsGone(err) {
			if ctx.Err() != nil {
				// The shim's error text says deadline; its class is lost on
				// the way. Give the caller the class to branch on.
				err = fmt.Errorf("%w: %v", ctx.Err(), err)
			}
			return fmt.Errorf("kill pause task (retrying in the background): %w", err)
		}
	}
	if status.State != store.StateCreated {
		// The exit, not the task's deletion: the pause process is gone, and
		// its watcher deletes the task (runc delete, shim shutdown) while
		// CRI tears down the pod network. Shutdown waits for that deletion.
		select {
		case <-sb.Exited():
		case <-ctx.Done():
			return fmt.Errorf("pause task has not exited yet: %w", ctx.Err())
		}
		// An exit whose status was lost (its shim died, or did not answer
		// at recovery) does not say the pause process is gone: the task's
		// deletion ends it (runc delete --force). Wait for that, as the
		// built-in's Stop waits for the kill of a task whose state is
		// unknown.
		if sb.Status().ExitStatus == events.UnknownExitCode {
			if err := c.awaitDeleted(ctx, sb); err != nil {
				return fmt.Errorf("pause task of unknown state not deleted yet (retrying in the background): %w", err)
			}
		}
	}
	// No process uses the pod's /dev/shm any more; app containers have their
	// own bind of it, which keeps it alive until they are gone.
	return c.config.Dirs.Files(sb.ID).UnmountShm()
}
