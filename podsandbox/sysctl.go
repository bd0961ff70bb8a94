package podsandbox

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/moby/sys/userns"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	sysctlUnprivilegedPortStart = "net.ipv4.ip_unprivileged_port_start"
	sysctlPingGroupRange        = "net.ipv4.ping_group_range"
)

// podSysctls returns the pod's sysctls plus the unprivileged-port and ICMP
// defaults the CRI runtime config asks for, as the built-in controller sets
// them. It first checks each of the pod's sysctls as runc will: the
// built-in leaves that to runc, which refuses them only after the shim,
// container and snapshot exist; berth refuses them before anything is made.
func podSysctls(cfg *runtimeapi.PodSandboxConfig, settings RuntimeSettings, usernsEnabled bool) (map[string]string, error) {
	ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	sysctls := map[string]string{}
	// The pod's sysctls by dotted name: runc writes "net/ipv4/x" and
	// "net.ipv4.x" to one file, in the spec's map order, so a default
	// added beside the pod's slashed name could overwrite the pod's value.
	// The built-in looks for the dotted name only.
	set := map[string]bool{}
	for k, v := range cfg.GetLinux().GetSysctls() {
		if err := validateSysctlName(k); err != nil {
			return nil, err
		}
		if err := validateSysctl(k, ns, usernsEnabled); err != nil {
			return nil, err
		}
		sysctls[k] = v
		set[dotted(k)] = true
	}
	if ns.GetNetwork() != runtimeapi.NamespaceMode_NODE {
		if !set[sysctlUnprivilegedPortStart] && settings.EnableUnprivilegedPorts {
			sysctls[sysctlUnprivilegedPortStart] = "0"
		}
		// Group IDs outside the pod's mappings cannot be written in a user
		// namespace.
		if !set[sysctlPingGroupRange] && settings.EnableUnprivilegedICMP && !usernsEnabled && !userns.RunningInUserNS() {
			sysctls[sysctlPingGroupRange] = "0 2147483647"
		}
	}
	return sysctls, nil
}

// ipcSysctls are the sysctls of the IPC namespace besides fs.mqueue.*, as
// runc lists them.
var ipcSysctls = map[string]bool{
	"kernel.msgmax": true, "kernel.msgmnb": true, "kernel.msgmni": true, "kernel.sem": true,
	"kernel.shmall": true, "kernel.shmmax": true, "kernel.shmmni": true, "kernel.shm_rmid_forced": true,
}

// validateSysctl accepts a sysctl when runc would: it belongs to a
// namespace the pause container has its own of, usernsEnabled saying
// whether it has a user namespace. runc allows the user namespace's
// (user.*) from v1.4 on (runc#4889; containerd v2.4 ships v1.5); an older
// one refuses them at create, as it does under the built-in. The pod's pid
// namespace owns no sysctls runc allows.
func validateSysctl(name string, ns *runtimeapi.NamespaceOption, usernsEnabled bool) error {
	s := dotted(name)
	field := fmt.Sprintf("linux.sysctls[%q]", name)
	switch {
	case ipcSysctls[s] || strings.HasPrefix(s, "fs.mqueue."):
		if ns.GetIpc() == runtimeapi.NamespaceMode_NODE {
			return invalidf(field, "not allowed: the pod shares the host's IPC namespace")
		}
		return nil
	case strings.HasPrefix(s, "net."):
		if ns.GetNetwork() == runtimeapi.NamespaceMode_NODE {
			return invalidf(field, "not allowed: the pod uses the host network")
		}
		return nil
	case s == "kernel.hostname":
		return invalidf(field, "not allowed: the pod's hostname field sets it")
	case s == "kernel.domainname" && ns.GetNetwork() == runtimeapi.NamespaceMode_NODE:
		// A host-network pod shares the host's UTS namespace too.
		return invalidf(field, "not allowed: the pod uses the host's UTS namespace")
	case s == "kernel.domainname":
		return nil
	case strings.HasPrefix(s, "user."):
		if !usernsEnabled {
			return invalidf(field, "not allowed: the pod shares the host's user namespace")
		}
		return nil
	}
	return invalidf(field, "not allowed: it is not in a namespace of the pod's own")
}

// dotted writes a sysctl name with dots between its parts, as runc reads
// it: "net/ipv4/ip_forward" is "net.ipv4.ip_forward". A name whose first
// separator is a dot is already dotted; one whose parts hold dots (a
// network interface, say) has its dots and slashes swapped.
func dotted(name string) string {
	i := strings.IndexAny(name, "./")
	if i < 0 || name[i] == '.' {
		return name
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, name)
}

func currentOOMScoreAdj() (int, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, fmt.Errorf("read containerd's oom_score_adj: %w", err)
	}
	adj, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse containerd's oom_score_adj: %w", err)
	}
	return adj, nil
}
