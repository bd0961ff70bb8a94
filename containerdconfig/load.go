// Package containerdconfig reads a stock containerd's config, as berthd reads
// it. berthd runs beside an unmodified containerd, so it must see the node
// exactly as containerd does: the same file, imports, version migrations and
// defaults. It therefore runs containerd's own loader and the migrations and
// default configs registered by the plugins whose settings berth reads,
// rather than a copy of them that could drift.
package containerdconfig

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	shimv2 "github.com/containerd/containerd/v2/core/runtime/v2"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/version"
	"github.com/containerd/errdefs"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	// CRI's runtime and images plugins register, in their init, the default
	// configs and the v2 key migrations berthd needs. Their InitFns are
	// never called.
	_ "github.com/containerd/containerd/v2/plugins/cri/images"
	_ "github.com/containerd/containerd/v2/plugins/cri/runtime"
)

const (
	criRuntimeURI = "io.containerd.cri.v1.runtime"
	criImagesURI  = "io.containerd.cri.v1.images"
	shimURI       = "io.containerd.shim.v1.manager"
	grpcURI       = "io.containerd.server.v1.grpc"
	// criDir names CRI's own directories under containerd's root and state,
	// after CRI's gRPC plugin, as plugins/cri/runtime derives them.
	criDir = "io.containerd.grpc.v1.cri"
)

// Overrides are containerd's own --address, --root and --state flags, if the
// node sets them; they win over the file, as in containerd.
type Overrides struct{ Address, Root, State string }

// ProxyPlugin is a proxy_plugins entry.
type ProxyPlugin struct{ Type, Address string }

// Node is what berthd needs from containerd's config.
type Node struct {
	// GRPCAddress is containerd's gRPC address exactly as containerd uses it:
	// shim socket names hash it.
	GRPCAddress string
	// Root and State are containerd's root and state dirs.
	Root, State string
	// ShimSocketDir is the shim manager's socket_dir, or containerd's
	// default for root (filepath.Join(defaults.DefaultStateDir, "s")). It
	// does not follow State.
	ShimSocketDir string
	// CRIRuntime and CRIImages are the JSON of CRI's runtime and images
	// plugin configs, with containerd's defaults applied and v2 keys
	// migrated, as CRI's own Config() would encode them.
	CRIRuntime, CRIImages []byte
	ProxyPlugins          map[string]ProxyPlugin
	// DisabledPlugins are the URIs of the plugins containerd does not
	// load, proxy plugins included.
	DisabledPlugins []string

	path string
	cfg  *srvconfig.Config
}

// Load reads containerd's config at path, with its imports, migrated to the
// current version. A missing file gives containerd's defaults, as containerd
// does when its default config path does not exist.
func Load(ctx context.Context, path string, o Overrides) (*Node, error) {
	regs, err := registrations()
	if err != nil {
		return nil, err
	}
	cfg := defaultConfig()
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		// containerd runs every registered plugin's migration; only these
		// three move keys that berthd reads.
		migrations := []plugin.Registration{regs[criRuntimeURI], regs[criImagesURI], regs[shimURI]}
		plugins := func() iter.Seq[plugin.Registration] { return slices.Values(migrations) }
		if err := srvconfig.LoadConfigWithPlugins(ctx, path, plugins, cfg); err != nil {
			if _, ok := errors.AsType[*fs.PathError](err); ok {
				// Unreadable, or an import is missing: not a syntax error.
				return nil, fmt.Errorf("containerd config %s: %w", path, err)
			}
			// The loader returns the row and column of a file that does
			// not parse, but not the file, which may be an import; it
			// logs the file ("Failure unmarshaling TOML").
			return nil, invalid(path+" or a file it imports", err)
		}
	}
	if err := applyOverrides(cfg, o); err != nil {
		return nil, err
	}
	n := &Node{Root: cfg.Root, State: cfg.State, GRPCAddress: defaults.DefaultAddress,
		ProxyPlugins: map[string]ProxyPlugin{}, DisabledPlugins: cfg.DisabledPlugins, path: path, cfg: cfg}
	if g, ok := cfg.Plugins[grpcURI].(map[string]any); ok {
		if a, ok := g["address"].(string); ok && a != "" {
			n.GRPCAddress = a
		}
	}
	for name, p := range cfg.ProxyPlugins {
		n.ProxyPlugins[name] = ProxyPlugin{Type: p.Type, Address: p.Address}
	}
	var shim shimv2.ShimConfig
	if err := n.DecodePlugin(ctx, shimURI, &shim); err != nil {
		return nil, err
	}
	switch {
	case shim.SocketDir == "":
		n.ShimSocketDir = filepath.Join(defaults.DefaultStateDir, "s")
	case !filepath.IsAbs(shim.SocketDir):
		// containerd's shim manager refuses it too.
		return nil, invalid(path, fmt.Errorf("%s socket_dir %q is not absolute", shimURI, shim.SocketDir))
	default:
		n.ShimSocketDir = filepath.Clean(shim.SocketDir)
	}
	if n.CRIImages, err = n.pluginJSON(ctx, regs[criImagesURI]); err != nil {
		return nil, err
	}
	rt, err := n.pluginJSON(ctx, regs[criRuntimeURI])
	if err != nil {
		return nil, err
	}
	if n.CRIRuntime, err = n.completeRuntime(rt); err != nil {
		return nil, err
	}
	return n, nil
}

