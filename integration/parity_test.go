package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/placement"
)

// parityAllowlist is every intended difference between what berth and the
// built-in controller make of the same pod config. Anything else that
// differs fails TestSpecParity, and so does an entry no config needs.
var parityAllowlist = []allowedDifference{
	{
		field: "Process.User.AdditionalGids",
		when:  hasSupplementalGroups,
		why: "the built-in adds the pod's supplemental groups before oci.WithUser, which resets them, " +
			"so its pause loses them (still so in v2.4.2); berth adds them after the user, as the pod asks",
	},
	{
		field: codeField,
		when:  hasSupplementalGroups,
		why: "with the groups applied (above), one the kernel cannot set (kubelet allows 0 to 2^31-1) " +
			"is an error; berth reports it before making anything, the built-in drops the group",
	},
	{
		field: "Annotations",
		key:   placement.GroupAnnotation,
		when:  always,
		why: "berth puts pods into shared runc shims (pods_per_shim), by the runc shim's group annotation; " +
			"the built-in gives each pod a shim of its own",
	},
	{
		field: codeField,
		when:  lacksMetadata,
		why:   "a pod without a name or uid cannot be told apart in logs, annotations and kubelet; berth refuses it (InvalidArgument), the built-in runs it",
	},
	{
		field: codeField,
		when:  hasLocalhostAppArmor,
		why: "the pod's containers can never run with an AppArmor profile the node has not loaded; berth says so " +
			"at once (NotFound), the built-in ignores the pod's profile for the pause and fails the containers later",
	},
}

// allowedDifference is a field in which berth and the built-in may differ
// for the configs when selects.
type allowedDifference struct {
	// field is the spec field as go-cmp names it (struct fields only), or
	// codeField for RunPodSandbox's gRPC code.
	field string
	// key, if set, is the one map key of field that may differ.
	key  string
	when func(*runtimeapi.PodSandboxConfig) bool
	why  string
}

const codeField = "gRPC code"

func always(*runtimeapi.PodSandboxConfig) bool { return true }

func hasSupplementalGroups(c *runtimeapi.PodSandboxConfig) bool {
	return len(c.GetLinux().GetSecurityContext().GetSupplementalGroups()) > 0
}

func lacksMetadata(c *runtimeapi.PodSandboxConfig) bool {
	md := c.GetMetadata()
	return md.GetName() == "" || md.GetNamespace() == "" || md.GetUid() == ""
}

func hasLocalhostAppArmor(c *runtimeapi.PodSandboxConfig) bool {
	return c.GetLinux().GetSecurityContext().GetApparmor().GetProfileType() == runtimeapi.SecurityProfile_Localhost
}

// atLeastAsPrecise says whether berth's code for a config the built-in
// rejects tells kubelet at least as much: the built-in's, or a precise one
// where the built-in says Unknown.
func atLeastAsPrecise(builtin, berth codes.Code) bool {
	return builtin == berth || (builtin == codes.Unknown && berth != codes.OK && berth != codes.Internal)
}

