package shimproc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// startProcess starts a process standing for a shim, reaped by the test:
// the returned channel is closed once it is.
func startProcess(t *testing.T) (*os.Process, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = cmd.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-reaped })
	return cmd.Process, reaped
}

// TestPidfd checks that a shim's pidfd is taken only while the shim
// answers with the same pid, and that WaitExit returns when, and only
// when, its process exits.
func TestPidfd(t *testing.T) {
	ctx := context.Background()
	proc, reaped := startProcess(t)
	pid := uint32(proc.Pid)
	for _, pids := range [][]uint32{{0}, {pid, 1}} {
		if pidfd, err := (&Shim{svc: &fakeShim{pids: pids}}).pidfd(ctx, "id"); pidfd != nil || err == nil {
			t.Errorf("pidfd of a shim answering %v: %v, %v; want an error", pids, pidfd, err)
		}
	}

	// As Linux 5.3 to 5.9 open pidfds: no flags taken. The pidfd must
	// still be waited for in the runtime's poller.
	open := pidfdOpen
	pidfdOpen = func(pid, flags int) (int, error) {
		if flags != 0 {
			return -1, unix.EINVAL
		}
		return open(pid, flags)
	}
	t.Cleanup(func() { pidfdOpen = open })
	pidfd, err := (&Shim{svc: &fakeShim{pids: []uint32{pid}}}).pidfd(ctx, "id")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := pidfd.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	if err := rc.Control(func(fd uintptr) { flags, err = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil || flags&unix.O_NONBLOCK == 0 {
		t.Errorf("pidfd flags %#x, %v: want O_NONBLOCK", flags, err)
	}
	defer pidfd.Close()
	waited := make(chan error, 1)
	go func() { waited <- WaitExit(pidfd) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitExit returned while the process runs: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := proc.Kill(); err != nil {
		t.Fatal(err)
	}
	<-reaped
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("WaitExit: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitExit did not return after the exit")
	}
}

// TestShutdownKillsShimThatStays checks that a shim that does not exit
// once shut down is killed, unless it answers with another pid by then
// (the pid may be another process's) or serves a task by then.
func TestShutdownKillsShimThatStays(t *testing.T) {
	ctx := context.Background()
	proc, reaped := startProcess(t)
	pid := uint32(proc.Pid)
	idle := func(context.Context) (bool, error) { return false, nil }

	// A task joined the shim after it was asked to exit: it stays.
	shim := &fakeShim{pids: []uint32{pid}}
	if err := (&Shim{svc: shim}).Shutdown(ctx, "id", func(context.Context) (bool, error) { return true, nil }); err != nil {
		t.Fatal(err)
	}
	// A kill is sent before Shutdown returns; the reaping follows at once.
	select {
	case <-reaped:
		t.Fatal("a shim serving a task that joined it killed")
	case <-time.After(200 * time.Millisecond):
	}

	shim = &fakeShim{pids: []uint32{pid, 1}}
	if err := (&Shim{svc: shim}).Shutdown(ctx, "id", idle); err != nil || shim.shutdowns != 1 {
		t.Fatalf("Shutdown = %v after %d shutdowns, want one", err, shim.shutdowns)
	}
	select {
	case <-reaped:
		t.Fatal("a process that may not be the shim's killed")
	default:
	}

	shim = &fakeShim{pids: []uint32{pid}}
	if err := (&Shim{svc: shim}).Shutdown(ctx, "id", idle); err != nil || shim.shutdowns != 1 {
		t.Fatalf("Shutdown = %v after %d shutdowns, want one", err, shim.shutdowns)
	}
	select {
	case <-reaped:
	case <-time.After(5 * time.Second):
		t.Fatal("shim that stays not killed")
	}
}

// TestShutdownShimStaysUnanswering: a shim that stays and does not answer
// again is not killed, since its pid may be another process's by then; the
// shutdown fails, for the caller to retry, unless the shim's connection
// closed (it is exiting).
func TestShutdownShimStaysUnanswering(t *testing.T) {
	ctx := context.Background()
	proc, reaped := startProcess(t)
	idle := func(context.Context) (bool, error) { return false, nil }
	for _, tc := range []struct {
		reconnect error
		wantErr   bool
	}{
		{context.DeadlineExceeded, true},
		{errors.New("connection refused"), true},
		{ttrpc.ErrClosed, false},
	} {
		shim := &fakeShim{pids: []uint32{uint32(proc.Pid)}, reconnect: tc.reconnect}
		err := (&Shim{svc: shim}).Shutdown(ctx, "id", idle)
		if (err != nil) != tc.wantErr || tc.wantErr && !errors.Is(err, tc.reconnect) {
			t.Errorf("Shutdown of a shim answering %v = %v, want an error: %v", tc.reconnect, err, tc.wantErr)
		}
		select {
		case <-reaped:
			t.Fatal("a shim that did not answer killed")
		default:
		}
	}
}

// TestShutdownRemovesExitedShimSockets: a group's shim that exits when shut
// down, or had exited already, leaves its sockets, which Shutdown removes.
func TestShutdownRemovesExitedShimSockets(t *testing.T) {
	idle := func(context.Context) (bool, error) { return false, nil }
	for _, gone := range []bool{false, true} {
		s := socketDir(t)
		leaveDeadSockets(t, s, "g")
		proc, reaped := startProcess(t)
		shim := &fakeShim{pids: []uint32{uint32(proc.Pid)}, exit: proc}
		if gone {
			shim.exit = nil
			if err := proc.Kill(); err != nil {
				t.Fatal(err)
			}
			<-reaped
		}
		if err := (&Shim{svc: shim, sockets: s, group: "g"}).Shutdown(context.Background(), "id", idle); err != nil {
			t.Fatalf("Shutdown (exited before: %v): %v", gone, err)
		}
		if names := socketNames(t, s); len(names) != 0 {
			t.Errorf("sockets left after the shim exited (before Shutdown: %v): %v", gone, names)
		}
	}
}

// TestShutdownSocketsStay: a shim that exited is shut down though a socket
// path of its cannot be removed (here a directory with a file in it):
// Shutdown's callers would retry it, or take its pod for one that cannot
// be reattached.
func TestShutdownSocketsStay(t *testing.T) {
	s := socketDir(t)
	addr, err := s.address(namespaces.WithNamespace(context.Background(), s.Namespace), "g", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(strings.TrimPrefix(addr, "unix://"), "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	proc, _ := startProcess(t)
	shim := &fakeShim{pids: []uint32{uint32(proc.Pid)}, exit: proc}
	idle := func(context.Context) (bool, error) { return false, nil }
	if err := (&Shim{svc: shim, sockets: s, group: "g"}).Shutdown(context.Background(), "id", idle); err != nil {
		t.Errorf("Shutdown of a shim that exited: %v", err)
	}
}
