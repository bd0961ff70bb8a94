package podcgroup

import (
	"errors"
	"maps"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
)

// The tests in this file run podcgroup's cgroup v2 code on a fake cgroup2
// tree in a temporary directory, whatever the host's cgroup version, with
// the hierarchy's mode set to cgroups.Unified. The fake holds the files the
// kernel gives a pod cgroup, in the kernel's formats
// (Documentation/admin-guide/cgroup-v2.rst); what it cannot do is refuse a
// value or recompute a file, so these tests check what podcgroup writes and
// how it reads, and the integration tests on a cgroup v2 host what the
// kernel makes of it.

// podPaths are a pod cgroup of each cgroup driver: cgroupfs's, and
// systemd's slice as Path expands it.
var podPaths = []struct{ driver, path string }{
	{"cgroupfs", "/kubepods/burstable/pod1"},
	{"systemd", Path("kubepods-burstable-pod1.slice")},
}

// controllers are the controllers the fake enables down to the pod:
// kubelet's but hugetlb (so that a hugetlb key names no file), and io.
const controllers = "cpuset cpu io memory pids"

// podFiles are a pod cgroup's interface files as the kernel makes them, at
// their defaults (a fresh cgroup, nothing run in it).
func podFiles() map[string]string {
	return map[string]string{
		"cgroup.controllers":     controllers + "\n",
		"cgroup.subtree_control": "\n",
		"cgroup.procs":           "",
		"cgroup.threads":         "",
		"cgroup.type":            "domain\n",
		"cgroup.events":          "populated 0\nfrozen 0\n",
		"cgroup.freeze":          "0\n",
		"cgroup.kill":            "",
		"cpu.max":                "max 100000\n",
		"cpu.max.burst":          "0\n",
		"cpu.weight":             "100\n",
		"cpu.weight.nice":        "0\n",
		"cpu.idle":               "0\n",
		"cpu.stat":               "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
		"cpu.pressure":           "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
		"cpuset.cpus":            "\n",
		"cpuset.mems":            "\n",
		"cpuset.cpus.effective":  "0-15\n",
		"cpuset.mems.effective":  "0\n",
		"io.max":                 "",
		"io.weight":              "default 100\n",
		"io.stat":                "",
		"io.pressure":            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
		"memory.current":         "0\n",
		"memory.peak":            "0\n",
		"memory.min":             "0\n",
		"memory.low":             "0\n",
		"memory.high":            "max\n",
		"memory.max":             "max\n",
		"memory.oom.group":       "0\n",
		"memory.events":          "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
		"memory.stat":            "anon 0\nfile 0\nkernel_stack 0\nslab 0\nsock 0\nshmem 0\nfile_mapped 0\nfile_dirty 0\nfile_writeback 0\nanon_thp 0\ninactive_anon 0\nactive_anon 0\ninactive_file 0\nactive_file 0\nunevictable 0\nslab_reclaimable 0\nslab_unreclaimable 0\npgfault 0\npgmajfault 0\n",
		"memory.swap.current":    "0\n",
		"memory.swap.max":        "max\n",
		"memory.pressure":        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
		"pids.current":           "0\n",
		"pids.max":               "max\n",
		"pids.peak":              "0\n",
	}
}

// fakeUnified makes a fake cgroup2 tree holding the pod cgroup at path: the
// root and each cgroup above the pod with the controllers enabled for their
// children, the pod cgroup with podFiles, set overriding some of them. It
// returns a cgroup v2 hierarchy over the tree, and the pod cgroup's
// directory.
func fakeUnified(t *testing.T, path string, set map[string]string) (hierarchy, string) {
	t.Helper()
	root := t.TempDir()
	write := func(dir string, files map[string]string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, v := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(root, map[string]string{
		"cgroup.controllers":     "cpuset cpu io memory hugetlb pids rdma misc\n",
		"cgroup.subtree_control": controllers + "\n",
		"cgroup.procs":           "1\n",
	})
	dir := root
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for _, p := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, p)
		write(dir, map[string]string{
			"cgroup.controllers":     controllers + "\n",
			"cgroup.subtree_control": controllers + "\n",
			"cgroup.procs":           "",
			"cgroup.type":            "domain\n",
		})
	}
	files := podFiles()
	for name, v := range set {
		files[name] = v
	}
	dir = filepath.Join(root, path)
	write(dir, files)
	return hierarchy{mode: cgroups.Unified, unified: root}, dir
}

