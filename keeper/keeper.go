// Package keeper keeps a shared runc shim warm for a shim scope (a
// handler, or a handler's pods of one Kubernetes namespace) while no pod of
// the scope runs: a shim keeper is a task of berth's own, the built-in
// pause alone in its own namespaces, made as the first task of a shim
// group. Without it, each pod on a node with no other pod of its handler
// starts a shim and, at its end, has containerd wait for the shim's exit
// and run `shim delete`; with it, every pod joins a running shim. A warm
// scope has one keeper at a time, in the group it was made in, for as long
// as the keeper's task runs; one that exits is removed, and the next pod
// that opens a group makes a new one. Recovery takes up a keeper whose task
// runs and removes any other (Recover).
//
// Which scopes are warm, and the group rules a keeper follows, are package
// placement's; deleting a keeper's task with its shim is the reaper's.
package keeper

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/reaper"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/shimproc"
)

// A container is a keeper when it carries Extension, which only berth
// writes; its labels are for people.
const (
	Extension = "io.berth.keeper.record"
	TypeURL   = "io.berth.keeper.Record.v1"
	// startTimeout bounds the making of a keeper, which a pod's Start
	// waits for.
	startTimeout = 10 * time.Second
)

// Client is what the keepers ask of containerd's client.
type Client interface {
	NewContainer(ctx context.Context, id string, opts ...containerd.NewContainerOpts) (containerd.Container, error)
	ContainerService() containers.Store
}

// Config is what Keepers are made of.
type Config struct {
	Client Client
	Reaper *reaper.Reaper
	Events *events.Monitor
	Groups *placement.Groups
	Policy placement.Policy
	// Runtime is a handler's runtime type and path; ok is false for a
	// handler that is not configured.
	Runtime func(handler string) (runtimeType, path string, ok bool)
	// PauseRootfs is the built-in pause's prepared rootfs, which keepers
	// run; "" when PauseErr says why there is none.
	PauseRootfs string
	PauseErr    error
	// RestrictOOMScoreAdj is CRI's restrict_oom_score_adj.
	RestrictOOMScoreAdj bool
	// Namespace is the containerd namespace keepers are made in.
	Namespace string
	// Sandboxer is berth's name in containerd: a keeper another berth made
	// on the same containerd is that berth's to recover.
	Sandboxer string
	// Labels are put on every keeper container, for people.
	Labels map[string]string
	// Lost says what a keeper container whose task containerd lost left
	// behind, for the reaper to clean up.
	Lost func(info containers.Container, group string) reaper.LostTask
	// Waited, if set, is told how long a pod's Start waited for a keeper.
	Waited func(step string, d time.Duration)
	// IdleTimeout is how long a keeper outlives the last pod of its scope
	// (ExpireIdle); 0 keeps it for good.
	IdleTimeout time.Duration
	// UntilAnswered runs a step of recovery again for as long as containerd
	// does not answer it (Unavailable) and berth is not closing, and
	// returns its last error: Unavailable only when berth closed first.
	UntilAnswered func(ctx context.Context, step string, attempt func() error) error
}

// Keepers are the live shim keepers, one per warm scope at most.
type Keepers struct {
	cfg Config
	// live holds each scope's keeper, with its container.
	live *placement.Keepers[containerd.Container]
	// mu orders the start of a background removal before WaitRemovals,
	// which a WaitGroup needs of its Adds, and none after it.
	mu sync.Mutex
	// closed is set by WaitRemovals: the retry queue a removal's failure
	// would use is stopping.
	closed bool
	// removals are the keeper removals running in the background.
	removals sync.WaitGroup
}

// New returns keepers with none live.
func New(cfg Config) *Keepers {
	return &Keepers{cfg: cfg, live: placement.NewKeepers[containerd.Container]()}
}

// Claimed says whether scope has a keeper, or one being made.
func (k *Keepers) Claimed(scope placement.Scope) bool { return k.live.Claimed(scope) }

// Record is what recovery needs of a keeper.
type Record struct {
	// Sandboxer is the berth that made the keeper (Config.Sandboxer), ""
	// for a keeper of a berth from before the name was recorded.
	Sandboxer      string `json:"sandboxer,omitempty"`
	RuntimeHandler string `json:"runtimeHandler"`
	// Namespace is the Kubernetes namespace whose pods the keeper's shim
	// serves, "" for every namespace's (or a keeper of an earlier berth).
	Namespace string `json:"namespace,omitempty"`
	ShimGroup string `json:"shimGroup"`
	// ShimRuntime identifies what the shim runs (placement.Scope.Runtime),
	// "" for a keeper of an earlier berth.
	ShimRuntime string `json:"shimRuntime,omitempty"`
}

