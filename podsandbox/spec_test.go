package podsandbox

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/selinux/go-selinux"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/placement"
)

const (
	specTestID    = "0123456789abcdef"
	specTestNetNS = "/var/run/netns/cni-1234"
	specTestImage = "registry.k8s.io/pause:3.10.2"
)

var specTestFiles = Dirs{
	Root:     "/var/lib/berth",
	State:    "/run/berth",
	CRIRoot:  "/var/lib/cri",
	CRIState: "/run/cri",
}.Files(specTestID)

// specTestConfig is a typical pod sandbox config: its own network, pid and
// ipc namespaces, and no security settings.
func specTestConfig() *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name:      "pod-name",
			Namespace: "pod-namespace",
			Uid:       "pod-uid",
		},
		Hostname:     "pod-hostname",
		LogDirectory: "/var/log/pods/pod-uid",
		Annotations: map[string]string{
			"io.example/a":     "1",
			"io.example/b":     "2",
			"io.other/c":       "3",
			"io.example.sub/d": "4",
		},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{},
			},
		},
	}
}

// specTestSpecConfig is the SpecConfig of specTestConfig with a pause image
// that has an entrypoint, env, working dir and no user.
func specTestSpecConfig() SpecConfig {
	return SpecConfig{
		ID:     specTestID,
		Config: specTestConfig(),
		Image: imagespec.ImageConfig{
			Entrypoint: []string{"/pause"},
			Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "FOO=bar"},
			WorkingDir: "/work",
		},
		ImageName: specTestImage,
		NetNSPath: specTestNetNS,
		Files:     specTestFiles,
		Node:      Node{SeccompEnabled: true},
	}
}

func specTestContext() context.Context {
	return namespaces.WithNamespace(context.Background(), "k8s.io")
}

// generateTestSpec applies GenerateSpec's options to containerd's default
// spec, the way the controller does, with container c (a bare one if nil)
// and client.
func generateTestSpec(t *testing.T, c SpecConfig, client oci.Client, ctr *containers.Container) (*runtimespec.Spec, error) {
	t.Helper()
	spec, err := GenerateSpec(c)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { selinux.ReleaseLabel(spec.ProcessLabel) })
	if selinux.GetEnabled() {
		t.Fatal("SELinux is enabled: these tests expect it disabled")
	}
	if spec.ProcessLabel != "" {
		t.Errorf("ProcessLabel = %q, want \"\" with SELinux disabled", spec.ProcessLabel)
	}
	if ctr == nil {
		ctr = &containers.Container{ID: c.ID}
	}
	return oci.GenerateSpec(specTestContext(), client, ctr, spec.Opts...)
}

// mustGenerateTestSpec is generateTestSpec with a bare container and no
// client, failing the test on error.
func mustGenerateTestSpec(t *testing.T, c SpecConfig) *runtimespec.Spec {
	t.Helper()
	s, err := generateTestSpec(t, c, nil, nil)
	if err != nil {
		t.Fatalf("generate spec: %v", err)
	}
	return s
}

// testHostNetworkHostname clears the hostname of a host-network pod, as
// kubelet does: it has the node's.
func testHostNetworkHostname(c SpecConfig) {
	if testSecurityContext(c).GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		c.Config.Hostname = ""
	}
}

func testSecurityContext(c SpecConfig) *runtimeapi.LinuxSandboxSecurityContext {
	return c.Config.Linux.SecurityContext
}

func testFindMounts(s *runtimespec.Spec, dest string) []runtimespec.Mount {
	var ms []runtimespec.Mount
	for _, m := range s.Mounts {
		if filepath.Clean(m.Destination) == dest {
			ms = append(ms, m)
		}
	}
	return ms
}

func testSpecNamespaces(s *runtimespec.Spec) map[runtimespec.LinuxNamespaceType]string {
	ns := map[runtimespec.LinuxNamespaceType]string{}
	for _, n := range s.Linux.Namespaces {
		ns[n.Type] = n.Path
	}
	return ns
}

func TestGenerateSpecProcess(t *testing.T) {
	for _, tc := range []struct {
		name       string
		entrypoint []string
		cmd        []string
		workingDir string
		wantArgs   []string
		wantCwd    string
	}{
		{
			name:       "entrypoint only",
			entrypoint: []string{"/pause"},
			workingDir: "/work",
			wantArgs:   []string{"/pause"},
			wantCwd:    "/work",
		},
		{
			name:     "cmd only",
			cmd:      []string{"/pause", "-v"},
			wantArgs: []string{"/pause", "-v"},
			wantCwd:  "/",
		},
		{
			name:       "entrypoint and cmd",
			entrypoint: []string{"/bin/sh", "-c"},
			cmd:        []string{"exec /pause"},
			workingDir: "/",
			wantArgs:   []string{"/bin/sh", "-c", "exec /pause"},
			wantCwd:    "/",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			c.Image.Entrypoint = tc.entrypoint
			c.Image.Cmd = tc.cmd
			c.Image.WorkingDir = tc.workingDir
			s := mustGenerateTestSpec(t, c)

			if !slices.Equal(s.Process.Args, tc.wantArgs) {
				t.Errorf("args = %q, want %q", s.Process.Args, tc.wantArgs)
			}
			if s.Process.Cwd != tc.wantCwd {
				t.Errorf("cwd = %q, want %q", s.Process.Cwd, tc.wantCwd)
			}
			for _, env := range c.Image.Env {
				if !slices.Contains(s.Process.Env, env) {
					t.Errorf("env %q missing from %q", env, s.Process.Env)
				}
			}
			if s.Hostname != "pod-hostname" {
				t.Errorf("hostname = %q, want %q", s.Hostname, "pod-hostname")
			}
			if s.Root == nil || s.Root.Path != "rootfs" || !s.Root.Readonly {
				t.Errorf("root = %+v, want readonly %q", s.Root, "rootfs")
			}
		})
	}
}

// TestGenerateSpecEntrypointAliasing checks that the args are a copy: the
// image config's slices must not be appended to in place.
func TestGenerateSpecEntrypointAliasing(t *testing.T) {
	c := specTestSpecConfig()
	c.Image.Entrypoint = make([]string, 1, 4)
	c.Image.Entrypoint[0] = "/pause"
	c.Image.Cmd = []string{"-v"}
	mustGenerateTestSpec(t, c)
	if got := c.Image.Entrypoint[:2]; got[1] != "" {
		t.Errorf("image entrypoint backing array modified: %q", got)
	}
}

func TestGenerateSpecNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ns      *runtimeapi.NamespaceOption
		want    map[runtimespec.LinuxNamespaceType]string
		wantShm string
	}{
		{
			name: "pod namespaces",
			ns:   &runtimeapi.NamespaceOption{},
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.NetworkNamespace: specTestNetNS,
				runtimespec.IPCNamespace:     "",
				runtimespec.UTSNamespace:     "",
				runtimespec.PIDNamespace:     "",
				runtimespec.MountNamespace:   "",
			},
			wantShm: specTestFiles.Shm(),
		},
		{
			name: "nil namespace options",
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.NetworkNamespace: specTestNetNS,
				runtimespec.IPCNamespace:     "",
				runtimespec.UTSNamespace:     "",
				runtimespec.PIDNamespace:     "",
				runtimespec.MountNamespace:   "",
			},
			wantShm: specTestFiles.Shm(),
		},
		{
			name: "host network",
			ns:   &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.IPCNamespace:   "",
				runtimespec.PIDNamespace:   "",
				runtimespec.MountNamespace: "",
			},
			wantShm: specTestFiles.Shm(),
		},
		{
			name: "host pid",
			ns:   &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE},
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.NetworkNamespace: specTestNetNS,
				runtimespec.IPCNamespace:     "",
				runtimespec.UTSNamespace:     "",
				runtimespec.MountNamespace:   "",
			},
			wantShm: specTestFiles.Shm(),
		},
		{
			name: "host ipc",
			ns:   &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE},
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.NetworkNamespace: specTestNetNS,
				runtimespec.UTSNamespace:     "",
				runtimespec.PIDNamespace:     "",
				runtimespec.MountNamespace:   "",
			},
			wantShm: "/dev/shm",
		},
		{
			name: "all host",
			ns: &runtimeapi.NamespaceOption{
				Network:       runtimeapi.NamespaceMode_NODE,
				Pid:           runtimeapi.NamespaceMode_NODE,
				Ipc:           runtimeapi.NamespaceMode_NODE,
				UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE},
			},
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.MountNamespace: "",
			},
			wantShm: "/dev/shm",
		},
		{
			// TARGET names another container's namespace; a pod has none
			// yet, so the built-in gives the pod its own.
			name: "target modes",
			ns: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_TARGET,
				Pid:     runtimeapi.NamespaceMode_TARGET,
				Ipc:     runtimeapi.NamespaceMode_TARGET,
			},
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.NetworkNamespace: specTestNetNS,
				runtimespec.IPCNamespace:     "",
				runtimespec.UTSNamespace:     "",
				runtimespec.PIDNamespace:     "",
				runtimespec.MountNamespace:   "",
			},
			wantShm: specTestFiles.Shm(),
		},
		{
			name: "container pid",
			ns:   &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
			want: map[runtimespec.LinuxNamespaceType]string{
				runtimespec.NetworkNamespace: specTestNetNS,
				runtimespec.IPCNamespace:     "",
				runtimespec.UTSNamespace:     "",
				runtimespec.PIDNamespace:     "",
				runtimespec.MountNamespace:   "",
			},
			wantShm: specTestFiles.Shm(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			testSecurityContext(c).NamespaceOptions = tc.ns
			testHostNetworkHostname(c)
			s := mustGenerateTestSpec(t, c)

			if got := testSpecNamespaces(s); !maps.Equal(got, tc.want) {
				t.Errorf("namespaces = %v, want %v", got, tc.want)
			}
			shm := testFindMounts(s, "/dev/shm")
			if len(shm) != 1 {
				t.Fatalf("/dev/shm mounts = %+v, want exactly one", shm)
			}
			if shm[0].Source != tc.wantShm {
				t.Errorf("/dev/shm source = %q, want %q", shm[0].Source, tc.wantShm)
			}
		})
	}
}

func TestGenerateSpecMounts(t *testing.T) {
	s := mustGenerateTestSpec(t, specTestSpecConfig())
	wantOpts := []string{"rbind", "ro", "nosuid", "nodev", "noexec"}
	for _, tc := range []struct {
		dest, source string
	}{
		{"/dev/shm", specTestFiles.Shm()},
		{"/etc/resolv.conf", specTestFiles.ResolvConf()},
	} {
		t.Run(tc.dest, func(t *testing.T) {
			ms := testFindMounts(s, tc.dest)
			if len(ms) != 1 {
				t.Fatalf("%s mounts = %+v, want exactly one", tc.dest, ms)
			}
			m := ms[0]
			if m.Source != tc.source || m.Type != "bind" || !slices.Equal(m.Options, wantOpts) {
				t.Errorf("%s mount = %+v, want bind of %q with %q", tc.dest, m, tc.source, wantOpts)
			}
		})
	}
	if ms := testFindMounts(s, "/run"); len(ms) != 0 {
		t.Errorf("/run mounts = %+v, want none", ms)
	}
	// The hostname and hosts files are only for the app containers.
	for _, dest := range []string{"/etc/hostname", "/etc/hosts"} {
		if ms := testFindMounts(s, dest); len(ms) != 0 {
			t.Errorf("%s mounts = %+v, want none", dest, ms)
		}
	}
}

func TestCgroupsPath(t *testing.T) {
	for _, tc := range []struct {
		parent, want string
	}{
		{"/kubepods/pod1", "/kubepods/pod1/" + specTestID},
		{"/kubepods/burstable/pod1/", "/kubepods/burstable/pod1/" + specTestID},
		{"kubepods-pod1.slice", "kubepods-pod1.slice:cri-containerd:" + specTestID},
		{
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",
			"kubepods-burstable-pod1.slice:cri-containerd:" + specTestID,
		},
	} {
		t.Run(tc.parent, func(t *testing.T) {
			if got := CgroupsPath(tc.parent, specTestID); got != tc.want {
				t.Errorf("CgroupsPath(%q) = %q, want %q", tc.parent, got, tc.want)
			}
		})
	}
}

