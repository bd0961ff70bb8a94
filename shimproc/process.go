package shimproc

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

// Shutdown shuts the shim, which served container id's task, down now, and
// ends its process if it does not exit: a shim whose bundle containerd
// deleted cannot delete its task, and one that holds a task containerd
// forgot refuses to shut down; neither exits by itself. It shuts down
// whatever tasks the shim still serves: ask Serving first, and again in
// serving, which is asked before the kill: a task can join the shim in
// between (the runc shim does not exit while it serves one), and a shim
// that serves one then is left. An error that IsExiting says the shim
// exited under the calls.
func (s *Shim) Shutdown(ctx context.Context, id string, serving func(context.Context) (bool, error)) error {
	info, err := s.svc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil {
		return fmt.Errorf("connect to shim: %w", err)
	}
	if _, err := s.svc.Shutdown(ctx, &taskapi.ShutdownRequest{ID: id, Now: true}); err != nil && !IsExiting(err) {
		return fmt.Errorf("shut down shim: %w", err)
	}
	return s.kill(ctx, id, int(info.GetShimPid()), serving)
}

// kill waits a second for the shim, pid shimPid, to exit, then SIGKILLs
// it. It signals through a pidfd taken while the shim still answered on
// its socket with that pid, so that a reused pid is never hit.
func (s *Shim) kill(ctx context.Context, id string, shimPid int, serving func(context.Context) (bool, error)) error {
	if shimPid <= 0 {
		return nil
	}
	pidfd, err := pidfdOpen(shimPid, 0)
	if errors.Is(err, unix.ESRCH) {
		s.removeSockets(ctx)
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd of shim %d: %w", shimPid, err)
	}
	defer unix.Close(pidfd)
	if exited(pidfd, time.Second) {
		log.G(ctx).WithField("pid", shimPid).Debug("shim exited")
		// A group's shim leaves its sockets (RemoveDeadSockets), and one
		// whose group berth does not watch (a pod's recovered stopped
		// pause's) has no watch to remove them.
		s.removeSockets(ctx)
		return nil
	}
	// The pidfd is the shim's only if the shim still answers with its pid.
	// One that does not answer is left, but only one that is exiting
	// (its connection closed) is shut down: a call that failed otherwise,
	// the caller's deadline spent in the wait above among them, is the
	// caller's to retry, or a shim that would not exit stays for good.
	info, err := s.svc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil && !IsExiting(err) {
		return fmt.Errorf("ask shim %d, which did not exit, for its pid: %w", shimPid, err)
	}
	if err != nil || int(info.GetShimPid()) != shimPid {
		return nil
	}
	if busy, err := serving(ctx); err != nil || busy {
		return err
	}
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill shim %d: %w", shimPid, err)
	}
	log.G(ctx).WithField("pid", shimPid).Info("killed a shim that would not exit")
	// Killed, it leaves its sockets.
	if exited(pidfd, time.Second) {
		s.removeSockets(ctx)
	}
	return nil
}

// removeSockets removes the sockets of the shim, which exited. The shim is
// shut down whether they go or not: a failure to remove them is logged,
// not the shutdown's, whose callers would retry what is done, or take the
// pod for one that cannot be reattached.
func (s *Shim) removeSockets(ctx context.Context) {
	if err := s.sockets.RemoveDeadSockets(ctx, s.group); err != nil {
		log.G(ctx).WithError(err).WithField("shim_group", s.group).Warn("shim exited; its sockets stay")
	}
}

// exited waits up to timeout for the process of pidfd to exit.
func exited(pidfd int, timeout time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		ms := max(time.Until(deadline).Milliseconds(), 0)
		n, err := unix.Poll(fds, int(ms))
		if errors.Is(err, unix.EINTR) && ms > 0 {
			continue
		}
		return err == nil && n > 0
	}
}

// Pidfd returns a pidfd of the shim of group, which serves container id's
// task, reached at its socket: nil, with no error, if no shim listens
// there or berth does not know where shims listen. The connection is
// closed before Pidfd returns; the pidfd is the caller's to close. Wait
// for the shim's exit with WaitExit.
func (s Sockets) Pidfd(ctx context.Context, group, id string) (*os.File, error) {
	shim, err := s.Dial(ctx, group)
	if err != nil || shim == nil {
		return nil, err
	}
	defer shim.Close()
	return shim.pidfd(ctx, id)
}

// pidfd returns a pidfd of the shim. The pidfd is the shim's only if the
// shim still answers with its pid once the pidfd is open, so a reused pid
// is never watched.
func (s *Shim) pidfd(ctx context.Context, id string) (*os.File, error) {
	pid, err := s.pid(ctx, id)
	if err != nil {
		return nil, err
	}
	// Non-blocking, so that os waits for it in the runtime's poller, not
	// in a thread of its own. Made so after the open: pidfd_open takes
	// PIDFD_NONBLOCK from Linux 5.10 on, and refuses any flag before.
	fd, err := pidfdOpen(pid, 0)
	if err == nil {
		if err = unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd of shim %d: %w", pid, err)
	}
	pidfd := os.NewFile(uintptr(fd), "shim pidfd")
	if again, err := s.pid(ctx, id); err != nil || again != pid {
		pidfd.Close()
		return nil, errors.Join(fmt.Errorf("shim %d did not answer again", pid), err)
	}
	return pidfd, nil
}

// pidfdOpen is pidfd_open(2); tests stand a kernel's in for it.
var pidfdOpen = unix.PidfdOpen

// pid asks the shim, which serves container id's task, for its pid.
func (s *Shim) pid(ctx context.Context, id string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := s.svc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil {
		return 0, fmt.Errorf("connect to shim: %w", err)
	}
	if info.GetShimPid() == 0 {
		return 0, errors.New("shim has no pid")
	}
	return int(info.GetShimPid()), nil
}

// WaitExit blocks until the process of pidfd, a pidfd Pidfd returned,
// exits: its pidfd is then readable. It waits in the runtime's poller,
// holding no thread.
func WaitExit(pidfd *os.File) error {
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
