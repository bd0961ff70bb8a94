package controller

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/selinux/go-selinux"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/keeper"
	"github.com/berth-dev/berth/reaper"
	"github.com/berth-dev/berth/store"
)

// RecoverConfig bounds recovery after a containerd restart.
type RecoverConfig struct {
	// Parallelism is how many sandboxes are reloaded at once.
	Parallelism int
	// Timeout bounds each attempt at the reload of one sandbox, so that
	// one wedged shim cannot hold up containerd's start; an attempt that
	// containerd itself does not answer is made again (untilAnswered).
	Timeout time.Duration
}

// Recover reloads the sandboxes berth owns: live tasks are waited on
// again, tasks that died while containerd was down are deleted and reported
// NOTREADY with their exit status, and what a crash left half made is
// cleaned up. It lists what it needs and returns; the reload runs in the
// background, while containerd loads its other plugins, and every
// operation waits for its end (awaitRecovery). CRI's own recovery, which
// runs once every plugin has loaded and asks each sandbox's Status, so
// finds each in its true state without holding up containerd's start for
// berth's reload.
//
// A sandbox is berth's when CRI's sandbox record names berth as its
// sandboxer and its pause container carries berth's record (record.go):
// neither can be set by a pod or an image. A berth pause container that no
// record owns belongs to a sandbox CRI forgot (a failed Start whose
// rollback containerd's death cut short): it is removed. Shim keepers are
// taken up or removed (keeper.Keepers.Recover), unless berth's config is
// invalid (Config.ConfigErr): they are then left as they are.
//
// It fails only when it cannot list what it needs (a containerd that does
// not answer is waited for until ctx ends); a sandbox it cannot reload is
// reported NOTREADY and its task deleted in the background.
func (c *Controller) Recover(ctx context.Context, cfg RecoverConfig) error {
	ctx = namespaces.WithNamespace(ctx, Namespace)
	start := time.Now()
	var (
		records map[string]sandbox.Sandbox
		all     []containerd.Container
	)
	if err := c.untilAnswered(ctx, "listing the sandboxes", func() (err error) {
		if records, err = c.sandboxRecords(ctx); err != nil {
			return err
		}
		if all, err = c.client.Containers(ctx); err != nil {
			return fmt.Errorf("list containers: %w", err)
		}
		return nil
	}); err != nil {
		return err
	}
	c.recoveryStarted.Store(true)
	// Not cut short when containerd's init context ends: Close waits for
	// the reload, whose attempts are bounded by cfg.Timeout, and ends its
	// waits for a containerd that does not answer.
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer close(c.recovered)
		n := c.reload(ctx, cfg, records, all)
		c.telemetry.recovery.Set(time.Since(start).Seconds())
		log.G(ctx).WithFields(log.Fields{"sandboxes": n, "took": time.Since(start)}).Info("berth recovered sandboxes")
	}()
	return nil
}

// reload reloads the sandboxes of CRI's records naming berth found among
// all containers, takes up or removes the shim keepers, and removes what
// no sandbox owns, and the task bundles a crash left half deleted. It returns how many sandboxes it reloaded.
func (c *Controller) reload(ctx context.Context, cfg RecoverConfig, records map[string]sandbox.Sandbox, all []containerd.Container) int {
	var (
		wg        sync.WaitGroup
		sem       = make(chan struct{}, max(cfg.Parallelism, 1))
		recovered int
		keepers   []containerd.Container
	)
	for _, container := range all {
		info, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err == nil && keeper.IsContainer(info) {
			keepers = append(keepers, container)
			continue
		}
		if err != nil || !isBerthContainer(info) {
			continue
		}
		if rec, err := recordOn(info); err == nil && !rec.ownedBy(c.config.Sandboxer) {
			// Another berth's, on the same containerd.
			continue
		}
		cri, ok := records[info.ID]
		switch {
		case !ok:
			c.removeOrphan(ctx, container)
			continue
		case cri.Sandboxer != c.config.Sandboxer:
			// CRI gave it to another controller: another berth's, made by a
			// berth from before records named their berth.
			continue
		}
		recovered++
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.recoverSandbox(ctx, container, info, cri, cfg.Timeout)
		}()
	}
	wg.Wait()
	switch {
	case c.config.ConfigErr == nil:
		c.keepers.Recover(ctx, keepers, cfg.Timeout, cfg.Parallelism)
	case len(keepers) > 0:
		// The defaults berth runs on keep no shim warm: judged by them,
		// every keeper would go, and a typo anywhere in the config would
		// tear down the node's warm shims. The recovery of a berth whose
		// config is fixed takes them up or removes them.
		log.G(ctx).WithField("keepers", len(keepers)).Warn("berth's config is invalid: leaving its shim keepers as they are")
	}
	c.releaseStartLeases(ctx, cfg.Timeout)
	c.removeOrphanFiles(ctx)
	c.config.Shims.RemoveHalfDeletedBundles(ctx)
	return recovered
}

