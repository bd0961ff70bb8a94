// Package podsandbox builds what the pause container is made of: its OCI spec
// and the per-sandbox files (hostname, hosts, resolv.conf, /dev/shm) that CRI
// mounts into the pod's app containers.
package podsandbox

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/selinux/go-selinux/label"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Annotations CRI, the runc shim and NRI read from the pause spec. containerd
// keeps them in an internal package, so they are declared here.
const (
	AnnotationContainerType    = "io.kubernetes.cri.container-type"
	AnnotationSandboxID        = "io.kubernetes.cri.sandbox-id"
	AnnotationSandboxNamespace = "io.kubernetes.cri.sandbox-namespace"
	AnnotationSandboxUID       = "io.kubernetes.cri.sandbox-uid"
	AnnotationSandboxName      = "io.kubernetes.cri.sandbox-name"
	AnnotationSandboxLogDir    = "io.kubernetes.cri.sandbox-log-directory"
	AnnotationSandboxImageName = "io.kubernetes.cri.podsandbox.image-name"
	AnnotationSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
	AnnotationSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	AnnotationSandboxCPUShares = "io.kubernetes.cri.sandbox-cpu-shares"
	AnnotationSandboxMemory    = "io.kubernetes.cri.sandbox-memory"

	containerTypeSandbox = "sandbox"
)

const (
	// sandboxOOMScoreAdj keeps the pause process among the last the kernel
	// OOM-kills (kubernetes#47938), as the built-in controller does.
	sandboxOOMScoreAdj = -998
	// sandboxCPUShares is the pause container's CPU weight: it only sleeps.
	sandboxCPUShares = 2
	// rootfsPath is the rootfs relative to the bundle, as the runc shim
	// expects it.
	rootfsPath = "rootfs"
	devShm     = "/dev/shm"
	resolvConf = "/etc/resolv.conf"
)

// SpecConfig is everything the pause spec is built from.
type SpecConfig struct {
	ID     string
	Config *runtimeapi.PodSandboxConfig
	// Image is the pause image's config: entrypoint, env, user, workdir.
	Image     imagespec.ImageConfig
	ImageName string
	// NetNSPath is the pod's network namespace; unused for host network.
	NetNSPath string
	// Rootfs is the pause container's rootfs: "" for the image's snapshot,
	// mounted by the shim at the bundle's "rootfs", or the absolute path of
	// the built-in pause's shared rootfs.
	Rootfs string
	Files  Files
	// PodAnnotations are the runtime handler's pod_annotations patterns:
	// pod annotations matching one are copied into the spec.
	PodAnnotations []string
	// The CRI runtime settings the built-in controller honours too.
	EnableUnprivilegedPorts bool
	EnableUnprivilegedICMP  bool
	RestrictOOMScoreAdj     bool
	// SeccompEnabled says whether the kernel supports seccomp.
	SeccompEnabled bool
}

// Spec is a generated pause spec: the options to apply to containerd's
// default spec, and the SELinux process label chosen for the pod.
type Spec struct {
	Opts         []oci.SpecOpts
	ProcessLabel string
}

