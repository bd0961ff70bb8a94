package podsandbox

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	fakeHostHosts      = "127.0.0.1 localhost\n10.0.0.1 node-1\n"
	fakeHostResolvConf = "search host.example\nnameserver 10.0.0.53\n"
	fakeNodeHostname   = "node-1"
)

// testDirs are berth's and CRI's directories under a fresh temporary
// directory.
func testDirs(t *testing.T) Dirs {
	t.Helper()
	base := t.TempDir()
	return Dirs{
		Root:     filepath.Join(base, "berth-root"),
		State:    filepath.Join(base, "berth-state"),
		CRIRoot:  filepath.Join(base, "cri-root"),
		CRIState: filepath.Join(base, "cri-state"),
	}
}

// fakeHostFiles are host files with known content in a temporary directory.
func fakeHostFiles(t *testing.T) HostFiles {
	t.Helper()
	dir := t.TempDir()
	h := HostFiles{
		Hosts:      filepath.Join(dir, "hosts"),
		ResolvConf: filepath.Join(dir, "resolv.conf"),
		Hostname:   func() (string, error) { return fakeNodeHostname, nil },
	}
	for path, content := range map[string]string{h.Hosts: fakeHostHosts, h.ResolvConf: fakeHostResolvConf} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func testRequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting the sandbox's shm needs root")
	}
}

// cleanupFiles removes f's files when the test ends, and makes sure nothing
// stays mounted even if Remove is broken, so that t.TempDir can be removed.
// Register it after the temporary directories so that it runs before their
// removal.
func testCleanupFiles(t *testing.T, f Files) {
	t.Helper()
	t.Cleanup(func() {
		if err := f.Remove(); err != nil {
			t.Errorf("cleanup: remove: %v", err)
		}
		if testMounted(t, f.Shm()) {
			t.Errorf("cleanup: %s still mounted after Remove", f.Shm())
			if err := unix.Unmount(f.Shm(), unix.MNT_DETACH); err != nil {
				t.Errorf("cleanup: unmount %s: %v", f.Shm(), err)
			}
		}
	})
}

// shmMount returns the mount at path, or nil.
func testMountAt(t *testing.T, path string) *mountinfo.Info {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		t.Fatalf("read mountinfo: %v", err)
	}
	if len(infos) == 0 {
		return nil
	}
	return infos[len(infos)-1]
}

func testMounted(t *testing.T, path string) bool {
	t.Helper()
	return testMountAt(t, path) != nil
}

func testReadFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

func testIsSymlinkTo(t *testing.T, link, target string) {
	t.Helper()
	fi, err := os.Lstat(link)
	if err != nil {
		t.Fatalf("lstat %s: %v", link, err)
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("%s is %v, want a symlink", link, fi.Mode())
	}
	if got, err := os.Readlink(link); err != nil || got != target {
		t.Errorf("readlink %s = %q, %v, want %q", link, got, err, target)
	}
}

func testNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lstat %s: %v, want not exist", path, err)
	}
}

func TestDirsFiles(t *testing.T) {
	d := Dirs{Root: "/var/lib/berth", State: "/run/berth", CRIRoot: "/var/lib/cri", CRIState: "/run/cri"}
	for _, tc := range []struct {
		id   string
		want Files
	}{
		{
			id: "abc",
			want: Files{
				RootDir:     "/var/lib/berth/sandboxes/abc",
				StateDir:    "/run/berth/sandboxes/abc",
				CRIRootDir:  "/var/lib/cri/sandboxes/abc",
				CRIStateDir: "/run/cri/sandboxes/abc",
			},
		},
		{
			id: "0123456789abcdef",
			want: Files{
				RootDir:     "/var/lib/berth/sandboxes/0123456789abcdef",
				StateDir:    "/run/berth/sandboxes/0123456789abcdef",
				CRIRootDir:  "/var/lib/cri/sandboxes/0123456789abcdef",
				CRIStateDir: "/run/cri/sandboxes/0123456789abcdef",
			},
		},
	} {
		t.Run(tc.id, func(t *testing.T) {
			f := d.Files(tc.id)
			if f != tc.want {
				t.Errorf("Files(%q) = %+v, want %+v", tc.id, f, tc.want)
			}
			for _, p := range []struct{ got, want string }{
				{f.Hostname(), tc.want.RootDir + "/hostname"},
				{f.Hosts(), tc.want.RootDir + "/hosts"},
				{f.ResolvConf(), tc.want.RootDir + "/resolv.conf"},
				{f.Shm(), tc.want.StateDir + "/shm"},
			} {
				if p.got != p.want {
					t.Errorf("path = %q, want %q", p.got, p.want)
				}
			}
		})
	}
}

