package podsandbox

import (
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/oci"
	runtimespec "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const usernsField = "linux.security_context.namespace_options.userns_options"

// userNamespace is a pod's own user namespace (mode POD): its one UID and
// one GID mapping.
type userNamespace struct {
	uid, gid runtimespec.LinuxIDMapping
}

// podUserNamespace checks a pod's user namespace options as the built-in
// does and returns the pod's own user namespace, or nil when the pod has
// the host's (no options, or mode NODE).
func podUserNamespace(opt *runtimeapi.UserNamespace) (*userNamespace, error) {
	if opt == nil {
		// A kubelet without user namespace support sends nothing.
		return nil, nil
	}
	uids, err := idMapping("uids", opt.GetUids())
	if err != nil {
		return nil, err
	}
	gids, err := idMapping("gids", opt.GetGids())
	if err != nil {
		return nil, err
	}
	switch mode := opt.GetMode(); mode {
	case runtimeapi.NamespaceMode_NODE:
		if uids != nil || gids != nil {
			return nil, invalidf(usernsField, "mode %s takes no ID mappings", mode)
		}
		return nil, nil
	case runtimeapi.NamespaceMode_POD:
		if uids == nil || gids == nil {
			return nil, invalidf(usernsField, "mode %s needs a UID and a GID mapping", mode)
		}
		return &userNamespace{uid: *uids, gid: *gids}, nil
	default:
		return nil, invalidf(usernsField+".mode", "%s is not supported for a pod", mode)
	}
}

// idMapping returns the one mapping of a pod's user namespace, nil for
// none. Only one is supported: the snapshotter shifts the rootfs by one.
func idMapping(field string, m []*runtimeapi.IDMapping) (*runtimespec.LinuxIDMapping, error) {
	switch {
	case len(m) > 1:
		return nil, invalidf(usernsField+"."+field, "%d mappings, only one is supported", len(m))
	case len(m) == 0 || m[0] == nil:
		return nil, nil
	case m[0].GetLength() < 1:
		return nil, invalidf(usernsField+"."+field, "mapping length %d is invalid", m[0].GetLength())
	}
	return &runtimespec.LinuxIDMapping{ContainerID: m[0].GetContainerId(), HostID: m[0].GetHostId(), Size: m[0].GetLength()}, nil
}

// opts puts the pause process into the pod's user namespace: the one
// pinned at pinned, or a new one runc makes if pinned is "".
func (u *userNamespace) opts(pinned string) oci.SpecOpts {
	opts := []oci.SpecOpts{oci.WithUserNamespace([]runtimespec.LinuxIDMapping{u.uid}, []runtimespec.LinuxIDMapping{u.gid})}
	if pinned != "" {
		opts = append(opts, oci.WithLinuxNamespace(runtimespec.LinuxNamespace{Type: runtimespec.UserNamespace, Path: pinned}))
	}
	return oci.Compose(opts...)
}

// snapshotOpts ask the snapshotter to shift the pause rootfs's ownership
// into the pod's user namespace, whose root is the mappings' container 0.
func (u *userNamespace) snapshotOpts() []snapshots.Opt {
	return []snapshots.Opt{containerd.WithRemapperLabels(0, u.uid.HostID, 0, u.gid.HostID, u.uid.Size)}
}
