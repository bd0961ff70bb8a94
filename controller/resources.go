package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/containerd/containerd/api/types"
	containerd "github.com/containerd/containerd/v2/client"
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
// encodes as JSON: UpdatePodSandboxResourcesRequest's resources and
// overhead.
type criUpdatedResources struct {
	Overhead  *runtimeapi.LinuxContainerResources
	Resources *runtimeapi.LinuxContainerResources
}

// Update applies the pod-level resources CRI stored with
// UpdatePodSandboxResources (in-place pod resize) to the pod's cgroup, the
// cgroup_parent kubelet gave the pod, and records them so that verbose
// status and a containerd restart keep them. kubelet makes that call before
// it writes the pod cgroup itself, and rejects the resize if it fails;
// berth writes the same values kubelet then writes (podCgroupResources),
// so that the cgroup never holds less than the pod was given. Fields other
// than the extensions are ignored.
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
	if upd.Resources == nil {
		return nil
	}
	want, err := podCgroupResources(upd.Resources, upd.Overhead)
	if err != nil {
		return err
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox_id", id))
	sb, unlock, err := c.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	status := sb.Status()
	if status.State != store.StateReady {
		return fmt.Errorf("sandbox is %s: %w", status.State, errdefs.ErrFailedPrecondition)
	}
	if parent := sb.Config.GetLinux().GetCgroupParent(); parent != "" {
		if err := podcgroup.Update(podcgroup.Path(parent), want); err != nil {
			return err
		}
	} else {
		log.G(ctx).Info("pod has no cgroup parent; resources recorded, not applied")
	}
	// On the container, so that recovery after a restart reads them back.
	r := recordOf(sb)
	r.Resources, r.Overhead = upd.Resources, upd.Overhead
	if err := status.Instance.Container.Update(ctx, containerd.UpdateContainerOpts(withRecord(r, sb.Config))); err != nil {
		return fmt.Errorf("record pod resources: %w", err)
	}
	return sb.Update(func(s store.Status) (store.Status, error) {
		s.Resources, s.Overhead = upd.Resources, upd.Overhead
		return s, nil
	})
}

// podCgroupResources is what the pod's cgroup must hold for resources and
// overhead as kubelet passes them: kubelet subtracts the RuntimeClass
// overhead from the pod cgroup's values to make resources (memory and CPU
// quota exactly, CPU shares through milli-CPUs), so berth adds it back.
// A zero field is left as the cgroup has it. The sum is validated.
func podCgroupResources(res, overhead *runtimeapi.LinuxContainerResources) (*runtimespec.LinuxResources, error) {
	quota, shares, memory := res.GetCpuQuota(), res.GetCpuShares(), res.GetMemoryLimitInBytes()
	if quota > 0 || quota < -1 {
		// Below -1: kubelet subtracted the overhead from an unlimited
		// quota (-1).
		if quota += overhead.GetCpuQuota(); quota <= 0 {
			quota = -1
		}
	}
	if shares > 0 && overhead.GetCpuShares() > 0 {
		shares = milliCPUToShares(sharesToMilliCPU(shares) + sharesToMilliCPU(overhead.GetCpuShares()))
	}
	if memory > 0 {
		memory += overhead.GetMemoryLimitInBytes()
	}
	if err := validateResources(res.GetCpuPeriod(), quota, shares, memory, res.GetUnified()); err != nil {
		return nil, err
	}
	out := &runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{
		Cpus: res.GetCpusetCpus(), Mems: res.GetCpusetMems(),
	}}
	if shares > 0 {
		s := uint64(shares)
		out.CPU.Shares = &s
	}
	if quota != 0 {
		out.CPU.Quota = &quota
	}
	if p := res.GetCpuPeriod(); p > 0 {
		period := uint64(p)
		out.CPU.Period = &period
	}
	if memory > 0 {
		out.Memory = &runtimespec.LinuxMemory{Limit: &memory}
	}
	out.Unified = res.GetUnified()
	return out, nil
}

// validateResources rejects values no cgroup accepts.
func validateResources(period, quota, shares, memory int64, unified map[string]string) error {
	bad := func(field string, v int64, why string) error {
		return fmt.Errorf("pod resources: %s %d %s: %w", field, v, why, errdefs.ErrInvalidArgument)
	}
	switch {
	case period < 0 || (period > 0 && (period < 1000 || period > 1000000)):
		return bad("cpu_period", period, "is outside 1000..1000000 (µs)")
	case quota < -1 || (quota > 0 && quota < 1000):
		return bad("cpu_quota", quota, "is below 1000 (µs); -1 means unlimited")
	case shares < 0 || (shares > 0 && (shares < minShares || shares > maxShares)):
		return bad("cpu_shares", shares, "is outside 2..262144")
	case memory < 0 || (memory > 0 && memory < 4096):
		return bad("memory_limit_in_bytes", memory, "is below one page")
	}
	return podcgroup.ValidateUnified(unified)
}

// CPU shares as kubelet converts them (pkg/kubelet/cm).
const (
	minShares     = 2
	maxShares     = 262144
	sharesPerCPU  = 1024
	milliCPUToCPU = 1000
)

func milliCPUToShares(milliCPU int64) int64 {
	return min(max(milliCPU*sharesPerCPU/milliCPUToCPU, minShares), maxShares)
}

// sharesToMilliCPU inverts milliCPUToShares. The minimum of 2 shares is
// what kubelet gives no CPU request (and 1m or 2m): it is taken as none.
func sharesToMilliCPU(shares int64) int64 {
	if shares <= minShares {
		return 0
	}
	return int64(math.Ceil(float64(shares*milliCPUToCPU) / sharesPerCPU))
}

// Metrics returns the pod cgroup's stats (CPU, memory, pids, IO) in the
// encoding of containerd's task metrics: the cgroup_parent kubelet gave
// the pod, or the pause container's own cgroup for a pod without one.
func (c *Controller) Metrics(ctx context.Context, id string) (*types.Metric, error) {
	sb, err := c.sandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	s := sb.Status()
	if s.State != store.StateReady {
		return nil, fmt.Errorf("sandbox is %s: %w", s.State, errdefs.ErrFailedPrecondition)
	}
	path := podcgroup.Path(sb.Config.GetLinux().GetCgroupParent())
	if sb.Config.GetLinux().GetCgroupParent() == "" {
		path = s.Instance.CgroupsPath
	}
	stats, err := podcgroup.Stats(path)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	data, err := typeurl.MarshalAnyToProto(stats)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return &types.Metric{Timestamp: protobuf.ToTimestamp(time.Now()), ID: id, Data: data}, nil
}
