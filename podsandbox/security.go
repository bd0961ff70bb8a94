package podsandbox

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/selinux/go-selinux/label"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// userString is the user the pause process runs as: run_as_user and
// run_as_group from the pod, else the image's USER. IDs oci.WithUser would
// refuse are refused here, before the pause container's snapshot exists.
// Without a user database, a run_as_user alone gets GID 0, what
// containerd's lookup gives a UID /etc/passwd does not name; asked to look
// it up in a container without a snapshot, oci.WithUser fails instead.
func userString(sc *runtimeapi.LinuxSandboxSecurityContext, imageUser string, noUserDatabase bool) (string, error) {
	uid, gid := sc.GetRunAsUser(), sc.GetRunAsGroup()
	for _, id := range []struct {
		name string
		v    *runtimeapi.Int64Value
	}{{"run_as_user", uid}, {"run_as_group", gid}} {
		if id.v != nil && (id.v.GetValue() < 0 || id.v.GetValue() > math.MaxInt32) {
			return "", invalidf("linux.security_context."+id.name, "%d is outside 0..%d", id.v.GetValue(), math.MaxInt32)
		}
	}
	switch {
	case uid == nil && gid != nil:
		return "", invalidf("linux.security_context.run_as_group", "%d is set without run_as_user", gid.GetValue())
	case uid == nil:
		return imageUser, nil
	case gid == nil && noUserDatabase:
		return strconv.FormatInt(uid.GetValue(), 10) + ":0", nil
	case gid == nil:
		return strconv.FormatInt(uid.GetValue(), 10), nil
	}
	return strconv.FormatInt(uid.GetValue(), 10) + ":" + strconv.FormatInt(gid.GetValue(), 10), nil
}

// supplementalGroups checks the pod's supplemental groups. The built-in
// drops them (see withSupplementalGroups), so it takes any; berth applies
// them, so a group the kernel cannot set is refused here rather than by
// runc once the task is being made.
func supplementalGroups(groups []int64) ([]uint32, error) {
	gids := make([]uint32, 0, len(groups))
	for _, g := range groups {
		if g < 0 || g > math.MaxInt32 {
			return nil, invalidf("linux.security_context.supplemental_groups", "%d is outside 0..%d", g, math.MaxInt32)
		}
		gids = append(gids, uint32(g))
	}
	return gids, nil
}

// withSupplementalGroups merges groups into the process's additional
// groups, sorted and without duplicates, as the built-in's option does.
// Unlike the built-in, berth applies it after oci.WithUser, which resets
// the additional groups: the pod asked for them.
func withSupplementalGroups(groups []uint32) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
		if len(groups) == 0 {
			return nil
		}
		ensureLinux(s)
		gids := append(slices.Clone(s.Process.User.AdditionalGids), groups...)
		slices.Sort(gids)
		s.Process.User.AdditionalGids = slices.Compact(gids)
		return nil
	}
}

// seccompProfile picks the pause container's seccomp filter the way the
// built-in does: the pod's profile, else the deprecated profile path, else
// CRI's unset_seccomp_profile, else none. A privileged pod gets none. A
// localhost profile is read now, so that a missing one fails before the
// pause container's snapshot is made.
func seccompProfile(sc *runtimeapi.LinuxSandboxSecurityContext, unsetProfile string, enabled bool) (oci.SpecOpts, error) {
	sp := sc.GetSeccomp()
	if sp == nil {
		//lint:ignore SA1019 older kubelets still send the deprecated field
		if p := sc.GetSeccompProfilePath(); p != "" {
			if sp = profileFromPath(p); sp == nil {
				return nil, invalidf("linux.security_context.seccomp_profile_path", "invalid seccomp profile %q: %s", p, profilePathForms)
			}
		} else if unsetProfile != "" {
			// The node's setting, not the pod's.
			if sp = profileFromPath(unsetProfile); sp == nil {
				return nil, preconditionf("CRI's unset_seccomp_profile", "invalid seccomp profile %q: %s", unsetProfile, profilePathForms)
			}
		}
	}
	if sc.GetPrivileged() {
		return nil, nil
	}
	if !enabled {
		if sp != nil && sp.GetProfileType() != runtimeapi.SecurityProfile_Unconfined {
			return nil, preconditionf(seccompField, "profile %s is set, but the kernel does not support seccomp", sp.GetProfileType())
		}
		return nil, nil
	}
	if sp == nil {
		return nil, nil
	}
	if sp.GetProfileType() != runtimeapi.SecurityProfile_Localhost && sp.GetLocalhostRef() != "" {
		return nil, invalidf(seccompField, "localhost_ref %q is only valid with profile type Localhost, not %s", sp.GetLocalhostRef(), sp.GetProfileType())
	}
	switch sp.GetProfileType() {
	case runtimeapi.SecurityProfile_Unconfined:
		return nil, nil
	case runtimeapi.SecurityProfile_RuntimeDefault:
		return seccomp.WithDefaultProfile(), nil
	case runtimeapi.SecurityProfile_Localhost:
		profile, err := loadSeccompProfile(strings.TrimPrefix(sp.GetLocalhostRef(), localhostPrefix))
		if err != nil {
			return nil, err
		}
		return withSeccomp(profile), nil
	}
	return nil, invalidf(seccompField, "unknown profile type %v", sp.GetProfileType())
}