func TestResolvConf(t *testing.T) {
	for _, tc := range []struct {
		name string
		dns  *runtimeapi.DNSConfig
		want string
	}{
		{name: "nil", dns: nil, want: ""},
		{name: "empty", dns: &runtimeapi.DNSConfig{}, want: ""},
		{
			name: "full",
			dns: &runtimeapi.DNSConfig{
				Servers:  []string{"1.1.1.1", "8.8.8.8"},
				Searches: []string{"a", "b"},
				Options:  []string{"ndots:5"},
			},
			want: "search a b\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:5\n",
		},
		{
			name: "servers only",
			dns:  &runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}},
			want: "nameserver 10.96.0.10\n",
		},
		{
			name: "searches only",
			dns:  &runtimeapi.DNSConfig{Searches: []string{"default.svc.cluster.local", "svc.cluster.local"}},
			want: "search default.svc.cluster.local svc.cluster.local\n",
		},
		{
			name: "options only",
			dns:  &runtimeapi.DNSConfig{Options: []string{"ndots:5", "timeout:1", "edns0"}},
			want: "options ndots:5 timeout:1 edns0\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := renderResolvConf(tc.dns); got != tc.want {
				t.Errorf("renderResolvConf() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFilesCreate(t *testing.T) {
	for _, tc := range []struct {
		name         string
		hostname     string
		dns          *runtimeapi.DNSConfig
		hostIPC      bool
		wantHostname string
		wantResolv   string
	}{
		{
			name:     "pod hostname and dns",
			hostname: "pod-hostname",
			dns: &runtimeapi.DNSConfig{
				Servers:  []string{"1.1.1.1", "8.8.8.8"},
				Searches: []string{"a", "b"},
				Options:  []string{"ndots:5"},
			},
			wantHostname: "pod-hostname\n",
			wantResolv:   "search a b\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:5\n",
		},
		{
			name:         "node hostname and host dns",
			wantHostname: fakeNodeHostname + "\n",
			wantResolv:   fakeHostResolvConf,
		},
		{
			name:         "host ipc",
			hostname:     "pod-hostname",
			hostIPC:      true,
			wantHostname: "pod-hostname\n",
			wantResolv:   fakeHostResolvConf,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.hostIPC {
				testRequireRoot(t)
			}
			d, host := testDirs(t), fakeHostFiles(t)
			f := d.Files("sb1")
			testCleanupFiles(t, f)
			cfg := &runtimeapi.PodSandboxConfig{Hostname: tc.hostname, DnsConfig: tc.dns}
			if tc.hostIPC {
				cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{
					SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
						NamespaceOptions: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE},
					},
				}
			}

			if err := f.Create(cfg, host); err != nil {
				t.Fatalf("Create: %v", err)
			}

			for _, c := range []struct{ path, want string }{
				{f.Hostname(), tc.wantHostname},
				{f.Hosts(), fakeHostHosts},
				{f.ResolvConf(), tc.wantResolv},
				// CRI reads the same files through its links.
				{filepath.Join(f.CRIRootDir, "hostname"), tc.wantHostname},
				{filepath.Join(f.CRIRootDir, "hosts"), fakeHostHosts},
				{filepath.Join(f.CRIRootDir, "resolv.conf"), tc.wantResolv},
			} {
				if got := testReadFile(t, c.path); got != c.want {
					t.Errorf("%s = %q, want %q", c.path, got, c.want)
				}
			}
			testIsSymlinkTo(t, f.CRIRootDir, f.RootDir)
			testIsSymlinkTo(t, f.CRIStateDir, f.StateDir)

			m := testMountAt(t, f.Shm())
			if tc.hostIPC {
				if m != nil {
					t.Errorf("shm mounted with host IPC: %+v", m)
				}
				testNotExist(t, f.Shm())
				return
			}
			if m == nil {
				t.Fatalf("%s is not a mount point", f.Shm())
			}
			if m.FSType != "tmpfs" {
				t.Errorf("shm fs type = %q, want tmpfs", m.FSType)
			}
			opts := strings.Split(m.Options, ",")
			for _, o := range []string{"nosuid", "nodev", "noexec"} {
				if !slices.Contains(opts, o) {
					t.Errorf("shm mount options %q lack %q", m.Options, o)
				}
			}
			// tmpfs shows mode only when it is not its default 1777, so the
			// mode is checked with a stat below.
			if vfs := strings.Split(m.VFSOptions, ","); !slices.Contains(vfs, "size=65536k") {
				t.Errorf("shm super options %q lack size=65536k", m.VFSOptions)
			}
			// The mount is reachable through CRI's link, with mode 1777.
			if fi, err := os.Stat(filepath.Join(f.CRIStateDir, "shm")); err != nil || fi.Mode().Perm() != 0o777 || fi.Mode()&fs.ModeSticky == 0 {
				t.Errorf("shm through CRI's link: %v, %v, want a 1777 directory", fi, err)
			}
		})
	}
}

