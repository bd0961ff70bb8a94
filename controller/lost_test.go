package controller

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
