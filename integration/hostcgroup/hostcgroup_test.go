package hostcgroup

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The tests run the package on fake cgroup trees of both versions in a
// temporary directory, whatever the host's, with the files in the kernel's
// formats; the integration tests run it on the host's own.

// pod is a pod cgroup as kubelet's cgroupfs driver names it.
const pod = "/berthk8s/kubepods/pod1"

// fakeTree makes a cgroup tree of v2 (unified) or v1 holding files (path
// under the root: content) and returns its hierarchy.
func fakeTree(t *testing.T, unified bool, files map[string]string) hierarchy {
	t.Helper()
	h := hierarchy{unified: unified, root: t.TempDir()}
	for name, content := range files {
		path := filepath.Join(h.root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name    string
		unified bool
		files   map[string]string
		want    Limits
		usage   int64
	}{{
		name: "v1",
		files: map[string]string{
			"cpu" + pod + "/cpu.cfs_quota_us":         "40000\n",
			"cpu" + pod + "/cpu.cfs_period_us":        "100000\n",
			"cpu" + pod + "/cpu.shares":               "409\n",
			"memory" + pod + "/memory.limit_in_bytes": "134217728\n",
			"memory" + pod + "/memory.usage_in_bytes": "41943040\n",
		},
		want:  Limits{Quota: 40000, Period: 100000, CPUWeight: 409, Memory: 128 << 20},
		usage: 40 << 20,
	}, {
		name: "v1 no limits",
		files: map[string]string{
			"cpu" + pod + "/cpu.cfs_quota_us":         "-1\n",
			"cpu" + pod + "/cpu.cfs_period_us":        "100000\n",
			"cpu" + pod + "/cpu.shares":               "1024\n",
			"memory" + pod + "/memory.limit_in_bytes": "9223372036854771712\n",
			"memory" + pod + "/memory.usage_in_bytes": "0\n",
		},
		want: Limits{Quota: -1, Period: 100000, CPUWeight: 1024, Memory: 9223372036854771712},
	}, {
		name:    "v2",
		unified: true,
		files: map[string]string{
			pod + "/cpu.max":        "40000 100000\n",
			pod + "/cpu.weight":     "16\n",
			pod + "/memory.max":     "134217728\n",
			pod + "/memory.current": "41943040\n",
		},
		want:  Limits{Quota: 40000, Period: 100000, CPUWeight: 16, Memory: 128 << 20},
		usage: 40 << 20,
	}, {
		name:    "v2 no limits",
		unified: true,
		files: map[string]string{
			pod + "/cpu.max":        "max 100000\n",
			pod + "/cpu.weight":     "100\n",
			pod + "/memory.max":     "max\n",
			pod + "/memory.current": "0\n",
		},
		want: Limits{Quota: -1, Period: 100000, CPUWeight: 100, Memory: math.MaxInt64},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			h := fakeTree(t, tc.unified, tc.files)
			got, err := h.read(pod)
			if err != nil || got != tc.want {
				t.Errorf("read = %+v, %v; want %+v", got, err, tc.want)
			}
			if err := h.check(pod, tc.want); err != nil {
				t.Errorf("check of what the files hold: %v", err)
			}
			// Each file the tree has holds something other than more: check
			// names every one of them.
			more := tc.want
			more.Quota, more.Period, more.CPUWeight, more.Memory = more.Quota+1, more.Period+1, more.CPUWeight+1, more.Memory-1
			err = h.check(pod, more)
			for _, f := range h.files(pod) {
				if err == nil || !strings.Contains(err.Error(), f.path+" = ") {
					t.Errorf("check of other limits: %v, want a mismatch of %s", err, f.path)
				}
			}
			if usage, err := h.memoryUsage(pod); err != nil || usage != tc.usage {
				t.Errorf("memoryUsage = %d, %v; want %d", usage, err, tc.usage)
			}
		})
	}
}

// TestMissing reads a cgroup that is not there, or has a file that does
// not parse: errors, not zero limits.
func TestMissing(t *testing.T) {
	for _, unified := range []bool{false, true} {
		h := fakeTree(t, unified, map[string]string{pod + "/cpu.max": "40000\n"})
		if l, err := h.read(pod); err == nil {
			t.Errorf("read (unified %v) of a cgroup without its files = %+v, want an error", unified, l)
		}
		if err := h.check(pod, Limits{}); err == nil {
			t.Errorf("check (unified %v) of a cgroup without its files passed", unified)
		}
		if _, err := h.memoryUsage(pod); err == nil {
			t.Errorf("memoryUsage (unified %v) of a cgroup without memory files passed", unified)
		}
	}
	h := fakeTree(t, true, map[string]string{
		pod + "/cpu.max": "40000\n", pod + "/cpu.weight": "16\n", pod + "/memory.max": "max\n",
	})
	if l, err := h.read(pod); err == nil || !strings.Contains(err.Error(), "cpu.max") {
		t.Errorf("read of a cpu.max without a period = %+v, %v; want an error naming cpu.max", l, err)
	}
}

// TestCPUWeight converts the shares the integration tests use as kubelet
// does: kubelet's pod cgroup of 300m and 400m, berth's 512 shares, and the
// default 1024.
func TestCPUWeight(t *testing.T) {
	for _, tc := range []struct {
		shares, kubelet uint64
	}{
		{2, 1},
		{307, 12},
		{409, 16},
		{512, 20},
		{1024, 39},
		{262144, 10000},
	} {
		if got := KubeletWeight(tc.shares); got != tc.kubelet {
			t.Errorf("KubeletWeight(%d) = %d, want %d", tc.shares, got, tc.kubelet)
		}
		v1, v2 := hierarchy{}, hierarchy{unified: true}
		if got := v1.cpuWeight(tc.shares); got != tc.shares {
			t.Errorf("v1 cpuWeight(%d) = %d, want the shares", tc.shares, got)
		}
		if got := v2.cpuWeight(tc.shares); got != tc.kubelet {
			t.Errorf("v2 cpuWeight(%d) = %d, want %d", tc.shares, got, tc.kubelet)
		}
	}
}
