package plugin

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"

	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/podsandbox"
)

// criDefaultSandboxImage is CRI's pause image when pinned_images.sandbox is
// unset (containerd v2.4).
const criDefaultSandboxImage = "registry.k8s.io/pause:3.10.2"

// criRuntimeConfig mirrors the JSON of CRI's runtime config that berth
// reads. CRI's config types are internal to containerd, but they carry JSON
// tags, so a JSON round trip reaches them through public API only.
type criRuntimeConfig struct {
	Containerd struct {
		DefaultRuntimeName string `json:"defaultRuntimeName"`
		Runtimes           map[string]struct {
			Type           string   `json:"runtimeType"`
			Path           string   `json:"runtimePath"`
			PodAnnotations []string `json:"PodAnnotations"`
			Snapshotter    string   `json:"snapshotter"`
		} `json:"runtimes"`
	} `json:"containerd"`
	podsandbox.RuntimeSettings
	RootDir  string `json:"rootDir"`
	StateDir string `json:"stateDir"`
}

// criImageConfig mirrors the JSON of CRI's image config that berth reads.
type criImageConfig struct {
	Snapshotter  string            `json:"snapshotter"`
	PinnedImages map[string]string `json:"pinned_images"`
}

// loadCRIConfig reads CRI's runtime and image config from CRI's service
// plugins, and returns it with CRI's root and state directories.
func loadCRIConfig(ic *plugin.InitContext) (controller.CRIConfig, string, string, error) {
	var rc criRuntimeConfig
	if err := pluginConfig(ic, "runtime", &rc); err != nil {
		return controller.CRIConfig{}, "", "", err
	}
	var imc criImageConfig
	if err := pluginConfig(ic, "images", &imc); err != nil {
		return controller.CRIConfig{}, "", "", err
	}
	cfg := controller.CRIConfig{
		SandboxImage:       imc.PinnedImages["sandbox"],
		Snapshotter:        imc.Snapshotter,
		DefaultRuntimeName: rc.Containerd.DefaultRuntimeName,
		Runtimes:           map[string]controller.Runtime{},
		RuntimeSettings:    rc.RuntimeSettings,
	}
	if cfg.SandboxImage == "" {
		cfg.SandboxImage = criDefaultSandboxImage
	}
	for name, r := range rc.Containerd.Runtimes {
		cfg.Runtimes[name] = controller.Runtime{
			Type: r.Type, Path: r.Path, Snapshotter: r.Snapshotter, PodAnnotations: r.PodAnnotations,
		}
	}
	// CRI's directories sit beside berth's, named after CRI's gRPC plugin;
	// this is how containerd's CRI runtime plugin derives them too.
	root, state := rc.RootDir, rc.StateDir
	if root == "" {
		root = filepath.Join(filepath.Dir(ic.Properties[plugins.PropertyRootDir]), "io.containerd.grpc.v1.cri")
	}
	if state == "" {
		state = filepath.Join(filepath.Dir(ic.Properties[plugins.PropertyStateDir]), "io.containerd.grpc.v1.cri")
	}
	return cfg, root, state, nil
}

// pluginConfig decodes the config of CRI service plugin id into v. The
// plugin's Config method returns an internal type, so it is called through
// reflection and its JSON decoded into berth's mirror.
func pluginConfig(ic *plugin.InitContext, id string, v any) error {
	p, err := ic.GetByID(plugins.CRIServicePlugin, id)
	if err != nil {
		return fmt.Errorf("CRI %s service: %w", id, err)
	}
	m := reflect.ValueOf(p).MethodByName("Config")
	if !m.IsValid() || m.Type().NumIn() != 0 || m.Type().NumOut() != 1 {
		return fmt.Errorf("CRI %s service %T has no Config() method", id, p)
	}
	b, err := json.Marshal(m.Call(nil)[0].Interface())
	if err != nil {
		return fmt.Errorf("encode CRI %s config: %w", id, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode CRI %s config: %w", id, err)
	}
	return nil
}
