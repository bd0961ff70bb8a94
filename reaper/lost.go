package reaper

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	apitasks "github.com/containerd/containerd/api/services/tasks/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/podcgroup"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/store"
)

// LostTask is a pause task containerd does not know: what its container
// says of it.
type LostTask struct {
	ID      string
	Runtime sandbox.RuntimeOpts
	// CgroupsPath is the spec's linux.cgroupsPath.
	CgroupsPath string
	// Group is its shim group, "" for a shim of its own.
	Group string
	// Sandbox is the sandbox of the task, nil for a container no sandbox
	// owns.
	Sandbox *store.Sandbox
}

// loadTask returns the pause task of a recovered sandbox, or takes care of
// its absence and returns nil: the sandbox's exit is recorded, with its
// status lost, and it is marked deleted. A sandbox whose exit was handled
// before the restart has no task, and its shim lives on only while it
// serves the pod's app containers; one whose Start containerd's death cut
// short, or whose shim's bundle containerd lost, may have left a shim and a
// runc container, which CleanupLost ends.
func (r *Reaper) loadTask(ctx context.Context, sb *store.Sandbox) (containerd.Task, error) {
	t, err := sb.Status().Instance.Container.Task(ctx, nil)
	if err == nil {
		return t, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("load pause task: %w", err)
	}
	sb.Exit(events.UnknownExitCode, time.Now())
	inst := sb.Status().Instance
	if err := r.CleanupLost(ctx, LostTask{ID: sb.ID, Runtime: sb.Runtime, CgroupsPath: inst.CgroupsPath, Group: inst.ShimGroup, Sandbox: sb}); err != nil {
		return nil, err
	}
	sb.SetDeleted()
	return nil, nil
}

// CleanupLost cleans up after a pause task containerd does not know, when a
// Start was cut short by containerd's death: NewTask can have left a shim
// registered in the task service, a runc container the shim lost (its init
// waiting forever) with its cgroup, and a shim containerd forgot. Each is
// ended; a shim only if it serves no other task.
func (r *Reaper) CleanupLost(ctx context.Context, t LostTask) error {
	if err := r.DeleteFromTaskService(ctx, t.ID); err != nil {
		return err
	}
	// runc first: it kills the pause process a lost shim may still run.
	if err := deleteRuncContainer(ctx, t.ID, r.cfg.Shims.Namespace, t.Runtime); err != nil {
		return err
	}
	// runc leaves the cgroup of a container it made only part of. A
	// systemd-driver path ("slice:prefix:name") is systemd's to remove.
	if t.CgroupsPath != "" && !strings.Contains(t.CgroupsPath, ":") {
		if err := podcgroup.Remove(t.CgroupsPath); err != nil {
			return err
		}
	}
	return r.endLostShim(ctx, t)
}

// DeleteFromTaskService asks containerd's task service to delete the task
// of container id and shut its shim down. It also reaps a shim whose task
// was never created: containerd keeps such a shim registered after a
// restart that cut a NewTask short, and only this call ends it. A task
// containerd does not know is no error.
func (r *Reaper) DeleteFromTaskService(ctx context.Context, id string) error {
	_, err := r.cfg.Client.TaskService().Delete(ctx, &apitasks.DeleteTaskRequest{ContainerID: id})
	if err = errgrpc.ToNative(err); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete pause task from the task service: %w", err)
	}
	return nil
}

// runcRoot is the runc shim's default state root; it adds the namespace.
const runcRoot = "/run/containerd/runc"

// deleteRuncContainer removes a pause container that runc made but the runc
// shim lost track of. When containerd dies while the shim creates the
// container, runc has made it (its init process waits to be started) but
// the shim never recorded it; deleting the task through containerd then
// ends the shim and leaves runc's container and its init process behind
// for good. runc still knows the container, so berth asks runc, as the shim
// would, to delete it. Other runtimes are left alone. Only a container
// runc has a state directory for is asked about: most lost tasks have
// none, and berthd need not find the runc containerd's shims run (k3s and
// RKE2 put theirs on containerd's PATH alone) to clean up after them.
func deleteRuncContainer(ctx context.Context, id, namespace string, runtime sandbox.RuntimeOpts) error {
	if !shimproc.IsRunc(runtime.Name) {
		return nil
	}
	binary, root := "runc", runcRoot
	if runtime.Options != nil {
		var opts runcoptions.Options
		if err := typeurl.UnmarshalTo(runtime.Options, &opts); err != nil {
			return fmt.Errorf("decode runc options: %w", err)
		}
		if opts.BinaryName != "" {
			binary = opts.BinaryName
		}
		if opts.Root != "" {
			root = opts.Root
		}
	}
	if _, err := os.Lstat(filepath.Join(root, namespace, id)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	out, err := exec.CommandContext(ctx, binary, "--root", filepath.Join(root, namespace), "delete", "--force", id).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("does not exist")) {
		return fmt.Errorf("runc delete %s: %w: %s", id, err, bytes.TrimSpace(out))
	}
	return nil
}