// sandboxRecords are CRI's sandbox records, by ID.
func (c *Controller) sandboxRecords(ctx context.Context) (map[string]sandbox.Sandbox, error) {
	list, err := c.client.SandboxStore().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sandbox records: %w", err)
	}
	records := make(map[string]sandbox.Sandbox, len(list))
	for _, r := range list {
		records[r.ID] = r
	}
	return records, nil
}

// recoverSandbox reloads one sandbox from its pause container and CRI's
// record of it.
func (c *Controller) recoverSandbox(ctx context.Context, container containerd.Container, info containers.Container, cri sandbox.Sandbox, timeout time.Duration) {
	id := info.ID
	logger := log.G(ctx).WithField("sandbox_id", id)
	ctx = log.WithLogger(ctx, logger)
	sb, err := loadSandbox(container, info, cri)
	if err != nil {
		// Without its config the sandbox cannot be served: remove what is
		// left of it. CRI reports it NOTREADY and kubelet replaces it.
		logger.WithError(err).Error("cannot reload sandbox; removing its pause container")
		c.removeOrphan(ctx, container)
		return
	}
	if err := c.store.Add(sb); err != nil {
		logger.WithError(err).Error("reload sandbox")
		return
	}
	if !startRecorded(cri) {
		c.shutDownIfDropped(ctx, id)
	}
	// The label stays the pod's until Shutdown releases it: no new pod may
	// be given it meanwhile.
	if err := selinux.ReserveLabelV2(sb.Status().Instance.ProcessLabel); err != nil && !errors.Is(err, selinux.ErrMCSAlreadyExists) {
		logger.WithError(err).Warn("reserve the sandbox's SELinux label")
	}
	// The files' links into CRI's directories are what CRI mounts into
	// app containers; put back any a crash lost.
	if err := c.config.Dirs.Files(id).Relink(); err != nil {
		logger.WithError(err).Warn("relink sandbox files")
	}

	failpoint.Hold(sb, failpoint.HoldReattach)
	err = c.reattach(ctx, sb, timeout)
	switch {
	case err == nil:
	case errdefs.IsUnavailable(err) && c.closing.Err() != nil:
		// Closed while containerd did not answer: the next berth's recovery
		// finds the sandbox as it is.
		logger.WithError(err).Warn("closed before the pause task could be reattached")
	default:
		// A shim that does not answer leaves the sandbox unknown: report it
		// NOTREADY, so that kubelet replaces it, and delete its task in the
		// background.
		logger.WithError(err).Warn("cannot reattach to pause task; deleting it")
		sb.Exit(events.UnknownExitCode, time.Now())
		c.events.Retry(ctx, id, "delete exited task", func(ctx context.Context) error {
			return c.reaper.DeleteUnloaded(ctx, sb)
		})
	}
}

