package podcgroup

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/containerd/cgroups/v3"
)

func TestPath(t *testing.T) {
	for _, tc := range []struct{ parent, want string }{
		{"/kubepods/burstable/pod1", "/kubepods/burstable/pod1"},
		{"kubepods/pod1", "/kubepods/pod1"},
		{"kubepods.slice", "/kubepods.slice"},
		{"kubepods-burstable-pod1.slice", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"},
		// A path that happens to end in .slice is a cgroupfs path.
		{"/system.slice/foo.slice", "/system.slice/foo.slice"},
	} {
		if got := Path(tc.parent); got != tc.want {
			t.Errorf("Path(%q) = %q, want %q", tc.parent, got, tc.want)
		}
	}
}

// TestSame: parents name one cgroup when equal, or when a slice name's
// place in the tree is a cgroupfs path's.
func TestSame(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"/kubepods/pod1", "/kubepods/pod1", true},
		{"/kubepods/pod1", "/kubepods/pod2", false},
		{"kubepods-pod1.slice", "kubepods-pod1.slice", true},
		{"kubepods-pod1.slice", "kubepods-pod2.slice", false},
		{"kubepods-pod1.slice", "/kubepods.slice/kubepods-pod1.slice", true},
		{"/kubepods.slice/kubepods-pod1.slice", "kubepods-pod1.slice", true},
		{"kubepods-pod1.slice", "/kubepods-pod1.slice", false},
	} {
		if got := Same(tc.a, tc.b); got != tc.want {
			t.Errorf("Same(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestRemove removes a cgroup made in every hierarchy, as runc makes a
// container's, and a second time, when it is gone.
func TestRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("makes cgroups: needs root")
	}
	path := "/berth-podcgroup-test-" + strconv.Itoa(os.Getpid())
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*"))
	made := 0
	if cgroups.Mode() == cgroups.Unified {
		dirs = []string{"/sys/fs/cgroup"}
	}
	for _, d := range dirs {
		if err := os.Mkdir(filepath.Join(d, path), 0o755); err == nil {
			made++
		}
	}
	if made == 0 {
		t.Skip("no cgroup hierarchy to make a cgroup in")
	}
	for range 2 {
		if err := Remove(path); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, path)); err == nil {
			t.Errorf("%s left", filepath.Join(d, path))
		}
	}
}