func TestGenerateSpecCgroupsPath(t *testing.T) {
	for _, tc := range []struct {
		name, parent, want string
	}{
		{"no parent", "", ""},
		{"cgroupfs", "/kubepods/pod1", "/kubepods/pod1/" + specTestID},
		{"systemd", "kubepods-pod1.slice", "kubepods-pod1.slice:cri-containerd:" + specTestID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			c.Config.Linux.CgroupParent = tc.parent
			s := mustGenerateTestSpec(t, c)
			if tc.want == "" {
				// No parent: containerd's default, which the shim places
				// under its own cgroup.
				if strings.Contains(s.Linux.CgroupsPath, "kubepods") {
					t.Errorf("cgroups path = %q, want containerd's default", s.Linux.CgroupsPath)
				}
				return
			}
			if s.Linux.CgroupsPath != tc.want {
				t.Errorf("cgroups path = %q, want %q", s.Linux.CgroupsPath, tc.want)
			}
		})
	}
}

func TestGenerateSpecSysctls(t *testing.T) {
	const (
		ports = "net.ipv4.ip_unprivileged_port_start"
		ping  = "net.ipv4.ping_group_range"
	)
	for _, tc := range []struct {
		name        string
		sysctls     map[string]string
		ns          *runtimeapi.NamespaceOption
		ports, icmp bool
		want        map[string]string
	}{
		{
			name: "none",
			want: nil,
		},
		{
			name: "namespaced pod sysctls",
			sysctls: map[string]string{
				"net.core.somaxconn":             "1024",
				"kernel.shm_rmid_forced":         "1",
				"kernel.msgmax":                  "65536",
				"kernel.sem":                     "250 32000 100 128",
				"fs.mqueue.msg_max":              "64",
				"kernel.domainname":              "example.com",
				"net.ipv4.tcp_syncookies":        "1",
				"net/ipv4/ip_forward":            "1",
				"net/ipv4/conf/eth0.1/rp_filter": "0",
			},
			want: map[string]string{
				"net.core.somaxconn":             "1024",
				"kernel.shm_rmid_forced":         "1",
				"kernel.msgmax":                  "65536",
				"kernel.sem":                     "250 32000 100 128",
				"fs.mqueue.msg_max":              "64",
				"kernel.domainname":              "example.com",
				"net.ipv4.tcp_syncookies":        "1",
				"net/ipv4/ip_forward":            "1",
				"net/ipv4/conf/eth0.1/rp_filter": "0",
			},
		},
		{
			// Group IDs outside the pod's mappings cannot be written.
			name:  "no icmp default with a pod user namespace",
			ns:    &runtimeapi.NamespaceOption{UsernsOptions: testUserns(runtimeapi.NamespaceMode_POD)},
			ports: true,
			icmp:  true,
			want:  map[string]string{ports: "0"},
		},
		{
			// Per user namespace: runc v1.4 sets them in one.
			name:    "user namespace sysctls with a pod user namespace",
			ns:      &runtimeapi.NamespaceOption{UsernsOptions: testUserns(runtimeapi.NamespaceMode_POD)},
			sysctls: map[string]string{"user.max_user_namespaces": "0", "user/max_ipc_namespaces": "10"},
			want:    map[string]string{"user.max_user_namespaces": "0", "user/max_ipc_namespaces": "10"},
		},
		{
			name:  "unprivileged defaults",
			ports: true,
			icmp:  true,
			want:  map[string]string{ports: "0", ping: "0 2147483647"},
		},
		{
			name:  "unprivileged ports only",
			ports: true,
			want:  map[string]string{ports: "0"},
		},
		{
			name: "unprivileged icmp only",
			icmp: true,
			want: map[string]string{ping: "0 2147483647"},
		},
		{
			name:    "pod values win over defaults",
			sysctls: map[string]string{ports: "1024", ping: "1 1"},
			ports:   true,
			icmp:    true,
			want:    map[string]string{ports: "1024", ping: "1 1"},
		},
		{
			name:    "slashed pod values win over defaults",
			sysctls: map[string]string{"net/ipv4/ip_unprivileged_port_start": "1024", "net/ipv4/ping_group_range": "1 1"},
			ports:   true,
			icmp:    true,
			want:    map[string]string{"net/ipv4/ip_unprivileged_port_start": "1024", "net/ipv4/ping_group_range": "1 1"},
		},
		{
			name:  "no defaults with host network",
			ns:    &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			ports: true,
			icmp:  true,
			want:  nil,
		},
		{
			name:    "ipc sysctls with host network",
			ns:      &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			sysctls: map[string]string{"kernel.shmmax": "1"},
			ports:   true,
			want:    map[string]string{"kernel.shmmax": "1"},
		},
		{
			name:    "net sysctls with host ipc",
			ns:      &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE},
			sysctls: map[string]string{"net.core.somaxconn": "1024"},
			want:    map[string]string{"net.core.somaxconn": "1024"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			c.Config.Linux.Sysctls = tc.sysctls
			if tc.ns != nil {
				testSecurityContext(c).NamespaceOptions = tc.ns
			}
			testHostNetworkHostname(c)
			c.EnableUnprivilegedPorts = tc.ports
			c.EnableUnprivilegedICMP = tc.icmp
			podSysctls := maps.Clone(tc.sysctls)
			s := mustGenerateTestSpec(t, c)

			if !maps.Equal(s.Linux.Sysctl, tc.want) {
				t.Errorf("sysctls = %v, want %v", s.Linux.Sysctl, tc.want)
			}
			if !maps.Equal(c.Config.Linux.Sysctls, podSysctls) {
				t.Errorf("pod config sysctls modified: %v, was %v", c.Config.Linux.Sysctls, podSysctls)
			}
		})
	}
}

