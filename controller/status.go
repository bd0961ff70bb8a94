package controller

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/netns"
	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/store"
)

// Wait blocks until the sandbox's exit has been handled and returns it. CRI
// treats any error as an exit, so Wait fails only for an unknown sandbox or
// when ctx ends.
func (c *Controller) Wait(ctx context.Context, id string) (sandbox.ExitStatus, error) {
	sb, err := c.sandbox(ctx, id)
	if err != nil {
		return sandbox.ExitStatus{}, err
	}
	s, err := sb.Wait(ctx)
	if err != nil {
		return sandbox.ExitStatus{}, err
	}
	return sandbox.ExitStatus{ExitStatus: s.ExitStatus, ExitedAt: s.ExitedAt}, nil
}

// Status answers from memory, without a call to containerd or the shim.
func (c *Controller) Status(ctx context.Context, id string, verbose bool) (sandbox.ControllerStatus, error) {
	sb, err := c.sandbox(ctx, id)
	if err != nil {
		return sandbox.ControllerStatus{}, err
	}
	s := sb.Status()
	cs := sandbox.ControllerStatus{
		SandboxID: id,
		Pid:       s.Pid,
		State:     s.State.CRI(),
		CreatedAt: s.CreatedAt,
		ExitedAt:  s.ExitedAt,
	}
	if verbose {
		info, err := verboseInfo(sb, s)
		if err != nil {
			return sandbox.ControllerStatus{}, fmt.Errorf("verbose status: %w", err)
		}
		cs.Info = map[string]string{"info": info}
	}
	return cs, nil
}

// sandboxInfo is the verbose status CRI merges pod resources into. Its JSON
// keys are those of containerd's podsandbox SandboxInfo, which CRI decodes
// and encodes again: runtimeHandler, which SandboxInfo lacks, reaches only
// the callers of containerd's sandbox controller API (CRI's own status has
// the handler).
type sandboxInfo struct {
	Pid            uint32                       `json:"pid"`
	Status         string                       `json:"processStatus"`
	NetNSClosed    bool                         `json:"netNamespaceClosed"`
	Image          string                       `json:"image"`
	SnapshotKey    string                       `json:"snapshotKey"`
	Snapshotter    string                       `json:"snapshotter"`
	RuntimeHandler string                       `json:"runtimeHandler"`
	RuntimeType    string                       `json:"runtimeType"`
	RuntimeOptions any                          `json:"runtimeOptions"`
	Config         *runtimeapi.PodSandboxConfig `json:"config"`
	RuntimeSpec    json.RawMessage              `json:"runtimeSpec"`
	CNIResult      json.RawMessage              `json:"cniResult,omitempty"`
	Metadata       json.RawMessage              `json:"sandboxMetadata,omitempty"`
	// Resources and Overhead are the pod-level resources Update applied,
	// as kubelet passed them.
	Resources *runtimeapi.ContainerResources `json:"resources,omitempty"`
	Overhead  *runtimeapi.ContainerResources `json:"overhead,omitempty"`
}

func verboseInfo(sb *store.Sandbox, s store.Status) (string, error) {
	info := sandboxInfo{
		Pid:            s.Pid,
		Status:         processStatus(s.State),
		RuntimeHandler: sb.RuntimeHandler,
		Config:         sb.Config,
		CNIResult:      sb.CNIResult,
		Metadata:       sb.CRIMetadata,
	}
	if s.Resources != nil {
		info.Resources = &runtimeapi.ContainerResources{Linux: s.Resources}
	}
	if s.Overhead != nil {
		info.Overhead = &runtimeapi.ContainerResources{Linux: s.Overhead}
	}
	if sb.NetNSPath != "" {
		closed, err := netns.LoadNetNS(sb.NetNSPath).Closed()
		if err != nil {
			return "", fmt.Errorf("check network namespace: %w", err)
		}
		info.NetNSClosed = closed
	}
	// Options is nil for a handler without an options table.
	if sb.Runtime.Options != nil {
		opts, err := typeurl.UnmarshalAny(sb.Runtime.Options)
		if err != nil {
			return "", fmt.Errorf("decode runtime options: %w", err)
		}
		info.RuntimeOptions = opts
	}
	if inst := s.Instance; inst != nil {
		info.Image = inst.Image
		info.SnapshotKey = inst.SnapshotKey
		info.Snapshotter = inst.Snapshotter
		info.RuntimeType = inst.RuntimeType
		info.RuntimeSpec = inst.Spec
	}
	b, err := json.Marshal(info)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// processStatus names the pause process's state as containerd's task
// statuses do.
func processStatus(s store.State) string {
	switch s {
	case store.StateReady:
		return "running"
	case store.StateNotReady:
		return "stopped"
	}
	return "created"
}
