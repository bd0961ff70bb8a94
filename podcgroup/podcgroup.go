// Package podcgroup reads and writes a pod's cgroup on cgroup v1 (legacy or
// hybrid hierarchies) and v2, for cgroupfs and systemd cgroup drivers, and
// works out what the cgroup must hold for the resources kubelet sends.
package podcgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	// unifiedRoot is where a cgroup v2 host mounts its one hierarchy.
	unifiedRoot = "/sys/fs/cgroup"
	// hybridRoot is where a hybrid host mounts cgroup v2, beside v1's
	// controllers; runc makes a container's cgroup there too.
	hybridRoot = "/sys/fs/cgroup/unified"
)

// hierarchy is how a node lays out its cgroups: which version holds a
// pod's limits (mode) and where cgroup v2 is mounted. The package's
// functions use the host's; a test builds one over a fake cgroup2 tree, so
// that the v2 code is checked on a host of either version. v1's
// controllers are always found from /proc/self/mountinfo, as cgroup1 does.
type hierarchy struct {
	// mode is the host's cgroups.Mode(): v2 alone (Unified) holds pod
	// limits in v2; Legacy and Hybrid hold them in v1.
	mode cgroups.CGMode
	// unified is the cgroup v2 mountpoint: the whole tree on a Unified
	// host, the controller-less tree beside v1 on a Hybrid one, unused on
	// a Legacy one.
	unified string
}

// host is this node's hierarchy; cgroups.Mode is read once per process.
func host() hierarchy {
	h := hierarchy{mode: cgroups.Mode(), unified: unifiedRoot}
	if h.mode == cgroups.Hybrid {
		h.unified = hybridRoot
	}
	return h
}

