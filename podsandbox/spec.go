// Package podsandbox builds what the pause container is made of: its OCI spec
// and the per-sandbox files (hostname, hosts, resolv.conf, /dev/shm) that CRI
// mounts into the pod's app containers.
package podsandbox

import (
	"context"
	"maps"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/oci"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/placement"
)

// Annotations CRI, the runc shim and NRI read from the pause spec. containerd
// keeps them in an internal package, so they are declared here.
const (
	annotationContainerType    = "io.kubernetes.cri.container-type"
	annotationSandboxID        = "io.kubernetes.cri.sandbox-id"
	annotationSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	annotationSandboxUID       = "io.kubernetes.cri.sandbox-uid"
	annotationSandboxName      = "io.kubernetes.cri.sandbox-name"
	annotationSandboxLogDir    = "io.kubernetes.cri.sandbox-log-directory"
	annotationSandboxImageName = "io.kubernetes.cri.podsandbox.image-name"
	annotationSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
	annotationSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	annotationSandboxCPUShares = "io.kubernetes.cri.sandbox-cpu-shares"
	annotationSandboxMemory    = "io.kubernetes.cri.sandbox-memory"

	containerTypeSandbox = "sandbox"
)

const (
	// sandboxOOMScoreAdj keeps the pause process among the last the kernel
	// OOM-kills (kubernetes#47938), as the built-in controller does.
	sandboxOOMScoreAdj = -998
	// sandboxCPUShares is the pause container's CPU weight: it only sleeps.
	sandboxCPUShares = 2
	// rootfsPath is the rootfs relative to the bundle, where the runc shim
	// mounts the pause image's snapshot or the built-in pause's rootfs.
	rootfsPath = "rootfs"
	devShm     = "/dev/shm"
	resolvConf = "/etc/resolv.conf"
	sysfs      = "/sys"
)

// SpecConfig is everything the pause spec is built from.
type SpecConfig struct {
	ID     string
	Config *runtimeapi.PodSandboxConfig
	// Image is the pause image's config: entrypoint, env, user, workdir.
	Image imagespec.ImageConfig
	// ImageName is the pause image as the CRI config names it, for the
	// image-name annotation.
	ImageName string
	// NoUserDatabase says the pause's rootfs has no /etc/passwd to look a
	// user up in, and no snapshot for containerd's lookup to read: the
	// built-in pause's.
	NoUserDatabase bool
	// NetNSPath is the pod's network namespace; unused for host network.
	NetNSPath string
	Files     Files
	// PodAnnotations are the runtime handler's pod_annotations patterns:
	// pod annotations matching one are copied into the spec.
	PodAnnotations []string
	RuntimeSettings
	Node
}

// Spec is a generated pause spec: the options to apply to containerd's
// default spec, and what else the pause container needs.
type Spec struct {
	Opts []oci.SpecOpts
	// ProcessLabel is the SELinux process label chosen for the pod.
	ProcessLabel string
	// SnapshotOpts are for the pause container's rootfs snapshot: they ask
	// the snapshotter to shift its ownership into the pod's user namespace.
	SnapshotOpts []snapshots.Opt
	// PinUserNamespace says that Opts put the pause process into the user
	// namespace that owns the pod's network namespace, which the caller
	// must pin with Files.PinUserNamespace before the task is created.
	PinUserNamespace bool
}

