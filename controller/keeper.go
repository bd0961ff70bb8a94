package controller

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/reaper"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/shimproc"
)

// A shim keeper keeps a shared runc shim warm for a shim scope (a handler,
// or a handler's pods of one Kubernetes namespace) while no pod of the
// scope runs: a task of berth's own, the built-in pause alone in its
// own namespaces, made as the first task of a shim group. Without it, each
// pod on a node with no other pod of its handler starts a shim and, at its
// end, has containerd wait for the shim's exit and run `shim delete`; with
// it, every pod joins a running shim. A warm scope has one keeper at a
// time, in the group it was made in, for as long as the keeper's task runs;
// one that exits is removed, and the next pod that opens a group makes a new
// one. Recovery takes up a keeper whose task runs and removes any other
// (recoverKeepers).
//
// A container is a keeper when it carries extensionKeeper, which only
// berth writes; the keeper label is for people.
const (
	extensionKeeper = "io.berth.keeper.record"
	keeperTypeURL   = "io.berth.keeper.Record.v1"
	LabelKindKeeper = "shim-keeper"
	// keeperStartTimeout bounds the making of a keeper, which a pod's Start
	// waits for.
	keeperStartTimeout = 10 * time.Second
)

// keeperRecord is what recovery needs of a keeper.
type keeperRecord struct {
	RuntimeHandler string `json:"runtimeHandler"`
	// Namespace is the Kubernetes namespace whose pods the keeper's shim
	// serves, "" for every namespace's (or a keeper of an earlier berth).
	Namespace string `json:"namespace,omitempty"`
	ShimGroup string `json:"shimGroup"`
}

// keeper is a live shim keeper and its container.
type keeper = placement.Keeper[containerd.Container]

// keepShimWarm makes a shim keeper as the first task of group, of scope,
// which sb has just joined, if the scope's handler keeps a warm shim and
// the scope has no keeper. It runs
// before sb's pause task is made, so that the pause joins the keeper's
// shim. A keeper that cannot be made is logged, never the pod's failure:
// the pod's task starts the shim itself.
func (c *Controller) keepShimWarm(ctx context.Context, runtime sandbox.RuntimeOpts, scope placement.Scope, group string) {
	if group == "" || !c.policy.KeepsWarm(scope.Handler) || !c.groups.Fresh(group) {
		return
	}
	ok, stale := c.keepers.Claim(scope, func(g string) bool { return c.groups.IsOpen(scope, g) })
	if !ok {
		return
	}
	if stale != nil {
		c.removeKeeperOrRetry(ctx, stale)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keeperStartTimeout)
	defer cancel()
	start := time.Now()
	kp, err := c.startKeeper(ctx, runtime, scope, group)
	c.telemetry.groupWaited("keeper", time.Since(start))
	c.keepers.Set(scope, kp)
	switch {
	case errors.Is(err, errShimUp):
		// Another pod's task came first: the shim is warm already.
		log.G(ctx).WithError(err).Debug("no shim keeper made")
	case err != nil:
		log.G(ctx).WithError(err).WithField("shim_group", group).Warn("cannot make a shim keeper; the pod starts its group's shim")
	}
}

// errShimUp says a keeper was not made because its group's shim already
// serves a task: a keeper is only ever a group's first task, made by the
// shim's start command with no shim listening.
var errShimUp = errors.New("the group's shim is up")