// DecodePlugin decodes the config table of plugin uri (e.g.
// "io.containerd.sandbox.controller.v1.berth") into v, a pointer to a
// TOML-tagged struct whose fields the table does not set keep v's values.
// Unknown keys are logged and ignored, as containerd does.
func (n *Node) DecodePlugin(ctx context.Context, uri string, v any) error {
	if _, err := n.cfg.Decode(ctx, uri, v); err != nil {
		return invalid(n.path, fmt.Errorf("plugins.%q: %w", uri, err))
	}
	return nil
}

// defaultConfig mirrors platformAgnosticDefaultConfig in containerd's
// (unexported) cmd/containerd/command: what containerd starts from before
// it reads the file.
func defaultConfig() *srvconfig.Config {
	return &srvconfig.Config{
		Version: version.ConfigVersion,
		Root:    defaults.DefaultRootDir,
		State:   defaults.DefaultStateDir,
		Imports: []string{defaults.DefaultConfigIncludePattern},
		Plugins: map[string]any{grpcURI: map[string]any{
			"address":               defaults.DefaultAddress,
			"max_recv_message_size": defaults.DefaultMaxRecvMsgSize,
			"max_send_message_size": defaults.DefaultMaxSendMsgSize,
		}},
	}
}

// applyOverrides mirrors applyFlags in containerd's cmd/containerd/command.
func applyOverrides(cfg *srvconfig.Config, o Overrides) error {
	for _, f := range []struct{ flag, dir *string }{{&o.Root, &cfg.Root}, {&o.State, &cfg.State}} {
		if *f.flag != "" {
			abs, err := filepath.Abs(*f.flag)
			if err != nil {
				return err
			}
			*f.dir = abs
		}
	}
	if o.Address != "" {
		g, ok := cfg.Plugins[grpcURI].(map[string]any)
		if !ok {
			g = map[string]any{}
		}
		g["address"] = o.Address
		cfg.Plugins[grpcURI] = g
	}
	return nil
}

// registrations returns the registrations whose defaults and migrations
// Load uses. Graph copies each Registration, but Config still points at
// the registered default, which must never be decoded into.
func registrations() (map[string]plugin.Registration, error) {
	want := map[string]bool{criRuntimeURI: true, criImagesURI: true, shimURI: true}
	regs := map[string]plugin.Registration{}
	for _, r := range registry.Graph(func(r *plugin.Registration) bool { return !want[r.URI()] }) {
		regs[r.URI()] = r
	}
	for uri := range want {
		if regs[uri].Config == nil {
			return nil, fmt.Errorf("containerd plugin %s is not registered: %w", uri, errdefs.ErrNotFound)
		}
	}
	return regs, nil
}

// pluginJSON decodes the file's table of reg over a deep copy of reg's
// default config (an internal CRI type, reached through reflection), as
// containerd decodes it over the default itself, and encodes the result.
func (n *Node) pluginJSON(ctx context.Context, reg plugin.Registration) ([]byte, error) {
	v := deepCopy(reflect.ValueOf(reg.Config)).Interface()
	if err := n.DecodePlugin(ctx, reg.URI(), v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// deepCopy copies v, sharing no pointer, slice, map or interface with it.
// (A TOML round trip would turn nil slices into empty ones, which CRI's
// Config() does not encode.) Unexported fields stay shallow: TOML decoding
// never writes them.
func deepCopy(v reflect.Value) reflect.Value {
	c := reflect.New(v.Type()).Elem()
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			c.Set(reflect.New(v.Type().Elem()))
			c.Elem().Set(deepCopy(v.Elem()))
		}
	case reflect.Interface:
		if !v.IsNil() {
			c.Set(deepCopy(v.Elem()))
		}
	case reflect.Struct:
		c.Set(v)
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				c.Field(i).Set(deepCopy(v.Field(i)))
			}
		}
	case reflect.Slice:
		if !v.IsNil() {
			c.Set(reflect.MakeSlice(v.Type(), v.Len(), v.Len()))
			for i := range v.Len() {
				c.Index(i).Set(deepCopy(v.Index(i)))
			}
		}
	case reflect.Map:
		if !v.IsNil() {
			c.Set(reflect.MakeMapWithSize(v.Type(), v.Len()))
			for it := v.MapRange(); it.Next(); {
				c.SetMapIndex(it.Key(), deepCopy(it.Value()))
			}
		}
	default:
		c.Set(v)
	}
	return c
}

// completeRuntime adds to the runtime config's JSON what CRI's runtime
// service adds before its Config() returns: the sandboxer default that
// ValidateRuntimeConfig fills in, and the fields of criconfig.Config that
// wrap the plugin's config (CRI's dirs beside containerd's).
func (n *Node) completeRuntime(b []byte) ([]byte, error) {
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	if c, ok := m["containerd"].(map[string]any); ok {
		rts, _ := c["runtimes"].(map[string]any)
		for _, r := range rts {
			if r, ok := r.(map[string]any); ok && r["sandboxer"] == "" {
				r["sandboxer"] = "podsandbox"
			}
		}
	}
	m["containerdRootDir"] = filepath.Clean(n.Root)
	m["containerdEndpoint"] = n.GRPCAddress
	m["rootDir"] = filepath.Join(n.Root, criDir)
	m["stateDir"] = filepath.Join(n.State, criDir)
	return json.Marshal(m)
}

// invalid names the file in a config error and classes it as
// InvalidArgument, for an operator to fix rather than a caller to retry.
func invalid(path string, err error) error {
	return fmt.Errorf("containerd config %s: %w (%w)", path, err, errdefs.ErrInvalidArgument)
}
