package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/distribution/reference"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/selinux/go-selinux"

	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/store"
)

// Start makes and starts the pause container of a created sandbox. On
// failure it removes everything it made, including the sandbox's entry: CRI
// calls no Shutdown for a sandbox whose Start failed.
func (c *Controller) Start(ctx context.Context, id string) (sandbox.ControllerInstance, error) {
	defer c.telemetry.timeOperation("start")()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("sandbox_id", id))
	unlock, err := c.locks.lock(ctx, id)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	defer unlock()

	sb, err := c.store.Get(id)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	if state := sb.Status().State; state != store.StateCreated {
		return sandbox.ControllerInstance{}, fmt.Errorf("sandbox %q is %s, not created: %w", id, state, errdefs.ErrFailedPrecondition)
	}

	var undo rollback
	inst, err := c.start(ctx, sb, &undo)
	if err != nil {
		undo.run(ctx)
		c.forget(sb)
		// CRI already names the sandbox and the call in its error.
		return sandbox.ControllerInstance{}, err
	}
	return inst, nil
}

// start does Start's work, pushing the undo of each step it completes.
func (c *Controller) start(ctx context.Context, sb *store.Sandbox, undo *rollback) (sandbox.ControllerInstance, error) {
	rt, err := c.runtime(sb.Metadata)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	snapshotter := rt.Snapshotter
	if snapshotter == "" {
		snapshotter = c.config.CRI.Snapshotter
	}
	pause, err := c.pauseSource(ctx, rt, snapshotter)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}

	files := c.config.Dirs.Files(sb.ID)
	spec, err := podsandbox.GenerateSpec(podsandbox.SpecConfig{
		ID:                      sb.ID,
		Config:                  sb.Config,
		Image:                   pause.config,
		ImageName:               pause.ref,
		NetNSPath:               sb.NetNSPath,
		Rootfs:                  pause.rootfs,
		Files:                   files,
		PodAnnotations:          rt.PodAnnotations,
		EnableUnprivilegedPorts: c.config.CRI.EnableUnprivilegedPorts,
		EnableUnprivilegedICMP:  c.config.CRI.EnableUnprivilegedICMP,
		RestrictOOMScoreAdj:     c.config.CRI.RestrictOOMScoreAdj,
		UnsetSeccompProfile:     c.config.CRI.UnsetSeccompProfile,
		SeccompEnabled:          c.config.SeccompEnabled,
	})
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}
	undo.push("release selinux label", func(context.Context) error {
		selinux.ReleaseLabel(spec.ProcessLabel)
		return nil
	})

	undo.push("remove sandbox files", func(context.Context) error { return files.Remove() })
	if err := files.Create(sb.Config, c.config.HostFiles); err != nil {
		return sandbox.ControllerInstance{}, err
	}
	if spec.PinUserNamespace {
		if err := files.PinUserNamespace(sb.NetNSPath); err != nil {
			return sandbox.ControllerInstance{}, err
		}
	}

	// The snapshot is made under a lease named after the sandbox (CRI has
	// one with the bare sandbox ID): were containerd to die before the
	// container holds the snapshot, recovery finds the lease by its label
	// and releases the snapshot to the garbage collector, instead of the
	// client's anonymous 24-hour lease holding it.
	leaseCtx, releaseLease, err := c.client.WithLease(ctx, leases.WithID(startLeasePrefix+sb.ID),
		leases.WithExpiration(startLeaseExpiry), leases.WithLabel(LabelKind, LabelKindStartLease))
	if err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("create start lease: %w", err)
	}
	defer func() {
		if err := releaseLease(context.WithoutCancel(ctx)); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).Warn("release start lease")
		}
	}()

	var specAny typeurl.Any
	var rootfsOpts []containerd.NewContainerOpts
	if pause.image != nil {
		rootfsOpts = append(rootfsOpts,
			containerd.WithSnapshotter(snapshotter),
			containerd.WithNewSnapshot(sb.ID, pause.image, append(spec.SnapshotOpts,
				snapshots.WithLabels(snapshots.FilterInheritedLabels(sb.Config.GetAnnotations())))...))
	} else {
		// The shared built-in rootfs: no snapshot.
		snapshotter = ""
	}
	container, err := c.client.NewContainer(leaseCtx, sb.ID, append(rootfsOpts,
		containerd.WithNewSpec(spec.Opts...),
		containerd.WithContainerLabels(containerLabels(sb, spec.ProcessLabel)),
		containerd.WithContainerExtension(ExtensionConfig, sb.Config),
		containerd.WithRuntime(rt.Type, sb.Runtime.Options),
		// Keep the spec the options produced: no round trip to read it back.
		func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
			specAny = c.Spec
			return nil
		},
	)...)
	if err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("create pause container: %w", err)
	}
	undo.push("delete pause container", func(ctx context.Context) error {
		return ignoreNotFound(container.Delete(ctx, containerd.WithSnapshotCleanup))
	})
	info, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("pause container info: %w", err)
	}
	specJSON, cgroupsPath, err := specRecord(specAny)
	if err != nil {
		return sandbox.ControllerInstance{}, err
	}

	var taskOpts []containerd.NewTaskOpts
	if rt.Path != "" {
		taskOpts = append(taskOpts, containerd.WithRuntimePath(rt.Path))
	}
	task, err := container.NewTask(ctx, cio.NullIO, taskOpts...)
	if err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("create pause task: %w", err)
	}
	undo.push("delete pause task", func(ctx context.Context) error { return c.deleteTask(ctx, task) })

	// Wait before Start, so an exit right after Start is not missed. The
	// wait outlives this call, hence its own context; the undo cancels it.
	waitCtx, cancelWait := context.WithCancel(context.WithoutCancel(ctx))
	undo.push("stop waiting for pause task", func(context.Context) error { cancelWait(); return nil })
	exitCh, err := task.Wait(waitCtx)
	if err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("wait for pause task: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("start pause task: %w", err)
	}

	inst := &store.Instance{
		Container:    container,
		Task:         task,
		Spec:         specJSON,
		CgroupsPath:  cgroupsPath,
		Image:        pause.name,
		Snapshotter:  snapshotter,
		RuntimeType:  rt.Type,
		ProcessLabel: spec.ProcessLabel,
	}
	pid := task.Pid()
	if err := sb.Update(func(s store.Status) (store.Status, error) {
		s.State, s.Pid, s.CreatedAt, s.Instance = store.StateReady, pid, info.CreatedAt, inst
		return s, nil
	}); err != nil {
		return sandbox.ControllerInstance{}, fmt.Errorf("record started sandbox: %w", err)
	}
	go c.waitExit(waitCtx, cancelWait, sb, exitCh)
	log.G(ctx).WithField("pid", pid).Debug("sandbox started")

	labels := maps.Clone(sb.Config.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	labels[instanceLabelSELinux] = spec.ProcessLabel
	labels[instanceLabelRuntimeType] = rt.Type
	return sandbox.ControllerInstance{
		SandboxID: sb.ID,
		Pid:       pid,
		CreatedAt: info.CreatedAt,
		Labels:    labels,
		Spec:      specAny,
	}, nil
}

