// Package hostcgroup reads, from /sys/fs/cgroup, a pod cgroup's CPU and
// memory limits and its memory usage in the files of the cgroup version
// that holds pod limits on this host: v1's on a Legacy or Hybrid host (the
// cpu and memory hierarchies: kubelet, runc and berth all write v1 there),
// v2's on a Unified one. Both test packages, integration and
// integration/kube, check pod cgroups with it, so that each asserts the v1
// files on a v1 host and the v2 files on a v2 host, and skips neither.
package hostcgroup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
)

// Limits are a cgroup's CPU and memory limits as its files hold them in
// the host's cgroup version. CRI's terms are v1's; on v2 only CPUWeight
// differs from them (see CPUWeight).
type Limits struct {
	// Quota is the CPU time in µs the cgroup may use each Period:
	// cpu.cfs_quota_us (v1), cpu.max's first field (v2); -1 (v2's "max")
	// for none.
	Quota int64
	// Period is the CPU period in µs: cpu.cfs_period_us (v1), cpu.max's
	// second field (v2).
	Period uint64
	// CPUWeight is the cgroup's share of contended CPU: cpu.shares (v1,
	// 2 to 262144, 1024 by default), cpu.weight (v2, 1 to 10000, 100 by
	// default).
	CPUWeight uint64
	// Memory is the memory limit in bytes: memory.limit_in_bytes (v1),
	// memory.max (v2). v2's "max" (none) is math.MaxInt64; v1's none reads
	// as that rounded down to a page.
	Memory int64
}

// hierarchy is where the host's cgroups are and which version holds pod
// limits; the package's functions use the host's, its tests a fake tree.
type hierarchy struct {
	// unified is true where cgroups.Mode() is Unified: v2 alone. Legacy
	// and Hybrid hosts hold pod limits in v1.
	unified bool
	// root is where cgroups are mounted: v1's hierarchies in directories
	// named after their controllers, or v2's one hierarchy.
	root string
}

func host() hierarchy {
	return hierarchy{unified: cgroups.Mode() == cgroups.Unified, root: "/sys/fs/cgroup"}
}

// Unified reports whether pod limits on this host are in cgroup v2 files:
// cgroups.Mode() is Unified.
func Unified() bool { return host().unified }

// limitFile is one interface file of a cgroup that holds limits: where it
// is under the root, what it holds for some Limits (as the kernel shows
// it), and how to read it back into Limits.
type limitFile struct {
	path   string
	format func(Limits) string
	parse  func(string, *Limits) error
}

// files are the files of the cgroup at path (under the root, as a cgroup
// parent names it) that hold its Limits:
//   - v1: cpu.cfs_quota_us, cpu.cfs_period_us and cpu.shares in the cpu
//     hierarchy, memory.limit_in_bytes in the memory one;
//   - v2: cpu.max ("$MAX $PERIOD", $MAX "max" for no quota), cpu.weight
//     and memory.max ("max" for no limit).
func (h hierarchy) files(path string) []limitFile {
	if !h.unified {
		cpu, memory := filepath.Join(h.root, "cpu", path), filepath.Join(h.root, "memory", path)
		return []limitFile{
			number(filepath.Join(cpu, "cpu.cfs_quota_us"), func(l *Limits) *int64 { return &l.Quota }),
			number(filepath.Join(cpu, "cpu.cfs_period_us"), func(l *Limits) *uint64 { return &l.Period }),
			number(filepath.Join(cpu, "cpu.shares"), func(l *Limits) *uint64 { return &l.CPUWeight }),
			number(filepath.Join(memory, "memory.limit_in_bytes"), func(l *Limits) *int64 { return &l.Memory }),
		}
	}
	dir := filepath.Join(h.root, path)
	cpuMax := limitFile{
		path:   filepath.Join(dir, "cpu.max"),
		format: func(l Limits) string { return formatMax(l.Quota, -1) + " " + strconv.FormatUint(l.Period, 10) },
		parse: func(s string, l *Limits) error {
			quota, period, ok := strings.Cut(s, " ")
			if !ok {
				return fmt.Errorf("%q is not \"$MAX $PERIOD\"", s)
			}
			var err error
			if l.Quota, err = parseMax(quota, -1); err != nil {
				return err
			}
			l.Period, err = strconv.ParseUint(period, 10, 64)
			return err
		},
	}
	memoryMax := limitFile{
		path:   filepath.Join(dir, "memory.max"),
		format: func(l Limits) string { return formatMax(l.Memory, math.MaxInt64) },
		parse: func(s string, l *Limits) (err error) {
			l.Memory, err = parseMax(s, math.MaxInt64)
			return err
		},
	}
	return []limitFile{
		cpuMax,
		number(filepath.Join(dir, "cpu.weight"), func(l *Limits) *uint64 { return &l.CPUWeight }),
		memoryMax,
	}
}

