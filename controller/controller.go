// Package controller implements containerd's sandbox.Controller for pods
// whose sandbox is a pause container: it makes the pause container and task,
// hands the task to the reaper, and answers CRI's Status, Wait and Platform
// from memory.
//
// One file per operation (create.go, start.go, stop.go, shutdown.go,
// status.go, resources.go, recover.go), plus:
//   - task.go: Start's making of the pause task in its shim group;
//   - record.go: what berth records on the pause container and reads back
//     after a restart;
//   - config.go: what the controller is built from;
//   - client.go: the part of containerd's client the controller uses.
//
// What it calls lives in packages of their own, each with one job:
// placement (which shim serves a pod, and when a shared shim may end),
// keeper (the tasks that keep a shared shim warm), reaper (a pause task
// from its start to its deletion), events (exits in, failed steps retried
// with backoff), rollback (Start's undo), shimproc (a runc shim process),
// podsandbox (the pause's spec and files) and podcgroup (the pod cgroup).
package controller

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/keeper"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/reaper"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/store"
)

// Namespace is the containerd namespace CRI keeps pods in.
const Namespace = "k8s.io"

// Labels of ControllerInstance that CRI reads.
const (
	instanceLabelSELinux     = "selinux_label"
	instanceLabelRuntimeType = "oci_runtime_type"
)

// Controller is berth's sandbox controller.
type Controller struct {
	config Config
	client Client
	store  *store.Store
	// events tells of pause tasks' exits and runs failed steps again.
	events    *events.Monitor
	reaper    *reaper.Reaper
	locks     *keyLock
	telemetry *telemetry
	// policy is how pods share shims; groups are the shared shims, and
	// keepers the tasks that keep some warm.
	policy  placement.Policy
	groups  *placement.Groups
	keepers *keeper.Keepers
	// stopKeepers ends the removal of idle keepers; keepersDone is closed
	// once it has ended.
	stopKeepers context.CancelFunc
	keepersDone chan struct{}
	// abandoned are the checks for sandboxes CRI may drop without a
	// Shutdown, by sandbox ID: those created and never started
	// (forgetIfAbandoned), and those recovered before CRI saw their Start
	// (shutDownIfDropped).
	abandoned *timers
	// pauseImages is what berth read of the pause image, by snapshotter.
	pauseImages pauseImages
	// recoveryStarted is set once Recover has listed the sandboxes and
	// begun their reload in the background; recovered is closed when the
	// reload ends. Every operation waits for it (awaitRecovery).
	recoveryStarted atomic.Bool
	recovered       chan struct{}
	// closing ends when Close begins: recovery stops waiting for a
	// containerd that does not answer.
	closing    context.Context
	beginClose context.CancelFunc
}

var _ sandbox.Controller = (*Controller)(nil)

// New returns a controller. It runs failed steps again, backing off as
// cfg.ExitRetry says, until Close.
func New(cfg Config, client Client) *Controller {
	s := store.New()
	t := newTelemetry(s)
	c := &Controller{
		config:    cfg,
		client:    client,
		store:     s,
		locks:     newKeyLock(),
		telemetry: t,
		abandoned: newTimers(),
		recovered: make(chan struct{}),
	}
	c.closing, c.beginClose = context.WithCancel(context.Background())
	c.policy = placement.Policy{
		PodsPerShim:    cfg.PodsPerShim,
		PerHandler:     cfg.HandlerPodsPerShim,
		WarmHandlers:   cfg.WarmShims,
		CrossNamespace: cfg.CrossNamespaceShims,
		Groupable: func(handler string) bool {
			r, ok := cfg.CRI.Runtimes[handler]
			return ok && shimproc.IsRunc(r.Type)
		},
	}
	c.groups = placement.NewGroups(c.policy.PerShim, placement.WithWaitObserver(t.groupWaited))
	c.events = events.NewMonitor(cfg.ExitRetry, events.WithRetryCounters(
		func(step string) { t.retries.WithValues(step).Inc() },
		func(step string) { t.retryFailures.WithValues(step).Inc() }))
	c.reaper = reaper.New(reaper.Config{
		Client:      client,
		Events:      c.events,
		Groups:      c.groups,
		Shims:       cfg.Shims,
		ExitTimeout: cfg.ExitTimeout,
		ShimDied:    c.shimDied,
	})
	c.keepers = keeper.New(keeper.Config{
		Client: client,
		Reaper: c.reaper,
		Events: c.events,
		Groups: c.groups,
		Policy: c.policy,
		Runtime: func(handler string) (string, string, bool) {
			r, ok := cfg.CRI.Runtimes[handler]
			return r.Type, r.Path, ok
		},
		PauseRootfs:         cfg.BuiltinPause.Rootfs,
		PauseErr:            cfg.BuiltinPause.Err,
		RestrictOOMScoreAdj: cfg.CRI.RestrictOOMScoreAdj,
		Namespace:           Namespace,
		Sandboxer:           cfg.Sandboxer,
		Labels:              map[string]string{LabelKind: LabelKindKeeper},
		Lost:                lostTask,
		Waited:              t.groupWaited,
		IdleTimeout:         cfg.WarmShimIdleTimeout,
		UntilAnswered:       c.untilAnswered,
	})
	ctx, stop := context.WithCancel(namespaces.WithNamespace(context.Background(), Namespace))
	c.stopKeepers = stop
	c.keepersDone = make(chan struct{})
	go func() {
		defer close(c.keepersDone)
		c.keepers.ExpireIdle(ctx)
	}()
	return c
}

