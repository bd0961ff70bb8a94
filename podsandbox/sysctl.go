package podsandbox

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	sysctlUnprivilegedPortStart = "net.ipv4.ip_unprivileged_port_start"
	sysctlPingGroupRange        = "net.ipv4.ping_group_range"
)

// podSysctls returns the pod's sysctls plus the unprivileged-port and ICMP
// defaults the CRI runtime config asks for, after checking that each one is
// namespaced in a namespace the pod owns. runc would refuse the others too,
// but only after the shim, container and snapshot exist; failing here gives
// the caller a clear InvalidArgument and nothing to roll back.
func podSysctls(c SpecConfig) (map[string]string, error) {
	ns := c.Config.GetLinux().GetSecurityContext().GetNamespaceOptions()
	sysctls := map[string]string{}
	for k, v := range c.Config.GetLinux().GetSysctls() {
		if err := validateSysctl(k, ns); err != nil {
			return nil, err
		}
		sysctls[k] = v
	}
	if ns.GetNetwork() != runtimeapi.NamespaceMode_NODE {
		if _, ok := sysctls[sysctlUnprivilegedPortStart]; !ok && c.EnableUnprivilegedPorts {
			sysctls[sysctlUnprivilegedPortStart] = "0"
		}
		if _, ok := sysctls[sysctlPingGroupRange]; !ok && c.EnableUnprivilegedICMP {
			sysctls[sysctlPingGroupRange] = "0 2147483647"
		}
	}
	return sysctls, nil
}

// validateSysctl accepts the sysctls the kernel namespaces (the same list
// runc checks) when the pod has its own copy of that namespace.
func validateSysctl(name string, ns *runtimeapi.NamespaceOption) error {
	ipc := strings.HasPrefix(name, "fs.mqueue.") || strings.HasPrefix(name, "kernel.shm") ||
		strings.HasPrefix(name, "kernel.msg") || name == "kernel.sem"
	switch {
	case ipc && ns.GetIpc() == runtimeapi.NamespaceMode_NODE:
		return fmt.Errorf("sysctl %q is not allowed: the pod shares the host's IPC namespace: %w", name, errdefs.ErrInvalidArgument)
	case ipc:
		return nil
	case strings.HasPrefix(name, "net.") && ns.GetNetwork() == runtimeapi.NamespaceMode_NODE:
		return fmt.Errorf("sysctl %q is not allowed: the pod uses the host network: %w", name, errdefs.ErrInvalidArgument)
	case strings.HasPrefix(name, "net."):
		return nil
	case (name == "kernel.hostname" || name == "kernel.domainname") && ns.GetNetwork() == runtimeapi.NamespaceMode_NODE:
		// A host-network pod shares the host's UTS namespace too.
		return fmt.Errorf("sysctl %q is not allowed: the pod uses the host's UTS namespace: %w", name, errdefs.ErrInvalidArgument)
	case name == "kernel.hostname" || name == "kernel.domainname":
		return nil
	}
	return fmt.Errorf("sysctl %q is not allowed: it is not namespaced: %w", name, errdefs.ErrInvalidArgument)
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