// keeper is a live shim keeper and its container.
type keeper = placement.Keeper[containerd.Container]

// KeepWarm makes a shim keeper as the first task of group, of scope,
// which sb has just joined, if the scope's handler keeps a warm shim and
// the scope has no keeper. It runs
// before sb's pause task is made, so that the pause joins the keeper's
// shim. A keeper that cannot be made is logged, never the pod's failure:
// the pod's task starts the shim itself. The error says why none was
// made; one whose task was made ends the group with the shim it started
// (placement.Groups.Ending).
func (k *Keepers) KeepWarm(ctx context.Context, runtime sandbox.RuntimeOpts, scope placement.Scope, group string) error {
	if group == "" || !k.cfg.Policy.KeepsWarm(scope.Handler) || !k.cfg.Groups.Fresh(group) {
		return nil
	}
	ok, stale := k.live.Claim(scope, func(g string) bool { return k.cfg.Groups.IsOpen(scope, g) })
	if !ok {
		return nil
	}
	if stale != nil {
		// Not the pod's to wait for: its Start holds the sandbox's lock.
		k.removeInBackground(ctx, stale)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), startTimeout)
	defer cancel()
	start := time.Now()
	err := k.startKeeper(ctx, runtime, scope, group)
	if k.cfg.Waited != nil {
		k.cfg.Waited("keeper", time.Since(start))
	}
	switch {
	case err == nil:
	case errors.Is(err, errNotFirst):
		// Another pod's task came first: the shim is warm already, or
		// that task's failure ended the group.
		log.G(ctx).WithError(err).Debug("no shim keeper made")
		k.live.Set(scope, nil)
	default:
		// The claim becomes the backoff in one step: a pod of the scope
		// whose group the failure ended must not find the scope free when
		// it tries again, and make a keeper that fails too.
		wait := k.live.Failed(scope)
		log.G(ctx).WithError(err).WithFields(log.Fields{"shim_group": group, "backoff": wait}).Warn("cannot make a shim keeper; the pod starts its group's shim, and the scope's pods make none for a while")
	}
	return err
}

// errOthers says a keeper is another berth's, on the same containerd.
var errOthers = errors.New("the keeper is another berth's")

// errNotFirst says a keeper was not made because it would not be its
// group's first task, which a keeper only ever is (made by the shim's
// start command with no shim listening): another's task is made or being
// made there, or ended the group. It says nothing of whether a keeper can
// be made, and backs the scope off no more than a keeper made would.
var errNotFirst = errors.New("a keeper is only its group's first task")