// podShimScope is the shim scope of the pod of md, whose shim runs
// runtime (shimRuntime).
func (c *Controller) podShimScope(md store.Metadata, runtime string) placement.Scope {
	return c.policy.Scope(c.handler(md), md.Config.GetMetadata().GetNamespace(), runtime)
}

// shimDied records the exit of the pause tasks ids a dead shared shim
// served: each pod is NOTREADY at once. The pause processes die when
// containerd cleans up after the shim (runc delete --force), and nothing
// can reach them meanwhile. Each pause's watch still gets its exit from
// containerd, finds it recorded, and deletes the task as ever. IDs of
// shim keepers, which are no sandboxes, are skipped: a keeper's own watch
// removes it.
func (c *Controller) shimDied(ids []string) {
	now := time.Now()
	for _, id := range ids {
		if sb, err := c.store.Get(id); err == nil {
			sb.Exit(events.UnknownExitCode, now)
		}
	}
}

// Close waits for a recovery in progress, ending its waits for a
// containerd that does not answer, and for the keeper removals it began,
// whose steps may queue retries, and stops the retry queue. containerd
// calls it when it shuts down.
func (c *Controller) Close() error {
	c.beginClose()
	if c.recoveryStarted.Load() {
		<-c.recovered
	}
	c.stopKeepers()
	<-c.keepersDone
	c.keepers.WaitRemovals()
	c.events.Stop()
	return nil
}

// awaitRecovery blocks until Recover has reloaded every sandbox, so that no
// operation sees a sandbox before its true state is known, nor a Start
// runs while recovery releases the leases of interrupted ones. A
// controller that was never asked to recover (a first start, the unit
// tests) has nothing to wait for.
func (c *Controller) awaitRecovery(ctx context.Context) error {
	if !c.recoveryStarted.Load() {
		return nil
	}
	select {
	case <-c.recovered:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for berth's recovery of its sandboxes: %w", ctx.Err())
	}
}

// recovering says whether Recover is reloading the sandboxes.
func (c *Controller) recovering() bool {
	if !c.recoveryStarted.Load() {
		return false
	}
	select {
	case <-c.recovered:
		return false
	default:
		return true
	}
}

// sandbox returns sandbox id once recovery has ended.
func (c *Controller) sandbox(ctx context.Context, id string) (*store.Sandbox, error) {
	if err := c.awaitRecovery(ctx); err != nil {
		return nil, err
	}
	return c.store.Get(id)
}

// Platform is the node's, for any sandbox, at once, as the built-in's:
// pause containers run on the node's platform. CRI asks it as it handles
// an app container's exit and lists container stats, which must neither
// wait for berth's recovery nor fail for a pod berth has let go.
func (c *Controller) Platform(context.Context, string) (imagespec.Platform, error) {
	return platforms.DefaultSpec(), nil
}

// locked locks sandbox id and returns it once recovery has ended; the
// caller must call unlock exactly once when err is nil. A sandbox the store
// does not have is errdefs.ErrNotFound, with nothing locked.
func (c *Controller) locked(ctx context.Context, id string) (sb *store.Sandbox, unlock func(), err error) {
	if err := c.awaitRecovery(ctx); err != nil {
		return nil, nil, err
	}
	if unlock, err = c.locks.lock(ctx, id); err != nil {
		return nil, nil, err
	}
	if sb, err = c.store.Get(id); err != nil {
		unlock()
		return nil, nil, err
	}
	return sb, unlock, nil
}

// handler resolves the CRI runtime handler of a sandbox the way CRI does.
func (c *Controller) handler(md store.Metadata) string {
	handler := md.RuntimeHandler
	if md.Config.GetAnnotations()[annotationUntrustedWorkload] == "true" {
		handler = runtimeUntrusted
	}
	if handler == "" {
		handler = c.config.CRI.DefaultRuntimeName
	}
	return handler
}

// runtime returns the runtime handler config of a sandbox.
func (c *Controller) runtime(md store.Metadata) (Runtime, error) {
	handler := c.handler(md)
	r, ok := c.config.CRI.Runtimes[handler]
	if !ok {
		return Runtime{}, fmt.Errorf("runtime handler %q is not configured: %w", handler, errdefs.ErrNotFound)
	}
	if r.Type == "" {
		// Without a runtime_type the sandbox record's runtime name applies.
		r.Type = md.Runtime.Name
	}
	return r, nil
}

// builtinPause says whether the sandbox runs the built-in pause.
func (c *Controller) builtinPause(md store.Metadata) bool {
	return slices.Contains(c.config.BuiltinPause.Handlers, c.handler(md))
}

// CRI's untrusted-workload rule: such pods run on the "untrusted" handler.
const (
	annotationUntrustedWorkload = "io.kubernetes.cri.untrusted-workload"
	runtimeUntrusted            = "untrusted"
)

func ignoreNotFound(err error) error {
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}