func TestGenerateSpecAnnotations(t *testing.T) {
	cri := map[string]string{
		annotationSandboxID:        specTestID,
		annotationSandboxName:      "pod-name",
		annotationSandboxNamespace: "pod-namespace",
		annotationSandboxUID:       "pod-uid",
		annotationSandboxLogDir:    "/var/log/pods/pod-uid",
		annotationSandboxImageName: specTestImage,
		annotationContainerType:    "sandbox",
	}
	with := func(extra map[string]string) map[string]string {
		m := maps.Clone(cri)
		maps.Copy(m, extra)
		return m
	}
	for _, tc := range []struct {
		name      string
		patterns  []string
		resources *runtimeapi.LinuxContainerResources
		podAnnots map[string]string // nil keeps specTestConfig's
		want      map[string]string
	}{
		{
			name: "cri annotations only",
			want: cri,
		},
		{
			name:     "pattern",
			patterns: []string{"io.example/*"},
			want:     with(map[string]string{"io.example/a": "1", "io.example/b": "2"}),
		},
		{
			name:     "exact and wildcard patterns",
			patterns: []string{"io.other/c", "io.example.sub/*"},
			want:     with(map[string]string{"io.other/c": "3", "io.example.sub/d": "4"}),
		},
		{
			name:     "match everything",
			patterns: []string{"*", "*/*"},
			want: with(map[string]string{
				"io.example/a": "1", "io.example/b": "2", "io.other/c": "3", "io.example.sub/d": "4",
			}),
		},
		{
			name:     "invalid pattern matches nothing",
			patterns: []string{"io.example/["},
			want:     cri,
		},
		{
			name:      "pod annotations cannot override cri annotations",
			patterns:  []string{"io.kubernetes.cri.*"},
			podAnnots: map[string]string{annotationSandboxID: "forged", annotationContainerType: "container"},
			want:      cri,
		},
		{
			name:      "the pod's shim group is never passed through",
			patterns:  []string{"*"},
			podAnnots: map[string]string{placement.GroupAnnotation: "other-tenant", "io.example": "1"},
			want:      with(map[string]string{"io.example": "1"}),
		},
		{
			name: "resources",
			resources: &runtimeapi.LinuxContainerResources{
				CpuPeriod:          100000,
				CpuQuota:           50000,
				CpuShares:          512,
				MemoryLimitInBytes: 128 << 20,
			},
			want: with(map[string]string{
				annotationSandboxCPUPeriod: "100000",
				annotationSandboxCPUQuota:  "50000",
				annotationSandboxCPUShares: "512",
				annotationSandboxMemory:    strconv.Itoa(128 << 20),
			}),
		},
		{
			name:      "passed-through annotations override the resource ones",
			patterns:  []string{"io.kubernetes.cri.sandbox-cpu-*"},
			resources: &runtimeapi.LinuxContainerResources{CpuShares: 512},
			podAnnots: map[string]string{annotationSandboxCPUShares: "1024"},
			want: with(map[string]string{
				annotationSandboxCPUPeriod: "0",
				annotationSandboxCPUQuota:  "0",
				annotationSandboxCPUShares: "1024",
				annotationSandboxMemory:    "0",
			}),
		},
		{
			name:      "empty resources",
			resources: &runtimeapi.LinuxContainerResources{},
			want: with(map[string]string{
				annotationSandboxCPUPeriod: "0",
				annotationSandboxCPUQuota:  "0",
				annotationSandboxCPUShares: "0",
				annotationSandboxMemory:    "0",
			}),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			c.PodAnnotations = tc.patterns
			c.Config.Linux.Resources = tc.resources
			if tc.podAnnots != nil {
				c.Config.Annotations = tc.podAnnots
			}
			s := mustGenerateTestSpec(t, c)
			if !maps.Equal(s.Annotations, tc.want) {
				t.Errorf("annotations = %v, want %v", s.Annotations, tc.want)
			}
		})
	}
}

// fakeSnapshotter serves one bind mount of a directory, which is enough for
// oci.WithUser to read /etc/passwd and /etc/group from it.
type fakeSnapshotter struct {
	snapshots.Snapshotter
	dir string
}

func (f fakeSnapshotter) Mounts(context.Context, string) ([]mount.Mount, error) {
	return []mount.Mount{{Type: "bind", Source: f.dir, Options: []string{"rbind", "ro"}}}, nil
}

type fakeClient struct{ dir string }

func (f fakeClient) SnapshotService(string) snapshots.Snapshotter {
	return fakeSnapshotter{dir: f.dir}
}

// fakeRootfs is a pause rootfs with an /etc/passwd and /etc/group.
func fakeRootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"passwd": "root:x:0:0:root:/root:/bin/sh\npause:x:1000:1001::/:/sbin/nologin\n",
		"group":  "root:x:0:\npause:x:1001:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, "etc", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestGenerateSpecUser(t *testing.T) {
	for _, tc := range []struct {
		name      string
		uid, gid  *runtimeapi.Int64Value
		imageUser string
		groups    []int64
		// rootfs makes the container resolve users in a fake rootfs, as
		// a real snapshot would.
		rootfs bool
		// noUserDatabase is the built-in pause's: no rootfs to look in.
		noUserDatabase bool
		wantUID        uint32
		wantGID        uint32
		wantAddGids    []uint32
	}{
		{
			name:    "no user",
			wantUID: 0,
			wantGID: 0,
		},
		{
			name:        "run_as_user and run_as_group",
			uid:         &runtimeapi.Int64Value{Value: 1234},
			gid:         &runtimeapi.Int64Value{Value: 5678},
			imageUser:   "65535:65535",
			wantUID:     1234,
			wantGID:     5678,
			wantAddGids: []uint32{5678},
		},
		{
			name:        "root run_as_user and run_as_group",
			uid:         &runtimeapi.Int64Value{Value: 0},
			gid:         &runtimeapi.Int64Value{Value: 0},
			imageUser:   "65535:65535",
			wantUID:     0,
			wantGID:     0,
			wantAddGids: []uint32{0},
		},
		{
			name:        "image user",
			imageUser:   "65535:65535",
			wantUID:     65535,
			wantGID:     65535,
			wantAddGids: []uint32{65535},
		},
		{
			name:        "run_as_user only, in passwd",
			uid:         &runtimeapi.Int64Value{Value: 1000},
			imageUser:   "65535:65535",
			rootfs:      true,
			wantUID:     1000,
			wantGID:     1001,
			wantAddGids: []uint32{1001},
		},
		{
			name:        "run_as_user only, not in passwd",
			uid:         &runtimeapi.Int64Value{Value: 4242},
			rootfs:      true,
			wantUID:     4242,
			wantGID:     0,
			wantAddGids: []uint32{0},
		},
		{
			// The built-in pause: no snapshot, no lookup.
			name:           "run_as_user only, no user database",
			uid:            &runtimeapi.Int64Value{Value: 1000},
			imageUser:      "65535:65535",
			noUserDatabase: true,
			wantUID:        1000,
			wantGID:        0,
			wantAddGids:    []uint32{0},
		},
		{
			name:        "image user name",
			imageUser:   "pause",
			rootfs:      true,
			wantUID:     1000,
			wantGID:     1001,
			wantAddGids: []uint32{1001},
		},
		{
			name:        "supplemental groups without user",
			groups:      []int64{10, 20},
			wantUID:     0,
			wantGID:     0,
			wantAddGids: []uint32{10, 20},
		},
		{
			name:        "supplemental groups with run_as_user",
			uid:         &runtimeapi.Int64Value{Value: 1234},
			gid:         &runtimeapi.Int64Value{Value: 5678},
			groups:      []int64{10, 20},
			wantUID:     1234,
			wantGID:     5678,
			wantAddGids: []uint32{10, 20, 5678},
		},
		{
			name:        "supplemental groups with image user",
			imageUser:   "65535:65535",
			groups:      []int64{10, 20},
			wantUID:     65535,
			wantGID:     65535,
			wantAddGids: []uint32{10, 20, 65535},
		},
		{
			name:        "duplicate supplemental groups",
			imageUser:   "65535:65535",
			groups:      []int64{20, 65535, 10, 20},
			wantUID:     65535,
			wantGID:     65535,
			wantAddGids: []uint32{10, 20, 65535},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			sc := testSecurityContext(c)
			sc.RunAsUser, sc.RunAsGroup, sc.SupplementalGroups = tc.uid, tc.gid, tc.groups
			c.Image.User, c.NoUserDatabase = tc.imageUser, tc.noUserDatabase

			var (
				client oci.Client
				ctr    *containers.Container
			)
			if tc.rootfs {
				client = fakeClient{dir: fakeRootfs(t)}
				ctr = &containers.Container{ID: c.ID, Snapshotter: "fake", SnapshotKey: c.ID}
			}
			s, err := generateTestSpec(t, c, client, ctr)
			if err != nil {
				t.Fatalf("generate spec: %v", err)
			}
			u := s.Process.User
			if u.UID != tc.wantUID || u.GID != tc.wantGID {
				t.Errorf("uid:gid = %d:%d, want %d:%d", u.UID, u.GID, tc.wantUID, tc.wantGID)
			}
			if !slices.Equal(u.AdditionalGids, tc.wantAddGids) {
				t.Errorf("additional gids = %v, want %v", u.AdditionalGids, tc.wantAddGids)
			}
		})
	}
}