// shutDownIfDropped shuts recovered sandbox id down once CRI has dropped
// its record without asking. A berthd killed under a Start never answers
// it: CRI fails the RunPodSandbox, and deletes its record without a
// Shutdown, which it sends only for sandboxes that started. A berthd that
// recovered in between took the sandbox up, and would keep it, its pause
// process among it, until its next restart. CRI records the spec Start
// returns, so a record without one is watched, until it has one.
func (c *Controller) shutDownIfDropped(ctx context.Context, id string) {
	ctx = events.Detached(ctx)
	c.abandoned.arm(id, abandonedAfter, func() {
		if c.closing.Err() != nil {
			return
		}
		lookup, cancel := context.WithTimeout(ctx, abandonedLookupTimeout)
		cri, err := c.client.SandboxStore().Get(lookup, id)
		cancel()
		switch {
		case err == nil && startRecorded(cri):
			return
		case !errdefs.IsNotFound(err):
			// Not started yet in CRI's eyes, or CRI cannot say.
			c.shutDownIfDropped(ctx, id)
			return
		}
		if _, err := c.store.Get(id); err != nil {
			// CRI shut it down, then dropped its record.
			return
		}
		logger := log.G(ctx).WithField("sandbox_id", id)
		if err := c.Shutdown(ctx, id); err != nil {
			logger.WithError(err).Warn("shut down a recovered sandbox CRI dropped; retrying")
			c.shutDownIfDropped(ctx, id)
			return
		}
		logger.Info("shut down a recovered sandbox CRI dropped without a Shutdown")
	})
}

// startRecorded says whether CRI recorded the sandbox's Start in its
// record r: the spec Start returned.
func startRecorded(r sandbox.Sandbox) bool {
	return present(r.Spec) != nil
}

// Bounds of the wait between attempts of a step of recovery that
// containerd did not answer.
const (
	unansweredFirstDelay = 100 * time.Millisecond
	unansweredMaxDelay   = time.Second
)

// untilAnswered runs attempt, a step of recovery, again for as long as
// containerd itself does not answer it (Unavailable: berthd's containerd
// restarting during berthd's recovery), and returns its last error. Once
// the controller is closing it makes no attempt more and fails
// Unavailable, as it does once ctx ends. Every CRI call waits for the
// recovery meanwhile, and CRI, in the containerd away, makes none.
func (c *Controller) untilAnswered(ctx context.Context, step string, attempt func() error) error {
	for delay := unansweredFirstDelay; ; delay = min(2*delay, unansweredMaxDelay) {
		if c.closing.Err() != nil || ctx.Err() != nil {
			return fmt.Errorf("%s: no longer waiting for containerd: %w", step, errdefs.ErrUnavailable)
		}
		err := attempt()
		if err == nil || !errdefs.IsUnavailable(err) {
			return err
		}
		log.G(ctx).WithError(err).WithField("retry_in", delay).Infof("containerd does not answer; %s again", step)
		select {
		case <-time.After(delay):
		case <-c.closing.Done():
		case <-ctx.Done():
		}
	}
}

// reattach reattaches to sb's pause task, each attempt bounded by timeout:
// a shim that does not answer is wedged, but a containerd away says
// nothing of the pod, which must not be taken for dead and its pause
// killed.
func (c *Controller) reattach(ctx context.Context, sb *store.Sandbox, timeout time.Duration) error {
	scope := c.podShimScope(sb.Metadata, sb.Status().Instance.ShimRuntime)
	return c.untilAnswered(ctx, "reattaching to the pause task", func() error {
		attempt, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return c.reaper.Reattach(attempt, sb, scope)
	})
}

// removeOrphan deletes, in the background, a berth pause container no
// sandbox owns, with its task, snapshot and files.
func (c *Controller) removeOrphan(ctx context.Context, container containerd.Container) {
	id := container.ID()
	log.G(ctx).WithField("sandbox_id", id).Info("removing a pause container no sandbox owns")
	c.events.Retry(ctx, id, "remove orphan", func(ctx context.Context) error {
		if err := c.removeTask(ctx, container); err != nil {
			return err
		}
		if err := ignoreNotFound(container.Delete(ctx, containerd.WithSnapshotCleanup)); err != nil {
			return fmt.Errorf("delete pause container: %w", err)
		}
		return c.config.Dirs.Files(id).Remove()
	})
}

