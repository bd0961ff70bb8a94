// Package podcgroup reads and writes a pod's cgroup on cgroup v1 (legacy or
// hybrid hierarchies) and v2, for cgroupfs and systemd cgroup drivers.
package podcgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
)

// unifiedRoot is where cgroup v2 is mounted.
const unifiedRoot = "/sys/fs/cgroup"

// Path is a pod's cgroup path under the hierarchy root. A systemd slice
// name ("kubepods-burstable-pod1.slice") is expanded to its place in the
// tree ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"),
// as systemd lays slices out; anything else is a cgroupfs path.
func Path(parent string) string {
	if !strings.HasSuffix(parent, ".slice") || strings.Contains(parent, "/") {
		return filepath.Join("/", parent)
	}
	path, prefix := "/", ""
	for _, part := range strings.Split(strings.TrimSuffix(parent, ".slice"), "-") {
		prefix += part
		path = filepath.Join(path, prefix+".slice")
		prefix += "-"
	}
	return path
}

// unifiedKey is a cgroup v2 interface file a pod's resources may set:
// "<controller>.<knob>", and not one of the cgroup.* core files.
var unifiedKey = regexp.MustCompile(`^[a-z0-9_]+\.[a-z0-9_.]+$`)

// ValidateUnified refuses cgroup v2 keys this node cannot apply: any on a
// node without cgroup v2 (the keys would be dropped), and names that are
// not a controller's interface file. Errors are errdefs.ErrInvalidArgument.
func ValidateUnified(unified map[string]string) error {
	if len(unified) == 0 {
		return nil
	}
	if cgroups.Mode() != cgroups.Unified {
		return fmt.Errorf("pod resources: unified keys need cgroup v2, and this node's pod cgroups are v1: %w", errdefs.ErrInvalidArgument)
	}
	for k := range unified {
		if !unifiedKey.MatchString(k) || strings.HasPrefix(k, "cgroup.") {
			return fmt.Errorf("pod resources: unified key %q is not a controller's interface file: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Update writes resources to the cgroup at path, unified keys included
// (cgroup v2; see ValidateUnified). A memory limit below what the cgroup
// uses is refused with errdefs.ErrFailedPrecondition before anything is
// written: the kernel would fail it (v1) or OOM-kill the pod to meet it
// (v2).
func Update(path string, resources *runtimespec.LinuxResources) error {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.Load(path)
		if err != nil {
			return fmt.Errorf("load cgroup %s: %w", path, err)
		}
		if resources.Memory != nil && resources.Memory.Limit != nil {
			st, err := m.Stat()
			if err != nil {
				return fmt.Errorf("read cgroup %s: %w", path, err)
			}
			if err := checkMemory(*resources.Memory.Limit, st.GetMemory().GetUsage()); err != nil {
				return err
			}
		}
		if err := m.Update(cgroup2.ToResources(resources)); err != nil {
			return fmt.Errorf("update cgroup %s: %w", path, classify(err))
		}
		// cgroup2's resources have no unified keys: write them as runc does.
		for k, v := range resources.Unified {
			if err := os.WriteFile(filepath.Join(unifiedRoot, path, k), []byte(v), 0); err != nil {
				return fmt.Errorf("update cgroup %s: %s: %w", path, k, classify(err))
			}
		}
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", path, classify(err))
	}
	if resources.Memory != nil && resources.Memory.Limit != nil {
		st, err := cg.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return fmt.Errorf("read cgroup %s: %w", path, err)
		}
		if err := checkMemory(*resources.Memory.Limit, memoryUsage(st)); err != nil {
			return err
		}
	}
	if err := cg.Update(resources); err != nil {
		return fmt.Errorf("update cgroup %s: %w", path, classify(err))
	}
	return nil
}

func memoryUsage(st *cgroup1stats.Metrics) uint64 {
	return st.GetMemory().GetUsage().GetUsage()
}

func checkMemory(limit int64, usage uint64) error {
	if limit > 0 && uint64(limit) < usage {
		return fmt.Errorf("pod resources: memory limit %d is below the pod's use of %d bytes: %w", limit, usage, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// hybridRoot is where a hybrid host mounts cgroup v2, beside v1's
// controllers; runc makes a container's cgroup there too.
const hybridRoot = "/sys/fs/cgroup/unified"

// Remove deletes the cgroup at path, in every hierarchy, if it exists. It
// fails while processes are in it.
func Remove(path string) error {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return removeUnified(path, unifiedRoot)
	case cgroups.Hybrid:
		if err := removeUnified(path, hybridRoot); err != nil {
			return err
		}
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", path, classify(err))
	}
	if err := cg.Delete(); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", path, classify(err))
	}
	return nil
}

func removeUnified(path, root string) error {
	if _, err := os.Stat(filepath.Join(root, path)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	m, err := cgroup2.Load(path, cgroup2.WithMountpoint(root))
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", path, err)
	}
	if err := m.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", path, classify(err))
	}
	return nil
}

// Stats returns the stats of the cgroup at path: a cgroup1 *v1.Metrics or
// a cgroup2 *v2.Metrics, the types containerd's task metrics carry.
func Stats(path string) (any, error) {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.Load(path)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", path, err)
		}
		return m.Stat()
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", path, classify(err))
	}
	// Controllers a hybrid host lacks are skipped, not fatal.
	return cg.Stat(cgroup1.IgnoreNotExist)
}

// classify gives cgroup errors their errdefs class: a cgroup that is gone
// is NotFound, a limit the kernel will not take (EBUSY, EINVAL) is
// FailedPrecondition or InvalidArgument.
func classify(err error) error {
	switch {
	case errors.Is(err, cgroup1.ErrCgroupDeleted), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, syscall.EBUSY):
		return fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	case errors.Is(err, syscall.EINVAL):
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return err
}