const seccompField = "linux.security_context.seccomp"

// The deprecated profile path forms kubelets sent before the Seccomp field.
const (
	localhostPrefix = "localhost/"
	runtimeDefault  = "runtime/default"
	dockerDefault   = "docker/default"
	unconfined      = "unconfined"
)

// profilePathForms says what a deprecated seccomp profile path may be.
var profilePathForms = "want " + runtimeDefault + ", " + unconfined + " or " + localhostPrefix + "<path>"

// profileFromPath turns a deprecated seccomp profile path into a profile,
// nil if it is none of the forms.
func profileFromPath(p string) *runtimeapi.SecurityProfile {
	switch {
	case p == runtimeDefault || p == dockerDefault:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	case p == unconfined:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	case strings.HasPrefix(p, localhostPrefix):
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: strings.TrimPrefix(p, localhostPrefix)}
	}
	return nil
}

// loadSeccompProfile reads a localhost seccomp profile, an OCI
// LinuxSeccomp in JSON, as containerd's seccomp.WithProfile would.
func loadSeccompProfile(path string) (*runtimespec.LinuxSeccomp, error) {
	if path == "" {
		return nil, invalidf(seccompField, "profile type Localhost needs a localhost_ref")
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, notFoundf(seccompField, "localhost profile %q does not exist", path)
	}
	if err != nil {
		return nil, preconditionf(seccompField, "cannot read localhost profile %q: %v", path, err)
	}
	var profile runtimespec.LinuxSeccomp
	if err := json.Unmarshal(b, &profile); err != nil {
		return nil, invalidf(seccompField, "localhost profile %q is not a seccomp profile: %v", path, err)
	}
	return &profile, nil
}

// withSeccomp sets the seccomp filter; each spec gets its own copy.
func withSeccomp(profile *runtimespec.LinuxSeccomp) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
		ensureLinux(s)
		p := *profile
		p.Syscalls = slices.Clone(profile.Syscalls)
		s.Linux.Seccomp = &p
		return nil
	}
}

// selinuxLevel is the form the built-in accepts for an SELinux level
// (sensitivity range, then categories), checked even with SELinux off.
var selinuxLevel = regexp.MustCompile(`^s\d(-s\d)??(:c\d{1,4}(\.c\d{1,4})?(,c\d{1,4}(\.c\d{1,4})?)*)?$`)

func validateSELinuxLevel(l string) error {
	if l != "" && !selinuxLevel.MatchString(l) {
		return invalidf("linux.security_context.selinux_options.level", "%q is not of the form s0-s0:c0.c1023", l)
	}
	return nil
}

// selinuxLabels reserves the pod's SELinux process and mount labels. Both are
// "" when SELinux is disabled.
func selinuxLabels(opt *runtimeapi.SELinuxOption) (string, string, error) {
	if err := validateSELinuxLevel(opt.GetLevel()); err != nil {
		return "", "", err
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
		return "", "", invalidf("linux.security_context.selinux_options", "%v: %v", fields, err)
	}
	return processLabel, mountLabel, nil
}

func withSelinuxLabels(process, mount string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *runtimespec.Spec) error {
		ensureLinux(s)
		s.Process.SelinuxLabel = process
		s.Linux.MountLabel = mount
		return nil
	}
}