// endLostShim asks a shim containerd lost track of to delete the pause task
// and exit, and ends it if it cannot, unless it serves other tasks.
// containerd loses a live shim when it dies while the shim starts: after
// the restart it finds the shim's bundle incomplete, deletes the bundle and
// forgets the shim, which then runs forever. The runc shim listens on a
// socket derived from containerd's address and its group (group, or the
// sandbox ID), so berth can still reach it there (shimproc). A shim that
// is not there is fine.
func (r *Reaper) endLostShim(ctx context.Context, t LostTask) error {
	shim, err := r.cfg.Shims.Dial(ctx, cmp.Or(t.Group, t.ID))
	if err != nil || shim == nil {
		return err
	}
	defer shim.Close()
	// Delete first: the runc shim only exits once it serves no task, and a
	// shared shim must not keep this one: the shim would outlive its last
	// pod, serving nothing. A delete that fails is retried with the rest of
	// the cleanup.
	err = failpoint.InjectTimeout(t.Sandbox, failpoint.LostShimDelete)
	if err == nil {
		err = shim.DeleteTask(ctx, t.ID)
	}
	if err != nil {
		return fmt.Errorf("delete pause task in lost shim: %w", err)
	}
	if t.Group != "" && r.cfg.Groups.Has(t.Group) {
		// The group's shim, serving its pods or about to: it ends with
		// them (EndIdleShim).
		return nil
	}
	return r.shutdownUnlessServing(ctx, shim, t.ID)
}

// LeaveGroup takes sandbox id, whose Start failed, out of group and ends
// the group's shim if that left the group empty: a failed first task can
// leave the shim running, serving nothing (containerd died under berthd
// before it recorded the shim, which CleanupLost reached while the pod was
// still in the group), and no deletion of a task of the group's would end
// it later.
func (r *Reaper) LeaveGroup(ctx context.Context, group, id string) {
	r.cfg.Groups.Leave(group)
	r.EndIdleShim(ctx, group, id)
}

// LeaveGroupAsKeeper takes keeper id, removed or never made, out of group
// and ends the group's shim if that left the group empty, as LeaveGroup
// does for a pod: a keeper's lost task cleaned up while the keeper held
// the group left the shim to the group.
func (r *Reaper) LeaveGroupAsKeeper(ctx context.Context, group, id string) {
	r.cfg.Groups.Unkeep(group, id)
	r.EndIdleShim(ctx, group, id)
}

// EndIdleShim ends the shim of group, whose task id was just deleted, once
// no pod or shim keeper is in the group and the shim serves no task
// containerd knows of. The shim exits by itself when containerd deletes its
// last task, unless a crash left it a task containerd does not know, which
// keeps it running, serving nothing, for good; containerd does not ask a
// shim to exit after deleting a task that joined it at its socket. Failing
// here never fails the deletion: the retry queue tries again until the
// shim is ended or found serving, keyed by the group ("shim/" and its
// name, which no sandbox ID can be: a slash is no identifier's).
func (r *Reaper) EndIdleShim(ctx context.Context, group, id string) {
	if group == "" || r.cfg.Groups.Has(group) {
		return
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("shim_group", group))
	if err := r.endIdleShim(ctx, group, id); err != nil {
		log.G(ctx).WithError(err).Warn("end the shim of a group no pod is in; retrying")
		r.cfg.Events.Retry(ctx, "shim/"+group, "end idle shim", func(ctx context.Context) error {
			return r.endIdleShim(ctx, group, id)
		})
	}
}

// endIdleShim is one attempt of EndIdleShim's; a shim that no longer
// listens, or is already exiting, counts as ended.
func (r *Reaper) endIdleShim(ctx context.Context, group, id string) error {
	shim, err := r.cfg.Shims.Dial(ctx, group)
	if err != nil || shim == nil {
		return err
	}
	defer shim.Close()
	if err := r.shutdownUnlessServing(ctx, shim, id); err != nil && !shimproc.IsExiting(err) {
		return err
	}
	return nil
}

// shutdownUnlessServing shuts the shim down, and ends it if it does not
// exit, unless it serves a task of a container containerd knows besides
// sandbox id's pause: the pod's app containers, and with a shared shim
// other pods and theirs.
func (r *Reaper) shutdownUnlessServing(ctx context.Context, shim *shimproc.Shim, id string) error {
	serving := func(ctx context.Context) (bool, error) {
		ids, err := r.otherContainers(ctx, id)
		if err != nil {
			return false, err
		}
		others, err := shim.Serving(ctx, ids)
		if err != nil {
			return false, err
		}
		if len(others) > 0 {
			// kubelet, not berth, decides when the pod's containers stop;
			// the shim exits once containerd deletes the last of them.
			log.G(ctx).WithField("tasks", others).Info("shim serves other tasks; leaving it")
		}
		return len(others) > 0, nil
	}
	if busy, err := serving(ctx); err != nil || busy {
		return err
	}
	return shim.Shutdown(ctx, id, serving)
}

// otherContainers lists the IDs of the containers containerd knows
// besides id.
func (r *Reaper) otherContainers(ctx context.Context, id string) ([]string, error) {
	containers, err := r.cfg.Client.Containers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var ids []string
	for _, c := range containers {
		if c.ID() != id {
			ids = append(ids, c.ID())
		}
	}
	return ids, nil
}