// startKeeper makes and starts a keeper of scope as the first task of
// group, and makes it the scope's keeper; it removes all it made if it
// fails.
func (k *Keepers) startKeeper(ctx context.Context, runtime sandbox.RuntimeOpts, scope placement.Scope, group string) (retErr error) {
	handler := scope.Handler
	rootfs := k.cfg.PauseRootfs
	if rootfs == "" {
		return fmt.Errorf("a shim keeper runs the built-in pause, which is not prepared: %w", errors.Join(errdefs.ErrFailedPrecondition, k.cfg.PauseErr))
	}
	runtimeType, runtimePath, ok := k.cfg.Runtime(handler)
	if !ok {
		return fmt.Errorf("runtime handler %q is not configured: %w", handler, errdefs.ErrNotFound)
	}
	systemd, err := systemdCgroup(runtime)
	if err != nil {
		return err
	}
	id := newID(handler)
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"keeper_id": id, "shim_group": group}))
	var undo rollback.Stack
	defer func() {
		if retErr != nil {
			undo.RunOrRetry(ctx, id, k.cfg.Events, nil)
		}
	}()
	if !k.cfg.Groups.Keep(group, id) {
		return fmt.Errorf("shim group %s has a keeper: %w: %w", group, errNotFirst, errdefs.ErrAlreadyExists)
	}
	// Last of the undo, as in removeKeeper.
	undo.Push("take keeper out of its group", func(ctx context.Context) error {
		k.cfg.Reaper.LeaveGroupAsKeeper(ctx, group, id)
		return nil
	})
	making, err := k.cfg.Groups.MakeTask(ctx, group, id)
	if err != nil {
		// Waited for another's making, which ended the group, or did
		// not end within startTimeout.
		return fmt.Errorf("shim group %s: %w: %w", group, errNotFirst, err)
	}
	if making.ShimUp {
		making.End(placement.Abandoned)
		return fmt.Errorf("shim group %s: the shim is up: %w", group, errNotFirst)
	}
	// Ended as the making fails, not in turn with the undo: the group's
	// pods wait on it in MakeTask, and an undo step that fails (the
	// container's deletion) stops the undo until its retry succeeds. A
	// no-op once the making ended below.
	defer func() {
		if retErr != nil {
			making.End(placement.Abandoned)
		}
	}()
	specOpts := podsandbox.KeeperSpec(podsandbox.KeeperCgroupsPath(k.cfg.Namespace, id, systemd),
		k.cfg.RestrictOOMScoreAdj, map[string]string{placement.GroupAnnotation: group})
	// Before the making, as for a pod's pause: a create whose answer was
	// lost (containerd died under berthd, or startTimeout passed) may have
	// made it.
	undo.Push("delete keeper container", func(ctx context.Context) error {
		return ignoreNotFound(k.cfg.Client.ContainerService().Delete(ctx, id))
	})
	container, err := k.cfg.Client.NewContainer(ctx, id,
		containerd.WithNewSpec(specOpts...),
		containerd.WithContainerLabels(k.cfg.Labels),
		withRecord(Record{Sandboxer: k.cfg.Sandboxer, RuntimeHandler: handler, Namespace: scope.Namespace, ShimGroup: group, ShimRuntime: scope.Runtime}),
		containerd.WithRuntime(cmp.Or(runtimeType, runtime.Name), runtime.Options),
	)
	if err != nil {
		return fmt.Errorf("create keeper container: %w", err)
	}
	opts := []containerd.NewTaskOpts{containerd.WithRootFS(podsandbox.RootfsMounts(rootfs))}
	if runtimePath != "" {
		opts = append(opts, containerd.WithRuntimePath(runtimePath))
	}
	task, err := container.NewTask(ctx, cio.NullIO, opts...)
	if err != nil {
		making.End(placement.Failed)
		// A task made with its answer lost would outlive its container
		// record, which the undo deletes next, and keep its shim from
		// ending; containerd's death under berthd can leave runc's
		// container and its cgroup too, and the shim, which the group's
		// pod ends as it leaves the group (reaper.LeaveGroup).
		info, infoErr := container.Info(ctx, containerd.WithoutRefreshedMetadata)
		if infoErr != nil {
			return errors.Join(fmt.Errorf("create keeper task: %w", err), infoErr)
		}
		lost := k.cfg.Lost(info, group)
		undo.Push("delete the keeper task a failed create may have left", func(ctx context.Context) error {
			return k.cfg.Reaper.CleanupLost(ctx, lost)
		})
		return fmt.Errorf("create keeper task: %w", err)
	}
	making.End(placement.Made)
	k.cfg.Reaper.WatchShim(ctx, group, id)
	undo.Push("delete keeper task", func(ctx context.Context) error {
		return k.cfg.Reaper.DeleteGroupTask(ctx, group, id, task)
	})
	w, err := k.cfg.Events.WaitFor(ctx, task)
	if err != nil {
		return err
	}
	undo.Push("stop waiting for keeper task", func(context.Context) error { w.Stop(); return nil })
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("start keeper task: %w", err)
	}
	kp := &keeper{ID: id, Scope: scope, Group: group, Handle: container}
	// The scope's keeper before its exit is watched, so that an exit that
	// comes at once drops it (Drop), and no dead keeper holds the scope.
	k.live.Set(scope, kp)
	k.watchKeeper(kp, w)
	log.G(ctx).WithFields(log.Fields{"runtime_handler": handler, "namespace": scope.Namespace}).Info("shim keeper started")
	return nil
}

// watchKeeper removes keeper kp once its task exits, unless it was no
// longer its scope's: then the exit is its removal's kill, or it is left
// to whoever claimed or dropped it (an idle expiry, a stale keeper's
// replacement), and removing it again would run the removal twice.
func (k *Keepers) watchKeeper(kp *keeper, w *events.Wait) {
	w.Handle(func(ctx context.Context, e events.Exit) {
		if !k.live.Drop(kp) {
			return
		}
		logger := log.G(ctx).WithField("keeper_id", kp.ID)
		if e.Lost != nil {
			logger = logger.WithError(e.Lost)
		} else {
			logger = logger.WithField("exit_status", e.Code)
		}
		logger.Warn("shim keeper exited; removing it")
		k.removeKeeperOrRetry(ctx, kp)
	})
}