func TestFilesCreateErrors(t *testing.T) {
	hostIPC := &runtimeapi.LinuxPodSandboxConfig{
		SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE},
		},
	}
	errHostname := errors.New("no hostname")
	for _, tc := range []struct {
		name   string
		cfg    *runtimeapi.PodSandboxConfig
		modify func(t *testing.T, h *HostFiles, f Files)
		is     func(error) bool
	}{
		{
			name: "hostname error",
			cfg:  &runtimeapi.PodSandboxConfig{Linux: hostIPC},
			modify: func(_ *testing.T, h *HostFiles, _ Files) {
				h.Hostname = func() (string, error) { return "", errHostname }
			},
			is: func(err error) bool { return errors.Is(err, errHostname) },
		},
		{
			name: "no host hosts file",
			cfg:  &runtimeapi.PodSandboxConfig{Hostname: "pod", Linux: hostIPC},
			modify: func(_ *testing.T, h *HostFiles, _ Files) {
				h.Hosts = filepath.Join(filepath.Dir(h.Hosts), "missing")
			},
			is: errdefs.IsFailedPrecondition,
		},
		{
			name: "no host resolv.conf",
			cfg:  &runtimeapi.PodSandboxConfig{Hostname: "pod", Linux: hostIPC},
			modify: func(_ *testing.T, h *HostFiles, _ Files) {
				h.ResolvConf = filepath.Join(filepath.Dir(h.ResolvConf), "missing")
			},
			is: errdefs.IsFailedPrecondition,
		},
		{
			name: "CRI directory in the way",
			cfg:  &runtimeapi.PodSandboxConfig{Hostname: "pod", Linux: hostIPC},
			modify: func(t *testing.T, _ *HostFiles, f Files) {
				if err := os.MkdirAll(f.CRIRootDir, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			is: func(err error) bool { return errors.Is(err, fs.ErrExist) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, host := testDirs(t), fakeHostFiles(t)
			f := d.Files("sb1")
			testCleanupFiles(t, f)
			tc.modify(t, &host, f)

			err := f.Create(tc.cfg, host)
			if err == nil {
				t.Fatal("Create succeeded, want an error")
			}
			if !tc.is(err) {
				t.Errorf("Create error %v has the wrong kind", err)
			}
			// The caller cleans up with Remove.
			if err := f.Remove(); err != nil {
				t.Fatalf("Remove after failed Create: %v", err)
			}
			testNotExist(t, f.RootDir)
			testNotExist(t, f.StateDir)
		})
	}
}

func TestFilesRemove(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hostIPC bool
	}{
		{name: "pod ipc"},
		{name: "host ipc", hostIPC: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.hostIPC {
				testRequireRoot(t)
			}
			d, host := testDirs(t), fakeHostFiles(t)
			f := d.Files("sb1")
			other := d.Files("sb2")
			testCleanupFiles(t, f)
			testCleanupFiles(t, other)
			cfg := &runtimeapi.PodSandboxConfig{Hostname: "pod"}
			if tc.hostIPC {
				cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{
					SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
						NamespaceOptions: &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE},
					},
				}
			}
			for _, sb := range []Files{f, other} {
				if err := sb.Create(cfg, host); err != nil {
					t.Fatalf("Create: %v", err)
				}
			}

			for i := range 2 {
				if err := f.Remove(); err != nil {
					t.Fatalf("Remove #%d: %v", i+1, err)
				}
				if testMounted(t, f.Shm()) {
					t.Errorf("Remove #%d: %s still mounted", i+1, f.Shm())
				}
				for _, p := range []string{f.RootDir, f.StateDir, f.CRIRootDir, f.CRIStateDir} {
					testNotExist(t, p)
				}
			}

			// The other sandbox is untouched.
			if got := testReadFile(t, filepath.Join(other.CRIRootDir, "hostname")); got != "pod\n" {
				t.Errorf("other sandbox's hostname = %q", got)
			}
			if !tc.hostIPC && !testMounted(t, other.Shm()) {
				t.Errorf("other sandbox's shm unmounted")
			}
		})
	}
}