// startKeeper makes and starts a keeper of scope as the first task of
// group, removing all it made if it fails.
func (c *Controller) startKeeper(ctx context.Context, runtime sandbox.RuntimeOpts, scope placement.Scope, group string) (_ *keeper, retErr error) {
	handler := scope.Handler
	rootfs := c.config.BuiltinPause.Rootfs
	if rootfs == "" {
		return nil, fmt.Errorf("a shim keeper runs the built-in pause, which is not prepared: %w", errors.Join(errdefs.ErrFailedPrecondition, c.config.BuiltinPause.Err))
	}
	rt, ok := c.config.CRI.Runtimes[handler]
	if !ok {
		return nil, fmt.Errorf("runtime handler %q is not configured: %w", handler, errdefs.ErrNotFound)
	}
	systemd, err := systemdCgroup(runtime)
	if err != nil {
		return nil, err
	}
	id := newKeeperID(handler)
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"keeper_id": id, "shim_group": group}))
	var undo rollback.Stack
	defer func() {
		if retErr != nil {
			undo.RunOrRetry(ctx, id, c.events, func() { failpoint.Clear(id) })
		}
	}()
	if !c.groups.Keep(group, id) {
		return nil, fmt.Errorf("shim group %s has a keeper: %w", group, errdefs.ErrAlreadyExists)
	}
	undo.Push("take keeper out of its group", func(context.Context) error {
		c.groups.Unkeep(group, id)
		return nil
	})
	making, err := c.groups.MakeTask(ctx, group, id)
	if err != nil {
		return nil, fmt.Errorf("shim group %s: %w", group, err)
	}
	if making.ShimUp {
		making.End(placement.Abandoned)
		return nil, fmt.Errorf("shim group %s: %w", group, errShimUp)
	}
	undo.Push("end keeper task making", func(context.Context) error {
		making.End(placement.Abandoned)
		return nil
	})
	specOpts := podsandbox.KeeperSpec(podsandbox.KeeperCgroupsPath(Namespace, id, systemd),
		c.config.CRI.RestrictOOMScoreAdj, map[string]string{placement.GroupAnnotation: group})
	container, err := c.client.NewContainer(ctx, id,
		containerd.WithNewSpec(specOpts...),
		containerd.WithContainerLabels(map[string]string{LabelKind: LabelKindKeeper}),
		withKeeperRecord(keeperRecord{RuntimeHandler: handler, Namespace: scope.Namespace, ShimGroup: group}),
		containerd.WithRuntime(cmp.Or(rt.Type, runtime.Name), runtime.Options),
	)
	if err != nil {
		return nil, fmt.Errorf("create keeper container: %w", err)
	}
	undo.Push("delete keeper container", func(ctx context.Context) error {
		return ignoreNotFound(container.Delete(ctx))
	})
	opts := []containerd.NewTaskOpts{containerd.WithRootFS(builtinPauseRootfs(rootfs))}
	if rt.Path != "" {
		opts = append(opts, containerd.WithRuntimePath(rt.Path))
	}
	task, err := container.NewTask(ctx, cio.NullIO, opts...)
	if err != nil {
		making.End(placement.Failed)
		return nil, fmt.Errorf("create keeper task: %w", err)
	}
	making.End(placement.Made)
	c.reaper.WatchShim(ctx, group, id)
	undo.Push("delete keeper task", func(ctx context.Context) error {
		return c.reaper.DeleteGroupTask(ctx, group, id, task)
	})
	w, err := c.events.WaitFor(ctx, task)
	if err != nil {
		return nil, err
	}
	undo.Push("stop waiting for keeper task", func(context.Context) error { w.Stop(); return nil })
	if err := task.Start(ctx); err != nil {
		return nil, fmt.Errorf("start keeper task: %w", err)
	}
	kp := &keeper{ID: id, Scope: scope, Group: group, Handle: container}
	c.watchKeeper(kp, w)
	log.G(ctx).WithFields(log.Fields{"runtime_handler": handler, "namespace": scope.Namespace}).Info("shim keeper started")
	return kp, nil
}

// watchKeeper removes keeper kp once its task exits.
func (c *Controller) watchKeeper(kp *keeper, w *events.Wait) {
	w.Handle(func(ctx context.Context, e events.Exit) {
		logger := log.G(ctx).WithField("keeper_id", kp.ID)
		if e.Lost != nil {
			logger = logger.WithError(e.Lost)
		} else {
			logger = logger.WithField("exit_status", e.Code)
		}
		logger.Warn("shim keeper exited; removing it")
		c.keepers.Drop(kp)
		c.removeKeeperOrRetry(ctx, kp)
	})
}

// removeKeeperOrRetry removes keeper kp, in the background if it fails.
func (c *Controller) removeKeeperOrRetry(ctx context.Context, kp *keeper) {
	ctx = context.WithoutCancel(ctx)
	if err := c.removeKeeper(ctx, kp); err != nil {
		log.G(ctx).WithError(err).WithField("keeper_id", kp.ID).Warn("remove shim keeper; retrying")
		c.events.Retry(ctx, kp.ID, "remove shim keeper", func(ctx context.Context) error { return c.removeKeeper(ctx, kp) })
	}
}

// removeKeeper deletes keeper kp's task, in turn with the tasks being made
// in its group, and its container, then ends the group's shim if no pod is
// in it.
func (c *Controller) removeKeeper(ctx context.Context, kp *keeper) error {
	task, err := kp.Handle.Task(ctx, nil)
	switch {
	case err == nil:
		if err := c.reaper.DeleteGroupTask(ctx, kp.Group, kp.ID, task); err != nil {
			return fmt.Errorf("delete keeper task: %w", err)
		}
	case errdefs.IsNotFound(err):
		info, err := kp.Handle.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil {
			return ignoreNotFound(err)
		}
		_, cgroupsPath, _ := specRecord(info.Spec)
		if err := c.reaper.CleanupLost(ctx, reaper.LostTask{ID: kp.ID, Runtime: runtimeOf(info), CgroupsPath: cgroupsPath, Group: kp.Group}); err != nil {
			return err
		}
	default:
		return fmt.Errorf("load keeper task: %w", err)
	}
	if err := ignoreNotFound(kp.Handle.Delete(ctx)); err != nil {
		return fmt.Errorf("delete keeper container: %w", err)
	}
	c.groups.Unkeep(kp.Group, kp.ID)
	c.reaper.EndIdleShim(ctx, kp.Group, kp.ID)
	return nil
}