// readDir reads every file of dir, by name.
func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// TestUnifiedUpdate writes pod resources to a cgroup v2 pod cgroup, of
// either driver, and checks each interface file against what runc writes
// for a container's resources and kubelet for a pod's: nothing else
// changes, and no file the kernel lacks is made.
func TestUnifiedUpdate(t *testing.T) {
	for _, tc := range []struct {
		name string
		// set overrides the fake pod cgroup's files before the update.
		set map[string]string
		res runtimespec.LinuxResources
		// want is every file that changes, as written.
		want map[string]string
	}{{
		// The hand-tried write on a cgroup v2 host: 0.5 CPU, 256 MiB.
		name: "quota, period, shares, memory",
		res: runtimespec.LinuxResources{
			CPU:    &runtimespec.LinuxCPU{Quota: ptr[int64](50000), Period: ptr[uint64](100000), Shares: ptr[uint64](512)},
			Memory: &runtimespec.LinuxMemory{Limit: ptr[int64](256 << 20)},
		},
		// Weight by kubelet's linear conversion, as kubelet writes the pod
		// cgroup: 512 shares are 20 (runc ≥ 1.3.2 makes a container's 59).
		want: map[string]string{"cpu.max": "50000 100000", "cpu.weight": "20", "memory.max": "268435456"},
	}, {
		name: "shares 2",
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Shares: ptr[uint64](2)}},
		want: map[string]string{"cpu.weight": "1"},
	}, {
		name: "shares 262144",
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Shares: ptr[uint64](262144)}},
		want: map[string]string{"cpu.weight": "10000"},
	}, {
		// A CPU request's resize to 1024 shares (1 CPU): 39, not
		// cgroups/v3's 100.
		name: "shares 1024",
		set:  map[string]string{"cpu.max": "max 100000\n"},
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Quota: ptr[int64](50000), Period: ptr[uint64](100000), Shares: ptr[uint64](1024)}},
		want: map[string]string{"cpu.max": "50000 100000", "cpu.weight": "39"},
	}, {
		// A limit's or memory's resize: kubelet sends the weight it reads
		// back (39 as 998 shares) and writes only what it resizes. The
		// weight stays; converted again it would be 38, one less at each
		// such resize.
		name: "shares read back",
		set:  map[string]string{"cpu.weight": "39\n"},
		res: runtimespec.LinuxResources{
			CPU:    &runtimespec.LinuxCPU{Quota: ptr[int64](50000), Period: ptr[uint64](100000), Shares: ptr[uint64](998)},
			Memory: &runtimespec.LinuxMemory{Limit: ptr[int64](256 << 20)},
		},
		want: map[string]string{"cpu.max": "50000 100000", "memory.max": "268435456"},
	}, {
		// A weight that does not read as the shares is rewritten: 2048
		// shares after 1024's.
		name: "shares changed",
		set:  map[string]string{"cpu.weight": "39\n"},
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Shares: ptr[uint64](2048)}},
		want: map[string]string{"cpu.weight": "79"},
	}, {
		name: "shares 102",
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Shares: ptr[uint64](102)}},
		want: map[string]string{"cpu.weight": "4"},
	}, {
		// kubelet's "no CPU limit": the kernel takes "max", not "-1"
		// (EINVAL), as runc and kubelet write it.
		name: "unlimited quota",
		set:  map[string]string{"cpu.max": "50000 100000\n"},
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Quota: ptr[int64](-1), Period: ptr[uint64](100000)}},
		want: map[string]string{"cpu.max": "max 100000"},
	}, {
		// The kernel keeps the period of a quota written alone.
		name: "quota without period",
		set:  map[string]string{"cpu.max": "max 50000\n"},
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Quota: ptr[int64](40000)}},
		want: map[string]string{"cpu.max": "40000"},
	}, {
		name: "period without quota keeps the quota",
		set:  map[string]string{"cpu.max": "50000 100000\n"},
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Period: ptr[uint64](200000)}},
		want: map[string]string{"cpu.max": "50000 200000"},
	}, {
		name: "cpuset",
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Cpus: "0-1", Mems: "0"}},
		want: map[string]string{"cpuset.cpus": "0-1", "cpuset.mems": "0"},
	}, {
		name: "no CPU fields",
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{}},
	}, {
		// At the pod's use exactly: allowed.
		name: "memory at usage",
		set:  map[string]string{"memory.current": "33554432\n"},
		res:  runtimespec.LinuxResources{Memory: &runtimespec.LinuxMemory{Limit: ptr[int64](32 << 20)}},
		want: map[string]string{"memory.max": "33554432"},
	}, {
		// Use can pass memory.max for a moment; kubelet sends the limit
		// the cgroup holds with a CPU resize, which must not fail for it.
		name: "memory use above the limit held",
		set:  map[string]string{"memory.current": "67108864\n", "memory.max": "33554432\n"},
		res: runtimespec.LinuxResources{
			CPU:    &runtimespec.LinuxCPU{Quota: ptr[int64](50000), Period: ptr[uint64](100000)},
			Memory: &runtimespec.LinuxMemory{Limit: ptr[int64](32 << 20)},
		},
		want: map[string]string{"cpu.max": "50000 100000", "memory.max": "33554432"},
	}, {
		name: "unified keys after the rest",
		res: runtimespec.LinuxResources{
			Memory:  &runtimespec.LinuxMemory{Limit: ptr[int64](256 << 20)},
			Unified: map[string]string{"memory.high": "201326592", "pids.max": "100", "memory.max": "max"},
		},
		want: map[string]string{"memory.high": "201326592", "pids.max": "100", "memory.max": "max"},
	}} {
		for _, p := range podPaths {
			t.Run(tc.name+"/"+p.driver, func(t *testing.T) {
				h, dir := fakeUnified(t, p.path, tc.set)
				before := readDir(t, dir)
				if err := h.update(p.path, &tc.res); err != nil {
					t.Fatalf("update: %v", err)
				}
				after := readDir(t, dir)
				for name, v := range after {
					old, ok := before[name]
					if !ok {
						t.Errorf("update made %s, which the kernel does not have", name)
						continue
					}
					want, changes := tc.want[name]
					switch {
					case changes && v != want:
						t.Errorf("%s = %q, want %q", name, v, want)
					case !changes && v != old:
						t.Errorf("%s changed from %q to %q", name, old, v)
					}
				}
			})
		}
	}
}

