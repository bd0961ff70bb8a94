// Package podcgroup reads and writes a pod's cgroup on cgroup v1 (legacy or
// hybrid hierarchies) and v2, for cgroupfs and systemd cgroup drivers.
package podcgroup

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
)

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

// Update writes resources to the cgroup at path.
func Update(path string, resources *runtimespec.LinuxResources) error {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.Load(path)
		if err != nil {
			return fmt.Errorf("load cgroup %s: %w", path, err)
		}
		if err := m.Update(cgroup2.ToResources(resources)); err != nil {
			return fmt.Errorf("update cgroup %s: %w", path, err)
		}
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", path, classify(err))
	}
	if err := cg.Update(resources); err != nil {
		return fmt.Errorf("update cgroup %s: %w", path, err)
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

func classify(err error) error {
	if err == cgroup1.ErrCgroupDeleted {
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	return err
}