// specRecord is what berth keeps of a pause container's spec: its JSON as
// containerd stores it, and its cgroups path.
func specRecord(spec typeurl.Any) (json.RawMessage, string, error) {
	if spec == nil {
		return nil, "", fmt.Errorf("pause container has no spec: %w", errdefs.ErrNotFound)
	}
	var s struct {
		Linux struct {
			CgroupsPath string `json:"cgroupsPath"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(spec.GetValue(), &s); err != nil {
		return nil, "", fmt.Errorf("decode pause spec: %w", err)
	}
	return spec.GetValue(), s.Linux.CgroupsPath, nil
}

// pause is what a pause container is made from: an image, or berth's
// built-in pause.
type pause struct {
	// image is nil for the built-in pause.
	image  containerd.Image
	config imagespec.ImageConfig
	// name is the image's name, ref the name CRI's config gives it, which
	// may be shorter: the built-in controller puts that in the pause spec.
	name, ref string
	// rootfs is the built-in pause's shared rootfs, "" for an image.
	rootfs string
}

// pauseSource returns what the handler's pause container is made from.
func (c *Controller) pauseSource(ctx context.Context, rt Runtime, snapshotter string) (pause, error) {
	if rt.BuiltinPause {
		if c.config.BuiltinPauseRootfs == "" {
			return pause{}, fmt.Errorf("built-in pause rootfs is not prepared: %w", errdefs.ErrFailedPrecondition)
		}
		return pause{
			config: podsandbox.BuiltinPauseImage,
			name:   podsandbox.BuiltinPauseName, ref: podsandbox.BuiltinPauseName,
			rootfs: c.config.BuiltinPauseRootfs,
		}, nil
	}
	image, err := c.pauseImage(ctx, snapshotter)
	if err != nil {
		return pause{}, err
	}
	imageSpec, err := image.Spec(ctx)
	if err != nil {
		return pause{}, fmt.Errorf("read pause image config: %w", err)
	}
	return pause{image: image, config: imageSpec.Config, name: image.Name(), ref: c.config.CRI.SandboxImage}, nil
}

// pauseImage returns the pause image CRI pinned, unpacked for snapshotter.
// CRI pulls it before Start unless the handler disables that; berth does
// not pull.
func (c *Controller) pauseImage(ctx context.Context, snapshotter string) (containerd.Image, error) {
	ref := c.config.CRI.SandboxImage
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("pause image %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	image, err := c.client.GetImage(ctx, named.String())
	if err != nil {
		return nil, fmt.Errorf("pause image %q is not present: %w", named, err)
	}
	unpacked, err := image.IsUnpacked(ctx, snapshotter)
	if err != nil {
		return nil, fmt.Errorf("check pause image %q is unpacked: %w", named, err)
	}
	if !unpacked {
		if err := image.Unpack(ctx, snapshotter); err != nil {
			return nil, fmt.Errorf("unpack pause image %q: %w", named, err)
		}
	}
	return image, nil
}

// containerLabels are the pause container's labels: the pod's, plus berth's
// own, which say whose container it is and what recovery needs that the
// container does not hold otherwise.
func containerLabels(sb *store.Sandbox, processLabel string) map[string]string {
	l := maps.Clone(sb.Config.GetLabels())
	if l == nil {
		l = map[string]string{}
	}
	l[LabelKind] = LabelKindSandbox
	l[LabelRuntimeHandler] = sb.RuntimeHandler
	l[LabelNetNS] = sb.NetNSPath
	l[LabelSELinux] = processLabel
	return l
}

// startLeasePrefix and the sandbox ID name a Start's lease.
const startLeasePrefix = "io.berth.start."

// startLeaseExpiry is the longest a start lease can outlive a containerd
// that died during Start if recovery never runs.
const startLeaseExpiry = time.Hour

// cleanupTimeout bounds each undo and cleanup step, which run on a context
// the caller cannot cancel: a half-made sandbox must not be left behind
// because the caller gave up.
const cleanupTimeout = 30 * time.Second

// rollback is a stack of undo steps.
type rollback []undoStep

type undoStep struct {
	what string
	fn   func(context.Context) error
}

func (r *rollback) push(what string, fn func(context.Context) error) {
	*r = append(*r, undoStep{what, fn})
}

// run undoes the steps, last first. Failures are logged: there is nobody to
// return them to, and later steps still run.
func (r rollback) run(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	for i := len(r) - 1; i >= 0; i-- {
		stepCtx, cancel := context.WithTimeout(ctx, cleanupTimeout)
		if err := r[i].fn(stepCtx); err != nil {
			log.G(ctx).WithError(err).WithField("step", r[i].what).Error("roll back sandbox start")
		}
		cancel()
	}
}

func ignoreNotFound(err error) error {
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}
