package podsandbox

import (
	"strings"

	"github.com/containerd/containerd/v2/pkg/oci"
)

// KeeperSpec returns the options that turn containerd's default spec into
// a shim keeper's: the built-in pause, alone in namespaces of its own, as
// nobody with no capabilities, in cgroup cgroupsPath, under the shim group
// annotation annotations gives. A keeper runs nothing of a pod's: it is a
// task that keeps a shared shim running while no pod is in it. Its rootfs
// is the built-in pause's (PrepareRootfs).
func KeeperSpec(cgroupsPath string, restrictOOMScoreAdj bool, annotations map[string]string) []oci.SpecOpts {
	return []oci.SpecOpts{
		oci.WithoutRunMount,
		withoutDefaultSecuritySettings,
		oci.WithRootFSPath(rootfsPath),
		oci.WithRootFSReadonly(),
		oci.WithProcessArgs(BuiltinPauseImage.Entrypoint...),
		oci.WithUser(BuiltinPauseImage.User),
		oci.WithCapabilities(nil),
		oci.WithNoNewPrivileges,
		oci.WithCgroup(cgroupsPath),
		oci.WithCPUShares(sandboxCPUShares),
		withOOMScoreAdj(sandboxOOMScoreAdj, restrictOOMScoreAdj),
		oci.WithAnnotations(annotations),
	}
}

// KeeperCgroupsPath is a shim keeper's cgroups path: beside CRI's pods
// without a cgroup parent (/k8s.io/<id>) with the cgroupfs driver, in
// system.slice with systemd's, where runc wants "slice:prefix:name".
func KeeperCgroupsPath(namespace, id string, systemd bool) string {
	if systemd {
		return strings.Join([]string{"system.slice", "berth-keeper", id}, ":")
	}
	return "/" + namespace + "/" + id
}
