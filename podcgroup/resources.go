package podcgroup

import (
	"fmt"
	"math"

	"github.com/containerd/errdefs"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Resources is what the pod's cgroup must hold for resources and
// overhead as kubelet passes them: kubelet subtracts the RuntimeClass
// overhead from the pod cgroup's values to make resources (memory and CPU
// quota exactly, CPU shares through milli-CPUs), so berth adds it back.
// A zero field is left as the cgroup has it. The sum is validated.
func Resources(res, overhead *runtimeapi.LinuxContainerResources) (*runtimespec.LinuxResources, error) {
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
	switch {
	case memory > 0:
		memory += overhead.GetMemoryLimitInBytes()
	case memory < 0:
		// No limit: kubelet reads a cgroup v2 memory.max of "max" as -1
		// (the largest uint64 as an int64), subtracts the overhead from
		// it, and sends it back with every CPU resize. The cgroup holds
		// no limit already; refused, every such resize would be.
		memory = 0
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
	return ValidateUnified(unified)
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