// TestUnifiedUpdateRefused checks what Update refuses on cgroup v2, with
// its errdefs class, before it writes anything.
func TestUnifiedUpdateRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  map[string]string
		res  runtimespec.LinuxResources
		is   func(error) bool
	}{{
		// memory.current is 64 MiB: a 32 MiB limit would have the kernel
		// reclaim or OOM-kill the pod to meet it.
		name: "memory below usage",
		set:  map[string]string{"memory.current": "67108864\n"},
		res: runtimespec.LinuxResources{
			CPU:    &runtimespec.LinuxCPU{Quota: ptr[int64](20000), Period: ptr[uint64](100000), Shares: ptr[uint64](204)},
			Memory: &runtimespec.LinuxMemory{Limit: ptr[int64](32 << 20)},
		},
		is: errdefs.IsFailedPrecondition,
	}, {
		// Lower than the limit held, though use passed that already.
		name: "memory below usage and the limit held",
		set:  map[string]string{"memory.current": "67108864\n", "memory.max": "50331648\n"},
		res:  runtimespec.LinuxResources{Memory: &runtimespec.LinuxMemory{Limit: ptr[int64](32 << 20)}},
		is:   errdefs.IsFailedPrecondition,
	}, {
		// The same limit as a unified key, which is written last.
		name: "unified memory.max below usage",
		set:  map[string]string{"memory.current": "67108864\n"},
		res: runtimespec.LinuxResources{
			Memory:  &runtimespec.LinuxMemory{Limit: ptr[int64](256 << 20)},
			Unified: map[string]string{"memory.max": "33554432"},
		},
		is: errdefs.IsFailedPrecondition,
	}, {
		// "0" is a limit of no bytes, not none: the kernel would OOM-kill
		// every process of the pod.
		name: "unified memory.max 0",
		set:  map[string]string{"memory.current": "67108864\n"},
		res:  runtimespec.LinuxResources{Unified: map[string]string{"memory.max": "0"}},
		is:   errdefs.IsFailedPrecondition,
	}, {
		// A limit below usage held until a unified "max" lifts it.
		name: "memory below usage, then unified max",
		set:  map[string]string{"memory.current": "67108864\n"},
		res: runtimespec.LinuxResources{
			Memory:  &runtimespec.LinuxMemory{Limit: ptr[int64](32 << 20)},
			Unified: map[string]string{"memory.max": "max"},
		},
		is: errdefs.IsFailedPrecondition,
	}, {
		// hugetlb is not enabled for the fake pod: the key names no file.
		name: "unified key without a file",
		res:  runtimespec.LinuxResources{Unified: map[string]string{"hugetlb.2MB.max": "0"}},
		is:   errdefs.IsInvalidArgument,
	}, {
		// Checked before the rest is written: a partial update would
		// leave the cgroup neither the old resources nor the new.
		name: "unified key without a file, with CPU",
		res: runtimespec.LinuxResources{
			CPU:     &runtimespec.LinuxCPU{Quota: ptr[int64](50000), Period: ptr[uint64](100000), Shares: ptr[uint64](2048)},
			Unified: map[string]string{"hugetlb.2MB.max": "0"},
		},
		is: errdefs.IsInvalidArgument,
	}, {
		// Not the kernel's format: nothing is written from it.
		name: "cpu.max the kernel never writes",
		set:  map[string]string{"cpu.max": "garbage\n"},
		res:  runtimespec.LinuxResources{CPU: &runtimespec.LinuxCPU{Period: ptr[uint64](100000)}},
	}} {
		for _, p := range podPaths {
			t.Run(tc.name+"/"+p.driver, func(t *testing.T) {
				h, dir := fakeUnified(t, p.path, tc.set)
				before := readDir(t, dir)
				err := h.update(p.path, &tc.res)
				if err == nil || (tc.is != nil && !tc.is(err)) {
					t.Fatalf("update = %v, want an error of the right class", err)
				}
				if after := readDir(t, dir); !maps.Equal(before, after) {
					t.Errorf("refused update changed the cgroup: before %q, after %q", before, after)
				}
			})
		}
	}
}

