package shimtask

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeHost writes a host's procfs files for HostCgroups: pid 100's
// cgroup file, and the shim's mountinfo. mountinfo's lines name their
// mount points relative to dir, as "@/…".
func fakeHost(t *testing.T, cgroup, mountinfo string) (HostCgroups, string) {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string]string{
		"proc/100/cgroup":     cgroup,
		"proc/self/mountinfo": strings.ReplaceAll(mountinfo, "@", dir),
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return HostCgroups{Proc: filepath.Join(dir, "proc"), Unified: filepath.Join(dir, "unified")}, dir
}

// v1Mounts are the cgroup mounts of a cgroup v1 host (this one's), with a
// cgroup v2 hierarchy mounted, and empty, beside them (hybrid).
const v1Mounts = `31 23 0:28 / @/sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / @/sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 %s @/sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / @/sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / @/sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / @/sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

func TestHostCgroupsOf(t *testing.T) {
	const v1 = `12:pids:/kubepods/pod1/ctr
11:devices:/kubepods/pod1/ctr
4:cpu,cpuacct:/kubepods/pod1/ctr
1:name=systemd:/kubepods/pod1/ctr
0::/
`
	for _, tc := range []struct {
		name      string
		cgroup    string
		mountinfo string
		// want is the cgroup's directory under the fake host's root;
		// "" wants an error.
		want string
	}{
		{"cgroup v1", v1, fmt.Sprintf(v1Mounts, "/"), "/sys/fs/cgroup/devices/kubepods/pod1/ctr"},
		// The shim sees a mount of the hierarchy's /kubepods, as on a
		// node that is itself a container with the host's cgroup
		// namespace.
		{"cgroup v1, hierarchy mounted from below its root", v1, fmt.Sprintf(v1Mounts, "/kubepods"), "/sys/fs/cgroup/devices/pod1/ctr"},
		{"cgroup v1, cgroup is the mount's root", v1, fmt.Sprintf(v1Mounts, "/kubepods/pod1/ctr"), "/sys/fs/cgroup/devices"},
		{"cgroup v1, cgroup outside the mount", v1, fmt.Sprintf(v1Mounts, "/system.slice"), ""},
		{"cgroup v1, no devices hierarchy mounted", v1, "41 31 0:38 / @/sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", ""},
		{"cgroup v1, outside the shim's cgroup namespace", "11:devices:/../../ctr\n0::/\n", fmt.Sprintf(v1Mounts, "/"), ""},
		{"cgroup v2", "0::/kubepods.slice/cri-containerd-ctr.scope\n", "", "/unified/kubepods.slice/cri-containerd-ctr.scope"},
		// A named v1 hierarchy (systemd's, for an old runtime) beside
		// the unified one does not make the host cgroup v1.
		{"cgroup v2, named v1 hierarchy", "1:name=systemd:/ctr\n0::/kubepods/ctr\n", "", "/unified/kubepods/ctr"},
		{"cgroup v2, outside the shim's cgroup namespace", "0::/../ctr\n", "", ""},
		{"malformed", "devices\n", "", ""},
		{"empty", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, root := fakeHost(t, tc.cgroup, tc.mountinfo)
			got, err := h.Of(100)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("Of = %q, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(root, tc.want); got != want {
				t.Errorf("Of = %q, want %q", got, want)
			}
		})
	}

	h, _ := fakeHost(t, v1, "")
	if _, err := h.Of(200); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Of a pid with no /proc entry: %v, want fs.ErrNotExist", err)
	}
}

func TestHostCgroupsProcs(t *testing.T) {
	root := t.TempDir()
	for dir, procs := range map[string]string{
		"ctr":              "100\n101\n",
		"ctr/init.scope":   "102\n",
		"ctr/empty":        "",
		"ctr/init.scope/a": "103\n104\n",
		"other":            "200\n",
	} {
		p := filepath.Join(root, dir)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "cgroup.procs"), []byte(procs), 0o644); err != nil {
			t.Fatal(err)
		}
		// The files of a cgroup's controllers are not listed.
		if err := os.WriteFile(filepath.Join(p, "memory.stat"), []byte("cache 0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var h HostCgroups
	got, err := h.Procs(filepath.Join(root, "ctr"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []uint32{100, 101, 102, 103, 104}; !slices.Equal(got, want) {
		t.Errorf("Procs = %v, want %v", got, want)
	}
	if got, err := h.Procs(filepath.Join(root, "ctr", "empty")); err != nil || len(got) != 0 {
		t.Errorf("Procs of an empty cgroup = %v, %v, want none", got, err)
	}
	if _, err := h.Procs(filepath.Join(root, "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Procs of a cgroup that is gone: %v, want fs.ErrNotExist", err)
	}
	if err := os.WriteFile(filepath.Join(root, "other", "cgroup.procs"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Procs(filepath.Join(root, "other")); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Procs of a malformed cgroup.procs: %v, want an error that is not fs.ErrNotExist", err)
	}
}

// TestHostCgroups finds and lists this test's own cgroup, which holds the
// test.
func TestHostCgroups(t *testing.T) {
	pid := os.Getpid()
	var h HostCgroups
	dir, err := h.Of(pid)
	if err != nil {
		t.Skipf("no cgroup found here: %v", err)
	}
	pids, err := h.Procs(dir)
	if err != nil {
		t.Skipf("cgroup %s unreadable here: %v", dir, err)
	}
	if !slices.Contains(pids, uint32(pid)) {
		t.Errorf("Procs(%s) = %v, want it to hold %d", dir, pids, pid)
	}
}
