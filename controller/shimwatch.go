package controller

import (
	"context"
	"time"

	"github.com/containerd/log"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/shimproc"
)

// watchShim watches the process of group's shared shim, which serves task
// id, once per group, and calls r.shimDied with the IDs of the tasks made
// in the group the moment the shim dies. containerd learns of a dead shim through
// its connection, then cleans up after each of its tasks in turn (a `shim
// delete` each) before it reports each task's exit: with a dozen pods in a
// shim the last one's exit comes a quarter of a second later on a 16-core
// node. A group whose shim cannot be reached (berth does not know where
// shims listen, or the shim already died) is not watched; its pods' exits
// come from containerd as before.
func (r *reaper) watchShim(ctx context.Context, group, id string) {
	if group == "" || !r.groups.Watch(group) {
		return
	}
	ctx = log.WithLogger(events.Detached(ctx), log.G(ctx).WithField("shim_group", group))
	go func() {
		pidfd, err := r.shims.Pidfd(ctx, group, id)
		if err != nil || pidfd == nil {
			log.G(ctx).WithError(err).Debug("shared shim not watched")
			return
		}
		defer pidfd.Close()
		if err := shimproc.WaitExit(pidfd); err != nil {
			log.G(ctx).WithError(err).Warn("watch shared shim")
			return
		}
		ids := r.groups.TasksOf(group)
		if len(ids) > 0 {
			log.G(ctx).WithField("tasks", ids).Warn("shared shim died; its pause tasks have exited")
			r.shimDied(ids)
		}
	}()
}

// shimDied records the exit of the pause tasks ids a dead shared shim
// served: each pod is NOTREADY at once. The pause processes die when
// containerd cleans up after the shim (runc delete --force), and nothing
// can reach them meanwhile. Each pause's watch still gets its exit from
// containerd, finds it recorded, and deletes the task as ever. IDs of
// shim keepers, which are no sandboxes, are skipped: a keeper's own watch
// removes it.
func (c *Controller) shimDied(ids []string) {
	now := time.Now()
	for _, id := range ids {
		if sb, err := c.store.Get(id); err == nil {
			sb.Exit(events.UnknownExitCode, now)
		}
	}
}
