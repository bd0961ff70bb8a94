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
	"github.com/berth-dev/berth/setup"
	"github.com/berth-dev/berth/shimproc"
)

// ID is berth's plugin ID, the value of a runtime handler's sandboxer.
const ID = setup.ID

func init() {
	registry.Register(&plugin.Registration{
		Type:   plugins.SandboxControllerPlugin,
		ID:     ID,
		Config: setup.DefaultConfig(),
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
// no list of containers) or another berth serves its sandboxes.
func initController(ic *plugin.InitContext) (_ *controller.Controller, retErr error) {
	cfg, ok := ic.Config.(*setup.Config)
	if !ok {
		return nil, fmt.Errorf("unexpected config type %T", ic.Config)
	}
	cri, err := loadCRIConfig(ic)
	if err != nil {
		return nil, err
	}
	// Held for containerd's life (unlock is dropped): a berthd started
	// beside it (a node moving to berthd, its proxy plugin written before
	// containerd's restart) must not take up the same sandboxes.
	unlock, err := setup.LockRoot(ic.Properties[plugins.PropertyRootDir])
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			unlock()
		}
	}()
	client, err := containerd.New("",
		containerd.WithDefaultNamespace(controller.Namespace),
		containerd.WithDefaultPlatform(platforms.Default()),
		containerd.WithInMemoryServices(ic),
	)
	if err != nil {
		return nil, fmt.Errorf("containerd client: %w", err)
	}
	// The reload runs while containerd loads its other plugins; CRI's own
	// recovery, which runs once every plugin has loaded and asks berth for
	// the state of each of its sandboxes, waits for it.
	c, err := setup.NewController(ic.Context, cfg, setup.Node{
		CRI:      cri.Config,
		Handlers: cri.Handlers,
		Dirs: podsandbox.Dirs{
			Root:     ic.Properties[plugins.PropertyRootDir],
			State:    ic.Properties[plugins.PropertyStateDir],
			CRIRoot:  cri.Root,
			CRIState: cri.State,
		},
		Shims: shimproc.Sockets{
			ContainerdAddress: ic.Properties[plugins.PropertyGRPCAddress],
			Dir:               shimSocketDir(ic),
			// Beside berth's state, as the shim manager lays bundles out.
			Bundles:   filepath.Join(filepath.Dir(ic.Properties[plugins.PropertyStateDir]), plugins.RuntimePluginV2.String()+".task"),
			Namespace: controller.Namespace,
		},
	}, client)
	if err != nil {
		return nil, err
	}
	// On containerd's Prometheus endpoint ([metrics] address).
	metrics.Register(c.MetricsNamespace())
	return c, nil
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