// GenerateSpec returns the options that turn containerd's default spec into
// the pause container's, the same spec containerd's built-in controller
// makes for the pod. c.Config must have passed Validate, which the
// controller runs before anything is made for the pod. The caller must
// release ProcessLabel (label.ReleaseLabel) if it does not use the spec.
func GenerateSpec(c SpecConfig) (Spec, error) {
	cfg := c.Config
	sc := cfg.GetLinux().GetSecurityContext()
	nsOpts := sc.GetNamespaceOptions()
	hostNetwork := nsOpts.GetNetwork() == runtimeapi.NamespaceMode_NODE

	if len(c.Image.Entrypoint) == 0 && len(c.Image.Cmd) == 0 {
		return Spec{}, preconditionf("pause image", "%q has no entrypoint or cmd", c.ImageName)
	}
	userNS, err := podUserNamespace(nsOpts.GetUsernsOptions())
	if err != nil {
		return Spec{}, err
	}
	sysctls, err := podSysctls(cfg, c.RuntimeSettings, userNS != nil)
	if err != nil {
		return Spec{}, err
	}
	user, err := userString(sc, c.Image.User, c.NoUserDatabase)
	if err != nil {
		return Spec{}, err
	}
	groups, err := supplementalGroups(sc.GetSupplementalGroups())
	if err != nil {
		return Spec{}, err
	}
	seccompOpt, err := seccompProfile(sc, c.UnsetSeccompProfile, c.SeccompEnabled)
	if err != nil {
		return Spec{}, err
	}
	processLabel, mountLabel, err := selinuxLabels(sc.GetSelinuxOptions())
	if err != nil {
		return Spec{}, err
	}

	opts := []oci.SpecOpts{
		oci.WithoutRunMount,
		withoutDefaultSecuritySettings,
		oci.WithRootFSPath(rootfsPath),
		oci.WithRootFSReadonly(),
		oci.WithEnv(c.Image.Env),
		oci.WithProcessArgs(append(append([]string{}, c.Image.Entrypoint...), c.Image.Cmd...)...),
		oci.WithHostname(cfg.GetHostname()),
	}
	if c.Image.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(c.Image.WorkingDir))
	}
	if parent := cfg.GetLinux().GetCgroupParent(); parent != "" {
		opts = append(opts, oci.WithCgroup(CgroupsPath(parent, c.ID)))
	}
	opts = append(opts, namespaceOpts(nsOpts, c.NetNSPath)...)
	var snapshotOpts []snapshots.Opt
	mounts := sandboxMounts(c.Files, nsOpts)
	if userNS != nil {
		// CRI made the pod's netns in a user namespace of the pod's
		// mappings: the pause process joins that one, pinned to a file.
		// A host-network pod has none yet: runc makes it.
		pinned := ""
		if !hostNetwork {
			pinned = c.Files.UserNS()
		}
		opts = append(opts, userNS.opts(pinned))
		snapshotOpts = userNS.snapshotOpts()
		if hostNetwork {
			// A user namespace that does not own the network namespace
			// may not mount sysfs: the host's is bound instead.
			opts = append(opts, oci.WithoutMounts(sysfs))
			mounts = append(mounts, runtimespec.Mount{
				Source: sysfs, Destination: sysfs, Type: "bind",
				Options: []string{"rbind", "rro", "nosuid", "nodev", "noexec"},
			})
		}
	}
	opts = append(opts,
		oci.WithoutMounts(devShm),
		oci.WithMounts(mounts),
		withSelinuxLabels(processLabel, mountLabel),
		withSysctls(sysctls),
		oci.WithCPUShares(sandboxCPUShares),
		withOOMScoreAdj(sandboxOOMScoreAdj, c.RestrictOOMScoreAdj),
		oci.WithAnnotations(annotations(c)),
	)
	if sc.GetPrivileged() {
		opts = append(opts, withPrivileged)
	}
	if seccompOpt != nil {
		opts = append(opts, seccompOpt)
	}
	if user != "" {
		opts = append(opts, oci.WithUser(user))
	}
	// After the user: oci.WithUser resets the additional groups. The
	// built-in adds them before and so loses them; berth keeps them.
	opts = append(opts, withSupplementalGroups(groups))
	return Spec{
		Opts:             opts,
		ProcessLabel:     processLabel,
		SnapshotOpts:     snapshotOpts,
		PinUserNamespace: userNS != nil && !hostNetwork,
	}, nil
}

// CgroupsPath is the pause container's cgroups path under parent. A parent
// ending in ".slice" means the systemd cgroup driver, whose runc path format
// is "slice:prefix:name"; containerd's built-in uses the same prefix.
func CgroupsPath(parent, id string) string {
	base := path.Base(parent)
	if strings.HasSuffix(base, ".slice") {
		return strings.Join([]string{base, "cri-containerd", id}, ":")
	}
	return filepath.Join(parent, id)
}

// namespaceOpts puts the pause process into the pod's namespaces: the
// netns CRI made (or the host's), and new ipc, uts and pid namespaces unless
// the pod shares the host's. Any other mode, TARGET included, means the
// pod's own, as in the built-in controller: a pod has no other container
// to share with yet.
func namespaceOpts(ns *runtimeapi.NamespaceOption, netnsPath string) []oci.SpecOpts {
	var opts []oci.SpecOpts
	if ns.GetNetwork() == runtimeapi.NamespaceMode_NODE {
		opts = append(opts,
			oci.WithHostNamespace(runtimespec.NetworkNamespace),
			oci.WithHostNamespace(runtimespec.UTSNamespace))
	} else {
		opts = append(opts, oci.WithLinuxNamespace(runtimespec.LinuxNamespace{
			Type: runtimespec.NetworkNamespace, Path: netnsPath,
		}))
	}
	if ns.GetPid() == runtimeapi.NamespaceMode_NODE {
		opts = append(opts, oci.WithHostNamespace(runtimespec.PIDNamespace))
	}
	if ns.GetIpc() == runtimeapi.NamespaceMode_NODE {
		opts = append(opts, oci.WithHostNamespace(runtimespec.IPCNamespace))
	}
	return opts
}

