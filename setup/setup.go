// Package setup builds berth's controller from berth's settings (Config)
// and what it needs of the containerd it serves (Node): the same for the
// plugin compiled into containerd and for berthd beside a stock
// containerd, which differ only in where they read both from.
package setup

import (
	"cmp"
	"context"
	"maps"
	"path/filepath"
	"slices"

	"github.com/containerd/log"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/shimproc"
)

// ID is berth's name as a sandbox controller: its plugin ID, the value of
// a runtime handler's sandboxer.
const ID = "berth"

// Node is what berth needs of the containerd it serves.
type Node struct {
	// Sandboxer is berth's name in containerd (its plugin ID, or the key of
	// its proxy_plugins entry), which runtime handlers give as their
	// sandboxer and CRI records on each sandbox; "" is ID.
	Sandboxer string
	// CRI is CRI's config of runtime handlers and images.
	CRI controller.CRIConfig
	// Handlers are CRI's runtime handlers as it hands their pods out.
	Handlers map[string]Handler
	// Dirs are berth's root and state directories and CRI's.
	Dirs podsandbox.Dirs
	// Shims is where containerd's runc shims listen.
	Shims shimproc.Sockets
}

// NewController builds the controller and begins the recovery of its
// sandboxes. An invalid cfg is logged and replaced by the defaults (its
// built-in pause settings kept), so that berth keeps stopping and removing
// the sandboxes it has, and refuses new ones with the error; its shim
// keepers are left as they are. It fails only when berth cannot list what
// it had.
func NewController(ctx context.Context, cfg *Config, node Node, client controller.Client) (*controller.Controller, error) {
	configErr := cfg.Validate()
	if configErr != nil {
		log.G(ctx).WithError(configErr).Error("berth's config is invalid: berth runs no new sandboxes, and keeps stopping and removing those it has on default settings")
		builtin := cfg
		cfg = DefaultConfig()
		cfg.BuiltinPauseHandlers, cfg.BuiltinPauseBinary = builtin.BuiltinPauseHandlers, builtin.BuiltinPauseBinary
	}
	sandboxer := cmp.Or(node.Sandboxer, ID)
	for _, m := range misnamedHandlers(cfg, sandboxer, node.Handlers) {
		log.G(ctx).WithField("runtime_handler", m.handler).Warn(m.setting + " names " + m.problem)
	}
	c := controller.New(controller.Config{
		Sandboxer:           sandboxer,
		CRI:                 node.CRI,
		Dirs:                node.Dirs,
		StopTimeout:         cfg.StopTimeout.Duration(),
		ExitTimeout:         cfg.ExitRetry.AttemptTimeout.Duration(),
		ExitRetry:           cfg.ExitRetry.backoff(),
		Node:                podsandbox.HostNode(),
		HostFiles:           podsandbox.DefaultHostFiles,
		BuiltinPause:        builtinPause(ctx, cfg, node.Dirs.Root),
		Shims:               node.Shims,
		PodsPerShim:         cfg.PodsPerShim,
		HandlerPodsPerShim:  cfg.HandlerPodsPerShim,
		WarmShims:           cfg.WarmShimHandlers,
		WarmShimIdleTimeout: cfg.WarmShimIdleTimeout.Duration(),
		CrossNamespaceShims: cfg.CrossNamespaceShimHandlers,
		ConfigErr:           configErr,
	}, client)
	if err := c.Recover(ctx, controller.RecoverConfig{
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
func builtinPause(ctx context.Context, cfg *Config, root string) controller.BuiltinPause {
	b := controller.BuiltinPause{Handlers: cfg.BuiltinPauseHandlers}
	if len(b.Handlers) == 0 && len(cfg.WarmShimHandlers) == 0 {
		return b
	}
	if b.Err = cfg.validateBuiltinPause(); b.Err == nil {
		b.Rootfs, b.Err = podsandbox.PrepareRootfs(filepath.Join(root, "pause"), cfg.BuiltinPauseBinary)
	}
	if b.Err != nil {
		log.G(ctx).WithError(b.Err).WithFields(log.Fields{"runtime_handlers": b.Handlers, "warm_shim_handlers": cfg.WarmShimHandlers}).Error("berth's built-in pause is disabled; its handlers' pods will fail, and no shim is kept warm")
	}
	return b
}

// misnamedHandler is a runtime handler that a setting of berth's names and
// that cannot work as the setting means: a typo, a handler not yet
// configured, one whose pods another sandbox controller runs. berth can
// only warn of it, since CRI's config may change with the next restart.
type misnamedHandler struct{ setting, handler, problem string }

// Problems of a handler a setting names.
const (
	unknownHandler = "a runtime handler CRI does not have"
	otherSandboxer = "a runtime handler whose pods another sandbox controller runs (its sandboxer is not berth's)"
	pausePulled    = "a runtime handler for whose pods CRI pulls the pause image, which berth's built-in pause does not need: its pods fail where the image cannot be pulled (set disable_pause_image_pull = true on it)"
)

// misnamedHandlers lists, by setting and in their order, the handlers that
// cfg's per-handler settings name and that handlers do not run as the
// setting means for berth, whose name in containerd is sandboxer.
func misnamedHandlers(cfg *Config, sandboxer string, handlers map[string]Handler) []misnamedHandler {
	var misnamed []misnamedHandler
	for _, s := range []struct {
		key      string
		handlers []string
		// builtinPause: the handlers run berth's built-in pause.
		builtinPause bool
	}{
		{"builtin_pause_handlers", cfg.BuiltinPauseHandlers, true},
		{"warm_shim_handlers", cfg.WarmShimHandlers, false},
		{"cross_namespace_shim_handlers", cfg.CrossNamespaceShimHandlers, false},
		{"handler_pods_per_shim", slices.Sorted(maps.Keys(cfg.HandlerPodsPerShim)), false},
	} {
		for _, name := range s.handlers {
			h, ok := handlers[name]
			switch {
			case !ok:
				misnamed = append(misnamed, misnamedHandler{s.key, name, unknownHandler})
			case h.Sandboxer != sandboxer:
				misnamed = append(misnamed, misnamedHandler{s.key, name, otherSandboxer})
			case s.builtinPause && h.PullsPause:
				misnamed = append(misnamed, misnamedHandler{s.key, name, pausePulled})
			}
		}
	}
	return misnamed
}
