package shimtask

import (
	"fmt"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
)

// CgroupProcs is the Procs of the host's cgroups, found as the runc shim
// finds a container's (runc.loadProcessCgroup): from the pid's own
// /proc/<pid>/cgroup, whatever the cgroup driver. On cgroup v1 it reads
// the devices hierarchy, as runc's GetAllPids does.
func CgroupProcs(pid int) ([]uint32, error) {
	if cgroups.Mode() == cgroups.Unified {
		group, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %w", pid, err)
		}
		cg, err := cgroup2.Load(group)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", group, err)
		}
		procs, err := cg.Procs(true)
		if err != nil {
			return nil, fmt.Errorf("processes of cgroup %s: %w", group, err)
		}
		pids := make([]uint32, len(procs))
		for i, p := range procs {
			pids[i] = uint32(p)
		}
		return pids, nil
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid))
	if err != nil {
		return nil, fmt.Errorf("load cgroup of pid %d: %w", pid, err)
	}
	procs, err := cg.Processes(cgroup1.Devices, true)
	if err != nil {
		return nil, fmt.Errorf("processes of the cgroup of pid %d: %w", pid, err)
	}
	pids := make([]uint32, len(procs))
	for i, p := range procs {
		pids[i] = uint32(p.Pid)
	}
	return pids, nil
}
