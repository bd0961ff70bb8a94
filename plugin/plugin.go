// Package plugin registers berth with containerd as the sandbox controller
// "berth". A runtime handler selects it with sandboxer = "berth".
//
// Its init must never fail hard: containerd's CRI plugin loads every sandbox
// controller, and one that fails with an error other than
// plugin.ErrSkipPlugin takes all of CRI down with it. Nor may a bad setting
// of berth's disable berth: its pods would run on unmanaged.
package plugin

import (
	"fmt"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
	shimv2 "github.com/containerd/containerd/v2/core/runtime/v2"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/docker/go-metrics"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/shimproc"
)

// ID is berth's plugin ID, the value of a runtime handler's sandboxer.
const ID = "berth"

func init() {
	registry.Register(&plugin.Registration{
		Type:   plugins.SandboxControllerPlugin,
		ID:     ID,
		Config: DefaultConfig(),
		// Everything the in-memory containerd client and CRI's config need
		// must be initialised first, and the shim manager, whose socket
		// directory berth reads.
		Requires: []plugin.Type{
			plugins.EventPlugin,
			plugins.LeasePlugin,
			plugins.SandboxStorePlugin,
			plugins.TransferPlugin,
			plugins.MountManagerPlugin,
			plugins.ServicePlugin,
			plugins.ShimPlugin,
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

// initController builds the controller and recovers its sandboxes. It fails
// only when berth cannot work at all (no CRI config, no containerd client,
// no list of containers).
func initController(ic *plugin.InitContext) (*controller.Controller, error) {
	cfg, ok := ic.Config.(*Config)
	if !ok {
		return nil, fmt.Errorf("unexpected config type %T", ic.Config)
	}
	configErr := cfg.Validate()
	if configErr != nil {
		log.G(ic.Context).WithError(configErr).Error("berth's config is invalid: berth runs no new sandboxes, and keeps stopping and removing those it has on default settings")
		builtin := cfg
		cfg = DefaultConfig()
		cfg.BuiltinPauseHandlers, cfg.BuiltinPauseBinary = builtin.BuiltinPauseHandlers, builtin.BuiltinPauseBinary
	}
	cri, criRoot, criState, err := loadCRIConfig(ic)
	if err != nil {
		return nil, err
	}
	root := ic.Properties[plugins.PropertyRootDir]
	client, err := containerd.New("",
		containerd.WithDefaultNamespace(controller.Namespace),
		containerd.WithDefaultPlatform(platforms.Default()),
		containerd.WithInMemoryServices(ic),
	)
	if err != nil {
		return nil, fmt.Errorf("containerd client: %w", err)
	}
	c := controller.New(controller.Config{
		Sandboxer: ID,
		CRI:       cri,
		Dirs: podsandbox.Dirs{
			Root:     root,
			State:    ic.Properties[plugins.PropertyStateDir],
			CRIRoot:  criRoot,
			CRIState: criState,
		},
		StopTimeout:  cfg.StopTimeout.Duration(),
		ExitTimeout:  cfg.ExitRetry.AttemptTimeout.Duration(),
		ExitRetry:    cfg.ExitRetry.backoff(),
		Node:         podsandbox.HostNode(),
		HostFiles:    podsandbox.DefaultHostFiles,
		BuiltinPause: builtinPause(ic, cfg, cri, root),
		Shims: shimproc.Sockets{
			ContainerdAddress: ic.Properties[plugins.PropertyGRPCAddress],
			Dir:               shimSocketDir(ic),
			// Beside berth's state, as the shim manager lays bundles out.
			Bundles:   filepath.Join(filepath.Dir(ic.Properties[plugins.PropertyStateDir]), plugins.RuntimePluginV2.String()+".task"),
			Namespace: controller.Namespace,
		},
		PodsPerShim:         cfg.PodsPerShim,
		HandlerPodsPerShim:  cfg.HandlerPodsPerShim,
		WarmShims:           cfg.WarmShimHandlers,
		CrossNamespaceShims: cfg.CrossNamespaceShimHandlers,
		ConfigErr:           configErr,
	}, client)
	// On containerd's Prometheus endpoint ([metrics] address).
	metrics.Register(c.MetricsNamespace())
	// The reload runs while containerd loads its other plugins; CRI's own
	// recovery, which runs once every plugin has loaded and asks berth for
	// the state of each of its sandboxes, waits for it.
	if err := c.Recover(ic.Context, controller.RecoverConfig{
		Parallelism: cfg.Recovery.Parallelism,
		Timeout:     cfg.Recovery.SandboxTimeout.Duration(),
	}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// builtinPause prepares the built-in pause's shared rootfs, under berth's
// root directory, for the handlers that run it and the shim keepers of warm
// handlers. A setting or binary that does not work disables the built-in
// pause alone: its handlers' pods fail with the error, warm handlers keep
// no shim warm, every other pod runs.
func builtinPause(ic *plugin.InitContext, cfg *Config, cri controller.CRIConfig, root string) controller.BuiltinPause {
	b := controller.BuiltinPause{Handlers: cfg.BuiltinPauseHandlers}
	if len(b.Handlers) == 0 && len(cfg.WarmShimHandlers) == 0 {
		return b
	}
	for key, handlers := range map[string][]string{"builtin_pause_handlers": b.Handlers, "warm_shim_handlers": cfg.WarmShimHandlers} {
		for _, h := range handlers {
			if _, ok := cri.Runtimes[h]; !ok {
				log.G(ic.Context).WithField("runtime_handler", h).Warn(key + " names a runtime handler CRI does not have")
			}
		}
	}
	if b.Err = cfg.validateBuiltinPause(); b.Err == nil {
		b.Rootfs, b.Err = podsandbox.PrepareRootfs(filepath.Join(root, "pause"), cfg.BuiltinPauseBinary)
	}
	if b.Err != nil {
		log.G(ic.Context).WithError(b.Err).WithFields(log.Fields{"runtime_handlers": b.Handlers, "warm_shim_handlers": cfg.WarmShimHandlers}).Error("berth's built-in pause is disabled; its handlers' pods will fail, and no shim is kept warm")
	}
	return b
}

// shimSocketDir is where the shim manager puts shim sockets: its
// socket_dir, which it fills in with its default when unset.
func shimSocketDir(ic *plugin.InitContext) string {
	if p := ic.Plugins().Get(plugins.ShimPlugin, "manager"); p != nil {
		if c, ok := p.Config.(*shimv2.ShimConfig); ok && c.SocketDir != "" {
			return c.SocketDir
		}
	}
	return filepath.Join(defaults.DefaultStateDir, "s")
}
