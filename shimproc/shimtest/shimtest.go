// Package shimtest serves fake runc shims where berth looks for them, for
// the tests of the packages that reach shims through shimproc.
package shimtest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/berth-dev/berth/shimproc"
)

// Sockets are shim sockets in a directory of the test's own, named short:
// a unix socket's path is limited to 108 bytes, which t.TempDir's, named
// after the test, can pass.
func Sockets(t testing.TB, namespace string) shimproc.Sockets {
	t.Helper()
	dir, err := os.MkdirTemp("", "shims")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return shimproc.Sockets{ContainerdAddress: "/run/berth-test/containerd.sock", Dir: dir, Namespace: namespace}
}

// Serve serves svc at the socket of group's shim under sockets, as the
// runc shim listens, until the test ends.
func Serve(t testing.TB, sockets shimproc.Sockets, group string, svc taskapi.TTRPCTaskService) {
	t.Helper()
	addr, err := sockets.TaskAddress(namespaces.WithNamespace(context.Background(), sockets.Namespace), group)
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimPrefix(addr, "ttrpc+unix://")
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

// IdleShim serves no task, and counts the Shutdowns asked of it.
type IdleShim struct {
	taskapi.TTRPCTaskService
	shutdowns atomic.Int32
}

// Shutdowns is how many Shutdowns were asked of the shim.
func (s *IdleShim) Shutdowns() int { return int(s.shutdowns.Load()) }

func (*IdleShim) Delete(context.Context, *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
}

func (*IdleShim) State(context.Context, *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
}

func (*IdleShim) Connect(context.Context, *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	return &taskapi.ConnectResponse{}, nil
}

func (s *IdleShim) Shutdown(context.Context, *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.shutdowns.Add(1)
	return &emptypb.Empty{}, nil
}
