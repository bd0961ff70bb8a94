package controller

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
)

// fakeShim is a runc shim's task API: State answers from states by task
// ID, and NotFound for the others.
type fakeShim struct {
	taskapi.TTRPCTaskService
	states map[string]error
}

func (s *fakeShim) State(_ context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	err, ok := s.states[r.ID]
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	return &taskapi.StateResponse{ID: r.ID}, err
}

func TestOtherTasks(t *testing.T) {
	client := newFakeClient()
	for _, id := range []string{"pause", "app", "neighbour", "elsewhere"} {
		client.addContainer(containers.Container{ID: id})
	}
	r := &reaper{client: client}
	ctx := context.Background()

	shim := &fakeShim{states: map[string]error{"pause": nil, "app": nil, "neighbour": nil}}
	got, err := r.otherTasks(ctx, shim, "pause")
	if err != nil || !slices.Equal(got, []string{"app", "neighbour"}) {
		t.Errorf("otherTasks = %v, %v; want the tasks the shim serves but the pause's", got, err)
	}

	// A shim that exits under the call says so, for the caller to tell
	// from a failure.
	shim.states["app"] = ttrpc.ErrClosed
	if _, err := r.otherTasks(ctx, shim, "pause"); !isShimExiting(err) {
		t.Errorf("otherTasks of an exiting shim: %v, want ttrpc's ErrClosed", err)
	}
	shim.states["app"] = errgrpc.ToGRPC(errdefs.ErrUnavailable)
	if _, err := r.otherTasks(ctx, shim, "pause"); !errdefs.IsUnavailable(err) || isShimExiting(err) {
		t.Errorf("otherTasks of a failing shim: %v, want Unavailable", err)
	}
}

// runcLoggingShim deletes every task, writing runc's log.json into the
// task's bundle as the runc shim's runc does.
type runcLoggingShim struct {
	taskapi.TTRPCTaskService
	bundles string
}

func (s *runcLoggingShim) Delete(_ context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	if err := os.WriteFile(filepath.Join(s.bundles, Namespace, r.ID, "log.json"), nil, 0o600); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskapi.DeleteResponse{}, nil
}

// TestDeleteInShimRemovesStandInBundle checks that the bundle deleteInShim
// stands in for a lost task's is gone once the task is, though runc logged
// into it, and that a bundle it did not make is left alone.
func TestDeleteInShimRemovesStandInBundle(t *testing.T) {
	bundles := t.TempDir()
	if err := os.Mkdir(filepath.Join(bundles, Namespace), 0o700); err != nil {
		t.Fatal(err)
	}
	r := &reaper{sockets: ShimSockets{Bundles: bundles}}
	shim := &runcLoggingShim{bundles: bundles}
	if err := r.deleteInShim(context.Background(), shim, "lost"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bundles, Namespace, "lost")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stand-in bundle after the delete: %v, want it gone", err)
	}

	own := filepath.Join(bundles, Namespace, "known")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := r.deleteInShim(context.Background(), shim, "known"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(own, "log.json")); err != nil {
		t.Errorf("a bundle deleteInShim did not make: %v, want it left as it was", err)
	}
}

// pidShim answers Connect with the pid of a process of the test's.
type pidShim struct {
	taskapi.TTRPCTaskService
	pid uint32
}

func (s *pidShim) Connect(context.Context, *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	return &taskapi.ConnectResponse{ShimPid: s.pid}, nil
}

// serveShim serves svc at the socket of group's shim under sockets, as the
// runc shim listens.
func serveShim(t *testing.T, sockets ShimSockets, group string, svc taskapi.TTRPCTaskService) {
	t.Helper()
	r := &reaper{sockets: sockets}
	addr, err := r.socketAddress(testContext(), group)
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimPrefix(addr, "unix://")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	taskapi.RegisterTTRPCTaskService(server, svc)
	go func() { _ = server.Serve(context.Background(), l) }()
	t.Cleanup(func() { server.Close() })
}

// TestWatchShim checks that the death of a shared shim is seen at once:
// the exits of the tasks made in its group are recorded when its process
// dies, without waiting for containerd.
func TestWatchShim(t *testing.T) {
	sockets := ShimSockets{ContainerdAddress: "/run/berth-test/containerd.sock", Dir: t.TempDir()}
	shim := exec.Command("sleep", "60")
	if err := shim.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = shim.Wait(); close(reaped) }()

	groups := newShimGroups(func(string) int { return 4 })
	died := make(chan []string, 1)
	r := &reaper{sockets: sockets, groups: groups, shimDied: func(ids []string) { died <- ids }}
	id := groups.join(shimScope{handler: "h"})
	groups.join(shimScope{handler: "h"})
	mustMake(t, groups, id, "sb1")(makeDone)
	mustMake(t, groups, id, "sb2")(makeDone)
	serveShim(t, sockets, id, &pidShim{pid: uint32(shim.Process.Pid)})
	// Each task made in the group asks; the shim is watched once.
	r.watchShim(testContext(), id, "sb1")
	r.watchShim(testContext(), id, "sb2")

	select {
	case ids := <-died:
		t.Fatalf("shim death reported while it runs: %v", ids)
	case <-time.After(100 * time.Millisecond):
	}
	killed := time.Now()
	if err := shim.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-reaped
	select {
	case ids := <-died:
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"sb1", "sb2"}) {
			t.Errorf("shim death reported for %v, want sb1 and sb2", ids)
		}
		t.Logf("shim death seen %s after the kill", time.Since(killed))
	case <-time.After(5 * time.Second):
		t.Fatal("shim death not reported")
	}
	select {
	case ids := <-died:
		t.Errorf("shim death reported twice, the second time for %v", ids)
	case <-time.After(100 * time.Millisecond):
	}
}
