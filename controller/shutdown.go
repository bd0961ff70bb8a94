package controller

import (
	"context"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/log"
	"github.com/opencontainers/selinux/go-selinux"

	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/store"
)

// Shutdown deletes everything the sandbox has: its pause task (by stopping
// it, if CRI did not), container, snapshot, files and entry. It succeeds
// for an unknown sandbox, so a repeated call is harmless.
func (c *Controller) Shutdown(ctx context.Context, id string) error {
	defer c.telemetry.timeOperation("shutdown")()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox_id", id))
	ctx, cancel := context.WithTimeout(ctx, c.config.StopTimeout+rollback.StepTimeout)
	defer cancel()
	sb, unlock, err := c.locked(ctx, id)
	if err != nil {
		return ignoreNotFound(err)
	}
	defer unlock()
	// CRI stops a sandbox before it removes it, except when it rolls back a
	// RunPodSandbox that failed after Start.
	if err := c.stop(ctx, sb); err != nil {
		return err
	}
	inst := sb.Status().Instance
	if inst != nil {
		// The watcher deletes the task after the exit Stop waited for; a
		// container with a task cannot be deleted.
		if err := c.awaitDeleted(ctx, sb); err != nil {
			return fmt.Errorf("pause task not deleted yet (retrying in the background): %w", err)
		}
		if err := c.deleteContainer(ctx, inst.Container); err != nil {
			return err
		}
	}
	if err := c.config.Dirs.Files(id).Remove(); err != nil {
		return err
	}
	if inst != nil {
		selinux.ReleaseLabel(inst.ProcessLabel)
	}
	c.forget(sb)
	failpoint.Clear(id)
	log.G(ctx).Debug("sandbox shut down")
	return nil
}

// awaitDeleted waits for the deletion of the sandbox's pause task. A
// deletion that failed is retried now, not after its backoff: the built-in
// deletes the task in the caller's call, and CRI's removal of the pod
// would otherwise fail until the retry's time, minutes after the failure
// cleared.
func (c *Controller) awaitDeleted(ctx context.Context, sb *store.Sandbox) error {
	select {
	case <-sb.Deleted():
		return nil
	default:
	}
	c.events.RetryNow(sb.ID)
	select {
	case <-sb.Deleted():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// deleteContainer deletes a pause container whose task is deleted, and its
// snapshot, as containerd's client does with WithSnapshotCleanup, but
// without first asking containerd for the task to refuse a container that
// has one: berth deleted the task itself, and through berthd the question
// is a round trip to containerd for every pod.
func (c *Controller) deleteContainer(ctx context.Context, container containerd.Container) error {
	// The record as containerd stored it at creation or recovery: no call.
	r, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return fmt.Errorf("pause container record: %w", err)
	}
	if r.SnapshotKey != "" {
		if err := ignoreNotFound(c.client.SnapshotService(r.Snapshotter).Remove(ctx, r.SnapshotKey)); err != nil {
			return fmt.Errorf("remove pause snapshot: %w", err)
		}
	}
	if err := ignoreNotFound(c.client.ContainerService().Delete(ctx, r.ID)); err != nil {
		return fmt.Errorf("delete pause container: %w", err)
	}
	return nil
}