// TestFilesRelink puts back the links a crash lost and keeps those still
// there; after a reboot, which empties the state directories, berth's and
// CRI's alike, it links the files that are left and nothing else.
func TestFilesRelink(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before func(t *testing.T, f Files)
		// linked is whether each of the root and the state directory is
		// linked into CRI's afterwards.
		linked [2]bool
	}{
		{name: "links kept", linked: [2]bool{true, true}},
		{name: "links lost", before: func(t *testing.T, f Files) {
			for _, l := range []string{f.CRIRootDir, f.CRIStateDir} {
				if err := os.Remove(l); err != nil {
					t.Fatal(err)
				}
			}
		}, linked: [2]bool{true, true}},
		{name: "reboot", before: func(t *testing.T, f Files) {
			if err := f.UnmountShm(); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{filepath.Dir(f.StateDir), filepath.Dir(f.CRIStateDir), f.CRIRootDir} {
				if err := os.RemoveAll(d); err != nil {
					t.Fatal(err)
				}
			}
		}, linked: [2]bool{true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testRequireRoot(t)
			f := testDirs(t).Files("sb1")
			testCleanupFiles(t, f)
			if err := f.Create(&runtimeapi.PodSandboxConfig{Hostname: "pod"}, fakeHostFiles(t)); err != nil {
				t.Fatalf("Create: %v", err)
			}
			if tc.before != nil {
				tc.before(t, f)
			}
			if err := f.Relink(); err != nil {
				t.Fatalf("Relink: %v", err)
			}
			for i, l := range []struct{ link, target string }{{f.CRIRootDir, f.RootDir}, {f.CRIStateDir, f.StateDir}} {
				if tc.linked[i] {
					testIsSymlinkTo(t, l.link, l.target)
				} else {
					testNotExist(t, l.link)
				}
			}
			if got := testReadFile(t, filepath.Join(f.CRIRootDir, "hostname")); got != "pod\n" {
				t.Errorf("hostname through CRI's link = %q", got)
			}
		})
	}
}

