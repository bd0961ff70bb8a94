package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/store"
)

// RecoverConfig bounds recovery after a containerd restart.
type RecoverConfig struct {
	// Parallelism is how many sandboxes are reloaded at once.
	Parallelism int
	// Timeout bounds the reload of one sandbox, so that one wedged shim
	// cannot hold up containerd's start.
	Timeout time.Duration
}

// Recover reloads the sandboxes berth owns from containerd's metadata, so
// that CRI's own recovery, which runs after every plugin has loaded, finds
// each in its true state: live tasks are waited on again, tasks that died
// while containerd was down are deleted and reported NOTREADY with their
// exit status, and what a crash left half-made is cleaned up. It returns an
// error only when it cannot list berth's containers at all; a sandbox it
// cannot reload is reported NOTREADY and its task is deleted in the
// background.
func (c *Controller) Recover(ctx context.Context, cfg RecoverConfig) error {
	ctx = namespaces.WithNamespace(ctx, Namespace)
	start := time.Now()
	containers, err := c.client.Containers(ctx, fmt.Sprintf("labels.%q==%s", LabelKind, LabelKindSandbox))
	if err != nil {
		return fmt.Errorf("list berth's pause containers: %w", err)
	}
	var (
		wg  sync.WaitGroup
		sem = make(chan struct{}, max(cfg.Parallelism, 1))
	)
	for _, container := range containers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.recoverSandbox(ctx, container, cfg.Timeout)
		}()
	}
	wg.Wait()
	c.releaseStartLeases(ctx)
	c.removeOrphanFiles(ctx)
	c.telemetry.recovery.Set(time.Since(start).Seconds())
	log.G(ctx).WithField("sandboxes", len(containers)).WithField("took", time.Since(start)).Info("berth recovered sandboxes")
	return nil
}

// releaseStartLeases deletes the leases of Starts that containerd's death
// interrupted. No Start runs before recovery ends, so every such lease is
// stale; a snapshot that no container holds is then garbage.
func (c *Controller) releaseStartLeases(ctx context.Context) {
	ls := c.client.LeasesService()
	stale, err := ls.List(ctx, fmt.Sprintf("labels.%q==%s", LabelKind, LabelKindStartLease))
	if err != nil {
		log.G(ctx).WithError(err).Warn("list start leases")
		return
	}
	for _, l := range stale {
		if err := ls.Delete(ctx, l); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).WithField("lease", l.ID).Warn("release start lease")
			continue
		}
		log.G(ctx).WithField("lease", l.ID).Info("released the lease of an interrupted start")
	}
}

// recoverSandbox reloads one sandbox from its pause container.
func (c *Controller) recoverSandbox(ctx context.Context, container containerd.Container, timeout time.Duration) {
	id := container.ID()
	logger := log.G(ctx).WithField("sandbox_id", id)
	ctx = log.WithLogger(ctx, logger)
	sb, err := c.loadSandbox(ctx, container)
	if err != nil {
		// Without its config the sandbox cannot be served: remove what is
		// left of it. CRI reports it NOTREADY and kubelet replaces it.
		logger.WithError(err).Error("cannot reload sandbox; removing its pause container")
		c.retry(ctx, id, func(ctx context.Context) error { return c.removeUnloadable(ctx, container) })
		return
	}
	if err := c.store.Add(sb); err != nil {
		logger.WithError(err).Error("reload sandbox")
		return
	}
	// The files' links into CRI's directories are what CRI mounts into
	// app containers; put back any a crash lost.
	if err := c.config.Dirs.Files(id).Relink(); err != nil {
		logger.WithError(err).Warn("relink sandbox files")
	}

	loadCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.reattach(loadCtx, sb); err != nil {
		// A shim that does not answer leaves the sandbox unknown: report it
		// NOTREADY, so that kubelet replaces it, and delete its task in the
		// background.
		logger.WithError(err).Warn("cannot reattach to pause task; deleting it")
		sb.Exit(unknownExitCode, time.Now())
		c.retry(ctx, id, func(ctx context.Context) error { return c.deleteExitedTask(ctx, sb) })
	}
}

