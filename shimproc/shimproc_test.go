package shimproc

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// fakeShim is a runc shim's task API. State answers from states by task
// ID, and NotFound for the others. Connect answers with pids in turn, the
// last one from then on. Delete deletes every task, writing runc's
// log.json into the task's bundle under bundles as the runc shim's runc
// does. Shutdown is counted, and ends process exit if set, as a shim's
// Shutdown ends the shim; else it leaves the process running.
type fakeShim struct {
	taskapi.TTRPCTaskService
	states    map[string]error
	pids      []uint32
	bundles   string
	exit      *os.Process
	shutdowns int
	// reconnect, if set, fails each Connect after the first.
	reconnect error
	connects  int
}

func (s *fakeShim) State(_ context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	err, ok := s.states[r.ID]
	if !ok {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	return &taskapi.StateResponse{ID: r.ID}, err
}

func (s *fakeShim) Connect(context.Context, *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	if s.connects++; s.connects > 1 && s.reconnect != nil {
		return nil, s.reconnect
	}
	pid := s.pids[0]
	if len(s.pids) > 1 {
		s.pids = s.pids[1:]
	}
	return &taskapi.ConnectResponse{ShimPid: pid}, nil
}

func (s *fakeShim) Delete(_ context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	if err := os.WriteFile(filepath.Join(s.bundles, "k8s.io", r.ID, "log.json"), nil, 0o600); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskapi.DeleteResponse{}, nil
}

func (s *fakeShim) Shutdown(context.Context, *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.shutdowns++
	if s.exit != nil {
		if err := s.exit.Kill(); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
	}
	return &emptypb.Empty{}, nil
}

func TestServing(t *testing.T) {
	ctx := context.Background()
	shim := &Shim{svc: &fakeShim{states: map[string]error{"pause": nil, "app": nil, "neighbour": nil}}}
	ids := []string{"app", "elsewhere", "neighbour"}
	got, err := shim.Serving(ctx, ids)
	if err != nil || !slices.Equal(got, []string{"app", "neighbour"}) {
		t.Errorf("Serving = %v, %v; want the tasks among ids the shim serves", got, err)
	}

	// A shim that exits under the call says so, for the caller to tell
	// from a failure.
	shim.svc.(*fakeShim).states["app"] = ttrpc.ErrClosed
	if _, err := shim.Serving(ctx, ids); !IsExiting(err) {
		t.Errorf("Serving of an exiting shim: %v, want ttrpc's ErrClosed", err)
	}
	shim.svc.(*fakeShim).states["app"] = errgrpc.ToGRPC(errdefs.ErrUnavailable)
	if _, err := shim.Serving(ctx, ids); !errdefs.IsUnavailable(err) || IsExiting(err) {
		t.Errorf("Serving of a failing shim: %v, want Unavailable", err)
	}
}

// TestDeleteTaskRemovesStandInBundle checks that the bundle DeleteTask
// stands in for a lost task's is gone once the task is, though runc logged
// into it, and that a bundle it did not make is left alone.
func TestDeleteTaskRemovesStandInBundle(t *testing.T) {
	bundles := t.TempDir()
	if err := os.Mkdir(filepath.Join(bundles, "k8s.io"), 0o700); err != nil {
		t.Fatal(err)
	}
	shim := &Shim{svc: &fakeShim{bundles: bundles}, sockets: Sockets{Bundles: bundles, Namespace: "k8s.io"}}
	if err := shim.DeleteTask(context.Background(), "lost"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bundles, "k8s.io", "lost")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stand-in bundle after the delete: %v, want it gone", err)
	}

	own := filepath.Join(bundles, "k8s.io", "known")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := shim.DeleteTask(context.Background(), "known"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(own, "log.json")); err != nil {
		t.Errorf("a bundle DeleteTask did not make: %v, want it left as it was", err)
	}
}

