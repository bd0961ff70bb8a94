package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/podcgroup"
	"github.com/berth-dev/berth/store"
)

// criUpdatedResourcesExtension is the sandbox record extension where CRI
// keeps a pod's resources after UpdatePodSandboxResources.
const criUpdatedResourcesExtension = "updated-resources"

// criUpdatedResources mirrors CRI's (internal) extension, which typeurl
// encodes as JSON.
type criUpdatedResources struct {
	Overhead  *runtimeapi.LinuxContainerResources
	Resources *runtimeapi.LinuxContainerResources
}

// Update applies the pod-level resources CRI stored with
// UpdatePodSandboxResources (in-place pod resize) to the pod's cgroup, the
// cgroup_parent kubelet gave the pod, and records them so that verbose
// status and a containerd restart keep them. Fields other than the
// extensions are ignored.
func (c *Controller) Update(ctx context.Context, id string, info sandbox.Sandbox, fields ...string) error {
	if len(fields) > 0 && !slices.Contains(fields, "extensions") {
		return nil
	}
	ext, ok := info.Extensions[criUpdatedResourcesExtension]
	if !ok || ext == nil {
		return nil
	}
	var upd criUpdatedResources
	if err := json.Unmarshal(ext.GetValue(), &upd); err != nil {
		return fmt.Errorf("decode %s extension: %w: %w", criUpdatedResourcesExtension, errdefs.ErrInvalidArgument, err)
	}
	res := upd.Resources
	if res == nil {
		return nil
	}
	if err := validateResources(res); err != nil {
		return err
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox_id", id))
	unlock, err := c.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	sb, err := c.store.Get(id)
	if err != nil {
		return err
	}
	status := sb.Status()
	if status.State != store.StateReady {
		return fmt.Errorf("update sandbox %q: it is %s: %w", id, status.State, errdefs.ErrFailedPrecondition)
	}
	if parent := sb.Config.GetLinux().GetCgroupParent(); parent != "" {
		if err := podcgroup.Update(podcgroup.Path(parent), specResources(res)); err != nil {
			return fmt.Errorf("update sandbox %q: %w", id, err)
		}
	} else {
		log.G(ctx).Info("pod has no cgroup parent; resources recorded, not applied")
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	// On the container, so that recovery after a restart reads them back.
	if _, err := status.Instance.Container.SetLabels(ctx, map[string]string{LabelResources: string(b)}); err != nil {
		return fmt.Errorf("update sandbox %q: record resources: %w", id, err)
	}
	return sb.Update(func(s store.Status) (store.Status, error) {
		s.Resources = res
		return s, nil
	})
}

// validateResources rejects values no cgroup accepts.
func validateResources(r *runtimeapi.LinuxContainerResources) error {
	bad := func(field string, v int64, why string) error {
		return fmt.Errorf("pod resources: %s %d %s: %w", field, v, why, errdefs.ErrInvalidArgument)
	}
	switch {
	case r.GetCpuPeriod() < 0 || (r.GetCpuPeriod() > 0 && (r.GetCpuPeriod() < 1000 || r.GetCpuPeriod() > 1000000)):
		return bad("cpu_period", r.GetCpuPeriod(), "is outside 1000..1000000 (µs)")
	case r.GetCpuQuota() < -1 || (r.GetCpuQuota() > 0 && r.GetCpuQuota() < 1000):
		return bad("cpu_quota", r.GetCpuQuota(), "is below 1000 (µs); -1 means unlimited")
	case r.GetCpuShares() < 0 || (r.GetCpuShares() > 0 && (r.GetCpuShares() < 2 || r.GetCpuShares() > 262144)):
		return bad("cpu_shares", r.GetCpuShares(), "is outside 2..262144")
	case r.GetMemoryLimitInBytes() < 0 || (r.GetMemoryLimitInBytes() > 0 && r.GetMemoryLimitInBytes() < 4096):
		return bad("memory_limit_in_bytes", r.GetMemoryLimitInBytes(), "is below one page")
	}
	return nil
}

// specResources converts CRI's resources to the OCI form cgroup managers
// take; zero values are left unset.
func specResources(r *runtimeapi.LinuxContainerResources) *runtimespec.LinuxResources {
	out := &runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{}}
	if v := r.GetCpuShares(); v > 0 {
		s := uint64(v)
		out.CPU.Shares = &s
	}
	if v := r.GetCpuQuota(); v != 0 {
		out.CPU.Quota = &v
	}
	if v := r.GetCpuPeriod(); v > 0 {
		p := uint64(v)
		out.CPU.Period = &p
	}
	out.CPU.Cpus, out.CPU.Mems = r.GetCpusetCpus(), r.GetCpusetMems()
	if v := r.GetMemoryLimitInBytes(); v > 0 {
		out.Memory = &runtimespec.LinuxMemory{Limit: &v}
	}
	out.Unified = r.GetUnified()
	return out
}

// Metrics returns the pod cgroup's stats (CPU, memory, pids, IO) in the
// encoding of containerd's task metrics: the cgroup_parent kubelet gave
// the pod, or the pause container's own cgroup for a pod without one.
func (c *Controller) Metrics(_ context.Context, id string) (*types.Metric, error) {
	sb, err := c.store.Get(id)
	if err != nil {
		return nil, err
	}
	s := sb.Status()
	if s.State != store.StateReady {
		return nil, fmt.Errorf("sandbox %q is %s: %w", id, s.State, errdefs.ErrFailedPrecondition)
	}
	path := podcgroup.Path(sb.Config.GetLinux().GetCgroupParent())
	if sb.Config.GetLinux().GetCgroupParent() == "" {
		path = s.Instance.CgroupsPath
	}
	stats, err := podcgroup.Stats(path)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q metrics: %w", id, err)
	}
	data, err := typeurl.MarshalAnyToProto(stats)
	if err != nil {
		return nil, fmt.Errorf("sandbox %q metrics: %w", id, err)
	}
	return &types.Metric{Timestamp: protobuf.ToTimestamp(time.Now()), ID: id, Data: data}, nil
}
