package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/selinux/go-selinux"

	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/reaper"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/store"
)

// Start makes and starts the pause container of a created sandbox. On
// failure it removes everything it made, including the sandbox's entry,
// retrying in the background what cannot be removed at once: CRI calls no
// Shutdown for a sandbox whose Start failed.
func (c *Controller) Start(ctx context.Context, id string) (sandbox.ControllerInstance, error) {
	defer c.telemetry.timeOperation("start")()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox_id", id))
	sb, unlock, err := c.locked(ctx, id)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	defer unlock()
	if state := sb.Status().State; state != store.StateCreated {
		return sandbox.ControllerInstance{}, fmt.Errorf("sandbox is %s, not created: %w", state, errdefs.ErrFailedPrecondition)
	}
	// Started, or forgotten if the start fails: no longer abandoned.
	c.abandoned.disarm(id)

	var undo rollback.Stack
	inst, err := c.start(ctx, sb, 1, &undo)
	if errors.Is(err, errSharedShimRefused) {
		// Undone at once, so that the sandbox's container can be made
		// again; if that fails, so does Start.
		log.G(ctx).WithError(err).Warn("a shared shim refused the pause task; starting it in another")
		refused := err
		var rest rollback.Stack
		if rest, err = undo.Run(ctx); err == nil {
			undo = nil
			inst, err = c.start(ctx, sb, 2, &undo)
		} else {
			// Both: the refusal is why Start failed, the undo's error why
			// it did not start the pod elsewhere.
			undo, err = rest, fmt.Errorf("%w; undo it: %w", refused, err)
		}
	}
	if err != nil {
		// Forgotten before the rollback ends: CRI forgets it too, and
		// nothing may find it half undone.
		c.forget(sb)
		undo.RunOrRetry(ctx, id, c.events, func() { failpoint.Clear(id) })
		return sandbox.ControllerInstance{}, err
	}
	return inst, nil
}

// start does Start's work, its attempt'th try, pushing the undo of each
// step it completes. Its last step hands the task to the reaper, after
// which nothing can fail.
func (c *Controller) start(ctx context.Context, sb *store.Sandbox, attempt int, undo *rollback.Stack) (_ sandbox.ControllerInstance, retErr error) {
	p, err := c.plan(ctx, sb)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	undo.Push("release selinux label", func(context.Context) error {
		selinux.ReleaseLabel(p.spec.ProcessLabel)
		return nil
	})
	if err := c.createFiles(sb, p, undo); err != nil {
		return sandbox.ControllerInstance{}, err
	}
	p.shimRuntime = shimRuntime(p.runtime, sb.Runtime.Options)
	scope := c.podShimScope(sb.Metadata, p.shimRuntime)
	p.group = c.groups.Join(scope)
	undo.Push("leave shim group", func(ctx context.Context) error {
		c.reaper.LeaveGroup(ctx, p.group, sb.ID)
		return nil
	})
	if err := c.keepers.KeepWarm(ctx, sb.Runtime, scope, p.group); err != nil && c.groups.Ending(p.group) {
		// The keeper was the group's first task, and its failure ended the
		// group with the shim it started: the pod opens another group,
		// without a keeper, so that a keeper that keeps failing costs the
		// pods nothing but its attempt. Left as an undo step is, on a
		// context the caller cannot cancel: the ended group's shim must not
		// outlive it because the caller gave up meanwhile.
		leaveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollback.StepTimeout)
		c.reaper.LeaveGroup(leaveCtx, p.group, sb.ID)
		cancel()
		p.group = c.groups.Join(scope)
	}
	// The lease spans the container's and the task's making, so that
	// recovery can tell a Start containerd's death cut short (record.go).
	ctx, releaseLease, err := c.startLease(ctx, sb.ID, attempt)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	defer releaseLease()
	making, err := c.beginTask(ctx, sb, &p)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	// Ended as Start fails, not in turn with the undo: the group's other
	// makings wait on it, and an undo step that fails (the pause
	// container's deletion, say) stops the undo until its retry, with
	// backoff, succeeds. A no-op once the making ended in newTask.
	defer func() {
		if retErr != nil {
			making.End(placement.Abandoned)
		}
	}()
	container, spec, err := c.createContainer(ctx, sb, p, undo)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	specJSON, cgroupsPath, err := specRecord(spec)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	info, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("pause container info: %w", err)
	}
	// What a failed create may leave, from the spec decoded above.
	lost := reaper.LostTask{ID: sb.ID, Runtime: runtimeOf(info), CgroupsPath: cgroupsPath, Group: p.group, Sandbox: sb}
	task, w, err := c.startTask(ctx, sb, container, lost, p, making, undo)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	// A caller that gave up (its deadline passed while the shim started the
	// task) takes the call for failed and, as CRI does, shuts nothing down:
	// a pod started all the same would run with no CRI record, until a
	// restart's recovery removed it.
	if err := ctx.Err(); err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("started the pause task after the caller gave up: %w", err)
	}

	pid := task.Pid()
	inst := &store.Instance{
		Container:    container,
		Task:         task,
		Spec:         specJSON,
		CgroupsPath:  cgroupsPath,
		Image:        p.pause.name,
		RuntimeType:  p.runtime.Type,
		ProcessLabel: p.spec.ProcessLabel,
		ShimGroup:    p.group,
		ShimRuntime:  p.shimRuntime,
	}
	if p.pause.image != nil {
		inst.Snapshotter, inst.SnapshotKey = p.snapshotter, sb.ID
	}
	_ = sb.Update(func(s store.Status) (store.Status, error) {
		// A shared shim that died since the task was made has had its
		// pods' exits recorded (shimDied), this one's included: the exit
		// stands, as the pause's own exit, when it comes, changes nothing.
		if s.State == store.StateCreated {
			s.State, s.Pid = store.StateReady, pid
		}
		s.CreatedAt, s.Instance = info.CreatedAt, inst
		return s, nil
	})
	c.reaper.Watch(sb, task, w)
	log.G(ctx).WithField("pid", pid).Debug("sandbox started")
	return controllerInstance(sb, p, pid, info.CreatedAt, spec), nil
}