// sandboxMounts binds the pod's /dev/shm (the host's with host IPC) and
// resolv.conf into the pause container. nosuid, nodev and noexec are nice to
// have anyway and required once user namespaces are in play.
func sandboxMounts(f Files, ns *runtimeapi.NamespaceOption) []runtimespec.Mount {
	shm := f.Shm()
	if ns.GetIpc() == runtimeapi.NamespaceMode_NODE {
		shm = devShm
	}
	opts := []string{"rbind", "ro", "nosuid", "nodev", "noexec"}
	return []runtimespec.Mount{
		{Source: shm, Destination: devShm, Type: "bind", Options: opts},
		{Source: f.ResolvConf(), Destination: resolvConf, Type: "bind", Options: opts},
	}
}

// annotations are the io.kubernetes.cri.* annotations the runc shim groups
// the pod's containers by and NRI reads, plus the pod annotations the
// runtime handler passes through, but for the runc shim's group.
func annotations(c SpecConfig) map[string]string {
	cfg := c.Config
	a := map[string]string{}
	if res := cfg.GetLinux().GetResources(); res != nil {
		maps.Copy(a, map[string]string{
			annotationSandboxCPUPeriod: strconv.FormatInt(res.GetCpuPeriod(), 10),
			annotationSandboxCPUQuota:  strconv.FormatInt(res.GetCpuQuota(), 10),
			annotationSandboxCPUShares: strconv.FormatInt(res.GetCpuShares(), 10),
			annotationSandboxMemory:    strconv.FormatInt(res.GetMemoryLimitInBytes(), 10),
		})
	}
	// Passed-through pod annotations override the resource annotations and
	// are overridden by the identity ones, as in the built-in.
	for k, v := range cfg.GetAnnotations() {
		// The shim group is berth's alone to give (the controller sets it
		// on the container when the pod has one): a pod's own would put it
		// into the shim of any pod naming the same group, across the
		// namespaces berth keeps apart, while berth counts it as a pod
		// with a shim of its own.
		if k == placement.GroupAnnotation {
			continue
		}
		for _, pattern := range c.PodAnnotations {
			// path.Match, not filepath.Match: keys are not file paths.
			if ok, _ := path.Match(pattern, k); ok {
				a[k] = v
				break
			}
		}
	}
	maps.Copy(a, map[string]string{
		annotationSandboxID:        c.ID,
		annotationSandboxNamespace: cfg.GetMetadata().GetNamespace(),
		annotationSandboxUID:       cfg.GetMetadata().GetUid(),
		annotationSandboxName:      cfg.GetMetadata().GetName(),
		annotationSandboxLogDir:    cfg.GetLogDirectory(),
		annotationSandboxImageName: c.ImageName,
		annotationContainerType:    containerTypeSandbox,
	})
	return a
}

// withoutDefaultSecuritySettings drops the default spec's apparmor, seccomp
// and rlimits; the pod's own settings are applied after it.
func withoutDefaultSecuritySettings(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
	if s.Process != nil {
		s.Process.ApparmorProfile = ""
		s.Process.Rlimits = nil
	}
	if s.Linux != nil {
		s.Linux.Seccomp = nil
	}
	return nil
}

// withPrivileged gives a privileged pod a writable /sys and no SELinux
// process label, as the built-in controller does. The label stays reserved
// (and reported) so it can be released with the sandbox. The pause gets no
// more capabilities than any pause: the built-in adds none (a privileged
// pod's containers get them all), and the pause process needs none.
func withPrivileged(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
	if s.Process != nil {
		s.Process.SelinuxLabel = ""
	}
	for i := range s.Mounts {
		if filepath.Clean(s.Mounts[i].Destination) != "/sys" {
			continue
		}
		for j, o := range s.Mounts[i].Options {
			if o == "ro" {
				s.Mounts[i].Options[j] = "rw"
			}
		}
	}
	return nil
}

func withSysctls(sysctls map[string]string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
		if len(sysctls) == 0 {
			return nil
		}
		ensureLinux(s)
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		maps.Copy(s.Linux.Sysctl, sysctls)
		return nil
	}
}

// withOOMScoreAdj sets the pause process's oom_score_adj. With restrict, it
// never goes below containerd's own, which an unprivileged containerd could
// not lower anyway.
func withOOMScoreAdj(adj int, restrict bool) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
		ensureLinux(s)
		v := adj // each spec gets its own value
		if restrict {
			current, err := currentOOMScoreAdj()
			if err != nil {
				return err
			}
			v = max(v, current)
		}
		s.Process.OOMScoreAdj = &v
		return nil
	}
}

func ensureLinux(s *runtimespec.Spec) {
	if s.Process == nil {
		s.Process = &runtimespec.Process{}
	}
	if s.Linux == nil {
		s.Linux = &runtimespec.Linux{}
	}
}
