package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/podcgroup"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/store"
)

// criUpdatedResourcesExtension is the sandbox record extension where CRI
// keeps a pod's resources after UpdatePodSandboxResources.
const criUpdatedResourcesExtension = "updated-resources"

// criUpdatedResources mirrors CRI's (internal) extension, which typeurl
// encodes as JSON: UpdatePodSandboxResourcesRequest's resources and
// overhead.
type criUpdatedResources struct {
	Overhead  *runtimeapi.LinuxContainerResources
	Resources *runtimeapi.LinuxContainerResources
}

// Update applies the pod-level resources CRI stored with
// UpdatePodSandboxResources (in-place pod resize) to the pod's cgroup, the
// cgroup_parent kubelet gave the pod (ownCgroup), and records them so that
// verbose status and a containerd restart keep them. kubelet makes that call before
// it writes the pod cgroup itself, and rejects the resize if it fails;
// berth writes the same values kubelet then writes (podCgroupResources),
// so that the cgroup never holds less than the pod was given. Fields other
// than the extensions are ignored.
func (c *Controller) Update(ctx context.Context, id string, info sandbox.Sandbox, fields ...string) error {
	if len(fields) > 0 && !slices.Contains(fields, "extensions") {
		return nil
	}
	ext, ok := info.Extensions[criUpdatedResourcesExtension]
	if !ok || ext == nil {
		return nil
	}
	var upd criUpdatedResources
	if err := json.Unmarshal(ext.GetValue(), &upd); err != nil {
		return fmt.Errorf("decode %s extension: %w: %w", criUpdatedResourcesExtension, errdefs.ErrInvalidArgument, err)
	}
	if upd.Resources == nil {
		return nil
	}
	want, err := podcgroup.Resources(upd.Resources, upd.Overhead)
	if err != nil {
		return err
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox_id", id))
	sb, unlock, err := c.locked(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	status := sb.Status()
	if status.State != store.StateReady {
		// As the built-in, whose Update does nothing: kubelet rejects a
		// resize the call fails, and a pod whose pause exited after
		// kubelet last looked is recreated with its new resources anyway.
		log.G(ctx).WithField("state", status.State).Info("sandbox is not ready; resources not applied")
		return nil
	}
	if path := c.ownCgroup(sb); path != "" {
		if err := podcgroup.Update(path, want); err != nil {
			return err
		}
	} else {
		log.G(ctx).WithField("cgroup_parent", sb.Config.GetLinux().GetCgroupParent()).Info("pod has no cgroup of its own; resources recorded, not applied")
	}
	// On the container, so that recovery after a restart reads them back:
	// berth's record alone, by field. containerd's client would write the
	// whole container back as it read it, which berthd's client reads from
	// what it wrote last (containerstore): a label or extension another
	// client put on the pause container since would be dropped.
	r := c.recordOf(sb)
	r.Resources, r.Overhead = upd.Resources, upd.Overhead
	rec, err := jsonExtension(recordTypeURL, r)
	if err != nil {
		return fmt.Errorf("encode sandbox record: %w", err)
	}
	update := containers.Container{ID: id, Extensions: map[string]typeurl.Any{extensionRecord: rec}}
	if _, err := c.client.ContainerService().Update(ctx, update, "extensions."+extensionRecord); err != nil {
		return fmt.Errorf("record pod resources: %w", err)
	}
	return sb.Update(func(s store.Status) (store.Status, error) {
		s.Resources, s.Overhead = upd.Resources, upd.Overhead
		return s, nil
	})
}

// ownCgroup is the path of the pod cgroup kubelet gave sandbox sb (its
// cgroup_parent), or "" where the pod has no cgroup of its own: no parent,
// the root cgroup, or one another pod's sandbox has too (kubelet with
// --cgroups-per-qos=false gives every pod its cgroup root). A cgroup shared
// is not one pod's to resize, nor its stats the pod's. A sandbox of the
// same pod (kubelet's new one for a pod whose pause died, beside the old)
// shares the pod's cgroup as its own.
func (c *Controller) ownCgroup(sb *store.Sandbox) string {
	parent := sb.Config.GetLinux().GetCgroupParent()
	if parent == "" {
		return ""
	}
	path := podcgroup.Path(parent)
	if path == "/" {
		return ""
	}
	// Asked at every Metrics: Same compares the pods' parents without
	// working out their paths.
	uid := sb.Config.GetMetadata().GetUid()
	for _, other := range c.store.List() {
		op := other.Config.GetLinux().GetCgroupParent()
		if op != "" && other.Config.GetMetadata().GetUid() != uid && podcgroup.Same(op, parent) {
			return ""
		}
	}
	return path
}

// Metrics returns the pod cgroup's stats (CPU, memory, pids, IO) in the
// encoding of containerd's task metrics: the cgroup_parent kubelet gave
// the pod, or, for a pod without one of its own (ownCgroup), the pause
// container's cgroup as its shim reports it. The shim knows where runc
// made that cgroup, which the spec's cgroupsPath does not say: under the
// systemd driver it is "slice:prefix:name", and without a parent a path
// relative to the shim's own cgroup.
func (c *Controller) Metrics(ctx context.Context, id string) (*types.Metric, error) {
	if c.recovering() {
		// CRI's ListPodSandboxStats skips the pods berth has not
		// reloaded yet, as it skips pods not ready, rather than wait:
		// the list's deadline passed would fail it for every pod.
		return nil, fmt.Errorf("berth is recovering its sandboxes: %w", errdefs.ErrUnavailable)
	}
	sb, err := c.sandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	s := sb.Status()
	if s.State != store.StateReady {
		// Unavailable, as CRI answers for a pod it knows is not ready:
		// its ListPodSandboxStats skips such a pod, and fails the whole
		// list on any other error (a pause that exited, before CRI saw
		// the exit).
		return nil, fmt.Errorf("sandbox is %s: %w", s.State, errdefs.ErrUnavailable)
	}
	path := c.ownCgroup(sb)
	if path == "" {
		m, err := s.Instance.Task.Metrics(ctx)
		if err != nil {
			return nil, fmt.Errorf("metrics of the pause task: %w", onePodsStatsError(ctx, err))
		}
		return m, nil
	}
	stats, err := podcgroup.Stats(path)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", onePodsStatsError(ctx, err))
	}
	data, err := typeurl.MarshalAnyToProto(stats)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return &types.Metric{Timestamp: protobuf.ToTimestamp(time.Now()), ID: id, Data: data}, nil
}

// onePodsStatsError makes err, one pod's failure to give its stats, an
// error CRI's ListPodSandboxStats skips: it fails the whole node's list on
// any error but NotFound and Unavailable. A shim that died (the pod's exit
// is on its way), a pause task whose stats containerd dropped (its
// Tasks.Metrics swallows the shim's error, and the client answers "no
// metrics received"), a cgroup file that cannot be read: the pod is
// missing from the list, not the node's stats. The caller's own deadline
// is the list's, and stays its error.
func onePodsStatsError(ctx context.Context, err error) error {
	if errdefs.IsNotFound(err) || errdefs.IsUnavailable(err) || ctx.Err() != nil {
		return err
	}
	if !shimproc.IsGone(err) {
		log.G(ctx).WithError(err).Warn("pod stats unavailable")
	}
	return fmt.Errorf("%w: %w", errdefs.ErrUnavailable, err)
}
