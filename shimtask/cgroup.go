package shimtask

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/moby/sys/mountinfo"
)

// HostCgroups are the host's cgroups as the shim sees them. It finds a
// container's cgroup as the runc shim does when it creates the container
// (runc.loadProcessCgroup): from its init's /proc/<pid>/cgroup, whatever
// the cgroup driver. On cgroup v1 that is the devices hierarchy's cgroup,
// which runc's GetAllPids (`runc ps`, `runc kill --all`) lists; on cgroup
// v2 the unified one.
//
// The zero value reads the host's: procfs at /proc, cgroup v2 at
// /sys/fs/cgroup. Tests point it at files of their own.
type HostCgroups struct {
	// Proc is where procfs is mounted; "" is /proc. Of reads
	// <Proc>/<pid>/cgroup and, on cgroup v1, <Proc>/self/mountinfo.
	Proc string
	// Unified is where the cgroup v2 hierarchy is mounted; "" is
	// /sys/fs/cgroup, where cgroup2.Load finds it. cgroup v1's devices
	// hierarchy is found in mountinfo, as cgroup1.PidPath finds it.
	Unified string
}

var _ Cgroups = HostCgroups{}

func (h HostCgroups) proc() string {
	if h.Proc == "" {
		return "/proc"
	}
	return h.Proc
}

func (h HostCgroups) unified() string {
	if h.Unified == "" {
		return "/sys/fs/cgroup"
	}
	return h.Unified
}

// Of returns the directory of the cgroup process pid is in now. A
// process in a cgroup v1 devices hierarchy is taken to be on cgroup v1, as
// runc, on a host with both (hybrid), runs its containers there; any
// other in the unified hierarchy.
func (h HostCgroups) Of(pid int) (string, error) {
	path := filepath.Join(h.proc(), strconv.Itoa(pid), "cgroup")
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	defer f.Close()
	legacy, unified, err := cgroups.ParseCgroupFromReaderUnified(f)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", path, err)
	}
	if group, ok := legacy["devices"]; ok {
		return h.devicesDir(group)
	}
	// A path outside the shim's cgroup namespace reads "/../…": not
	// one the shim can list.
	if err := cgroup2.VerifyGroupPath(unified); err != nil {
		return "", fmt.Errorf("cgroup v2 path %q of pid %d: %w", unified, pid, err)
	}
	return filepath.Join(h.unified(), unified), nil
}

// devicesDir is the directory of the devices hierarchy's cgroup group, a
// path from the hierarchy's root as /proc/<pid>/cgroup gives it. It is
// found under the hierarchy's mount, relative to the mount's root (a
// mount of a cgroup other than the hierarchy's root, as a container with
// the host's cgroup namespace has), as cgroup1.PidPath finds it.
func (h HostCgroups) devicesDir(group string) (string, error) {
	if err := cgroup2.VerifyGroupPath(group); err != nil {
		return "", fmt.Errorf("cgroup v1 devices path %q: %w", group, err)
	}
	find := hostDevicesMount
	if h.Proc != "" {
		find = func() (*mountinfo.Info, error) { return devicesMount(h.proc()) }
	}
	m, err := find()
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(m.Root, group)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("cgroup %s is outside the devices mount %s of %s", group, m.Mountpoint, m.Root)
	}
	return filepath.Join(m.Mountpoint, rel), nil
}

// hostDevices is the host's devices hierarchy mount once found: it is
// mounted at boot, and mountinfo would be read at every task's creation
// otherwise.
var hostDevices struct {
	sync.Mutex
	mount *mountinfo.Info
}

// hostDevicesMount is the host's devices hierarchy mount, found the first
// time it can be.
func hostDevicesMount() (*mountinfo.Info, error) {
	hostDevices.Lock()
	defer hostDevices.Unlock()
	if hostDevices.mount == nil {
		m, err := devicesMount("/proc")
		if err != nil {
			return nil, err
		}
		hostDevices.mount = m
	}
	return hostDevices.mount, nil
}

// devicesMount finds the cgroup v1 devices hierarchy's mount in
// <proc>/self/mountinfo.
func devicesMount(proc string) (*mountinfo.Info, error) {
	path := filepath.Join(proc, "self", "mountinfo")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("find the devices cgroup mount: %w", err)
	}
	defer f.Close()
	mounts, err := mountinfo.GetMountsFromReader(f, func(m *mountinfo.Info) (skip, stop bool) {
		found := m.FSType == "cgroup" && slices.Contains(strings.Split(m.VFSOptions, ","), "devices")
		return !found, found
	})
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if len(mounts) == 0 {
		return nil, fmt.Errorf("no cgroup v1 devices hierarchy in %s: %w", path, fs.ErrNotExist)
	}
	return mounts[0], nil
}

// Procs lists the processes of the cgroup at dir and of its descendants
// from their cgroup.procs, as runc's GetAllPids does. A descendant
// removed while it is read had none: a cgroup with a process cannot be
// removed. The error of a dir that does not exist is fs.ErrNotExist.
func (HostCgroups) Procs(dir string) ([]uint32, error) {
	var pids []uint32
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != dir && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			if p != dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipDir
			}
			return err
		}
		for _, field := range strings.Fields(string(data)) {
			pid, err := strconv.ParseUint(field, 10, 32)
			if err != nil {
				return fmt.Errorf("parse %s: %w", filepath.Join(p, "cgroup.procs"), err)
			}
			pids = append(pids, uint32(pid))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("processes of cgroup %s: %w", dir, err)
	}
	return pids, nil
}
