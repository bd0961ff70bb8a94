package podsandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/sys"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// shmSize is the size of a pod's /dev/shm, the same as the built-in's.
const shmSize = 64 << 20

// Files are one sandbox's files. The real files live in berth's own root and
// state directories; CRI reads them only from its own
// <cri root>/sandboxes/<id> and <cri state>/sandboxes/<id>, so those are
// symlinks to berth's. CRI deletes unknown directories there at startup but
// skips symlinks, and follows them when it mounts the files into app
// containers.
type Files struct {
	// RootDir holds hostname, hosts and resolv.conf.
	RootDir string
	// StateDir holds the shm mount; it lives on tmpfs and is gone after a
	// reboot, like the pod.
	StateDir string
	// CRIRootDir and CRIStateDir are the symlinks CRI reads through.
	CRIRootDir  string
	CRIStateDir string
}

// Dirs are the parent directories of every sandbox's files.
type Dirs struct {
	Root, State       string // berth's
	CRIRoot, CRIState string // CRI's
}

// Files returns the paths of sandbox id's files.
func (d Dirs) Files(id string) Files {
	return Files{
		RootDir:     filepath.Join(d.Root, "sandboxes", id),
		StateDir:    filepath.Join(d.State, "sandboxes", id),
		CRIRootDir:  filepath.Join(d.CRIRoot, "sandboxes", id),
		CRIStateDir: filepath.Join(d.CRIState, "sandboxes", id),
	}
}

func (f Files) Hostname() string   { return filepath.Join(f.RootDir, "hostname") }
func (f Files) Hosts() string      { return filepath.Join(f.RootDir, "hosts") }
func (f Files) ResolvConf() string { return filepath.Join(f.RootDir, "resolv.conf") }
func (f Files) Shm() string        { return filepath.Join(f.StateDir, "shm") }

// UserNS is where the pod's user namespace is pinned, when the pause joins
// the one CRI made the pod's netns in.
func (f Files) UserNS() string { return filepath.Join(f.StateDir, "pinned-namespaces", "user") }

// HostFiles are the host files a pod's files default to.
type HostFiles struct {
	Hosts, ResolvConf string
	// Hostname returns the node's hostname, used when the pod has none.
	Hostname func() (string, error)
}

// DefaultHostFiles are the host's own.
var DefaultHostFiles = HostFiles{Hosts: "/etc/hosts", ResolvConf: resolvConf, Hostname: os.Hostname}

// Create writes the sandbox's files, mounts its /dev/shm and links them
// into CRI's directories. On error, the caller removes what was made with
// Remove.
func (f Files) Create(cfg *runtimeapi.PodSandboxConfig, host HostFiles) error {
	for _, d := range []string{f.RootDir, f.StateDir, filepath.Dir(f.CRIRootDir), filepath.Dir(f.CRIStateDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create sandbox directory: %w", err)
		}
	}
	hostname := cfg.GetHostname()
	if hostname == "" {
		var err error
		if hostname, err = host.Hostname(); err != nil {
			return fmt.Errorf("get node hostname: %w", err)
		}
	}
	if err := os.WriteFile(f.Hostname(), []byte(hostname+"\n"), 0o644); err != nil {
		return fmt.Errorf("write hostname: %w", err)
	}
	if err := copyFile(host.Hosts, f.Hosts()); err != nil {
		return fmt.Errorf("write hosts: %w", err)
	}
	if dns := cfg.GetDnsConfig(); dns != nil {
		if err := os.WriteFile(f.ResolvConf(), []byte(renderResolvConf(dns)), 0o644); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
	} else if err := copyFile(host.ResolvConf, f.ResolvConf()); err != nil {
		// No DNS config means the node's, as in the built-in controller.
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	if cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetIpc() != runtimeapi.NamespaceMode_NODE {
		if err := os.MkdirAll(f.Shm(), 0o700); err != nil {
			return fmt.Errorf("create shm directory: %w", err)
		}
		data := fmt.Sprintf("mode=1777,size=%d", shmSize)
		if err := unix.Mount("shm", f.Shm(), "tmpfs", unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
			return fmt.Errorf("mount shm: %w", err)
		}
	}
	return f.link(false)
}

// PinUserNamespace bind-mounts the user namespace that owns the network
// namespace at netnsPath onto UserNS, for the pause container to join. CRI
// made that netns in a user namespace of the pod's mappings; the pause
// process must be in it to own its netns. Remove unmounts it.
func (f Files) PinUserNamespace(netnsPath string) error {
	if err := os.MkdirAll(filepath.Dir(f.UserNS()), 0o755); err != nil {
		return fmt.Errorf("create pinned namespace directory: %w", err)
	}
	if err := os.WriteFile(f.UserNS(), nil, 0o444); err != nil {
		return fmt.Errorf("create user namespace pin: %w", err)
	}
	netns, err := os.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("open pod network namespace: %w", err)
	}
	defer netns.Close()
	userns, err := sys.GetUsernsForNamespace(netns.Fd())
	if err != nil {
		return fmt.Errorf("user namespace of %s: %w", netnsPath, err)
	}
	defer userns.Close()
	if err := unix.Mount(userns.Name(), f.UserNS(), "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("pin user namespace: %w", err)
	}
	return nil
}

// Relink puts back the links into CRI's directories if they are missing,
// after a crash. Links already there are left alone, and so are files a
// reboot took: the state directory is on tmpfs, and with it went CRI's,
// which it would have linked into; nothing the pod had there is left to
// link.
func (f Files) Relink() error {
	return f.link(true)
}

func (f Files) link(relink bool) error {
	for _, l := range []struct{ target, link string }{
		{f.RootDir, f.CRIRootDir}, {f.StateDir, f.CRIStateDir},
	} {
		if relink {
			if _, err := os.Stat(l.target); errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		err := os.Symlink(l.target, l.link)
		if err != nil && !(relink && errors.Is(err, fs.ErrExist)) {
			return fmt.Errorf("link sandbox files into CRI's directory: %w", err)
		}
	}
	return nil
}

// UnmountShm unmounts the sandbox's /dev/shm. It is a no-op if it is not
// mounted.
func (f Files) UnmountShm() error {
	return unmount("shm", f.Shm())
}

// Remove unmounts and deletes every file of the sandbox, including the CRI
// links. It is idempotent.
func (f Files) Remove() error {
	if err := f.UnmountShm(); err != nil {
		return err
	}
	if err := unmount("pinned user namespace", f.UserNS()); err != nil {
		return err
	}
	var errs []error
	for _, link := range []string{f.CRIRootDir, f.CRIStateDir} {
		// Only a link is ours to remove: a directory there is CRI's.
		if fi, err := os.Lstat(link); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	for _, d := range []string{f.RootDir, f.StateDir} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove sandbox files: %w", err)
	}
	return nil
}

// unmount unmounts everything at path; nothing there is not an error.
func unmount(what, path string) error {
	if err := mount.UnmountAll(path, unix.MNT_DETACH); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unmount %s: %w", what, err)
	}
	return nil
}

// renderResolvConf renders a pod's DNS config in resolv.conf format.
func renderResolvConf(dns *runtimeapi.DNSConfig) string {
	var b strings.Builder
	if s := dns.GetSearches(); len(s) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(s, " "))
	}
	for _, ns := range dns.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", ns)
	}
	if o := dns.GetOptions(); len(o) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(o, " "))
	}
	return b.String()
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", src, errdefs.ErrFailedPrecondition)
		}
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}
