package controller

import (
	"context"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/core/snapshots"
)

// Client is what the controller asks of containerd's client:
// *containerd.Client in containerd, fakes in the unit tests. Containers and
// tasks are containerd's own interfaces.
type Client interface {
	NewContainer(ctx context.Context, id string, opts ...containerd.NewContainerOpts) (containerd.Container, error)
	// Containers lists the namespace's containers, with their records.
	Containers(ctx context.Context, filters ...string) ([]containerd.Container, error)
	GetImage(ctx context.Context, ref string) (containerd.Image, error)
	WithLease(ctx context.Context, opts ...leases.Opt) (context.Context, func(context.Context) error, error)
	SnapshotService(snapshotter string) snapshots.Snapshotter
	// ContainerService deletes the records of pause containers whose task
	// berth deleted.
	ContainerService() containers.Store
	// SandboxStore holds CRI's record of every sandbox.
	SandboxStore() sandbox.Store
	LeasesService() leases.Manager
	// TaskService deletes tasks whose shim is gone or never started.
	TaskService() tasks.TasksClient
}

var _ Client = (*containerd.Client)(nil)
