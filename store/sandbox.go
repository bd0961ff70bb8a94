// Package store holds berth's in-memory view of the sandboxes it owns: what
// CRI asked for, the live containerd handles of the pause container and task,
// and the sandbox's state. Status, Wait and Platform are answered from here
// without a round trip to containerd or the shim.
package store

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/sandbox"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// State is the lifecycle state of a sandbox.
//
//	          Create            Start            exit handled
//	(none) ----------> Created --------> Ready --------------> NotReady
//	                      |                                       |
//	                      | Start failed: entry removed           | Shutdown: entry removed
//	                      v                                       v
//	                   (none)                                  (none)
//
// A sandbox leaves Ready only through Exit, which runs once per sandbox and
// can come before Start ends (a shared shim that dies under a task it just
// started): Start then leaves the sandbox NotReady. Its exited pause task
// is deleted after that, possibly after retries; Deleted says when, and only
// then may the sandbox's resources go.
type State int

const (
	// StateCreated: Create recorded the sandbox; nothing exists in containerd.
	StateCreated State = iota
	// StateReady: the pause task is running.
	StateReady
	// StateNotReady: the pause task exited and its exit was handled.
	StateNotReady
)

// CRI returns the state as CRI's PodSandboxState name, the only strings CRI
// maps to a sandbox state.
func (s State) CRI() string {
	if s == StateReady {
		return runtimeapi.PodSandboxState_SANDBOX_READY.String()
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY.String()
}

func (s State) String() string {
	switch s {
	case StateCreated:
		return "created"
	case StateReady:
		return "ready"
	case StateNotReady:
		return "notready"
	}
	return "invalid"
}

// Metadata is what Create records. It never changes afterwards, so it is read
// without a lock.
type Metadata struct {
	ID string
	// RuntimeHandler is the CRI runtime handler the pod asked for ("" means
	// CRI's default runtime).
	RuntimeHandler string
	// NetNSPath is the pod's network namespace, "" for host-network pods.
	NetNSPath string
	Config    *runtimeapi.PodSandboxConfig
	// Runtime is the sandbox record's runtime; Options is nil when the
	// handler has none.
	Runtime sandbox.RuntimeOpts
	// CRIMetadata is CRI's metadata of the sandbox, the JSON of its
	// versioned form, and CNIResult the CNI result in it, for verbose
	// status; nil without CRI.
	CRIMetadata, CNIResult json.RawMessage
}

// Instance describes the pause container Start made. It is set once, when
// Start succeeds (or when recovery finds the container), and read-only after.
type Instance struct {
	Container containerd.Container
	Task      containerd.Task
	// Spec is the pause container's OCI spec as containerd stores it
	// (JSON), kept for verbose status without decoding it: a decoded spec
	// with a seccomp profile holds about 100 KiB per pod.
	Spec json.RawMessage
	// CgroupsPath is the spec's linux.cgroupsPath.
	CgroupsPath string
	Image       string
	// Snapshotter and SnapshotKey are the pause rootfs snapshot's, as the
	// container records them: "" for the built-in pause, which has none.
	Snapshotter string
	SnapshotKey string
	RuntimeType string
	// ProcessLabel is the SELinux process label, "" without SELinux.
	ProcessLabel string
	// ShimGroup is the shim group of the pause task ("" for a shim of its
	// own), the io.containerd.runc.v2.group annotation of its spec.
	ShimGroup string
	// ShimRuntime identifies what the shim runs (placement.Scope.Runtime);
	// "" for a pod of a berth from before it was recorded.
	ShimRuntime string
}

// Status is the mutable part of a sandbox. It is handled as a value: Get
// returns a copy and Update replaces it whole.
type Status struct {
	State      State
	Pid        uint32
	CreatedAt  time.Time
	ExitStatus uint32
	ExitedAt   time.Time
	// Instance is nil until Start succeeds.
	Instance *Instance
	// Resources and Overhead are the pod-level resources Update last
	// applied, as kubelet passed them: the pod's cgroup holds their sum.
	// Both are nil if Update never ran.
	Resources *runtimeapi.LinuxContainerResources
	Overhead  *runtimeapi.LinuxContainerResources
}

// Sandbox is one sandbox berth owns.
type Sandbox struct {
	Metadata

	mu     sync.Mutex // guards status
	status Status

	// exited is closed once, by Exit, after the status says NotReady.
	exited   chan struct{}
	exitOnce sync.Once
	// deleted is closed once, by SetDeleted, when no pause task is left.
	deleted    chan struct{}
	deleteOnce sync.Once
}

// NewSandbox returns a sandbox in StateCreated.
func NewSandbox(md Metadata) *Sandbox {
	return &Sandbox{
		Metadata: md,
		status:   Status{State: StateCreated},
		exited:   make(chan struct{}),
		deleted:  make(chan struct{}),
	}
}

// Status returns a copy of the sandbox's status.
func (s *Sandbox) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Update replaces the status with what fn returns. If fn fails, the status is
// left as it was.
func (s *Sandbox) Update(fn func(Status) (Status, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next, err := fn(s.status)
	if err != nil {
		return err
	}
	s.status = next
	return nil
}

// Exit records the pause task's exit and wakes every waiter. Only the first
// call has an effect.
func (s *Sandbox) Exit(code uint32, at time.Time) {
	s.exitOnce.Do(func() {
		s.mu.Lock()
		s.status.State = StateNotReady
		s.status.Pid = 0
		s.status.ExitStatus = code
		s.status.ExitedAt = at
		s.mu.Unlock()
		// The status is updated before the channel closes, so a woken waiter
		// always reads the exit.
		close(s.exited)
	})
}

// Exited is closed once the sandbox's exit has been recorded.
func (s *Sandbox) Exited() <-chan struct{} {
	return s.exited
}

// SetDeleted records that the sandbox has no pause task any more: it was
// deleted after its exit, or never made. Only the first call has an effect.
func (s *Sandbox) SetDeleted() {
	s.deleteOnce.Do(func() { close(s.deleted) })
}

// Deleted is closed once the sandbox has no pause task any more.
func (s *Sandbox) Deleted() <-chan struct{} {
	return s.deleted
}

// Wait blocks until the sandbox exits or ctx is done, and returns the status
// holding the exit.
func (s *Sandbox) Wait(ctx context.Context) (Status, error) {
	select {
	case <-s.exited:
		return s.Status(), nil
	case <-ctx.Done():
		return Status{}, ctx.Err()
	}
}