// controllerInstance is what Start tells CRI of a started sandbox: the
// labels CRI shows (verbose status) beside the pod's own.
func controllerInstance(sb *store.Sandbox, p startPlan, pid uint32, createdAt time.Time, spec typeurl.Any) sandbox.ControllerInstance {
	labels := maps.Clone(sb.Config.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	labels[instanceLabelSELinux] = p.spec.ProcessLabel
	labels[instanceLabelRuntimeType] = p.runtime.Type
	return sandbox.ControllerInstance{
		SandboxID: sb.ID,
		Pid:       pid,
		CreatedAt: createdAt,
		Labels:    labels,
		Spec:      spec,
	}
}

// startPlan is what a sandbox's pause container is made of.
type startPlan struct {
	runtime Runtime
	// snapshotter is the pause snapshot's, "" for the built-in pause.
	snapshotter string
	pause       pause
	files       podsandbox.Files
	spec        podsandbox.Spec
	// group is the pause task's shim group, "" for a shim of its own.
	group string
	// shimRuntime identifies what its shim runs (placement.Scope.Runtime).
	shimRuntime string
	// shim is the task API address of the group's shim, up and serving
	// another pod, that the pause task joins; "" when the shim's start
	// command runs for it.
	shim string
}

// plan works out the sandbox's pause container; it makes nothing but the
// SELinux label reservation in plan.spec.
func (c *Controller) plan(ctx context.Context, sb *store.Sandbox) (startPlan, error) {
	rt, err := c.runtime(sb.Metadata)
	if err != nil {
		return startPlan{}, err
	}
	p := startPlan{runtime: rt, files: c.config.Dirs.Files(sb.ID)}
	builtin := c.builtinPause(sb.Metadata)
	if !builtin {
		p.snapshotter = rt.Snapshotter
		if p.snapshotter == "" {
			p.snapshotter = c.config.CRI.Snapshotter
		}
	}
	if p.pause, err = c.pauseSource(ctx, builtin, p.snapshotter); err != nil {
		return startPlan{}, err
	}
	if p.spec, err = podsandbox.GenerateSpec(podsandbox.SpecConfig{
		ID:              sb.ID,
		Config:          sb.Config,
		Image:           p.pause.unpacked.config,
		ImageName:       p.pause.ref,
		NoUserDatabase:  builtin,
		NetNSPath:       sb.NetNSPath,
		Files:           p.files,
		PodAnnotations:  rt.PodAnnotations,
		RuntimeSettings: c.config.CRI.RuntimeSettings,
		Node:            c.config.Node,
	}); err != nil {
		return startPlan{}, err
	}
	return p, nil
}

// createFiles makes the sandbox's files and, for a pod with a user
// namespace of its own, pins the namespace the pause joins.
func (c *Controller) createFiles(sb *store.Sandbox, p startPlan, undo *rollback.Stack) error {
	undo.Push("remove sandbox files", c.undoable(sb, "files", func(context.Context) error { return p.files.Remove() }))
	if err := p.files.Create(sb.Config, c.config.HostFiles); err != nil {
		return err
	}
	if p.spec.PinUserNamespace {
		if err := p.files.PinUserNamespace(sb.NetNSPath); err != nil {
			return err
		}
	}
	return failpoint.Inject(sb, failpoint.StartFiles)
}

// createContainer makes the pause container, and its snapshot, under ctx's
// lease. It returns the container with its spec as containerd stores it.
func (c *Controller) createContainer(ctx context.Context, sb *store.Sandbox, p startPlan, undo *rollback.Stack) (containerd.Container, typeurl.Any, error) {
	var opts []containerd.NewContainerOpts
	if p.shim != "" {
		// containerd's shim manager takes the task API address it is given
		// only for a task of a sandbox in its store (CRI's record of the
		// pod); it runs the shim's start command for any other.
		opts = append(opts, containerd.WithSandbox(sb.ID))
	}
	if p.pause.image != nil {
		undo.Push("remove pause snapshot", c.undoable(sb, "snapshot", func(ctx context.Context) error {
			return ignoreNotFound(c.client.SnapshotService(p.snapshotter).Remove(ctx, sb.ID))
		}))
		opts = append(opts,
			containerd.WithSnapshotter(p.snapshotter),
			c.withPauseSnapshot(sb.ID, p, snapshots.WithLabels(snapshots.FilterInheritedLabels(sb.Config.GetAnnotations()))),
			func(context.Context, *containerd.Client, *containers.Container) error {
				return failpoint.Inject(sb, failpoint.StartSnapshot)
			})
	}
	specOpts := p.spec.Opts
	if p.group != "" {
		specOpts = append(slices.Clip(specOpts), oci.WithAnnotations(map[string]string{placement.GroupAnnotation: p.group}))
	}
	// Before the making: a create whose answer was lost (containerd died
	// under berthd, or the caller's deadline passed) may have made it. The
	// snapshot's undo, pushed before, runs after it.
	undo.Push("delete pause container", c.undoable(sb, "container", func(ctx context.Context) error {
		return ignoreNotFound(c.client.ContainerService().Delete(ctx, sb.ID))
	}))
	var spec typeurl.Any
	container, err := c.client.NewContainer(ctx, sb.ID, append(opts,
		// After the snapshot: the image's user is looked up in it.
		containerd.WithNewSpec(specOpts...),
		// Keep the spec the options produced: no round trip to read it back.
		func(_ context.Context, _ *containerd.Client, ctr *containers.Container) error {
			spec = ctr.Spec
			return nil
		},
		containerd.WithContainerLabels(containerLabels(sb)),
		withRecord(record{Sandboxer: c.config.Sandboxer, RuntimeHandler: sb.RuntimeHandler, NetNSPath: sb.NetNSPath, ProcessLabel: p.spec.ProcessLabel, ShimGroup: p.group, ShimRuntime: p.shimRuntime}, sb.Config),
		containerd.WithRuntime(p.runtime.Type, sb.Runtime.Options),
	)...)
	if err != nil {
		return nil, nil, fmt.Errorf("create pause container: %w", err)
	}
	return container, spec, failpoint.Inject(sb, failpoint.StartContainer)
}

// undoable is undo step fn of Start step point, which failpoint
// failpoint.UndoPrefix+point fails in test builds.
func (c *Controller) undoable(sb *store.Sandbox, point string, fn func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := failpoint.Inject(sb, failpoint.UndoPrefix+point); err != nil {
			return err
		}
		return fn(ctx)
	}
}

// containerLabels are the pause container's labels: the pod's, as the
// built-in's carries them, and berth's kind, for people listing containers.
// Nothing of berth's reads them back: a pod sets them. CRI does read its
// kind label: a pod's would have CRI load the pause container as the
// built-in's, or as an app container, after a restart. The built-in
// overwrites it; berth drops it.
func containerLabels(sb *store.Sandbox) map[string]string {
	l := maps.Clone(sb.Config.GetLabels())
	if l == nil {
		l = map[string]string{}
	}
	delete(l, criLabelKind)
	l[LabelKind] = LabelKindSandbox
	return l
}