// number is a file at path that holds one number: the field of Limits
// that field points to.
func number[T int64 | uint64](path string, field func(*Limits) *T) limitFile {
	return limitFile{
		path:   path,
		format: func(l Limits) string { return fmt.Sprint(*field(&l)) },
		parse: func(s string, l *Limits) error {
			var err error
			switch p := any(field(l)).(type) {
			case *int64:
				*p, err = strconv.ParseInt(s, 10, 64)
			case *uint64:
				*p, err = strconv.ParseUint(s, 10, 64)
			}
			return err
		},
	}
}

// formatMax writes v as v2 does, "max" for none.
func formatMax(v, none int64) string {
	if v == none {
		return "max"
	}
	return strconv.FormatInt(v, 10)
}

// parseMax reads a v2 value that may be "max", which is none.
func parseMax(s string, none int64) (int64, error) {
	if s == "max" {
		return none, nil
	}
	return strconv.ParseInt(s, 10, 64)
}

// Read reads the limits of the cgroup at path (under the hierarchy root,
// as a cgroup parent names it: "/kubepods/pod<uid>") from the host's files.
func Read(path string) (Limits, error) { return host().read(path) }

func (h hierarchy) read(path string) (Limits, error) {
	var l Limits
	for _, f := range h.files(path) {
		s, err := readFile(f.path)
		if err != nil {
			return l, err
		}
		if err := f.parse(s, &l); err != nil {
			return l, fmt.Errorf("%s: %w", f.path, err)
		}
	}
	return l, nil
}

// Check compares each file of the cgroup at path that holds limits with
// what it holds for want, in the host's version; the error names every
// file that cannot be read or holds something else, and is nil if none
// does.
func Check(path string, want Limits) error { return host().check(path, want) }

func (h hierarchy) check(path string, want Limits) error {
	var errs []error
	for _, f := range h.files(path) {
		got, err := readFile(f.path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if w := f.format(want); got != w {
			errs = append(errs, fmt.Errorf("%s = %s, want %s", f.path, got, w))
		}
	}
	return errors.Join(errs...)
}

// MemoryUsage is the memory charged to the cgroup at path, in bytes:
// memory.usage_in_bytes in the memory hierarchy (v1), memory.current (v2).
func MemoryUsage(path string) (int64, error) { return host().memoryUsage(path) }

func (h hierarchy) memoryUsage(path string) (int64, error) {
	file := filepath.Join(h.root, "memory", path, "memory.usage_in_bytes")
	if h.unified {
		file = filepath.Join(h.root, path, "memory.current")
	}
	s, err := readFile(file)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return n, nil
}

// CPUWeight is what the host's cgroup holds for a pod's CRI CPU shares:
// the shares themselves on v1, on v2 cpu.weight as kubelet converts them
// (KubeletWeight), as both kubelet and berth write a pod cgroup.
func CPUWeight(shares uint64) uint64 {
	return host().cpuWeight(shares)
}

func (h hierarchy) cpuWeight(shares uint64) uint64 {
	if h.unified {
		return KubeletWeight(shares)
	}
	return shares
}

// KubeletWeight converts CPU shares to cpu.weight as kubelet v1.37.2 does
// when it writes a pod cgroup on v2: linearly from [2, 262144] to
// [1, 10000], so 1024 shares are 39 (getCPUWeight in k8s.io/kubernetes pkg/kubelet/cm/cgroup_manager_linux.go;
// opencontainers/cgroups' fs2 writes the weight as given). kubelet never
// has fewer than 2 shares (MinShares); fewer are weight 1 here.
func KubeletWeight(shares uint64) uint64 {
	switch {
	case shares < 2:
		return 1
	case shares >= 262144:
		return 10000
	}
	return 1 + ((shares-2)*9999)/262142
}

// readFile reads a cgroup interface file, without its newline.
func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
