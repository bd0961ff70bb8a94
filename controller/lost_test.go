package controller

import (
	"context"
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