// loadSandbox rebuilds a sandbox's metadata and instance from what Start
// recorded on its pause container.
func (c *Controller) loadSandbox(ctx context.Context, container containerd.Container) (*store.Sandbox, error) {
	info, err := container.Info(ctx, containerd.WithoutRefreshedMetadata)
	if err != nil {
		return nil, err
	}
	ext, ok := info.Extensions[ExtensionConfig]
	if !ok {
		return nil, fmt.Errorf("no %s extension: %w", ExtensionConfig, errdefs.ErrNotFound)
	}
	var cfg runtimeapi.PodSandboxConfig
	if err := typeurl.UnmarshalTo(ext, &cfg); err != nil {
		return nil, fmt.Errorf("decode pod config: %w", err)
	}
	spec, cgroupsPath, err := specRecord(info.Spec)
	if err != nil {
		return nil, err
	}
	sb := store.NewSandbox(store.Metadata{
		ID:             info.ID,
		RuntimeHandler: info.Labels[LabelRuntimeHandler],
		NetNSPath:      info.Labels[LabelNetNS],
		Config:         &cfg,
		Runtime:        sandbox.RuntimeOpts{Name: info.Runtime.Name, Options: info.Runtime.Options},
		RecordedAt:     info.CreatedAt,
	})
	inst := &store.Instance{
		Container:    container,
		Spec:         spec,
		CgroupsPath:  cgroupsPath,
		Image:        info.Image,
		Snapshotter:  info.Snapshotter,
		RuntimeType:  info.Runtime.Name,
		ProcessLabel: info.Labels[LabelSELinux],
	}
	var resources *runtimeapi.LinuxContainerResources
	if v := info.Labels[LabelResources]; v != "" {
		resources = &runtimeapi.LinuxContainerResources{}
		if err := json.Unmarshal([]byte(v), resources); err != nil {
			return nil, fmt.Errorf("decode recorded pod resources: %w", err)
		}
	}
	err = sb.Update(func(s store.Status) (store.Status, error) {
		s.CreatedAt, s.Instance, s.Resources = info.CreatedAt, inst, resources
		return s, nil
	})
	return sb, err
}

// reattach finds the sandbox's pause task: a running one is waited on again
// and the sandbox is READY; one that exited while containerd was down is
// deleted and the sandbox reports its exit; a missing one means the exit was
// handled before, or Start never got as far as the task.
func (c *Controller) reattach(ctx context.Context, sb *store.Sandbox) error {
	inst := sb.Status().Instance
	t, err := inst.Container.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		// The exit was handled before the restart, or Start never made the
		// task; either way the exit status is gone.
		sb.Exit(unknownExitCode, time.Now())
		return c.deleteLostTask(ctx, sb)
	}
	if err != nil {
		return fmt.Errorf("load pause task: %w", err)
	}
	st, err := t.Status(ctx)
	if err != nil {
		return fmt.Errorf("pause task status: %w", err)
	}
	if err := sb.Update(func(s store.Status) (store.Status, error) {
		inst := *s.Instance
		inst.Task = t
		s.Instance = &inst
		return s, nil
	}); err != nil {
		return err
	}

	switch st.Status {
	case containerd.Running, containerd.Paused, containerd.Pausing:
		// The wait outlives recovery, as it does Start.
		waitCtx, cancelWait := context.WithCancel(context.WithoutCancel(ctx))
		exitCh, err := t.Wait(waitCtx)
		if err != nil {
			cancelWait()
			return fmt.Errorf("wait for pause task: %w", err)
		}
		if err := sb.Update(func(s store.Status) (store.Status, error) {
			s.State, s.Pid = store.StateReady, t.Pid()
			return s, nil
		}); err != nil {
			cancelWait()
			return err
		}
		go c.waitExit(waitCtx, cancelWait, sb, exitCh)
		return nil
	case containerd.Stopped:
		sb.Exit(st.ExitStatus, st.ExitTime)
	default:
		// Created (Start was cut short) or unknown: never ready.
		sb.Exit(unknownExitCode, time.Now())
	}
	c.deleteExitedOrRetry(ctx, sb)
	return nil
}

// removeUnloadable deletes a pause container berth cannot reload, with its
// task, snapshot and files.
func (c *Controller) removeUnloadable(ctx context.Context, container containerd.Container) error {
	// deleteTask falls back to the task service itself; a task the shim
	// does not know goes there directly, for a shim still registered.
	t, err := container.Task(ctx, nil)
	switch {
	case err == nil:
		err = c.deleteTask(ctx, t)
	case errdefs.IsNotFound(err):
		err = c.deleteFromTaskService(ctx, container.ID())
	}
	if err != nil {
		return err
	}
	if err := ignoreNotFound(container.Delete(ctx, containerd.WithSnapshotCleanup)); err != nil {
		return fmt.Errorf("delete pause container: %w", err)
	}
	return c.config.Dirs.Files(container.ID()).Remove()
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
