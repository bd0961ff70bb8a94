package controller

import (
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestValidateResources(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  *runtimeapi.LinuxContainerResources
		ok   bool
	}{
		{"empty", &runtimeapi.LinuxContainerResources{}, true},
		{"typical", &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 256 << 20}, true},
		{"unlimited quota", &runtimeapi.LinuxContainerResources{CpuQuota: -1}, true},
		{"negative period", &runtimeapi.LinuxContainerResources{CpuPeriod: -1}, false},
		{"period below minimum", &runtimeapi.LinuxContainerResources{CpuPeriod: 999}, false},
		{"period above maximum", &runtimeapi.LinuxContainerResources{CpuPeriod: 1000001}, false},
		{"quota below -1", &runtimeapi.LinuxContainerResources{CpuQuota: -2}, false},
		{"quota below minimum", &runtimeapi.LinuxContainerResources{CpuQuota: 999}, false},
		{"shares 1", &runtimeapi.LinuxContainerResources{CpuShares: 1}, false},
		{"negative shares", &runtimeapi.LinuxContainerResources{CpuShares: -5}, false},
		{"negative memory", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -1}, false},
		{"memory below a page", &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 100}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateResources(tc.res)
			if tc.ok && err != nil {
				t.Errorf("validateResources = %v, want nil", err)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Errorf("validateResources = %v, want InvalidArgument", err)
			}
		})
	}
}

func TestSpecResources(t *testing.T) {
	r := specResources(&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 1 << 30})
	if *r.CPU.Period != 100000 || *r.CPU.Quota != 50000 || *r.CPU.Shares != 512 || *r.Memory.Limit != 1<<30 {
		t.Errorf("specResources = %+v", r)
	}
	if r := specResources(&runtimeapi.LinuxContainerResources{}); r.CPU.Shares != nil || r.CPU.Quota != nil || r.Memory != nil {
		t.Errorf("zero values were set: %+v", r)
	}
}
