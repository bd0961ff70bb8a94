package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	apitasks "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/berth-dev/berth/store"
)

// waitExit is the one goroutine per sandbox that waits for the pause task
// to exit. It records the exit at once, so Status and Wait report it without
// delay, then deletes the task. A failed delete goes to the retry monitor,
// which runs the same step until it succeeds. cancel releases the wait's
// context once the exit is in.
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
	sb.Exit(code, at)
	logger.WithField("exit_status", code).Debug("pause task exited")

	attemptCtx, cancelAttempt := context.WithTimeout(context.WithoutCancel(ctx), c.config.ExitTimeout)
	defer cancelAttempt()
	c.deleteExitedOrRetry(attemptCtx, sb)
}

// deleteExitedOrRetry deletes the exited pause task within ctx and, if that
// fails, hands the deletion to the retry monitor, whose attempts outlive ctx.
func (c *Controller) deleteExitedOrRetry(ctx context.Context, sb *store.Sandbox) {
	if err := c.deleteExitedTask(ctx, sb); err != nil {
		log.G(ctx).WithError(err).Warn("delete exited pause task; retrying")
		c.retry(context.WithoutCancel(ctx), sb.ID, func(ctx context.Context) error { return c.deleteExitedTask(ctx, sb) })
	}
}

// deleteExitedTask deletes the exited pause task and its shim, then marks
// the sandbox deleted, releasing Stop. It is the only code that deletes a
// started pause task, so no task is deleted twice.
func (c *Controller) deleteExitedTask(ctx context.Context, sb *store.Sandbox) error {
	if err := failpoint(sb, FailpointTaskDelete); err != nil {
		return err
	}
	inst := sb.Status().Instance
	if inst == nil {
		sb.SetDeleted()
		return nil
	}
	t := inst.Task
	if t == nil {
		// Recovery could not load the task in time; load it now.
		var err error
		if t, err = inst.Container.Task(ctx, nil); errdefs.IsNotFound(err) {
			return c.deleteLostTask(ctx, sb)
		} else if err != nil {
			return fmt.Errorf("load pause task: %w", err)
		}
	}
	if err := c.deleteTask(ctx, t); err != nil {
		return err
	}
	sb.SetDeleted()
	return nil
}

// deleteLostTask cleans up after a pause task containerd does not know: a
// NewTask cut short by a containerd crash can have left a shim registered,
// a shim containerd forgot, and a runc container the shim lost. All are
// ended.
func (c *Controller) deleteLostTask(ctx context.Context, sb *store.Sandbox) error {
	if err := c.deleteFromTaskService(ctx, sb.ID); err != nil {
		return err
	}
	// runc first: it kills the pause process a lost shim may still run.
	if err := deleteRuncContainer(ctx, sb.Metadata); err != nil {
		return err
	}
	if err := c.shutdownLostShim(ctx, sb.ID); err != nil {
		return err
	}
	sb.SetDeleted()
	return nil
}

// deleteTask deletes a pause task and its shim. A task the shim no longer
// knows can still have a live shim connection in containerd's task service
// (containerd#7496: a delete cancelled while the shim was unmounting), and a
// dead shim answers nothing at all ("ttrpc: closed"), so in both cases the
// task service is asked to delete the task as well: it cleans up after a
// dead shim itself.
func (c *Controller) deleteTask(ctx context.Context, task containerd.Task) error {
	_, err := task.Delete(ctx, containerd.WithProcessKill)
	if err == nil {
		return nil
	}
	if !errdefs.IsNotFound(err) && !isShimGone(err) {
		return fmt.Errorf("delete pause task: %w", err)
	}
	return c.deleteFromTaskService(ctx, task.ID())
}

// deleteFromTaskService asks containerd's task service to delete the task
// of container id and shut its shim down. It also reaps a shim whose task
// was never created: containerd keeps such a shim registered after a
// restart that cut a NewTask short, and only this call ends it.
func (c *Controller) deleteFromTaskService(ctx context.Context, id string) error {
	_, err := c.client.TaskService().Delete(ctx, &apitasks.DeleteTaskRequest{ContainerID: id})
	if err := ignoreNotFound(errgrpc.ToNative(err)); err != nil {
		return fmt.Errorf("delete pause task from the task service: %w", err)
	}
	return nil
}

// isShimGone reports whether err says the shim's connection is closed: the
// shim died. ttrpc's error crosses containerd's API as an Unknown status
// with its text, so the text is all there is to match.
func isShimGone(err error) bool {
	return errdefs.IsUnknown(err) && strings.HasSuffix(err.Error(), ttrpc.ErrClosed.Error())
}