// releaseStartLeases deletes the leases of Starts that containerd's death
// interrupted. No Start of this berth runs before recovery ends, so every
// such lease of its own is stale (another berth's is left to it); a
// snapshot that no container holds is then garbage. The last deletion
// waits for a garbage collection, which takes every such snapshot: kubelet
// removes the half-made pods as soon as CRI answers, and their removal
// must leave nothing, not a snapshot for a later collection. Only recovery
// may release them, so it waits for a containerd that does not answer;
// each call is bounded by timeout.
func (c *Controller) releaseStartLeases(ctx context.Context, timeout time.Duration) {
	err := c.untilAnswered(ctx, "releasing the leases of interrupted starts", func() error {
		return c.releaseStaleStartLeases(ctx, timeout)
	})
	if err != nil {
		log.G(ctx).WithError(err).Warn("release the leases of interrupted starts")
	}
}

// releaseStaleStartLeases is one attempt of releaseStartLeases, each call
// bounded by timeout. It fails if it cannot list the leases, or containerd
// does not answer a deletion.
func (c *Controller) releaseStaleStartLeases(ctx context.Context, timeout time.Duration) error {
	ls := c.client.LeasesService()
	listCtx, cancel := context.WithTimeout(ctx, timeout)
	all, err := ls.List(listCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	var stale []leases.Lease
	for _, l := range all {
		if isStartLease(l, c.config.Sandboxer) {
			stale = append(stale, l)
		}
	}
	for i, l := range stale {
		var opts []leases.DeleteOpt
		if i == len(stale)-1 {
			opts = append(opts, leases.SynchronousDelete)
		}
		deleteCtx, cancel := context.WithTimeout(ctx, timeout)
		err := ls.Delete(deleteCtx, l, opts...)
		cancel()
		switch {
		case errdefs.IsUnavailable(err):
			return fmt.Errorf("release start lease %s: %w", l.ID, err)
		case err != nil && !errdefs.IsNotFound(err):
			log.G(ctx).WithError(err).WithField("lease", l.ID).Warn("release start lease")
			continue
		}
		log.G(ctx).WithField("lease", l.ID).Info("released the lease of an interrupted start")
	}
	return nil
}

// removeOrphanFiles removes the files of sandboxes that have no pause
// container: containerd died during a Start after the files were made and
// before the container was, or during a Shutdown after the container went.
func (c *Controller) removeOrphanFiles(ctx context.Context) {
	for _, dir := range []string{c.config.Dirs.Root, c.config.Dirs.State} {
		entries, err := os.ReadDir(filepath.Join(dir, "sandboxes"))
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				log.G(ctx).WithError(err).Warn("list sandbox files")
			}
			continue
		}
		for _, e := range entries {
			if _, err := c.store.Get(e.Name()); err == nil {
				continue
			}
			if err := c.config.Dirs.Files(e.Name()).Remove(); err != nil {
				log.G(ctx).WithError(err).WithField("sandbox_id", e.Name()).Warn("remove orphan sandbox files")
			}
		}
	}
}

// removeTask deletes the pause task, if any, of a container no sandbox
// owns, and cleans up after a Start that may have left it half made.
func (c *Controller) removeTask(ctx context.Context, container containerd.Container) error {
	t, err := container.Task(ctx, nil)
	if err == nil {
		return c.reaper.DeleteTask(ctx, t)
	}
	if !errdefs.IsNotFound(err) {
		return fmt.Errorf("load pause task: %w", err)
	}
	info, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return fmt.Errorf("pause container info: %w", err)
	}
	// A record that does not decode names no group: the shim is the pod's.
	rec, _ := recordOn(info)
	return c.reaper.CleanupLost(ctx, lostTask(info, rec.ShimGroup))
}

// lostTask is what a container of berth's whose task containerd lost, of
// shim group group, left behind. A spec that does not decode has no cgroup
// to remove.
func lostTask(info containers.Container, group string) reaper.LostTask {
	_, cgroupsPath, _ := specRecord(info.Spec)
	return reaper.LostTask{ID: info.ID, Runtime: runtimeOf(info), CgroupsPath: cgroupsPath, Group: group}
}