// GenerateSpec returns the options that turn containerd's default spec into
// the pause container's. It validates the pod config first, so bad input
// fails with errdefs.ErrInvalidArgument before anything is created. The
// caller must release ProcessLabel (label.ReleaseLabel) if it does not use
// the spec.
func GenerateSpec(c SpecConfig) (Spec, error) {
	cfg := c.Config
	sc := cfg.GetLinux().GetSecurityContext()
	nsOpts := sc.GetNamespaceOptions()

	if len(c.Image.Entrypoint) == 0 && len(c.Image.Cmd) == 0 {
		return Spec{}, fmt.Errorf("pause image %q has no entrypoint or cmd: %w", c.ImageName, errdefs.ErrInvalidArgument)
	}
	if err := validateNamespaces(nsOpts); err != nil {
		return Spec{}, err
	}
	sysctls, err := podSysctls(c)
	if err != nil {
		return Spec{}, err
	}
	for _, g := range sc.GetSupplementalGroups() {
		if g < 0 || g > math.MaxInt32 {
			return Spec{}, fmt.Errorf("supplemental group %d is out of range: %w", g, errdefs.ErrInvalidArgument)
		}
	}
	user, err := userString(sc, c.Image.User)
	if err != nil {
		return Spec{}, err
	}
	seccompOpt, err := seccompProfile(sc, c.SeccompEnabled)
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
		oci.WithRootFSPath(cmp.Or(c.Rootfs, rootfsPath)),
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
	opts = append(opts,
		oci.WithoutMounts(devShm),
		oci.WithMounts(sandboxMounts(c.Files, nsOpts)),
		withSelinuxLabels(processLabel, mountLabel),
		withSysctls(sysctls),
		oci.WithCPUShares(sandboxCPUShares),
		withOOMScoreAdj(sandboxOOMScoreAdj, c.RestrictOOMScoreAdj),
		oci.WithAnnotations(annotations(c)),
	)
	if sc.GetPrivileged() {
		opts = append(opts, withPrivileged)
	}
	if user != "" {
		opts = append(opts, oci.WithUser(user))
	}
	// After the user: oci.WithUser resets the additional groups. (The
	// built-in controller applies them first and so loses them.)
	opts = append(opts, withSupplementalGroups(sc.GetSupplementalGroups()))
	if seccompOpt != nil {
		opts = append(opts, seccompOpt)
	}
	return Spec{Opts: opts, ProcessLabel: processLabel}, nil
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

// validateNamespaces rejects namespace modes the pause container cannot have.
func validateNamespaces(ns *runtimeapi.NamespaceOption) error {
	for name, mode := range map[string]runtimeapi.NamespaceMode{
		"network": ns.GetNetwork(), "pid": ns.GetPid(), "ipc": ns.GetIpc(),
	} {
		// TARGET names another container's namespace; a pod has none yet.
		if mode == runtimeapi.NamespaceMode_TARGET {
			return fmt.Errorf("%s namespace mode TARGET is not valid for a pod sandbox: %w", name, errdefs.ErrInvalidArgument)
		}
	}
	if u := ns.GetUsernsOptions(); u != nil && u.GetMode() == runtimeapi.NamespaceMode_POD {
		return fmt.Errorf("pod user namespaces: %w", errdefs.ErrNotImplemented)
	}
	return nil
}

// namespaceOpts puts the pause process into the pod's namespaces: the
// netns CRI made (or the host's), and new ipc, uts and pid namespaces unless
// the pod shares the host's.
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
	if ns.GetUsernsOptions().GetMode() == runtimeapi.NamespaceMode_NODE {
		opts = append(opts, oci.WithHostNamespace(runtimespec.UserNamespace))
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
// runtime handler passes through.
func annotations(c SpecConfig) map[string]string {
	cfg := c.Config
	a := map[string]string{}
	for k, v := range cfg.GetAnnotations() {
		for _, pattern := range c.PodAnnotations {
			// path.Match, not filepath.Match: keys are not file paths.
			if ok, _ := path.Match(pattern, k); ok {
				a[k] = v
				break
			}
		}
	}
	if res := cfg.GetLinux().GetResources(); res != nil {
		maps.Copy(a, map[string]string{
			AnnotationSandboxCPUPeriod: strconv.FormatInt(res.GetCpuPeriod(), 10),
			AnnotationSandboxCPUQuota:  strconv.FormatInt(res.GetCpuQuota(), 10),
			AnnotationSandboxCPUShares: strconv.FormatInt(res.GetCpuShares(), 10),
			AnnotationSandboxMemory:    strconv.FormatInt(res.GetMemoryLimitInBytes(), 10),
		})
	}
	maps.Copy(a, map[string]string{
		AnnotationSandboxID:        c.ID,
		AnnotationSandboxNamespace: cfg.GetMetadata().GetNamespace(),
		AnnotationSandboxUID:       cfg.GetMetadata().GetUid(),
		AnnotationSandboxName:      cfg.GetMetadata().GetName(),
		AnnotationSandboxLogDir:    cfg.GetLogDirectory(),
		AnnotationSandboxImageName: c.ImageName,
		AnnotationContainerType:    containerTypeSandbox,
	})
	return a
}

// userString is the user the pause process runs as: run_as_user and
// run_as_group from the pod, else the image's USER.
func userString(sc *runtimeapi.LinuxSandboxSecurityContext, imageUser string) (string, error) {
	uid, gid := sc.GetRunAsUser(), sc.GetRunAsGroup()
	switch {
	case uid == nil && gid != nil:
		return "", fmt.Errorf("run_as_group %d is set without run_as_user: %w", gid.GetValue(), errdefs.ErrInvalidArgument)
	case uid == nil:
		return imageUser, nil
	case gid == nil:
		return strconv.FormatInt(uid.GetValue(), 10), nil
	}
	return strconv.FormatInt(uid.GetValue(), 10) + ":" + strconv.FormatInt(gid.GetValue(), 10), nil
}

// seccompProfile picks the pause container's seccomp filter. Unlike the
// built-in controller, a pod that names no profile gets the runtime default:
// the pause process only sleeps and reaps, so the filter costs nothing and
// narrows what a compromised pause could do.
func seccompProfile(sc *runtimeapi.LinuxSandboxSecurityContext, enabled bool) (oci.SpecOpts, error) {
	if sc.GetPrivileged() {
		return nil, nil
	}
	sp := sc.GetSeccomp()
	if sp == nil {
		//lint:ignore SA1019 older kubelets still send the deprecated field
		switch p := sc.GetSeccompProfilePath(); {
		case p == "unconfined":
			sp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
		case strings.HasPrefix(p, "localhost/"):
			sp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: strings.TrimPrefix(p, "localhost/")}
		default:
			sp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		}
	}
	if sp.GetProfileType() == runtimeapi.SecurityProfile_Unconfined {
		return nil, nil
	}
	if sp.GetProfileType() != runtimeapi.SecurityProfile_Localhost && sp.GetLocalhostRef() != "" {
		return nil, fmt.Errorf("seccomp localhost_ref is only valid with profile type Localhost: %w", errdefs.ErrInvalidArgument)
	}
	if sp.GetProfileType() == runtimeapi.SecurityProfile_Localhost && sp.GetLocalhostRef() == "" {
		return nil, fmt.Errorf("seccomp profile type Localhost needs a localhost_ref: %w", errdefs.ErrInvalidArgument)
	}
	if !enabled {
		if sp.GetProfileType() == runtimeapi.SecurityProfile_RuntimeDefault && sc.GetSeccomp() == nil {
			// The default was berth's choice, not the pod's.
			return nil, nil
		}
		return nil, fmt.Errorf("seccomp is not supported by the kernel: %w", errdefs.ErrFailedPrecondition)
	}
	switch sp.GetProfileType() {
	case runtimeapi.SecurityProfile_RuntimeDefault:
		return seccomp.WithDefaultProfile(), nil
	case runtimeapi.SecurityProfile_Localhost:
		return seccomp.WithProfile(sp.GetLocalhostRef()), nil
	}
	return nil, fmt.Errorf("unknown seccomp profile type %v: %w", sp.GetProfileType(), errdefs.ErrInvalidArgument)
}

// selinuxLabels reserves the pod's SELinux process and mount labels. Both are
// "" when SELinux is disabled.
func selinuxLabels(opt *runtimeapi.SELinuxOption) (string, string, error) {
	if opt == nil {
		return label.InitLabels(nil)
	}
	var fields []string
	for _, f := range []struct{ key, value string }{
		{"user", opt.GetUser()}, {"role", opt.GetRole()}, {"type", opt.GetType()}, {"level", opt.GetLevel()},
	} {
		if f.value != "" {
			fields = append(fields, f.key+":"+f.value)
		}
	}
	processLabel, mountLabel, err := label.InitLabels(fields)
	if err != nil {
		return "", "", fmt.Errorf("selinux options %v: %w: %w", fields, errdefs.ErrInvalidArgument, err)
	}
	return processLabel, mountLabel, nil
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
// (and reported) so it can be released with the sandbox.
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

func withSelinuxLabels(process, mount string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
		ensureLinux(s)
		s.Process.SelinuxLabel = process
		s.Linux.MountLabel = mount
		return nil
	}
}

// withSupplementalGroups adds numeric groups the process does not have yet.
// oci.WithAppendAdditionalGroups would resolve names from the rootfs, which
// the pod config never has.
func withSupplementalGroups(groups []int64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
		ensureLinux(s)
		for _, g := range groups {
			if !slices.Contains(s.Process.User.AdditionalGids, uint32(g)) {
				s.Process.User.AdditionalGids = append(s.Process.User.AdditionalGids, uint32(g))
			}
		}
		return nil
	}
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