// ExpireIdle removes, until ctx ends, each keeper no pod of whose scope,
// in any group, has run for the idle timeout (placement.Groups.RetireIdle),
// looking a tenth of the timeout apart (a minute at most): a scope is a
// namespace, and a namespace deleted for good would keep its shim and
// pause for good. The group is retired first, under the keepers' lock, so
// that no pod joins the shim being ended and the scope's next pod makes a
// new keeper.
func (k *Keepers) ExpireIdle(ctx context.Context) {
	idle := k.cfg.IdleTimeout
	if idle <= 0 {
		return
	}
	tick := time.NewTicker(max(min(idle/10, time.Minute), time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, kp := range k.live.List() {
			// A sweep stopped halfway leaves the rest to the next
			// start, which takes them up and expires them in turn:
			// each removal here may wait on a wedged shim, and berth's
			// Close waits for the sweep.
			if ctx.Err() != nil {
				return
			}
			if k.live.DropIf(kp, func() bool { return k.cfg.Groups.RetireIdle(kp.Group, idle) }) {
				log.G(ctx).WithFields(log.Fields{"keeper_id": kp.ID, "shim_group": kp.Group, "idle": idle}).Info("no pod of the shim keeper's scope ran for its idle timeout; removing it")
				k.removeKeeperOrRetry(ctx, kp)
			}
		}
	}
}

// WaitRemovals waits for the keeper removals running in the background
// (recovery's, and of a stale keeper): one that fails queues its retry,
// so the retry queue stops after them. No removal starts after it.
func (k *Keepers) WaitRemovals() {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	k.removals.Wait()
}

// removeInBackground removes keeper kp in the background, unless
// WaitRemovals has begun: then berth is closing, with no retry queue for a
// removal that fails, and the keeper is left to the next start's recovery
// (Recover), which keeps one keeper a scope and removes the rest.
func (k *Keepers) removeInBackground(ctx context.Context, kp *keeper) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		log.G(ctx).WithField("keeper_id", kp.ID).Info("berth is closing; the shim keeper is left to the next start's recovery")
		return
	}
	k.removals.Go(func() { k.removeKeeperOrRetry(ctx, kp) })
}

// removeKeeperOrRetry removes keeper kp, and has the retry queue take
// over if that fails.
func (k *Keepers) removeKeeperOrRetry(ctx context.Context, kp *keeper) {
	// Bounded, and detached from the caller's end: the retry queue takes
	// over from a wedged shim.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollback.StepTimeout)
	defer cancel()
	if err := k.removeKeeper(ctx, kp); err != nil {
		log.G(ctx).WithError(err).WithField("keeper_id", kp.ID).Warn("remove shim keeper; retrying")
		k.cfg.Events.Retry(ctx, kp.ID, "remove shim keeper", func(ctx context.Context) error { return k.removeKeeper(ctx, kp) })
	}
}

// removeKeeper deletes keeper kp's task, in turn with the tasks being made
// in its group, and its container, then ends the group's shim if no pod is
// in it.
func (k *Keepers) removeKeeper(ctx context.Context, kp *keeper) error {
	task, err := kp.Handle.Task(ctx, nil)
	switch {
	case err == nil:
		if err := k.cfg.Reaper.DeleteGroupTask(ctx, kp.Group, kp.ID, task); err != nil {
			return fmt.Errorf("delete keeper task: %w", err)
		}
	case errdefs.IsNotFound(err):
		info, err := kp.Handle.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil {
			return ignoreNotFound(err)
		}
		if err := k.cfg.Reaper.CleanupLost(ctx, k.cfg.Lost(info, kp.Group)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("load keeper task: %w", err)
	}
	if err := ignoreNotFound(kp.Handle.Delete(ctx)); err != nil {
		return fmt.Errorf("delete keeper container: %w", err)
	}
	k.cfg.Reaper.LeaveGroupAsKeeper(ctx, kp.Group, kp.ID)
	return nil
}

// Recover takes up, after a restart, the keeper of each warm scope
// whose task runs, and removes every other keeper container: of a handler
// no longer warm, of a scope the config no longer makes, a second of a
// scope, or one whose task is gone. Up to parallelism keepers load at
// once, each attempt bounded by timeout, as sandboxes reload (one that
// containerd does not answer is made again), and a removal runs in
// the background: every call to berth waits for recovery, and wedged shims
// must not hold them, nor CRI's start, for a timeout each.
func (k *Keepers) Recover(ctx context.Context, found []containerd.Container, timeout time.Duration, parallelism int) {
	sem := make(chan struct{}, max(parallelism, 1))
	var wg sync.WaitGroup
	for _, container := range found {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			k.recoverKeeper(ctx, container, timeout)
		})
	}
	wg.Wait()
}