// TestDial checks where a shim is looked for, per group and namespace,
// and that a shim that does not listen, or sockets berth does not know,
// dial to nil.
func TestDial(t *testing.T) {
	ctx := context.Background()
	sockets := Sockets{ContainerdAddress: "/run/berth-test/containerd.sock", Dir: t.TempDir(), Namespace: "k8s.io"}
	addr, err := sockets.TaskAddress(ctx, "group")
	if err != nil || !strings.HasPrefix(addr, "ttrpc+unix://"+sockets.Dir+"/") {
		t.Fatalf("TaskAddress = %q, %v; want a socket under %s", addr, err, sockets.Dir)
	}
	elsewhere := sockets
	elsewhere.Namespace = "other"
	inNamespace, err1 := elsewhere.TaskAddress(ctx, "group")
	ofGroup, err2 := sockets.TaskAddress(ctx, "other")
	if inNamespace == addr || ofGroup == addr || err1 != nil || err2 != nil {
		t.Errorf("TaskAddress in another namespace %q (%v), of another group %q (%v); want other sockets than %q", inNamespace, err1, ofGroup, err2, addr)
	}
	if a, err := (Sockets{}).TaskAddress(ctx, "group"); a != "" || err != nil {
		t.Errorf("TaskAddress with unknown sockets = %q, %v; want none", a, err)
	}

	for _, s := range []Sockets{{}, sockets} {
		if shim, err := s.Dial(ctx, "group"); shim != nil || err != nil {
			t.Errorf("Dial of no shim with %+v = %v, %v; want none", s, shim, err)
		}
	}
	l, err := net.Listen("unix", strings.TrimPrefix(addr, "ttrpc+unix://"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	shim, err := sockets.Dial(ctx, "group")
	if err != nil || shim == nil {
		t.Fatalf("Dial of a listening shim = %v, %v", shim, err)
	}
	if err := shim.Close(); err != nil {
		t.Error(err)
	}
}

// TestAwaitAnswer checks that AwaitAnswer waits for a shim's socket, then
// for the shim to serve it, as the runc shim's start command binds the
// socket before its shim serves, and returns once the shim answers.
func TestAwaitAnswer(t *testing.T) {
	ctx := context.Background()
	if err := (Sockets{}).AwaitAnswer(ctx, "group"); !errdefs.IsNotImplemented(err) {
		t.Errorf("AwaitAnswer with unknown sockets: %v, want NotImplemented", err)
	}
	sockets := Sockets{ContainerdAddress: "/run/berth-test/containerd.sock", Dir: t.TempDir(), Namespace: "k8s.io"}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if err := sockets.AwaitAnswer(short, "group"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("AwaitAnswer with no shim: %v, want the deadline", err)
	}

	answered := make(chan error, 1)
	go func() { answered <- sockets.AwaitAnswer(ctx, "group") }()
	addr, err := sockets.TaskAddress(ctx, "group")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	l, err := net.Listen("unix", strings.TrimPrefix(addr, "ttrpc+unix://"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	time.Sleep(30 * time.Millisecond)
	select {
	case err := <-answered:
		t.Fatalf("AwaitAnswer returned %v before the shim served its socket", err)
	default:
	}
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	taskapi.RegisterTTRPCTaskService(server, &fakeShim{})
	go func() { _ = server.Serve(ctx, l) }()
	select {
	case err := <-answered:
		if err != nil {
			t.Errorf("AwaitAnswer of a serving shim: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AwaitAnswer did not return once the shim served")
	}
}

// TestRemoveHalfDeletedBundles: the hidden bundles a containerd killed
// mid-deletion left go, with what they hold; bundles in use, and a hidden
// one with a rootfs, stay.
func TestRemoveHalfDeletedBundles(t *testing.T) {
	s := Sockets{Bundles: t.TempDir(), Namespace: "k8s.io"}
	dir := filepath.Join(s.Bundles, s.Namespace)
	for _, p := range []string{".gone/work", "live/rootfs", ".mounted/rootfs"} {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".gone", "config.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.RemoveHalfDeletedBundles(context.Background())
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{".mounted", "live"}; !slices.Equal(left, want) {
		t.Errorf("bundles left %v, want %v", left, want)
	}
	// No bundle directory at all (no task yet): nothing to do.
	Sockets{Bundles: filepath.Join(t.TempDir(), "none"), Namespace: "k8s.io"}.RemoveHalfDeletedBundles(context.Background())
}

// TestRemoveDeadSockets: the sockets of a group whose shim exited without
// removing them go, its task API's and its debug one; a socket a shim
// still listens on stays.
func TestRemoveDeadSockets(t *testing.T) {
	s := socketDir(t)
	ctx := context.Background()
	leaveDeadSockets(t, s, "dead")
	live := listenShim(t, s, "live", false)
	defer live.Close()
	for _, group := range []string{"dead", "live", "never"} {
		if err := s.RemoveDeadSockets(ctx, group); err != nil {
			t.Errorf("RemoveDeadSockets(%s): %v", group, err)
		}
	}
	if names := socketNames(t, s); len(names) != 1 || names[0] != filepath.Base(live.Addr().String()) {
		t.Errorf("sockets left %v, want only the live shim's %s", names, live.Addr())
	}
}

// socketDir is Sockets in a directory of the test's own.
func socketDir(t *testing.T) Sockets {
	t.Helper()
	// Not t.TempDir: the test's name would make the sockets' paths too long.
	dir, err := os.MkdirTemp("", "shims")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return Sockets{ContainerdAddress: "/run/berth-test/containerd.sock", Dir: dir, Namespace: "k8s.io"}
}

// listenShim listens on the socket of group's shim, its debug one if debug.
func listenShim(t *testing.T, s Sockets, group string, debug bool) *net.UnixListener {
	t.Helper()
	addr, err := shim.CreateSocketAddress(namespaces.WithNamespace(context.Background(), s.Namespace), s.Dir, s.ContainerdAddress, group, debug)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: strings.TrimPrefix(addr, "unix://"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// leaveDeadSockets leaves the sockets of a shim of group that died: there,
// with nothing listening.
func leaveDeadSockets(t *testing.T, s Sockets, group string) {
	t.Helper()
	for _, debug := range []bool{false, true} {
		l := listenShim(t, s, group, debug)
		l.SetUnlinkOnClose(false)
		l.Close()
	}
}

// socketNames lists the files in s's directory.
func socketNames(t *testing.T, s Sockets) []string {
	t.Helper()
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
