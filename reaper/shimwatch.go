package reaper

import (
	"context"

	"github.com/containerd/log"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/shimproc"
)

// WatchShim watches the process of group's shared shim, which serves task
// id, once per group, and the moment the shim dies ends the group
// (placement.Groups.ShimDied) and calls r.shimDied with the IDs of the
// tasks made in it. containerd learns of a dead shim through
// its connection, then cleans up after each of its tasks in turn (a `shim
// delete` each) before it reports each task's exit: with a dozen pods in a
// shim the last one's exit comes a quarter of a second later on a 16-core
// node. A group whose shim cannot be reached (berth does not know where
// shims listen, or the shim already died) is not watched; its pods' exits
// come from containerd as before; one that did not answer (a timeout under
// load) is tried again at the group's next task. Once the shim has exited,
// its sockets are removed (shimproc.Sockets.RemoveDeadSockets).
func (r *Reaper) WatchShim(ctx context.Context, group, id string) {
	if group == "" || !r.cfg.Groups.Watch(group) {
		return
	}
	ctx = log.WithLogger(events.Detached(ctx), log.G(ctx).WithField("shim_group", group))
	go func() {
		pidfd, err := r.cfg.Shims.Pidfd(ctx, group, id)
		if err != nil {
			log.G(ctx).WithError(err).Warn("shared shim not watched; its group's next task tries again")
			r.cfg.Groups.Unwatch(group)
			return
		}
		if pidfd == nil {
			log.G(ctx).Debug("shared shim not watched: no shim listens at its socket")
			return
		}
		defer pidfd.Close()
		if err := shimproc.WaitExit(pidfd); err != nil {
			log.G(ctx).WithError(err).Warn("watch shared shim")
			return
		}
		// Ended first: the pods kubelet starts again for the dead shim's
		// join another group rather than be refused by its socket.
		r.cfg.Groups.ShimDied(group)
		ids := r.cfg.Groups.TasksOf(group)
		if len(ids) > 0 {
			log.G(ctx).WithField("tasks", ids).Warn("shared shim died; its pause tasks have exited")
			r.cfg.ShimDied(ids)
		}
		if err := r.cfg.Shims.RemoveDeadSockets(ctx, group); err != nil {
			log.G(ctx).WithError(err).Warn("remove the sockets of an exited shim")
		}
	}()
}
