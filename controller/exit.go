package controller

import (
	"context"
	"fmt"
	"time"

	apitasks "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"

	"github.com/berth-dev/berth/store"
)

// waitExit is the one goroutine per sandbox that waits for the pause task
// to exit, then hands the exit to handleExit. A failed first attempt goes to
// the retry monitor, which runs the same handler until it succeeds. cancel
// releases the wait's context once the exit is in.
func (c *Controller) waitExit(ctx context.Context, cancel context.CancelFunc, sb *store.Sandbox, exitCh <-chan containerd.ExitStatus) {
	defer cancel()
	var e containerd.ExitStatus
	select {
	case e = <-exitCh:
	case <-ctx.Done():
		return
	}
	code, at, err := e.Result()
	logger := log.G(ctx).WithField("sandbox_id", sb.ID)
	if err != nil {
		// The wait itself failed, e.g. the shim died: the task is gone all
		// the same, with its exit code.
		logger.WithError(err).Warn("pause task exit status lost")
		code, at = unknownExitCode, time.Now()
	}
	logger.WithField("exit_status", code).Debug("pause task exited")

	handle := func(ctx context.Context) error { return c.handleExit(ctx, sb, code, at) }
	attemptCtx, cancelAttempt := context.WithTimeout(context.WithoutCancel(ctx), c.config.ExitTimeout)
	defer cancelAttempt()
	if err := handle(attemptCtx); err != nil {
		logger.WithError(err).Warn("handle pause task exit; retrying")
		// The retries outlive this goroutine's context.
		c.monitor.Retry(context.WithoutCancel(ctx), sb.ID, handle)
	}
}

// handleExit deletes the exited pause task and records the exit, waking
// Wait and Stop. It is the only code that deletes a started pause task, so
// no exit is handled twice and no task is deleted twice.
func (c *Controller) handleExit(ctx context.Context, sb *store.Sandbox, code uint32, at time.Time) error {
	inst := sb.Status().Instance
	if inst != nil {
		if err := c.deleteTask(ctx, inst.Task); err != nil {
			return err
		}
	}
	sb.Exit(code, at)
	return nil
}

// deleteTask deletes a pause task and its shim. A task the shim no longer
// knows can still have a live shim connection in containerd's task service
// (containerd#7496: a delete cancelled while the shim was unmounting), so
// on NotFound the task service is asked to delete it as well.
func (c *Controller) deleteTask(ctx context.Context, task containerd.Task) error {
	_, err := task.Delete(ctx, containerd.WithProcessKill)
	if err == nil {
		return nil
	}
	if !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete pause task: %w", err)
	}
	_, err = c.client.TaskService().Delete(ctx, &apitasks.DeleteTaskRequest{ContainerID: task.ID()})
	if err := ignoreNotFound(errgrpc.ToNative(err)); err != nil {
		return fmt.Errorf("delete pause task from the task service: %w", err)
	}
	return nil
}
