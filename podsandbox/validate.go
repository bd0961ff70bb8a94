package podsandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"github.com/containerd/containerd/v2/pkg/apparmor"
	"github.com/containerd/containerd/v2/pkg/seccomp"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RuntimeSettings are the CRI runtime settings the pause spec follows, as
// the built-in controller's does. Their JSON keys are those of CRI's config,
// which berth's plugin decodes into this type.
type RuntimeSettings struct {
	RestrictOOMScoreAdj     bool `json:"restrictOOMScoreAdj"`
	EnableUnprivilegedPorts bool `json:"enableUnprivilegedPorts"`
	EnableUnprivilegedICMP  bool `json:"enableUnprivilegedICMP"`
	// UnsetSeccompProfile is the seccomp profile, in the deprecated path
	// form, of pods that ask for none.
	UnsetSeccompProfile string `json:"unsetSeccompProfile"`
}

// Node is what the node's kernel offers the pause container.
type Node struct {
	// SeccompEnabled says whether the kernel supports seccomp.
	SeccompEnabled bool
	// AppArmorProfiles returns the names of the loaded AppArmor profiles;
	// nil when AppArmor is off.
	AppArmorProfiles func() (map[string]bool, error)
}

// HostNode is this node.
func HostNode() Node {
	n := Node{SeccompEnabled: seccomp.IsEnabled()}
	if apparmor.HostSupports() {
		n.AppArmorProfiles = loadedAppArmorProfiles
	}
	return n
}

// Validate rejects a pod config that can never run, before anything is made
// for the pod, with the error of the first field at fault (see invalidf).
// GenerateSpec checks the same, so that no caller can skip it.
func Validate(cfg *runtimeapi.PodSandboxConfig, settings RuntimeSettings, node Node) error {
	if cfg == nil {
		return invalidf("config", "no pod sandbox config")
	}
	md := cfg.GetMetadata()
	for _, f := range []struct{ field, v string }{
		{"metadata.name", md.GetName()}, {"metadata.namespace", md.GetNamespace()}, {"metadata.uid", md.GetUid()},
	} {
		if f.v == "" {
			return invalidf(f.field, "is empty")
		}
	}
	if err := validateHostname(cfg); err != nil {
		return err
	}
	sc := cfg.GetLinux().GetSecurityContext()
	userNS, err := podUserNamespace(sc.GetNamespaceOptions().GetUsernsOptions())
	if err != nil {
		return err
	}
	if _, err := podSysctls(cfg, settings, userNS != nil); err != nil {
		return err
	}
	if _, err := userString(sc, ""); err != nil {
		return err
	}
	if _, err := supplementalGroups(sc.GetSupplementalGroups()); err != nil {
		return err
	}
	if _, err := seccompProfile(sc, settings.UnsetSeccompProfile, node.SeccompEnabled); err != nil {
		return err
	}
	if err := validateSELinuxLevel(sc.GetSelinuxOptions().GetLevel()); err != nil {
		return err
	}
	return validateAppArmor(sc.GetApparmor(), node)
}

// hostnameLabel is one dot-separated label of an RFC 1123 host name.
var hostnameLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// maxHostname is the kernel's HOST_NAME_MAX.
const maxHostname = 64

func validateHostname(cfg *runtimeapi.PodSandboxConfig) error {
	h := cfg.GetHostname()
	if h == "" {
		return nil
	}
	if cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		return invalidf("hostname", "%q is set, but a host-network pod has the node's UTS namespace and hostname", h)
	}
	if len(h) > maxHostname {
		return invalidf("hostname", "%q is %d bytes, longer than the kernel's %d", h, len(h), maxHostname)
	}
	for _, l := range strings.Split(h, ".") {
		if !hostnameLabel.MatchString(l) {
			return invalidf("hostname", "%q is not a valid host name (RFC 1123)", h)
		}
	}
	return nil
}

// validateSysctlName accepts what can name a file under /proc/sys: parts
// separated by dots or slashes, none empty, with no whitespace, control
// character or "=".
func validateSysctlName(name string) error {
	field := fmt.Sprintf("linux.sysctls[%q]", name)
	if strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == '=' || r == 0x7f }) {
		return invalidf(field, "a sysctl name has no whitespace, control character or '='")
	}
	for _, part := range strings.Split(strings.ReplaceAll(name, "/", "."), ".") {
		if part == "" {
			return invalidf(field, "not a sysctl name: it has an empty part")
		}
	}
	return nil
}

// validateAppArmor accepts any AppArmor profile but a localhost one the node
// has not loaded. The built-in pause runs with none; the pod's containers
// will ask for this profile, and can never run without it.
func validateAppArmor(p *runtimeapi.SecurityProfile, node Node) error {
	if p.GetProfileType() != runtimeapi.SecurityProfile_Localhost {
		return nil
	}
	const field = "linux.security_context.apparmor"
	name := strings.TrimPrefix(p.GetLocalhostRef(), localhostPrefix)
	if name == "" {
		return invalidf(field, "profile type Localhost needs a localhost_ref")
	}
	if node.AppArmorProfiles == nil {
		return notFoundf(field, "localhost profile %q: AppArmor is not enabled on this node", name)
	}
	loaded, err := node.AppArmorProfiles()
	if err != nil {
		return preconditionf(field, "list loaded AppArmor profiles: %v", err)
	}
	if !loaded[name] {
		return notFoundf(field, "localhost profile %q is not loaded", name)
	}
	return nil
}

// appArmorProfiles lists the loaded profiles, a "name (mode)" line each.
const appArmorProfiles = "/sys/kernel/security/apparmor/profiles"

func loadedAppArmorProfiles() (map[string]bool, error) {
	f, err := os.Open(appArmorProfiles)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	loaded := map[string]bool{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, _, _ := strings.Cut(s.Text(), " (")
		loaded[name] = true
	}
	return loaded, s.Err()
}