// TestUnifiedMissing checks that Update and Stats of a cgroup v2 group that
// is not there are NotFound, as on v1 (cgroup2.Load does not look), and
// that Remove of one is a no-op.
func TestUnifiedMissing(t *testing.T) {
	for _, p := range podPaths {
		t.Run(p.driver, func(t *testing.T) {
			h, dir := fakeUnified(t, p.path, nil)
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			res := &runtimespec.LinuxResources{
				CPU:    &runtimespec.LinuxCPU{Quota: ptr[int64](50000), Period: ptr[uint64](100000)},
				Memory: &runtimespec.LinuxMemory{Limit: ptr[int64](256 << 20)},
			}
			if err := h.update(p.path, res); !errdefs.IsNotFound(err) {
				t.Errorf("update = %v, want NotFound", err)
			}
			if _, err := h.stats(p.path); !errdefs.IsNotFound(err) {
				t.Errorf("stats = %v, want NotFound", err)
			}
			if err := h.remove(p.path); err != nil {
				t.Errorf("remove = %v, want nil", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s made: %v", dir, err)
			}
		})
	}
}

// TestUnifiedStats decodes a cgroup v2 pod cgroup's files into the
// *v2.Metrics containerd's task metrics carry, and checks that it goes
// through typeurl as the controller's Metrics sends it.
func TestUnifiedStats(t *testing.T) {
	for _, p := range podPaths {
		t.Run(p.driver, func(t *testing.T) {
			h, _ := fakeUnified(t, p.path, map[string]string{
				"cgroup.procs":   "4242\n4243\n",
				"cpu.max":        "50000 100000\n",
				"cpu.stat":       "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 3\nthrottled_usec 12000\nnr_bursts 0\nburst_usec 0\n",
				"memory.current": "35651584\n",
				"memory.peak":    "36700160\n",
				"memory.max":     "268435456\n",
				"memory.stat":    "anon 1048576\nfile 34603008\nkernel_stack 32768\nslab 65536\nsock 0\nshmem 33554432\nfile_mapped 4096\nfile_dirty 0\nfile_writeback 0\nanon_thp 0\ninactive_anon 33554432\nactive_anon 1048576\ninactive_file 1048576\nactive_file 0\nunevictable 0\nslab_reclaimable 32768\nslab_unreclaimable 32768\npgfault 9000\npgmajfault 2\n",
				"memory.events":  "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
				"pids.current":   "2\n",
				"pids.max":       "max\n",
				"io.stat":        "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
			})
			got, err := h.stats(p.path)
			if err != nil {
				t.Fatalf("stats: %v", err)
			}
			m, ok := got.(*cgroup2stats.Metrics)
			if !ok {
				t.Fatalf("stats are %T, want *v2.Metrics", got)
			}
			cpu, mem := m.GetCPU(), m.GetMemory()
			for _, c := range []struct {
				name      string
				got, want uint64
			}{
				{"cpu usage_usec", cpu.GetUsageUsec(), 1500000},
				{"cpu user_usec", cpu.GetUserUsec(), 1000000},
				{"cpu system_usec", cpu.GetSystemUsec(), 500000},
				{"cpu nr_periods", cpu.GetNrPeriods(), 40},
				{"cpu nr_throttled", cpu.GetNrThrottled(), 3},
				{"cpu throttled_usec", cpu.GetThrottledUsec(), 12000},
				{"memory.current", mem.GetUsage(), 35651584},
				{"memory.peak", mem.GetMaxUsage(), 36700160},
				{"memory.max", mem.GetUsageLimit(), 268435456},
				{"memory.swap.max", mem.GetSwapLimit(), math.MaxUint64},
				{"memory anon", mem.GetAnon(), 1048576},
				{"memory file", mem.GetFile(), 34603008},
				{"memory shmem", mem.GetShmem(), 33554432},
				{"memory pgfault", mem.GetPgfault(), 9000},
				{"memory.events max", m.GetMemoryEvents().GetMax(), 4},
				{"memory.events oom_kill", m.GetMemoryEvents().GetOomKill(), 1},
				{"pids.current", m.GetPids().GetCurrent(), 2},
				{"pids.max", m.GetPids().GetLimit(), math.MaxUint64},
			} {
				if c.got != c.want {
					t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
				}
			}
			io := m.GetIo().GetUsage()
			if len(io) != 2 || io[0].GetMajor() != 8 || io[0].GetMinor() != 0 || io[0].GetRbytes() != 4096 || io[0].GetWbytes() != 8192 ||
				io[0].GetRios() != 1 || io[0].GetWios() != 2 || io[1].GetMajor() != 253 || io[1].GetMinor() != 1 || io[1].GetRbytes() != 512 {
				t.Errorf("io = %v, want io.stat's two devices", io)
			}
			if cpu.GetPSI() == nil || mem.GetPSI() == nil {
				t.Errorf("cpu or memory pressure not read: %v, %v", cpu.GetPSI(), mem.GetPSI())
			}

			data, err := typeurl.MarshalAnyToProto(got)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			back, err := typeurl.UnmarshalAny(data)
			if err != nil {
				t.Fatalf("unmarshal %s: %v", data.GetTypeUrl(), err)
			}
			if b, ok := back.(*cgroup2stats.Metrics); !ok || b.GetCPU().GetUsageUsec() != 1500000 || b.GetMemory().GetUsage() != 35651584 {
				t.Errorf("metrics through typeurl (%s) = %T %v", data.GetTypeUrl(), back, back)
			}
		})
	}
}

// TestUnifiedRemove removes a cgroup v2 pod cgroup with a container's
// cgroup nested in it, as the pod cgroup of a stopped pod has until it goes:
// both go, the cgroups above stay, and a second Remove is a no-op. A cgroup
// with a process in it, at any depth, stays.
func TestUnifiedRemove(t *testing.T) {
	for _, p := range podPaths {
		for _, busy := range []bool{false, true} {
			name := p.driver
			if busy {
				name += "/busy"
			}
			t.Run(name, func(t *testing.T) {
				h, dir := fakeUnified(t, p.path, nil)
				child := filepath.Join(dir, "cri-containerd-ctr1")
				procs := ""
				if busy {
					procs = "4242\n"
				}
				if err := os.Mkdir(child, 0o755); err != nil {
					t.Fatal(err)
				}
				for name, v := range podFiles() {
					if name == "cgroup.procs" {
						v = procs
					}
					if err := os.WriteFile(filepath.Join(child, name), []byte(v), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				if busy {
					if err := h.remove(p.path); err == nil {
						t.Errorf("remove of a cgroup with a process = nil, want an error")
					}
					if _, err := os.Stat(child); err != nil {
						t.Errorf("busy cgroup removed: %v", err)
					}
					return
				}
				for range 2 {
					if err := h.remove(p.path); err != nil {
						t.Fatalf("remove: %v", err)
					}
				}
				if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s left: %v", dir, err)
				}
				if _, err := os.Stat(filepath.Dir(dir)); err != nil {
					t.Errorf("the cgroup above the pod's went: %v", err)
				}
			})
		}
	}
}

// TestValidateUnifiedMode checks that unified keys are taken where pod
// cgroups are v2, and refused, not dropped, where they are v1 (a hybrid
// host's v2 tree has no controllers).
func TestValidateUnifiedMode(t *testing.T) {
	for _, tc := range []struct {
		mode    cgroups.CGMode
		unified map[string]string
		ok      bool
	}{
		{cgroups.Unified, map[string]string{"memory.high": "max", "pids.max": "100", "hugetlb.2MB.max": "0", "io.max": "8:0 rbps=1048576"}, true},
		{cgroups.Unified, nil, true},
		{cgroups.Unified, map[string]string{"cgroup.freeze": "1"}, false},
		{cgroups.Unified, map[string]string{"cgroup.procs": "1"}, false},
		{cgroups.Unified, map[string]string{"memory": "1"}, false},
		{cgroups.Unified, map[string]string{"../memory.max": "1"}, false},
		{cgroups.Unified, map[string]string{"memory.max/x": "1"}, false},
		{cgroups.Unified, map[string]string{"memory.max": "1073741824", "memory.high": "1G"}, true},
		{cgroups.Unified, map[string]string{"memory.max": " max\n"}, true},
		// Read by the kernel as 1 GiB, by berth's check of the pod's use
		// as no limit.
		{cgroups.Unified, map[string]string{"memory.max": "1G"}, false},
		{cgroups.Unified, map[string]string{"memory.max": "0x40000000"}, false},
		{cgroups.Hybrid, map[string]string{"memory.high": "max"}, false},
		{cgroups.Legacy, map[string]string{"memory.high": "max"}, false},
		{cgroups.Legacy, nil, true},
	} {
		err := hierarchy{mode: tc.mode}.validateUnified(tc.unified)
		if tc.ok != (err == nil) || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Errorf("mode %d, unified %v: %v, want ok %v or InvalidArgument", tc.mode, tc.unified, err, tc.ok)
		}
	}
}

// TestHost checks the hierarchy the package functions use: the host's mode,
// and cgroup v2 where that mode mounts it.
func TestHost(t *testing.T) {
	h := host()
	if h.mode != cgroups.Mode() {
		t.Errorf("host mode %d, cgroups.Mode() %d", h.mode, cgroups.Mode())
	}
	want := "/sys/fs/cgroup"
	if h.mode == cgroups.Hybrid {
		want = "/sys/fs/cgroup/unified"
	}
	if h.unified != want {
		t.Errorf("host's cgroup v2 at %s, want %s", h.unified, want)
	}
}