func TestGenerateSpecResources(t *testing.T) {
	current, err := currentOOMScoreAdj()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		restrict bool
		wantOOM  int
	}{
		{"unrestricted", false, -998},
		{"restricted", true, max(-998, current)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			c.RestrictOOMScoreAdj = tc.restrict
			s := mustGenerateTestSpec(t, c)

			if s.Process.OOMScoreAdj == nil || *s.Process.OOMScoreAdj != tc.wantOOM {
				t.Errorf("oom_score_adj = %v, want %d", s.Process.OOMScoreAdj, tc.wantOOM)
			}
			if tc.restrict && *s.Process.OOMScoreAdj < current {
				t.Errorf("oom_score_adj %d below containerd's %d", *s.Process.OOMScoreAdj, current)
			}
			if r := s.Linux.Resources; r == nil || r.CPU == nil || r.CPU.Shares == nil || *r.CPU.Shares != 2 {
				t.Errorf("cpu resources = %+v, want shares 2", r)
			}
		})
	}
}

// TestGenerateSpecOptsReusable applies the same options twice: each spec
// must get its own values.
func TestGenerateSpecOptsReusable(t *testing.T) {
	c := specTestSpecConfig()
	c.RestrictOOMScoreAdj = true
	spec, err := GenerateSpec(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx := specTestContext()
	s1, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: c.ID}, spec.Opts...)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: c.ID}, spec.Opts...)
	if err != nil {
		t.Fatal(err)
	}
	if *s1.Process.OOMScoreAdj != *s2.Process.OOMScoreAdj {
		t.Errorf("oom_score_adj differs: %d, %d", *s1.Process.OOMScoreAdj, *s2.Process.OOMScoreAdj)
	}
	if !slices.Equal(s1.Process.Args, s2.Process.Args) {
		t.Errorf("args differ: %q, %q", s1.Process.Args, s2.Process.Args)
	}
}