// recoverKeepers takes up, after a restart, the keeper of each warm scope
// whose task runs, and removes every other keeper container: of a handler
// no longer warm, of a scope the config no longer makes, a second of a
// scope, or one whose task is gone.
func (c *Controller) recoverKeepers(ctx context.Context, found []containerd.Container) {
	for _, container := range found {
		kp, err := c.loadKeeper(ctx, container)
		if err != nil {
			log.G(ctx).WithError(err).WithField("keeper_id", container.ID()).Warn("cannot take up shim keeper; removing it")
			c.removeKeeperOrRetry(ctx, kp)
		}
	}
}

// loadKeeper takes up keeper container, returning it for removal if it
// cannot be.
func (c *Controller) loadKeeper(ctx context.Context, container containerd.Container) (*keeper, error) {
	info, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return &keeper{ID: container.ID(), Handle: container}, fmt.Errorf("keeper container info: %w", err)
	}
	var rec keeperRecord
	err = json.Unmarshal(info.Extensions[extensionKeeper].GetValue(), &rec)
	scope := placement.Scope{Handler: rec.RuntimeHandler, Namespace: rec.Namespace}
	kp := &keeper{ID: info.ID, Scope: scope, Group: rec.ShimGroup, Handle: container}
	if err != nil {
		return kp, fmt.Errorf("decode keeper record: %w", err)
	}
	if !c.policy.KeepsWarm(rec.RuntimeHandler) {
		return kp, fmt.Errorf("runtime handler %q keeps no warm shim", rec.RuntimeHandler)
	}
	if c.policy.SharesAcrossNamespaces(rec.RuntimeHandler) != (rec.Namespace == "") {
		return kp, fmt.Errorf("the keeper's namespace %q is not a shim scope of runtime handler %q", rec.Namespace, rec.RuntimeHandler)
	}
	if ok, _ := c.keepers.Claim(scope, func(string) bool { return true }); !ok {
		return kp, fmt.Errorf("runtime handler %q has a keeper for namespace %q", rec.RuntimeHandler, rec.Namespace)
	}
	task, err := container.Task(ctx, nil)
	if err == nil {
		var st containerd.Status
		if st, err = task.Status(ctx); err == nil && st.Status != containerd.Running {
			err = fmt.Errorf("keeper task is %s", st.Status)
		}
	}
	var w *events.Wait
	if err == nil {
		w, err = c.events.WaitFor(ctx, task)
	}
	if err != nil {
		c.keepers.Set(scope, nil)
		return kp, err
	}
	c.groups.Rekeep(scope, rec.ShimGroup, kp.ID)
	c.reaper.WatchShim(ctx, rec.ShimGroup, kp.ID)
	c.keepers.Set(scope, kp)
	c.watchKeeper(kp, w)
	return kp, nil
}

// isKeeperContainer says whether berth made the container as a keeper.
func isKeeperContainer(info containers.Container) bool {
	return hasExtension(info, extensionKeeper, keeperTypeURL)
}

func withKeeperRecord(r keeperRecord) containerd.NewContainerOpts {
	return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		rec, err := jsonExtension(keeperTypeURL, r)
		if err != nil {
			return fmt.Errorf("encode keeper record: %w", err)
		}
		setExtensions(c, map[string]typeurl.Any{extensionKeeper: rec})
		return nil
	}
}

// systemdCgroup says whether the runc options of runtime ask for systemd's
// cgroup driver.
func systemdCgroup(runtime sandbox.RuntimeOpts) (bool, error) {
	if runtime.Options == nil || !shimproc.IsRunc(runtime.Name) {
		return false, nil
	}
	var opts runcoptions.Options
	if err := typeurl.UnmarshalTo(runtime.Options, &opts); err != nil {
		return false, fmt.Errorf("decode runc options: %w", err)
	}
	return opts.SystemdCgroup, nil
}

// newKeeperID names a new keeper: random, like a group, since one a
// previous containerd made may still exist.
func newKeeperID(handler string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "berth-keeper-" + strings.ReplaceAll(handler, "/", "-") + "-" + hex.EncodeToString(b)
}
