package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
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
	if group == "" || !r.groups.watch(group) {
		return
	}
	ctx = log.WithLogger(detached(ctx), log.G(ctx).WithField("shim_group", group))
	go func() {
		pidfd, err := r.shimPidfd(ctx, group, id)
		if err != nil || pidfd == nil {
			log.G(ctx).WithError(err).Debug("shared shim not watched")
			return
		}
		defer pidfd.Close()
		if err := waitExit(pidfd); err != nil {
			log.G(ctx).WithError(err).Warn("watch shared shim")
			return
		}
		ids := r.groups.tasksOf(group)
		if len(ids) > 0 {
			log.G(ctx).WithField("tasks", ids).Warn("shared shim died; its pause tasks have exited")
			r.shimDied(ids)
		}
	}()
}

// shimPidfd returns a pidfd of the shim of group, reached at its socket:
// nil if no shim listens there. The pidfd is the shim's only if the shim
// still answers with its pid once the pidfd is open, so a reused pid is
// never watched.
func (r *reaper) shimPidfd(ctx context.Context, group, id string) (*os.File, error) {
	svc, closeShim, err := r.dialShim(ctx, group)
	if err != nil || svc == nil {
		return nil, err
	}
	defer closeShim()
	pid, err := shimPid(ctx, svc, id)
	if err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd of shim %d: %w", pid, err)
	}
	// Non-blocking, so that os waits for it in the runtime's poller, not
	// in a thread of its own.
	pidfd := os.NewFile(uintptr(fd), "shim pidfd")
	if again, err := shimPid(ctx, svc, id); err != nil || again != pid {
		pidfd.Close()
		return nil, errors.Join(fmt.Errorf("shim %d did not answer again", pid), err)
	}
	return pidfd, nil
}

// shimPid asks the shim serving task id for its pid.
func shimPid(ctx context.Context, svc taskapi.TTRPCTaskService, id string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := svc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil {
		return 0, fmt.Errorf("connect to shim: %w", err)
	}
	if info.GetShimPid() == 0 {
		return 0, errors.New("shim has no pid")
	}
	return int(info.GetShimPid()), nil
}

// waitExit blocks until the process of pidfd exits: its pidfd is then
// readable.
func waitExit(pidfd *os.File) error {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return err
	}
	var pollErr error
	err = rc.Read(func(fd uintptr) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			pollErr = err
			return true
		}
		return n > 0
	})
	return errors.Join(err, pollErr)
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
			sb.Exit(unknownExitCode, now)
		}
	}
}