func TestGenerateSpecSeccomp(t *testing.T) {
	localhost := filepath.Join(t.TempDir(), "profile.json")
	if err := os.WriteFile(localhost, []byte(`{"defaultAction":"SCMP_ACT_LOG"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		profile    *runtimeapi.SecurityProfile
		legacyPath string
		privileged bool
		disabled   bool
		unset      string // CRI's unset_seccomp_profile
		// wantAction is the expected default action; "" wants no seccomp.
		wantAction runtimespec.LinuxSeccompAction
	}{
		{
			name: "none when unset",
		},
		{
			name:       "unset_seccomp_profile when unset",
			unset:      "runtime/default",
			wantAction: runtimespec.ActErrno,
		},
		{
			name:    "unset_seccomp_profile does not override the pod",
			unset:   "runtime/default",
			profile: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
		},
		{
			name:       "legacy docker/default",
			legacyPath: "docker/default",
			wantAction: runtimespec.ActErrno,
		},
		{
			name:    "runtime default",
			profile: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
			// containerd's default profile denies with ERRNO.
			wantAction: runtimespec.ActErrno,
		},
		{
			name:    "unconfined",
			profile: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
		},
		{
			name:       "legacy unconfined",
			legacyPath: "unconfined",
		},
		{
			name:       "legacy runtime/default",
			legacyPath: "runtime/default",
			wantAction: runtimespec.ActErrno,
		},
		{
			name:       "localhost",
			profile:    &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: localhost},
			wantAction: runtimespec.ActLog,
		},
		{
			name:       "legacy localhost",
			legacyPath: "localhost/" + localhost,
			wantAction: runtimespec.ActLog,
		},
		{
			name:       "privileged",
			privileged: true,
		},
		{
			name:       "privileged runtime default",
			profile:    &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
			privileged: true,
		},
		{
			name:     "disabled and unset",
			disabled: true,
		},
		{
			name:     "disabled and unconfined",
			profile:  &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
			disabled: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			sc := testSecurityContext(c)
			sc.Seccomp = tc.profile
			//lint:ignore SA1019 testing the deprecated field
			sc.SeccompProfilePath = tc.legacyPath
			sc.Privileged = tc.privileged
			c.SeccompEnabled = !tc.disabled
			c.UnsetSeccompProfile = tc.unset
			s := mustGenerateTestSpec(t, c)

			switch {
			case tc.wantAction == "" && s.Linux.Seccomp != nil:
				t.Errorf("seccomp = %+v, want none", s.Linux.Seccomp)
			case tc.wantAction == "":
			case s.Linux.Seccomp == nil:
				t.Errorf("seccomp = nil, want default action %s", tc.wantAction)
			case s.Linux.Seccomp.DefaultAction != tc.wantAction:
				t.Errorf("seccomp default action = %s, want %s", s.Linux.Seccomp.DefaultAction, tc.wantAction)
			}
		})
	}
}

func TestGenerateSpecSecurityDefaults(t *testing.T) {
	s := mustGenerateTestSpec(t, specTestSpecConfig())
	if s.Process.ApparmorProfile != "" {
		t.Errorf("apparmor profile = %q, want none", s.Process.ApparmorProfile)
	}
	if s.Process.Rlimits != nil {
		t.Errorf("rlimits = %+v, want none", s.Process.Rlimits)
	}
	if s.Process.SelinuxLabel != "" || s.Linux.MountLabel != "" {
		t.Errorf("selinux labels = %q, %q, want none", s.Process.SelinuxLabel, s.Linux.MountLabel)
	}
	sys := testFindMounts(s, "/sys")
	if len(sys) != 1 || !slices.Contains(sys[0].Options, "ro") {
		t.Errorf("/sys mounts = %+v, want one read-only", sys)
	}
}

func TestGenerateSpecPrivileged(t *testing.T) {
	c := specTestSpecConfig()
	testSecurityContext(c).Privileged = true
	s := mustGenerateTestSpec(t, c)

	sys := testFindMounts(s, "/sys")
	if len(sys) != 1 {
		t.Fatalf("/sys mounts = %+v, want one", sys)
	}
	if slices.Contains(sys[0].Options, "ro") || !slices.Contains(sys[0].Options, "rw") {
		t.Errorf("/sys options = %q, want rw", sys[0].Options)
	}
	if s.Process.ApparmorProfile != "" || s.Process.Rlimits != nil || s.Linux.Seccomp != nil {
		t.Errorf("privileged security settings: apparmor %q, rlimits %+v, seccomp %+v, want none",
			s.Process.ApparmorProfile, s.Process.Rlimits, s.Linux.Seccomp)
	}
	if s.Process.SelinuxLabel != "" {
		t.Errorf("selinux label = %q, want none", s.Process.SelinuxLabel)
	}
	// The built-in gives a privileged pause no more capabilities than any.
	plain := mustGenerateTestSpec(t, specTestSpecConfig())
	if !reflect.DeepEqual(s.Process.Capabilities, plain.Process.Capabilities) {
		t.Errorf("capabilities = %+v, want the default %+v", s.Process.Capabilities, plain.Process.Capabilities)
	}
}

// TestGenerateSpecInvalid checks the pod configs the built-in controller
// (or runc, for it) rejects: berth rejects them before anything exists,
// with the built-in's class, Unknown.
// TestValidate checks that every pod config that can never run is refused
// with the class of error kubelet should see, and that GenerateSpec refuses
// a pause image it cannot run.
func TestValidate(t *testing.T) {
	sc := func(f func(*runtimeapi.LinuxSandboxSecurityContext)) func(*SpecConfig) {
		return func(c *SpecConfig) { f(testSecurityContext(*c)) }
	}
	sysctl := func(ns *runtimeapi.NamespaceOption, name string) func(*SpecConfig) {
		return func(c *SpecConfig) {
			if ns != nil {
				testSecurityContext(*c).NamespaceOptions = ns
			}
			testHostNetworkHostname(*c)
			c.Config.Linux.Sysctls = map[string]string{name: "1"}
		}
	}
	userns := func(u *runtimeapi.UserNamespace) func(*SpecConfig) {
		return sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.NamespaceOptions.UsernsOptions = u })
	}
	mapping := []*runtimeapi.IDMapping{{HostId: 65536, Length: 65536}}
	hostNet := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}
	hostIPC := &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE}
	notJSON := filepath.Join(t.TempDir(), "profile.json")
	if err := os.WriteFile(notJSON, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	meta := func(f func(*runtimeapi.PodSandboxMetadata)) func(*SpecConfig) {
		return func(c *SpecConfig) { f(c.Config.Metadata) }
	}
	hostname := func(h string) func(*SpecConfig) {
		return func(c *SpecConfig) { c.Config.Hostname = h }
	}
	apparmor := func(ref string, loaded ...string) func(*SpecConfig) {
		return func(c *SpecConfig) {
			testSecurityContext(*c).Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: ref}
			if loaded != nil {
				c.AppArmorProfiles = func() (map[string]bool, error) {
					m := map[string]bool{}
					for _, l := range loaded {
						m[l] = true
					}
					return m, nil
				}
			}
		}
	}
	const (
		invalid      = "invalid argument"
		notFound     = "not found"
		precondition = "failed precondition"
	)
	is := map[string]func(error) bool{
		invalid: errdefs.IsInvalidArgument, notFound: errdefs.IsNotFound, precondition: errdefs.IsFailedPrecondition,
	}
	for _, tc := range []struct {
		name   string
		modify func(*SpecConfig)
		want   string
		// field is named in the error.
		field string
	}{
		{"no metadata name", meta(func(m *runtimeapi.PodSandboxMetadata) { m.Name = "" }), invalid, "metadata.name"},
		{"no metadata namespace", meta(func(m *runtimeapi.PodSandboxMetadata) { m.Namespace = "" }), invalid, "metadata.namespace"},
		{"no metadata uid", meta(func(m *runtimeapi.PodSandboxMetadata) { m.Uid = "" }), invalid, "metadata.uid"},
		{"no metadata", func(c *SpecConfig) { c.Config.Metadata = nil }, invalid, "metadata.name"},
		{"hostname too long", hostname(strings.Repeat("a", 60) + ".example"), invalid, "hostname"},
		{"hostname with underscore", hostname("pod_1"), invalid, "hostname"},
		{"hostname with empty label", hostname("pod..example"), invalid, "hostname"},
		{"hostname label too long", hostname(strings.Repeat("a", 64)), invalid, "hostname"},
		{"hostname with space", hostname("pod 1"), invalid, "hostname"},
		{"empty sysctl name", sysctl(nil, ""), invalid, "linux.sysctls"},
		{"sysctl name with space", sysctl(nil, "net.ipv4.ip forward"), invalid, "linux.sysctls"},
		{"sysctl name with =", sysctl(nil, "net.ipv4.ip_forward=1"), invalid, "linux.sysctls"},
		{"sysctl name with empty part", sysctl(nil, "net..ipv4"), invalid, "linux.sysctls"},
		{"sysctl name with trailing dot", sysctl(nil, "net.ipv4."), invalid, "linux.sysctls"},
		{"sysctl name escaping /proc/sys", sysctl(nil, "net/../../../etc/x"), invalid, "linux.sysctls"},
		{"apparmor localhost missing", apparmor("no-such-profile", "other"), notFound, "linux.security_context.apparmor"},
		{"apparmor localhost without apparmor", apparmor("no-such-profile"), notFound, "linux.security_context.apparmor"},
		{"apparmor localhost without ref", apparmor(""), invalid, "linux.security_context.apparmor"},
		{"hostname with host network", func(c *SpecConfig) {
			testSecurityContext(*c).NamespaceOptions = hostNet
		}, invalid, "hostname"},
		{"userns node with mappings", userns(&runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE, Uids: mapping, Gids: mapping}), invalid, "linux.security_context.namespace_options.userns_options"},
		{"userns pod without uid mapping", userns(&runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Gids: mapping}), invalid, "linux.security_context.namespace_options.userns_options"},
		{"userns pod two mappings", userns(&runtimeapi.UserNamespace{
			Mode: runtimeapi.NamespaceMode_POD, Uids: append(mapping, mapping...), Gids: mapping}), invalid, "linux.security_context.namespace_options.userns_options.uids"},
		{"userns pod empty mapping", userns(&runtimeapi.UserNamespace{
			Mode: runtimeapi.NamespaceMode_POD, Uids: []*runtimeapi.IDMapping{{HostId: 65536}}, Gids: mapping}), invalid, "linux.security_context.namespace_options.userns_options.uids"},
		{"userns container mode", userns(&runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_CONTAINER}), invalid, "linux.security_context.namespace_options.userns_options.mode"},
		{"non-namespaced sysctl", sysctl(nil, "kernel.panic"), invalid, "linux.sysctls"},
		{"vm sysctl", sysctl(nil, "vm.swappiness"), invalid, "linux.sysctls"},
		{"unknown ipc-like sysctl", sysctl(nil, "kernel.msgfoo"), invalid, "linux.sysctls"},
		{"kernel.hostname sysctl", sysctl(nil, "kernel.hostname"), invalid, "linux.sysctls"},
		{"net sysctl with host network", sysctl(hostNet, "net.core.somaxconn"), invalid, "linux.sysctls"},
		{"slashed net sysctl with host network", sysctl(hostNet, "net/core/somaxconn"), invalid, "linux.sysctls"},
		{"uts sysctl with host network", sysctl(hostNet, "kernel.domainname"), invalid, "linux.sysctls"},
		{"shm sysctl with host ipc", sysctl(hostIPC, "kernel.shmmax"), invalid, "linux.sysctls"},
		{"user sysctl without a pod user namespace", sysctl(nil, "user.max_user_namespaces"), invalid, "linux.sysctls"},
		{"user sysctl with the host's user namespace", sysctl(&runtimeapi.NamespaceOption{
			UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}}, "user.max_user_namespaces"), invalid, "linux.sysctls"},
		{"mqueue sysctl with host ipc", sysctl(hostIPC, "fs.mqueue.msg_max"), invalid, "linux.sysctls"},
		{"run_as_group without run_as_user", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.RunAsGroup = &runtimeapi.Int64Value{Value: 1000}
		}), invalid, "linux.security_context.run_as_group"},
		{"run_as_user out of range", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.RunAsUser = &runtimeapi.Int64Value{Value: -1}
		}), invalid, "linux.security_context.run_as_user"},
		{"supplemental group out of range", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.SupplementalGroups = []int64{10, 1 << 32}
		}), invalid, "linux.security_context.supplemental_groups"},
		{"seccomp runtime default on a kernel without seccomp", func(c *SpecConfig) {
			c.SeccompEnabled = false
			testSecurityContext(*c).Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		}, precondition, "linux.security_context.seccomp"},
		{"seccomp unset_seccomp_profile on a kernel without seccomp", func(c *SpecConfig) {
			c.SeccompEnabled, c.UnsetSeccompProfile = false, "runtime/default"
		}, precondition, "linux.security_context.seccomp"},
		{"seccomp localhost_ref with runtime default", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault, LocalhostRef: "/profile.json"}
		}), invalid, "linux.security_context.seccomp"},
		{"seccomp localhost without ref", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost}
		}), invalid, "linux.security_context.seccomp"},
		{"seccomp localhost missing", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/no/such/profile.json"}
		}), notFound, "linux.security_context.seccomp"},
		{"seccomp localhost not json", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: notJSON}
		}), invalid, "linux.security_context.seccomp"},
		{"seccomp invalid legacy path", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			//lint:ignore SA1019 testing the deprecated field
			s.SeccompProfilePath = "no-such-profile"
		}), invalid, "linux.security_context.seccomp_profile_path"},
		{"seccomp invalid legacy path privileged", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			//lint:ignore SA1019 testing the deprecated field
			s.SeccompProfilePath, s.Privileged = "no-such-profile", true
		}), invalid, "linux.security_context.seccomp_profile_path"},
		{"seccomp invalid unset_seccomp_profile", func(c *SpecConfig) { c.UnsetSeccompProfile = "no-such-profile" }, precondition, "CRI's unset_seccomp_profile"},
		{"selinux level", sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.SelinuxOptions = &runtimeapi.SELinuxOption{Level: "not a level"}
		}), invalid, "linux.security_context.selinux_options.level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			tc.modify(&c)
			err := Validate(c.Config, c.RuntimeSettings, c.Node)
			if !is[tc.want](err) || strings.HasSuffix(err.Error(), ": "+tc.want) {
				t.Fatalf("Validate = %v: want class %s, without its name in the text", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.field) {
				t.Errorf("Validate = %q: want it to name %s first", err, tc.field)
			}
		})
	}
}

func TestGenerateSpecPauseImageWithoutEntrypoint(t *testing.T) {
	c := specTestSpecConfig()
	c.Image.Entrypoint, c.Image.Cmd = nil, nil
	spec, err := GenerateSpec(c)
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("GenerateSpec = %v, want failed precondition", err)
	}
	if len(spec.Opts) != 0 || spec.ProcessLabel != "" {
		t.Errorf("GenerateSpec returned %+v with its error, want the zero Spec", spec)
	}
}

func TestValidateAccepts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*runtimeapi.PodSandboxConfig)
	}{
		{"typical", func(*runtimeapi.PodSandboxConfig) {}},
		{"no hostname", func(c *runtimeapi.PodSandboxConfig) { c.Hostname = "" }},
		{"fqdn hostname of 64 bytes", func(c *runtimeapi.PodSandboxConfig) {
			c.Hostname = strings.Repeat("a", 31) + "." + strings.Repeat("b", 32)
		}},
		{"upper-case hostname", func(c *runtimeapi.PodSandboxConfig) { c.Hostname = "Pod-1" }},
		{"slashed sysctl", func(c *runtimeapi.PodSandboxConfig) { c.Linux.Sysctls = map[string]string{"net/ipv4/ip_forward": "1"} }},
		{"sysctl of an interface with a dot", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"net/ipv4/conf/eth0.100/forwarding": "1"}
		}},
		{"apparmor runtime default", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := specTestConfig()
			tc.modify(cfg)
			if err := Validate(cfg, RuntimeSettings{}, Node{SeccompEnabled: true}); err != nil {
				t.Fatalf("Validate = %v, want nil", err)
			}
		})
	}
}

func testUserns(mode runtimeapi.NamespaceMode) *runtimeapi.UserNamespace {
	return &runtimeapi.UserNamespace{
		Mode: mode,
		Uids: []*runtimeapi.IDMapping{{ContainerId: 0, HostId: 100000, Length: 65536}},
		Gids: []*runtimeapi.IDMapping{{ContainerId: 0, HostId: 200000, Length: 65536}},
	}
}

func TestGenerateSpecUserNamespace(t *testing.T) {
	uids := []runtimespec.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	gids := []runtimespec.LinuxIDMapping{{ContainerID: 0, HostID: 200000, Size: 65536}}
	for _, tc := range []struct {
		name        string
		ns          *runtimeapi.NamespaceOption
		wantUserns  bool
		wantPath    string // of the user namespace
		wantSysBind bool
	}{
		{name: "none", ns: &runtimeapi.NamespaceOption{}},
		{name: "node", ns: &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}}},
		{
			name:       "pod: joins the pinned namespace of the pod's netns",
			ns:         &runtimeapi.NamespaceOption{UsernsOptions: testUserns(runtimeapi.NamespaceMode_POD)},
			wantUserns: true, wantPath: specTestFiles.UserNS(),
		},
		{
			name: "pod with host network: a new namespace, the host's sysfs",
			ns: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_NODE, UsernsOptions: testUserns(runtimeapi.NamespaceMode_POD),
			},
			wantUserns: true, wantSysBind: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			testSecurityContext(c).NamespaceOptions = tc.ns
			testHostNetworkHostname(c)
			spec, err := GenerateSpec(c)
			if err != nil {
				t.Fatal(err)
			}
			s, err := oci.GenerateSpec(specTestContext(), nil, &containers.Container{ID: c.ID}, spec.Opts...)
			if err != nil {
				t.Fatal(err)
			}
			path, ok := testSpecNamespaces(s)[runtimespec.UserNamespace]
			if ok != tc.wantUserns || path != tc.wantPath {
				t.Errorf("user namespace %v at %q, want %v at %q", ok, path, tc.wantUserns, tc.wantPath)
			}
			if spec.PinUserNamespace != (tc.wantPath != "") {
				t.Errorf("PinUserNamespace = %v, want %v", spec.PinUserNamespace, tc.wantPath != "")
			}
			if !tc.wantUserns {
				if s.Linux.UIDMappings != nil || s.Linux.GIDMappings != nil || spec.SnapshotOpts != nil {
					t.Errorf("mappings %v %v, snapshot opts %d, want none", s.Linux.UIDMappings, s.Linux.GIDMappings, len(spec.SnapshotOpts))
				}
				return
			}
			if !slices.Equal(s.Linux.UIDMappings, uids) || !slices.Equal(s.Linux.GIDMappings, gids) {
				t.Errorf("mappings %v %v, want %v %v", s.Linux.UIDMappings, s.Linux.GIDMappings, uids, gids)
			}
			var info snapshots.Info
			for _, o := range spec.SnapshotOpts {
				if err := o(&info); err != nil {
					t.Fatal(err)
				}
			}
			if info.Labels[snapshots.LabelSnapshotUIDMapping] != "0:100000:65536" || info.Labels[snapshots.LabelSnapshotGIDMapping] != "0:200000:65536" {
				t.Errorf("snapshot labels %v, want the pod's mappings", info.Labels)
			}
			sys := testFindMounts(s, "/sys")
			wantSys := runtimespec.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}}
			if tc.wantSysBind {
				wantSys = runtimespec.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "rro", "nosuid", "nodev", "noexec"}}
			}
			if len(sys) != 1 || !reflect.DeepEqual(sys[0], wantSys) {
				t.Errorf("/sys mounts %+v, want %+v", sys, wantSys)
			}
		})
	}
}

// TestGenerateSpecNilConfig checks that a config with no linux section
// gets the defaults rather than a panic.
func TestGenerateSpecNilConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *runtimeapi.PodSandboxConfig
	}{
		{"empty", &runtimeapi.PodSandboxConfig{}},
		{"empty linux", &runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := specTestSpecConfig()
			c.Config = tc.cfg
			s := mustGenerateTestSpec(t, c)
			if got := testSpecNamespaces(s)[runtimespec.NetworkNamespace]; got != specTestNetNS {
				t.Errorf("network namespace = %q, want %q", got, specTestNetNS)
			}
			if s.Linux.Seccomp != nil {
				t.Errorf("seccomp = %+v, want none", s.Linux.Seccomp)
			}
		})
	}
}