func TestFilesRemoveNeverCreated(t *testing.T) {
	f := testDirs(t).Files("sb1")
	for i := range 2 {
		if err := f.Remove(); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if err := f.UnmountShm(); err != nil {
		t.Fatalf("UnmountShm: %v", err)
	}
}

// TestFilesRemoveKeepsCRIDirectories checks that Remove deletes only links
// at CRI's paths: a real directory there belongs to CRI.
func TestFilesRemoveKeepsCRIDirectories(t *testing.T) {
	f := testDirs(t).Files("sb1")
	testCleanupFiles(t, f)
	for _, d := range []string{f.RootDir, f.StateDir, f.CRIRootDir, f.CRIStateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "file"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for i := range 2 {
		if err := f.Remove(); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	testNotExist(t, f.RootDir)
	testNotExist(t, f.StateDir)
	for _, d := range []string{f.CRIRootDir, f.CRIStateDir} {
		if got := testReadFile(t, filepath.Join(d, "file")); got != "x" {
			t.Errorf("%s/file = %q, want %q", d, got, "x")
		}
	}
}

func TestFilesUnmountShm(t *testing.T) {
	testRequireRoot(t)
	d, host := testDirs(t), fakeHostFiles(t)
	f := d.Files("sb1")
	testCleanupFiles(t, f)
	if err := f.Create(&runtimeapi.PodSandboxConfig{Hostname: "pod"}, host); err != nil {
		t.Fatalf("Create: %v", err)
	}
	// Mount a second tmpfs over the first: UnmountShm removes both.
	if err := unix.Mount("shm", f.Shm(), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount over shm: %v", err)
	}
	for i := range 2 {
		if err := f.UnmountShm(); err != nil {
			t.Fatalf("UnmountShm #%d: %v", i+1, err)
		}
		if testMounted(t, f.Shm()) {
			t.Fatalf("UnmountShm #%d: %s still mounted", i+1, f.Shm())
		}
	}
	// The files are still there; only the mount is gone.
	if got := testReadFile(t, f.Hostname()); got != "pod\n" {
		t.Errorf("hostname = %q after UnmountShm", got)
	}
}

// TestFilesPinUserNamespace pins the user namespace that owns this test's
// own network namespace (the host's), as Start does with the pod's, and
// checks that Remove unpins it.
func TestFilesPinUserNamespace(t *testing.T) {
	testRequireRoot(t)
	f := testDirs(t).Files("sb1")
	testCleanupFiles(t, f)
	if err := f.PinUserNamespace("/proc/self/ns/net"); err != nil {
		t.Fatalf("PinUserNamespace: %v", err)
	}
	if !testMounted(t, f.UserNS()) {
		t.Fatalf("%s is not mounted", f.UserNS())
	}
	var pinned, own unix.Stat_t
	if err := unix.Stat(f.UserNS(), &pinned); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/self/ns/user", &own); err != nil {
		t.Fatal(err)
	}
	if pinned.Ino != own.Ino || pinned.Dev != own.Dev {
		t.Errorf("pinned namespace %d:%d, want the netns owner %d:%d", pinned.Dev, pinned.Ino, own.Dev, own.Ino)
	}
	if err := f.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if testMounted(t, f.UserNS()) {
		t.Errorf("%s still mounted after Remove", f.UserNS())
	}
	testNotExist(t, f.StateDir)
}

func TestFilesPinUserNamespaceNoNetns(t *testing.T) {
	testRequireRoot(t)
	f := testDirs(t).Files("sb1")
	testCleanupFiles(t, f)
	if err := f.PinUserNamespace(filepath.Join(t.TempDir(), "no-such-netns")); err == nil {
		t.Fatal("PinUserNamespace of a missing netns succeeded")
	}
	if testMounted(t, f.UserNS()) {
		t.Errorf("%s mounted after a failed pin", f.UserNS())
	}
}
