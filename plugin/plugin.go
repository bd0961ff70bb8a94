// Package plugin registers berth with containerd as the sandbox controller
// "berth". A CRI runtime handler selects it with sandboxer = "berth".
//
// Its init must never fail hard: containerd's CRI plugin loads every sandbox
// controller, and one that fails with an error other than
// plugin.ErrSkipPlugin takes all of CRI down with it.
package plugin

import (
	"fmt"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/seccomp"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/docker/go-metrics"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/podsandbox"
)

// ID is berth's plugin ID, the value of a runtime handler's sandboxer.
const ID = "berth"

func init() {
	registry.Register(&plugin.Registration{
		Type:   plugins.SandboxControllerPlugin,
		ID:     ID,
		Config: DefaultConfig(),
		// Everything the in-memory containerd client and CRI's config need
		// must be initialised first.
		Requires: []plugin.Type{
			plugins.EventPlugin,
			plugins.LeasePlugin,
			plugins.SandboxStorePlugin,
			plugins.TransferPlugin,
			plugins.MountManagerPlugin,
			plugins.ServicePlugin,
			plugins.CRIServicePlugin,
		},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			c, err := initController(ic)
			if err != nil {
				log.G(ic.Context).WithError(err).Error("berth sandbox controller disabled")
				return nil, fmt.Errorf("%w: %w", plugin.ErrSkipPlugin, err)
			}
			return c, nil
		},
	})
}

func initController(ic *plugin.InitContext) (*controller.Controller, error) {
	cfg, ok := ic.Config.(*Config)
	if !ok {
		return nil, fmt.Errorf("unexpected config type %T", ic.Config)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	cri, criRoot, criState, err := loadCRIConfig(ic)
	if err != nil {
		return nil, err
	}
	root := ic.Properties[plugins.PropertyRootDir]
	var pauseRootfs string
	if len(cfg.BuiltinPauseHandlers) > 0 {
		if pauseRootfs, err = podsandbox.PrepareRootfs(filepath.Join(root, "pause"), cfg.BuiltinPauseBinary); err != nil {
			return nil, err
		}
	}
	for _, h := range cfg.BuiltinPauseHandlers {
		r, ok := cri.Runtimes[h]
		if !ok {
			log.G(ic.Context).WithField("runtime_handler", h).Warn("builtin_pause_handlers names a runtime handler CRI does not have")
			continue
		}
		r.BuiltinPause = true
		cri.Runtimes[h] = r
	}
	client, err := containerd.New("",
		containerd.WithDefaultNamespace(controller.Namespace),
		containerd.WithDefaultPlatform(platforms.Default()),
		containerd.WithInMemoryServices(ic),
	)
	if err != nil {
		return nil, fmt.Errorf("containerd client: %w", err)
	}
	monitor := events.New(cfg.ExitRetry.Events())
	monitor.Start()
	c := controller.New(controller.Config{
		CRI: cri,
		Dirs: podsandbox.Dirs{
			Root:     root,
			State:    ic.Properties[plugins.PropertyStateDir],
			CRIRoot:  criRoot,
			CRIState: criState,
		},
		StopTimeout:        cfg.StopTimeout.Duration(),
		ExitTimeout:        cfg.ExitRetry.AttemptTimeout.Duration(),
		SeccompEnabled:     seccomp.IsEnabled(),
		HostFiles:          podsandbox.DefaultHostFiles,
		BuiltinPauseRootfs: pauseRootfs,
		ContainerdAddress:  ic.Properties[plugins.PropertyGRPCAddress],
	}, client, monitor)
	// On containerd's Prometheus endpoint ([metrics] address).
	metrics.Register(c.MetricsNamespace())
	// Before CRI's own recovery, which runs once every plugin has loaded and
	// asks berth for the state of each of its sandboxes.
	if err := c.Recover(ic.Context, controller.RecoverConfig{
		Parallelism: cfg.Recovery.Parallelism,
		Timeout:     cfg.Recovery.SandboxTimeout.Duration(),
	}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