// recoverKeeper takes up or removes keeper container, each attempt within
// timeout. A containerd that does not answer (berthd's, restarting during
// berthd's recovery) says nothing of the keeper: it is tried again, not
// removed with the warm shim it keeps.
func (k *Keepers) recoverKeeper(ctx context.Context, container containerd.Container, timeout time.Duration) {
	var kp *keeper
	err := k.cfg.UntilAnswered(ctx, "taking up a shim keeper", func() (err error) {
		attempt, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		kp, err = k.loadKeeper(attempt, container)
		return err
	})
	switch {
	case errors.Is(err, errOthers):
		return
	case errdefs.IsUnavailable(err):
		log.G(ctx).WithError(err).WithField("keeper_id", container.ID()).Warn("closed before the shim keeper could be taken up")
		return
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("keeper_id", container.ID()).Warn("cannot take up shim keeper; removing it in the background")
		// Nothing waits for a keeper berth does not take up to be gone:
		// its removal, which a wedged shim holds for StepTimeout, is not
		// recovery's, which every call to berth waits for.
		k.removeInBackground(ctx, kp)
	}
}

// loadKeeper takes up keeper container, returning it for removal if it
// cannot be.
func (k *Keepers) loadKeeper(ctx context.Context, container containerd.Container) (*keeper, error) {
	info, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return &keeper{ID: container.ID(), Handle: container}, fmt.Errorf("keeper container info: %w", err)
	}
	var rec Record
	err = json.Unmarshal(info.Extensions[Extension].GetValue(), &rec)
	scope := placement.Scope{Handler: rec.RuntimeHandler, Namespace: rec.Namespace, Runtime: rec.ShimRuntime}
	kp := &keeper{ID: info.ID, Scope: scope, Group: rec.ShimGroup, Handle: container}
	if err != nil {
		return kp, fmt.Errorf("decode keeper record: %w", err)
	}
	if rec.Sandboxer != "" && rec.Sandboxer != k.cfg.Sandboxer {
		return nil, errOthers
	}
	if !k.cfg.Policy.KeepsWarm(rec.RuntimeHandler) {
		return kp, fmt.Errorf("runtime handler %q keeps no warm shim", rec.RuntimeHandler)
	}
	if k.cfg.Policy.SharesAcrossNamespaces(rec.RuntimeHandler) != (rec.Namespace == "") {
		return kp, fmt.Errorf("the keeper's namespace %q is not a shim scope of runtime handler %q", rec.Namespace, rec.RuntimeHandler)
	}
	task, err := container.Task(ctx, nil)
	if err == nil {
		var st containerd.Status
		if st, err = task.Status(ctx); err == nil && st.Status != containerd.Running {
			err = fmt.Errorf("keeper task is %s", st.Status)
		}
	}
	if err != nil {
		return kp, err
	}
	// Claimed once its task is known to run: a second keeper of the scope
	// whose task has stopped, loading beside it, must not have this one
	// removed as the second.
	if ok, _ := k.live.Claim(scope, func(string) bool { return true }); !ok {
		return kp, fmt.Errorf("runtime handler %q has a keeper for namespace %q", rec.RuntimeHandler, rec.Namespace)
	}
	w, err := k.cfg.Events.WaitFor(ctx, task)
	if err != nil {
		k.live.Set(scope, nil)
		return kp, err
	}
	k.cfg.Groups.Rekeep(scope, rec.ShimGroup, kp.ID)
	k.cfg.Reaper.WatchShim(ctx, rec.ShimGroup, kp.ID)
	k.live.Set(scope, kp)
	k.watchKeeper(kp, w)
	return kp, nil
}

// IsContainer says whether berth made the container as a keeper.
func IsContainer(info containers.Container) bool {
	ext, ok := info.Extensions[Extension]
	return ok && ext.GetTypeUrl() == TypeURL
}

// withRecord puts r on the keeper container being made.
func withRecord(r Record) containerd.NewContainerOpts {
	return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode keeper record: %w", err)
		}
		if c.Extensions == nil {
			c.Extensions = map[string]typeurl.Any{}
		}
		c.Extensions[Extension] = &anypb.Any{TypeUrl: TypeURL, Value: b}
		return nil
	}
}

// ignoreNotFound is nil for a NotFound error: what is gone is removed.
func ignoreNotFound(err error) error {
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
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

// newID names a new keeper: random, like a group, since one a
// previous containerd made may still exist.
func newID(handler string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "berth-keeper-" + strings.ReplaceAll(handler, "/", "-") + "-" + hex.EncodeToString(b)
}