// TestSpecParity runs each pod config once on containerd's built-in sandbox
// controller and once on berth, in the same containerd, and compares what
// they make: the pause container's OCI spec (normalised: sandbox IDs, netns
// paths, berth's own directories), the pod's hostname, hosts, resolv.conf
// and /dev/shm, and the selinux_label CRI keeps. Configs the built-in
// rejects must be rejected by berth with a code at least as precise (where
// the built-in says Unknown, berth names the field and its class), and
// neither may leave anything behind.
func TestSpecParity(t *testing.T) {
	if handlerBerth != "berth" {
		t.Skipf("handler %s: the built-in controller has only the image's pause to compare with", handlerBerth)
	}
	profile := filepath.Join(t.TempDir(), "seccomp.json")
	if err := os.WriteFile(profile, []byte(`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cgroupParent := "/berth-parity-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() { removeCgroup(t, cgroupParent) })

	used := make([]bool, len(parityAllowlist))
	ran := 0
	cases := parityCases(profile, cgroupParent)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ran++
			cfg := podConfig(t, append([]podOpt{withParityBase}, tc.opts...)...)
			builtin := runForParity(t, cfg, handlerBuiltin)
			berth := runForParity(t, cfg, handlerBerth)
			if builtin.code != codes.OK && atLeastAsPrecise(builtin.code, berth.code) {
				t.Logf("rejected\n  built-in: %s: %s\n  berth:    %s: %s", builtin.code, builtin.msg, berth.code, berth.msg)
				return
			}
			if builtin.code != berth.code {
				i := allowed(specDifference{field: codeField}, cfg)
				if i < 0 {
					t.Fatalf("gRPC code: built-in %s (%s), berth %s (%s)", builtin.code, builtin.msg, berth.code, berth.msg)
				}
				used[i] = true
				t.Logf("allowed difference in gRPC code: built-in %s (%s), berth %s (%s)", builtin.code, builtin.msg, berth.code, berth.msg)
				return
			}
			for _, d := range specDifferences(builtin.spec, berth.spec) {
				if i := allowed(d, cfg); i >= 0 {
					used[i] = true
					t.Logf("allowed difference %s: built-in %s, berth %s", d.at, d.builtin, d.berth)
					continue
				}
				t.Errorf("spec %s: built-in %s, berth %s", d.at, d.builtin, d.berth)
			}
			if diff := cmp.Diff(builtin.files, berth.files); diff != "" {
				t.Errorf("sandbox files differ (-built-in +berth):\n%s", diff)
			}
			if builtin.selinuxLabel != berth.selinuxLabel {
				t.Errorf("selinux_label: built-in %q, berth %q", builtin.selinuxLabel, berth.selinuxLabel)
			}
			checkCRIAnnotations(t, berth.spec)
		})
	}
	if ran == len(cases) {
		for i, used := range used {
			if !used {
				t.Errorf("allowlist entry %s matched no difference: remove it", parityAllowlist[i].field)
			}
		}
	}
}

type parityCase struct {
	name string
	opts []podOpt
}

// parityCases are the pod configs TestSpecParity runs: every field of the
// pod config the pause spec is made from. All run on the test host (cgroup
// v1, no systemd, no AppArmor, SELinux off), with what that leaves out
// noted at the cases concerned.
func parityCases(seccompProfile, cgroupParent string) []parityCase {
	ns := func(f func(*runtimeapi.NamespaceOption)) podOpt {
		return func(c *runtimeapi.PodSandboxConfig) { f(c.Linux.SecurityContext.NamespaceOptions) }
	}
	sc := func(f func(*runtimeapi.LinuxSandboxSecurityContext)) podOpt {
		return func(c *runtimeapi.PodSandboxConfig) { f(c.Linux.SecurityContext) }
	}
	userns := func(mode runtimeapi.NamespaceMode, mappings int) podOpt {
		return ns(func(n *runtimeapi.NamespaceOption) {
			u := &runtimeapi.UserNamespace{Mode: mode}
			for i := range mappings {
				m := &runtimeapi.IDMapping{ContainerId: uint32(i) * 65536, HostId: 1<<20 + uint32(i)*65536, Length: 65536}
				u.Uids, u.Gids = append(u.Uids, m), append(u.Gids, m)
			}
			n.UsernsOptions = u
		})
	}
	seccomp := func(p *runtimeapi.SecurityProfile) podOpt {
		return sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.Seccomp = p })
	}
	seccompPath := func(p string) podOpt {
		//lint:ignore SA1019 kubelets before 1.22 send the deprecated field
		return sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.SeccompProfilePath = p })
	}
	apparmor := func(p *runtimeapi.SecurityProfile) podOpt {
		return sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.Apparmor = p })
	}
	user := func(uid, gid *runtimeapi.Int64Value) podOpt {
		return sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.RunAsUser, s.RunAsGroup = uid, gid })
	}
	groups := func(g ...int64) podOpt {
		return sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.SupplementalGroups = g })
	}
	privileged := sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.Privileged = true })
	selinux := func(o *runtimeapi.SELinuxOption) podOpt {
		return sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.SelinuxOptions = o })
	}
	// kubelet sends no hostname for a host-network pod: it has the node's.
	hostNet := func(c *runtimeapi.PodSandboxConfig) {
		c.Hostname = ""
		c.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
	}
	hostIPC := ns(func(n *runtimeapi.NamespaceOption) { n.Ipc = runtimeapi.NamespaceMode_NODE })
	hostPID := ns(func(n *runtimeapi.NamespaceOption) { n.Pid = runtimeapi.NamespaceMode_NODE })
	val := func(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }
	localhost := &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: seccompProfile}

	return []parityCase{
		{name: "defaults"},
		{name: "no hostname", opts: []podOpt{withHostname("")}},
		{name: "dns", opts: []podOpt{withDNS(&runtimeapi.DNSConfig{
			Servers: []string{"192.0.2.53", "192.0.2.54"}, Searches: []string{"ns.svc.cluster.local"}, Options: []string{"ndots:5"},
		})}},
		{name: "no security context", opts: []podOpt{func(c *runtimeapi.PodSandboxConfig) { c.Linux = nil }}},
		// kubelet always names the pod, but the built-in does not need it.
		{name: "no uid", opts: []podOpt{func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Uid = "" }}},
		{name: "no name", opts: []podOpt{func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "" }}},

		// Namespaces.
		{name: "host network", opts: []podOpt{hostNet}},
		{name: "host network with hostname", opts: []podOpt{hostNet, withHostname("parity")}},
		{name: "host pid", opts: []podOpt{hostPID}},
		{name: "host ipc", opts: []podOpt{hostIPC}},
		{name: "host all", opts: []podOpt{hostNet, hostPID, hostIPC}},
		{name: "pid container", opts: []podOpt{ns(func(n *runtimeapi.NamespaceOption) { n.Pid = runtimeapi.NamespaceMode_CONTAINER })}},
		{name: "pid target", opts: []podOpt{ns(func(n *runtimeapi.NamespaceOption) {
			n.Pid, n.TargetId = runtimeapi.NamespaceMode_TARGET, "some-container"
		})}},
		{name: "network target", opts: []podOpt{ns(func(n *runtimeapi.NamespaceOption) { n.Network = runtimeapi.NamespaceMode_TARGET })}},
		{name: "ipc target", opts: []podOpt{ns(func(n *runtimeapi.NamespaceOption) { n.Ipc = runtimeapi.NamespaceMode_TARGET })}},

		// User namespaces.
		{name: "userns pod", opts: []podOpt{userns(runtimeapi.NamespaceMode_POD, 1)}},
		{name: "userns pod host network", opts: []podOpt{userns(runtimeapi.NamespaceMode_POD, 1), hostNet}},
		{name: "userns pod run as user", opts: []podOpt{userns(runtimeapi.NamespaceMode_POD, 1), user(val(1000), val(1000))}},
		{name: "userns node", opts: []podOpt{userns(runtimeapi.NamespaceMode_NODE, 0)}},
		{name: "userns node with mappings", opts: []podOpt{userns(runtimeapi.NamespaceMode_NODE, 1)}},
		// CRI itself rejects this one when it makes the netns; with host
		// network (no netns), the controllers see it.
		{name: "userns pod without mappings", opts: []podOpt{userns(runtimeapi.NamespaceMode_POD, 0)}},
		{name: "userns pod host network without mappings", opts: []podOpt{userns(runtimeapi.NamespaceMode_POD, 0), hostNet}},
		{name: "userns pod two mappings", opts: []podOpt{userns(runtimeapi.NamespaceMode_POD, 2), hostNet}},
		{name: "userns container", opts: []podOpt{userns(runtimeapi.NamespaceMode_CONTAINER, 0)}},

		// User and groups.
		{name: "run as user", opts: []podOpt{user(val(1000), nil)}},
		{name: "run as root", opts: []podOpt{user(val(0), val(0))}},
		{name: "run as user and group", opts: []podOpt{user(val(1000), val(2000))}},
		{name: "run as group only", opts: []podOpt{user(nil, val(2000))}},
		{name: "run as user out of range", opts: []podOpt{user(val(-1), nil)}},
		{name: "supplemental group out of range", opts: []podOpt{groups(-1)}},
		{name: "supplemental groups", opts: []podOpt{groups(3000, 1000, 3000)}},
		{name: "supplemental groups run as user", opts: []podOpt{user(val(1000), val(2000)), groups(4000, 5000)}},
		{name: "readonly rootfs", opts: []podOpt{sc(func(s *runtimeapi.LinuxSandboxSecurityContext) { s.ReadonlyRootfs = true })}},

		// Privileged, seccomp, apparmor, SELinux.
		{name: "privileged", opts: []podOpt{privileged}},
		{name: "privileged runtime default", opts: []podOpt{privileged,
			seccomp(&runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault})}},
		{name: "seccomp runtime default", opts: []podOpt{seccomp(&runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault})}},
		{name: "seccomp unconfined", opts: []podOpt{seccomp(&runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined})}},
		{name: "seccomp localhost", opts: []podOpt{seccomp(localhost)}},
		{name: "seccomp localhost missing", opts: []podOpt{seccomp(&runtimeapi.SecurityProfile{
			ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: seccompProfile + ".missing"})}},
		{name: "seccomp localhost without ref", opts: []podOpt{seccomp(&runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost})}},
		{name: "seccomp ref without localhost", opts: []podOpt{seccomp(&runtimeapi.SecurityProfile{
			ProfileType: runtimeapi.SecurityProfile_RuntimeDefault, LocalhostRef: seccompProfile})}},
		{name: "seccomp path runtime default", opts: []podOpt{seccompPath("runtime/default")}},
		{name: "seccomp path unconfined", opts: []podOpt{seccompPath("unconfined")}},
		{name: "seccomp path localhost", opts: []podOpt{seccompPath("localhost/" + seccompProfile)}},
		{name: "seccomp path invalid", opts: []podOpt{seccompPath("no-such-profile")}},
		// The built-in ignores the pod's AppArmor profile for the pause (on
		// any host), and so does berth; this host has no AppArmor anyway.
		// LinuxSandboxSecurityContext has no deprecated AppArmor field.
		{name: "apparmor runtime default", opts: []podOpt{apparmor(&runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault})}},
		{name: "apparmor localhost", opts: []podOpt{apparmor(&runtimeapi.SecurityProfile{
			ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "berth-no-such-profile"})}},
		// SELinux is off here: both reserve no labels, so this compares the
		// spec and selinux_label without them, and the level check.
		{name: "selinux options", opts: []podOpt{selinux(&runtimeapi.SELinuxOption{
			User: "system_u", Role: "system_r", Type: "container_t", Level: "s0:c1,c2"})}},
		{name: "selinux bad level", opts: []podOpt{selinux(&runtimeapi.SELinuxOption{Level: "not a level"})}},

		// Sysctls.
		{name: "sysctls", opts: []podOpt{withSysctls(map[string]string{
			"net.ipv4.ip_forward": "1", "net/ipv4/tcp_syncookies": "1", "kernel.shm_rmid_forced": "1",
			"kernel.msgmax": "8192", "fs.mqueue.msg_max": "20", "kernel.domainname": "example.org",
		})}},
		{name: "sysctls override defaults", opts: []podOpt{withSysctls(map[string]string{
			"net.ipv4.ip_unprivileged_port_start": "1024", "net.ipv4.ping_group_range": "1 0",
		})}},
		{name: "sysctl not namespaced", opts: []podOpt{withSysctls(map[string]string{"kernel.panic": "1"})}},
		{name: "sysctl hostname", opts: []podOpt{withSysctls(map[string]string{"kernel.hostname": "x"})}},
		{name: "sysctl ipc-like name", opts: []podOpt{withSysctls(map[string]string{"kernel.msgfoo": "1"})}},
		{name: "sysctl net host network", opts: []podOpt{hostNet, withSysctls(map[string]string{"net.ipv4.ip_forward": "1"})}},
		{name: "sysctl domainname host network", opts: []podOpt{hostNet, withSysctls(map[string]string{"kernel.domainname": "x"})}},
		{name: "sysctl ipc host ipc", opts: []podOpt{hostIPC, withSysctls(map[string]string{"kernel.shm_rmid_forced": "1"})}},

		// Cgroups and resources.
		{name: "cgroup parent cgroupfs", opts: []podOpt{withCgroupParent(cgroupParent)}},
		// Only the cgroups path: runc's systemd driver (SystemdCgroup)
		// needs systemd, which this host does not run, so runc's cgroupfs
		// driver takes the path as a relative cgroup name here.
		{name: "cgroup parent systemd", opts: []podOpt{withCgroupParent("berth_parity.slice")}},
		{name: "resources and overhead", opts: []podOpt{func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Resources = &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 256 << 20}
			c.Linux.Overhead = &runtimeapi.LinuxContainerResources{CpuShares: 64, MemoryLimitInBytes: 32 << 20}
		}}},
		{name: "empty resources", opts: []podOpt{func(c *runtimeapi.PodSandboxConfig) { c.Linux.Resources = &runtimeapi.LinuxContainerResources{} }}},
	}
}

// withParityBase gives a pod what kubelet usually sends: a hostname, a log
// directory, and annotations, some of which the handlers' pod_annotations
// pass into the pause spec.
func withParityBase(c *runtimeapi.PodSandboxConfig) {
	c.Hostname = "parity"
	c.LogDirectory = "/var/log/pods/" + c.Metadata.Namespace + "_" + c.Metadata.Name + "_" + c.Metadata.Uid
	c.Metadata.Attempt = 1
	c.Annotations = map[string]string{
		"io.berth.parity/passed":   "yes",
		"io.berth.parity/also":     "yes",
		"io.berth.other/kept-back": "no",
	}
}

// parityResult is what one controller made of a pod config.
type parityResult struct {
	code codes.Code // OK if the pod ran
	msg  string
	// spec is the pause container's spec, normalised.
	spec *runtimespec.Spec
	// files are the pod's hostname, hosts and resolv.conf, and its shm mount.
	files        map[string]string
	selinuxLabel string
}

// runForParity runs cfg with handler, records what it made and removes it,
// checking that nothing is left either way.
func runForParity(t *testing.T, cfg *runtimeapi.PodSandboxConfig, handler string) parityResult {
	t.Helper()
	resp, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		s, _ := status.FromError(err)
		assertNothingLeft(t)
		return parityResult{code: s.Code(), msg: s.Message()}
	}
	id := resp.GetPodSandboxId()
	defer removePod(t, id)
	ctx := ctxT(t)
	ctr, err := daemon.client.ContainerService().Get(ctx, id)
	if err != nil {
		t.Fatalf("%s: pause container: %v", handler, err)
	}
	record, err := daemon.client.SandboxStore().Get(ctx, id)
	if err != nil {
		t.Fatalf("%s: sandbox record: %v", handler, err)
	}
	// NRI reads the spec CRI keeps in the sandbox record: it must be the
	// pause container's.
	if record.Spec == nil || !bytes.Equal(record.Spec.GetValue(), ctr.Spec.GetValue()) {
		t.Errorf("%s: the sandbox record's spec is not the pause container's", handler)
	}
	return parityResult{
		code:         codes.OK,
		spec:         normaliseSpec(t, ctr.Spec.GetValue(), id),
		files:        sandboxFiles(t, id),
		selinuxLabel: record.Labels["selinux_label"],
	}
}

// normaliseSpec decodes a pause spec with what differs between any two pods
// replaced: the sandbox ID, the netns path, and berth's directories, which
// CRI's paths link to.
func normaliseSpec(t *testing.T, raw []byte, id string) *runtimespec.Spec {
	t.Helper()
	var s runtimespec.Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("decode pause spec: %v", err)
	}
	replace := []string{daemon.berthRoot(), daemon.criRoot(), daemon.berthState(), daemon.criState(), id, "<id>"}
	for _, n := range s.Linux.Namespaces {
		if n.Type == runtimespec.NetworkNamespace && n.Path != "" {
			replace = append([]string{n.Path, "<netns>"}, replace...)
		}
	}
	raw = []byte(strings.NewReplacer(replace...).Replace(string(raw)))
	s = runtimespec.Spec{}
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("decode normalised pause spec: %v", err)
	}
	return &s
}

// sandboxFiles reads the files CRI mounts into a pod's containers, through
// CRI's paths, and describes the pod's /dev/shm mount.
func sandboxFiles(t *testing.T, id string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, name := range []string{"hostname", "hosts", "resolv.conf"} {
		b, err := os.ReadFile(filepath.Join(daemon.criRoot(), "sandboxes", id, name))
		if err != nil {
			t.Errorf("read pod %s: %v", name, err)
		}
		files[name] = string(b)
	}
	shm, err := filepath.EvalSymlinks(filepath.Join(daemon.criState(), "sandboxes", id, "shm"))
	if err != nil {
		return files // host IPC: no shm of its own
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		before, after, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(before), strings.Fields(after)
		if ok && len(f) > 5 && len(g) > 2 && f[4] == shm {
			files["shm"] = strings.Join([]string{g[0], f[5], g[2]}, " ")
		}
	}
	return files
}

// specDifference is one field that differs between two specs.
type specDifference struct {
	field          string // struct fields only, e.g. Process.User.AdditionalGids
	at             string // the full path, e.g. {*specs.Spec}.Process.User.AdditionalGids[1]
	builtin, berth string
}

// specDifferences lists every leaf that differs between two specs.
func specDifferences(builtin, berth *runtimespec.Spec) []specDifference {
	var r diffReporter
	cmp.Equal(builtin, berth, cmpopts.EquateEmpty(), cmp.Reporter(&r))
	return r.diffs
}

// diffReporter collects go-cmp's differences one leaf at a time.
type diffReporter struct {
	path  cmp.Path
	diffs []specDifference
}

func (r *diffReporter) PushStep(ps cmp.PathStep) { r.path = append(r.path, ps) }
func (r *diffReporter) PopStep()                 { r.path = r.path[:len(r.path)-1] }
func (r *diffReporter) Report(rs cmp.Result) {
	if rs.Equal() {
		return
	}
	x, y := r.path.Last().Values()
	r.diffs = append(r.diffs, specDifference{field: r.path.String(), at: r.path.GoString(), builtin: show(x), berth: show(y)})
}

// show is a value as JSON, cut short: a seccomp profile is long.
func show(v reflect.Value) string {
	if !v.IsValid() {
		return "<absent>"
	}
	b, err := json.Marshal(v.Interface())
	if err != nil {
		return fmt.Sprintf("%+v", v.Interface())
	}
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// allowed returns the index of the allowlist entry that covers a difference
// in field for cfg, or -1.
func allowed(d specDifference, cfg *runtimeapi.PodSandboxConfig) int {
	return slices.IndexFunc(parityAllowlist, func(e allowedDifference) bool {
		return e.field == d.field && (e.key == "" || strings.Contains(d.at, strconv.Quote(e.key))) && e.when(cfg)
	})
}

// checkCRIAnnotations checks that a pause spec carries the annotations the
// runc shim groups a pod's containers by and NRI identifies the pod by.
// Their values are compared with the built-in's with the rest of the spec.
func checkCRIAnnotations(t *testing.T, s *runtimespec.Spec) {
	t.Helper()
	for _, k := range []string{
		"io.kubernetes.cri.sandbox-id", "io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-name",
		"io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-uid",
		"io.kubernetes.cri.sandbox-log-directory", "io.kubernetes.cri.podsandbox.image-name",
	} {
		if _, ok := s.Annotations[k]; !ok {
			t.Errorf("pause spec has no annotation %s", k)
		}
	}
}