// Path is a pod's cgroup path under the hierarchy root. A systemd slice
// name ("kubepods-burstable-pod1.slice") is expanded to its place in the
// tree ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"),
// as systemd lays slices out; anything else is a cgroupfs path.
func Path(parent string) string {
	if !isSliceName(parent) {
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

// isSliceName says whether parent is a systemd slice name, not a cgroupfs
// path.
func isSliceName(parent string) bool {
	return strings.HasSuffix(parent, ".slice") && !strings.Contains(parent, "/")
}

// Same says whether pod cgroup parents a and b, as CRI's Create takes them
// (clean absolute paths or slice names), name one cgroup. Two of one kind
// do only when equal; Path, which allocates, runs only for two of two
// kinds: a caller comparing one pod's parent with every other pod's stays
// cheap.
func Same(a, b string) bool {
	if a == b || isSliceName(a) == isSliceName(b) {
		return a == b
	}
	return Path(a) == Path(b)
}

// unifiedKey is a cgroup v2 interface file a pod's resources may set:
// "<controller>.<knob>", and not one of the cgroup.* core files. A knob
// may hold a page size ("hugetlb.2MB.max", "hugetlb.1GB.rsvd.max").
var unifiedKey = regexp.MustCompile(`^[a-z0-9_]+\.[A-Za-z0-9_.]+$`)

// ValidateUnified refuses cgroup v2 keys this node cannot apply: any on a
// node without cgroup v2 (the keys would be dropped), names that are not a
// controller's interface file, and a memory.max that is not a number of
// bytes or "max". Errors are errdefs.ErrInvalidArgument.
func ValidateUnified(unified map[string]string) error {
	return host().validateUnified(unified)
}

func (h hierarchy) validateUnified(unified map[string]string) error {
	if len(unified) == 0 {
		return nil
	}
	if h.mode != cgroups.Unified {
		return fmt.Errorf("pod resources: unified keys need cgroup v2, and this node's pod cgroups are v1: %w", errdefs.ErrInvalidArgument)
	}
	for k, v := range unified {
		if !unifiedKey.MatchString(k) || strings.HasPrefix(k, "cgroup.") {
			return fmt.Errorf("pod resources: unified key %q is not a controller's interface file: %w", k, errdefs.ErrInvalidArgument)
		}
		if k != "memory.max" {
			continue
		}
		if _, _, err := unifiedMemoryMax(v); err != nil {
			return fmt.Errorf("pod resources: unified memory.max %q is not a number of bytes or \"max\": %w", v, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// unifiedMemoryMax reads a unified memory.max as berth takes it: a number
// of bytes, or "max" (not limited). The kernel reads suffixes and any base
// too ("1G", "0x40000000"), which Update, refusing a limit below the pod's
// use, would not read as a limit: validateUnified refuses them.
func unifiedMemoryMax(v string) (bytes uint64, limited bool, err error) {
	v = strings.TrimSpace(v)
	if v == "max" {
		return 0, false, nil
	}
	bytes, err = strconv.ParseUint(v, 10, 64)
	return bytes, err == nil, err
}

// Update writes resources to the cgroup at path, unified keys included
// (cgroup v2; see ValidateUnified). A memory limit below what the cgroup
// uses, and below the limit it holds, is refused with
// errdefs.ErrFailedPrecondition before anything is written: the kernel
// would fail it (v1) or OOM-kill the pod to meet it (v2). A cgroup that
// does not exist is errdefs.ErrNotFound.
//
// CPU on cgroup v2 is written as kubelet writes the pod cgroup, which is
// kubelet's: shares as cpu.weight by kubelet's linear conversion (1024
// shares are 39; runc ≥ 1.3.2 makes a container's 100), quota and period
// as cpu.max, a quota of -1 as "max" (see cpuMax). kubelet writes only the
// resource it resizes after this call, and reads cpu.weight back with the
// inverse of its conversion: a weight of another conversion, written for
// the shares of a limit or memory resize, would stay, and read back as
// other shares.
func Update(path string, resources *runtimespec.LinuxResources) error {
	return host().update(path, resources)
}

func (h hierarchy) update(path string, resources *runtimespec.LinuxResources) error {
	if h.mode == cgroups.Unified {
		return h.updateUnified(path, resources)
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", path, classify(err))
	}
	// 0 and -1 are no limit.
	if resources.Memory != nil && resources.Memory.Limit != nil && *resources.Memory.Limit > 0 {
		st, err := cg.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return fmt.Errorf("read cgroup %s: %w", path, err)
		}
		usage := st.GetMemory().GetUsage()
		if err := checkMemory(uint64(*resources.Memory.Limit), usage.GetUsage(), usage.GetLimit()); err != nil {
			return err
		}
	}
	if err := cg.Update(resources); err != nil {
		return fmt.Errorf("update cgroup %s: %w", path, classify(err))
	}
	return nil
}

func (h hierarchy) updateUnified(path string, resources *runtimespec.LinuxResources) error {
	m, dir, err := h.loadUnified(path)
	if err != nil {
		return err
	}
	if limit, limited := lowestMemoryLimit(resources); limited {
		st, err := m.StatFiltered(cgroup2.StatMemory)
		if err != nil {
			return fmt.Errorf("read cgroup %s: %w", path, err)
		}
		if err := checkMemory(limit, st.GetMemory().GetUsage(), st.GetMemory().GetUsageLimit()); err != nil {
			return err
		}
	}
	// Each unified key's file is there before anything is written: a
	// refused update changes nothing.
	for k := range resources.Unified {
		if _, err := os.Stat(filepath.Join(dir, k)); err != nil {
			return fmt.Errorf("update cgroup %s: %s: %w", path, k, unifiedFileError(err))
		}
	}
	res := cgroup2.ToResources(resources)
	if res.CPU != nil {
		if res.CPU.Max, err = cpuMax(dir, resources.CPU); err != nil {
			return fmt.Errorf("read cgroup %s: %w", path, classify(err))
		}
		if shares := resources.CPU.Shares; shares != nil && *shares != 0 {
			res.CPU.Weight = cpuWeight(dir, *shares)
		}
	}
	if err := m.Update(res); err != nil {
		return fmt.Errorf("update cgroup %s: %w", path, classify(err))
	}
	// cgroup2's resources have no unified keys: write them as runc does,
	// after the rest, so that they override it.
	for k, v := range resources.Unified {
		if err := writeUnified(dir, k, v); err != nil {
			return fmt.Errorf("update cgroup %s: %s: %w", path, k, err)
		}
	}
	return nil
}

// loadUnified loads the cgroup v2 group at path, and its directory.
// cgroup2.Load does not look for it: a group that is not there is
// errdefs.ErrNotFound here, as cgroup1.Load's is.
func (h hierarchy) loadUnified(path string) (*cgroup2.Manager, string, error) {
	m, err := cgroup2.Load(path, cgroup2.WithMountpoint(h.unified))
	if err != nil {
		return nil, "", fmt.Errorf("load cgroup %s: %w", path, err)
	}
	dir := filepath.Join(h.unified, path)
	if _, err := os.Stat(dir); err != nil {
		return nil, "", fmt.Errorf("load cgroup %s: %w", path, classify(err))
	}
	return m, dir, nil
}

// cpuMax is what to write to cpu.max ("$MAX $PERIOD") of the cgroup v2
// group in dir for cpu's quota and period, "" for nothing. A quota of -1
// (none) is "max", as runc and kubelet write it. A quota or period left
// zero or nil keeps the group's, as on cgroup v1 (runc would write "max"
// and 100000 for them): a quota alone is written alone (the kernel keeps
// the period), a period after the group's quota. cgroup2.ToResources does
// neither: it writes "-1 $PERIOD", which the kernel refuses (EINVAL), drops
// a quota without a period, and writes "max $PERIOD" for a period without
// a quota, lifting the limit.
func cpuMax(dir string, cpu *runtimespec.LinuxCPU) (cgroup2.CPUMax, error) {
	var quota, period string
	if cpu.Quota != nil && *cpu.Quota != 0 {
		quota = "max"
		if *cpu.Quota > 0 {
			quota = strconv.FormatInt(*cpu.Quota, 10)
		}
	}
	if cpu.Period != nil && *cpu.Period != 0 {
		period = strconv.FormatUint(*cpu.Period, 10)
	}
	switch {
	case period == "":
		return cgroup2.CPUMax(quota), nil
	case quota == "":
		b, err := os.ReadFile(filepath.Join(dir, "cpu.max"))
		if err != nil {
			return "", err
		}
		f := strings.Fields(string(b))
		if len(f) != 2 {
			return "", fmt.Errorf("cpu.max is %q, not \"$MAX $PERIOD\"", b)
		}
		quota = f[0]
	}
	return cgroup2.CPUMax(quota + " " + period), nil
}

// writeUnified writes a unified key's value to the interface file it names
// in the group's directory dir. It does not create the file, as cgroupfs
// would not (EACCES): a key the group has no file for (its controller is not
// enabled for the group) is errdefs.ErrInvalidArgument.
func writeUnified(dir, key, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, key), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return unifiedFileError(err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return classify(err)
}

// unifiedFileError is err, from opening a unified key's file, with its
// class: a file the cgroup lacks is the caller's mistake.
func unifiedFileError(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("the cgroup has no such file (is the controller enabled for it?): %w", errdefs.ErrInvalidArgument)
	}
	return classify(err)
}

// cpuWeight is the cpu.weight to write to the cgroup v2 group in dir for
// shares, or nil to keep the group's: kubelet sends a pod's current
// resources as it reads them back from the cgroup (cpuWeightToCPUShares)
// with a resize of another resource, and that reading, converted again,
// loses one (39 reads as 998 shares, which convert to 38): each memory or
// limit resize would lower the pod's weight. A weight that reads as
// shares is the one kubelet means.
func cpuWeight(dir string, shares uint64) *uint64 {
	if b, err := os.ReadFile(filepath.Join(dir, "cpu.weight")); err == nil {
		cur, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err == nil && cur >= 1 && kubeletCPUShares(cur) == shares {
			return nil
		}
	}
	w := kubeletCPUWeight(shares)
	return &w
}

// kubeletCPUShares is kubelet's reading of a cgroup v2 cpu.weight as
// shares (cpuWeightToCPUShares in pkg/kubelet/cm, v1.37).
func kubeletCPUShares(weight uint64) uint64 {
	return (weight-1)*262142/9999 + 2
}

// kubeletCPUWeight is the cpu.weight kubelet's cgroup v2 manager writes
// for shares (getCPUWeight, pkg/kubelet/cm, v1.37): [2, 262144] mapped
// linearly onto [1, 10000].
func kubeletCPUWeight(shares uint64) uint64 {
	switch {
	case shares <= 2:
		return 1
	case shares >= 262144:
		return 10000
	}
	return 1 + ((shares-2)*9999)/262142
}

// lowestMemoryLimit is the lowest memory.max resources write to a cgroup v2
// group, if they write one: the memory limit (0 and -1 are none), then a
// unified memory.max over it, where "0" is a limit of no bytes. Each is
// held, for a moment or for good, and either below the pod's use has the
// kernel reclaim or OOM-kill to meet it.
func lowestMemoryLimit(resources *runtimespec.LinuxResources) (limit uint64, limited bool) {
	var limits []uint64
	if resources.Memory != nil && resources.Memory.Limit != nil && *resources.Memory.Limit > 0 {
		limits = append(limits, uint64(*resources.Memory.Limit))
	}
	if v, ok := resources.Unified["memory.max"]; ok {
		if b, ok, err := unifiedMemoryMax(v); err == nil && ok {
			limits = append(limits, b)
		}
	}
	if len(limits) == 0 {
		return 0, false
	}
	return slices.Min(limits), true
}

// checkMemory refuses a memory limit below the pod's use, unless it is no
// lower than the limit the cgroup holds: cgroup v2's use can pass its
// limit for a moment (charges the kernel must not fail), and kubelet sends
// the limit unchanged with a resize of CPU, which must not fail for that.
// kubelet checks use only for a lower limit too.
func checkMemory(limit, usage, current uint64) error {
	if limit < usage && limit < current {
		return fmt.Errorf("pod resources: memory limit %d is below the pod's use of %d bytes: %w", limit, usage, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Remove deletes the cgroup at path, in every hierarchy, if it exists. It
// fails while processes are in it. On cgroup v2 the cgroups nested in it go
// with it.
func Remove(path string) error {
	return host().remove(path)
}

func (h hierarchy) remove(path string) error {
	switch h.mode {
	case cgroups.Unified:
		return removeUnified(path, h.unified)
	case cgroups.Hybrid:
		if err := removeUnified(path, h.unified); err != nil {
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
// a cgroup2 *v2.Metrics, the types containerd's task metrics carry. A
// cgroup that does not exist is errdefs.ErrNotFound.
func Stats(path string) (any, error) {
	return host().stats(path)
}

func (h hierarchy) stats(path string) (any, error) {
	if h.mode == cgroups.Unified {
		m, _, err := h.loadUnified(path)
		if err != nil {
			return nil, err
		}
		st, err := m.Stat()
		if err != nil {
			return nil, fmt.Errorf("read cgroup %s: %w", path, err)
		}
		return st, nil
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
	case err == nil:
		return nil
	case errors.Is(err, cgroup1.ErrCgroupDeleted), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, syscall.EBUSY):
		return fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	case errors.Is(err, syscall.EINVAL):
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return err
}
