package podsandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/pkg/apparmor"
	"github.com/containerd/containerd/v2/pkg/seccomp"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	netutils "k8s.io/utils/net"

	"github.com/berth-dev/berth/podcgroup"
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
// GenerateSpec repeats the checks of the fields it builds the spec from
// (sysctls, user, groups, seccomp, SELinux, user namespace); its callers
// must have run Validate for the rest.
//
// Every string of the config that berth or runc puts into a file, a path,
// a mount or a command line is checked here, so that no byte of a pod's
// config adds a line to a file (hostname, resolv.conf, /proc/sys,
// /proc/<pid>/cgroup) or names a path outside where it belongs: the
// hostname, DNS config, log directory, cgroup parent, sysctls and SELinux
// names. So are the port mappings, though CNI has had them by then (see
// validatePortMappings). The rules take everything kubelet sends.
// Strings that only reach JSON, where they are escaped, or containerd's
// metadata are not checked: the pod's annotations (those the handler's
// pod_annotations pass into the pause spec, and the containerd.io/snapshot/
// ones the snapshotter gets as labels, as from the built-in), its labels
// and its metadata. Which annotations a runtime may read is the handler's
// choice, as in the built-in.
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
	if err := validateDNS(cfg.GetDnsConfig()); err != nil {
		return err
	}
	if err := validatePortMappings(cfg.GetPortMappings()); err != nil {
		return err
	}
	if err := validateLogDirectory(cfg.GetLogDirectory()); err != nil {
		return err
	}
	if err := validateCgroupParent(cfg.GetLinux().GetCgroupParent()); err != nil {
		return err
	}
	if err := validateSysctlValues(cfg.GetLinux().GetSysctls()); err != nil {
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
	if _, err := userString(sc, "", false); err != nil {
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
	if err := validateSELinuxNames(sc.GetSelinuxOptions()); err != nil {
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

// maxDNSSearches and maxDNSSearchListChars are kubelet's limits on the
// search list it sends (Kubernetes' MaxDNSSearchPaths and
// MaxDNSSearchListChars; kubelet trims the list to them): more is never
// kubelet's, and older resolvers drop what does not fit.
const (
	maxDNSSearches        = 32
	maxDNSSearchListChars = 2048
)

// validateDNS checks what renderResolvConf writes into resolv.conf, where
// each server is a line of its own and the searches and options are
// separated by blanks: no entry may hold a blank or a line break.
// Servers are IP addresses, as kubelet sends them (an IPv6 zone, which
// glibc reads, included), but not IPv4 with leading zeros, which
// Kubernetes took as decimal before StrictIPCIDRValidation (v1.36) and
// the pod's resolver reads as octal (010.0.0.10 is 8.0.0.10), or drops:
// written as given, the pod would start with DNS other than it asked for;
// searches are domain names (a trailing dot, "."
// and underscores included, as Kubernetes allows them); options are
// "name" or "name:value". The built-in writes them as they come.
func validateDNS(dns *runtimeapi.DNSConfig) error {
	for i, s := range dns.GetServers() {
		field := fmt.Sprintf("dns_config.servers[%d]", i)
		a, err := netip.ParseAddr(s)
		if err != nil {
			if netutils.ParseIPSloppy(s) != nil {
				return invalidf(field, "%q has leading zeros, which Kubernetes reads as decimal and the pod's resolver as octal", s)
			}
			return invalidf(field, "%q is not an IP address", s)
		}
		// netip takes any zone; a zone names an interface.
		if badFileChar(a.Zone(), false) {
			return invalidf(field, "%q has a zone with a blank or a control character", s)
		}
	}
	searches := dns.GetSearches()
	for i, s := range searches {
		if err := validateDNSSearch(s); err != nil {
			return invalidf(fmt.Sprintf("dns_config.searches[%d]", i), "%q %v", s, err)
		}
	}
	if len(searches) > maxDNSSearches {
		return invalidf("dns_config.searches", "%d searches, more than kubelet's %d", len(searches), maxDNSSearches)
	}
	if n := len(strings.Join(searches, " ")); n > maxDNSSearchListChars {
		return invalidf("dns_config.searches", "the list is %d bytes, longer than kubelet's %d", n, maxDNSSearchListChars)
	}
	for i, o := range dns.GetOptions() {
		field := fmt.Sprintf("dns_config.options[%d]", i)
		if o == "" {
			return invalidf(field, "is empty")
		}
		if badFileChar(o, false) {
			return invalidf(field, "%q has a blank or a control character", o)
		}
		if strings.HasPrefix(o, ":") {
			return invalidf(field, "%q is not an option: want name or name:value", o)
		}
	}
	return nil
}

// validateDNSSearch accepts a domain name of at most 253 bytes with no
// empty label and no blank or control character; the root, ".", too. A
// label may be longer than DNS's 63 bytes: the API server checks a search
// as a DNS-1123 subdomain, which limits only the whole, and kubelet drops
// only searches over 253 bytes, so refusing it would keep such a pod from
// ever starting, where the built-in writes the line and the resolver skips
// the name.
func validateDNSSearch(s string) error {
	if s == "" {
		return errors.New("is empty")
	}
	if badFileChar(s, false) {
		return errors.New("has a blank or a control character")
	}
	if s == "." {
		return nil
	}
	name := strings.TrimSuffix(s, ".")
	if len(name) > 253 {
		return fmt.Errorf("is %d bytes, longer than a domain name's 253", len(name))
	}
	if slices.Contains(strings.Split(name, "."), "") {
		return errors.New("is not a domain name: it has an empty label")
	}
	return nil
}

// validatePortMappings checks the mappings CRI hands CNI's portmap plugin,
// which makes iptables rules of them: the host IP an address (no zone),
// the ports in range, the protocol one CRI knows. A host port of 0 is
// none: CRI skips the mapping, and no host IP of it reaches CNI, so none
// is checked (the API server does not check a pod's, and the built-in
// runs the pod with any). It keeps
// nothing from CNI: CRI (v2.4.2) sets up the pod's network with them
// before it calls Create. It refuses the sandbox afterwards, and CRI
// tears the network down, portmap's rules with it. The built-in checks
// none: its pod runs with whatever CNI made of them.
func validatePortMappings(pms []*runtimeapi.PortMapping) error {
	for i, pm := range pms {
		field := fmt.Sprintf("port_mappings[%d]", i)
		if _, ok := runtimeapi.Protocol_name[int32(pm.GetProtocol())]; !ok {
			return invalidf(field+".protocol", "%d is not TCP, UDP or SCTP", pm.GetProtocol())
		}
		if p := pm.GetContainerPort(); p < 1 || p > 65535 {
			return invalidf(field+".container_port", "%d is outside 1..65535", p)
		}
		if p := pm.GetHostPort(); p < 0 || p > 65535 {
			return invalidf(field+".host_port", "%d is outside 0..65535 (0: none)", p)
		}
		if ip := pm.GetHostIp(); ip != "" && pm.GetHostPort() != 0 {
			if a, err := netip.ParseAddr(ip); err != nil || a.Zone() != "" {
				return invalidf(field+".host_ip", "%q is not an IP address", ip)
			}
		}
	}
	return nil
}

// validateLogDirectory accepts an absolute, clean path, as kubelet sends
// (/var/log/pods/<namespace>_<name>_<uid>): CRI makes the pod's container
// logs under it, and a relative one would be relative to containerd's
// working directory.
func validateLogDirectory(d string) error {
	if d == "" {
		return nil
	}
	if badFileChar(d, true) {
		return invalidf("log_directory", "%q has a control character", d)
	}
	if !path.IsAbs(d) || path.Clean(d) != d {
		return invalidf("log_directory", "%q is not a clean absolute path", d)
	}
	return nil
}

// validateCgroupParent accepts what names one cgroup to runc, berth's pod
// resources and its metrics alike: a clean absolute cgroupfs path
// ("/kubepods/burstable/pod<uid>"), or a systemd slice, by its name
// ("kubepods-burstable-pod<uid>.slice") or by the path systemd gives it
// (kubelet's systemd driver sends
// "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice").
// A path whose last element is a slice becomes that slice's runc cgroups
// path (CgroupsPath), so it must be where systemd puts the slice, or the
// pause and the pod's resources would be in different cgroups. No part
// may hold a blank or a control character, which would add a line to
// /proc/<pid>/cgroup, or a ':', which splits runc's systemd path
// "slice:prefix:name". A relative path is refused: runc takes it under
// its own cgroup, berth under the root.
func validateCgroupParent(p string) error {
	const field = "linux.cgroup_parent"
	switch {
	case p == "":
		return nil
	case badFileChar(p, false):
		return invalidf(field, "%q has a blank or a control character", p)
	case strings.Contains(p, ":"):
		return invalidf(field, "%q has a ':', which splits runc's systemd cgroups path (slice:prefix:name)", p)
	case !strings.Contains(p, "/"):
		if err := validateSliceName(p); err != nil {
			return invalidf(field, "%q is neither an absolute cgroupfs path nor a systemd slice name: %v", p, err)
		}
		return nil
	case !path.IsAbs(p) || path.Clean(p) != p:
		return invalidf(field, "%q is not a clean absolute cgroupfs path or a systemd slice name", p)
	}
	if base := path.Base(p); strings.HasSuffix(base, sliceSuffix) {
		if err := validateSliceName(base); err != nil {
			return invalidf(field, "%q ends in %q, not a systemd slice name: %v", p, base, err)
		}
		if want := podcgroup.Path(base); want != p {
			return invalidf(field, "%q ends in systemd slice %q, which systemd puts at %q", p, base, want)
		}
	}
	return nil
}

const sliceSuffix = ".slice"

// sliceNameChar is what a systemd slice name berth accepts is made of:
// systemd's unit name characters without ':' (see validateCgroupParent).
var sliceNameChar = regexp.MustCompile(`^[A-Za-z0-9_.\\-]+$`)

// validateSliceName accepts the systemd slice names podcgroup.Path
// expands as runc's systemd driver (ExpandSlice) does: "a-b.slice" is
// "/a.slice/a-b.slice". The root slice, "-.slice", holds no pod, and
// podcgroup does not expand it: it is refused.
func validateSliceName(slice string) error {
	name, ok := strings.CutSuffix(slice, sliceSuffix)
	if !ok || name == "" {
		return errors.New("a slice name ends in .slice")
	}
	if len(slice) > 255 || !sliceNameChar.MatchString(slice) {
		return errors.New("a slice name is up to 255 letters, digits, '_', '.', '-' and '\\'")
	}
	if slices.Contains(strings.Split(name, "-"), "") {
		return errors.New("a slice name has no empty '-'-separated part")
	}
	return nil
}

// validateSysctlValues checks the values runc writes to /proc/sys: no line
// break or other control character but a tab, which separates the numbers
// of a vector sysctl (sysctl -a prints net.ipv4.ip_local_port_range so).
func validateSysctlValues(sysctls map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(sysctls)) {
		v := sysctls[k]
		if strings.ContainsFunc(v, func(r rune) bool { return r != '\t' && unicode.IsControl(r) }) || !utf8.ValidString(v) {
			return invalidf(fmt.Sprintf("linux.sysctls[%q]", k), "value %q has a control character", v)
		}
	}
	return nil
}

// validateSELinuxNames checks the user, role and type of the pod's
// SELinux options, which become fields of its process label and (the
// user) of the mount label runc puts into mount options: none may hold a
// ':', which separates the fields, a blank or a control character.
func validateSELinuxNames(opt *runtimeapi.SELinuxOption) error {
	for _, f := range []struct{ name, v string }{
		{"user", opt.GetUser()}, {"role", opt.GetRole()}, {"type", opt.GetType()},
	} {
		if badFileChar(f.v, false) || strings.Contains(f.v, ":") {
			return invalidf("linux.security_context.selinux_options."+f.name, "%q has a ':', a blank or a control character", f.v)
		}
	}
	return nil
}

// badFileChar says whether s cannot be put into a line of a file as one
// word: it is not UTF-8, or holds a control character (a line break, NUL)
// or, unless spaces are allowed, a blank (Unicode's, tabs included).
func badFileChar(s string, spaces bool) bool {
	return !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) || (!spaces && unicode.IsSpace(r))
	})
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
