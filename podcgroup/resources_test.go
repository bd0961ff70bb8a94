package podcgroup

import (
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestValidateResources(t *testing.T) {
	for _, tc := range []struct {
		name                          string
		period, quota, shares, memory int64
		ok                            bool
	}{
		{"empty", 0, 0, 0, 0, true},
		{"typical", 100000, 50000, 512, 256 << 20, true},
		{"unlimited quota", 0, -1, 0, 0, true},
		{"negative period", -1, 0, 0, 0, false},
		{"period below minimum", 999, 0, 0, 0, false},
		{"period above maximum", 1000001, 0, 0, 0, false},
		{"quota below -1", 0, -2, 0, 0, false},
		{"quota below minimum", 0, 999, 0, 0, false},
		{"shares 1", 0, 0, 1, 0, false},
		{"negative shares", 0, 0, -5, 0, false},
		{"negative memory", 0, 0, 0, -1, false},
		{"memory below a page", 0, 0, 0, 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateResources(tc.period, tc.quota, tc.shares, tc.memory, nil)
			if tc.ok && err != nil {
				t.Errorf("validateResources = %v, want nil", err)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Errorf("validateResources = %v, want InvalidArgument", err)
			}
		})
	}
}

// TestPodCgroupResources checks that berth writes what kubelet writes to
// the pod cgroup: kubelet passes resources without the RuntimeClass
// overhead, and the overhead apart (values below from kubelet v1.37's
// conversions for a pod with a 100m/32Mi overhead).
func TestPodCgroupResources(t *testing.T) {
	const mi = 1 << 20
	// The overhead kubelet sends for 100m CPU and 32Mi.
	overhead := &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 102, MemoryLimitInBytes: 32 * mi}
	for _, tc := range []struct {
		name                  string
		res, overhead         *runtimeapi.LinuxContainerResources
		quota, shares, memory int64
	}{
		{"no overhead", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 30000, CpuShares: 307, MemoryLimitInBytes: 96 * mi}, nil,
			30000, 307, 96 * mi},
		// 300m/96Mi resized with the overhead: the pod cgroup holds
		// 400m/128Mi, as kubelet sets it.
		{"overhead", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 30000, CpuShares: 307, MemoryLimitInBytes: 96 * mi}, overhead,
			40000, 409, 128 * mi},
		// 433m of requests: kubelet's pod cgroup has 443 shares; it passes
		// shares of 333m (340) and of 100m (102), which add up to 442.
		{"shares through milli-CPUs", &runtimeapi.LinuxContainerResources{CpuShares: 340}, overhead, 0, 443, 0},
		// No CPU limit: kubelet subtracts the overhead's quota from -1.
		{"unlimited quota", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: -1 - 10000}, overhead, -1, 0, 0},
		{"unlimited quota without overhead", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: -1}, nil, -1, 0, 0},
		// No CPU request (the minimum shares) and no memory limit: the
		// overhead's shares, and no memory limit with the overhead either.
		{"no request, unlimited memory", &runtimeapi.LinuxContainerResources{CpuShares: 2}, overhead, 0, 102, 0},
		// No memory limit on cgroup v2, as kubelet reads memory.max
		// ("max" is -1) and subtracts the overhead.
		{"memory max on cgroup v2", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, MemoryLimitInBytes: -1}, nil, 50000, 0, 0},
		{"memory max on cgroup v2, less the overhead", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 40000, MemoryLimitInBytes: -1 - 32<<20}, overhead, 50000, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Resources(tc.res, tc.overhead)
			if err != nil {
				t.Fatal(err)
			}
			var quota, shares, memory int64
			if r.CPU.Quota != nil {
				quota = *r.CPU.Quota
			}
			if r.CPU.Shares != nil {
				shares = int64(*r.CPU.Shares)
			}
			if r.Memory != nil {
				memory = *r.Memory.Limit
			}
			if quota != tc.quota || shares != tc.shares || memory != tc.memory {
				t.Errorf("quota %d, shares %d, memory %d; want %d, %d, %d", quota, shares, memory, tc.quota, tc.shares, tc.memory)
			}
		})
	}
	// The sum is what is validated.
	if _, err := Resources(&runtimeapi.LinuxContainerResources{CpuQuota: 500}, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("quota below 1ms: %v, want InvalidArgument", err)
	}
	if _, err := Resources(&runtimeapi.LinuxContainerResources{CpuQuota: 500}, &runtimeapi.LinuxContainerResources{CpuQuota: 1000}); err != nil {
		t.Errorf("quota of 1.5ms with the overhead: %v", err)
	}
}
