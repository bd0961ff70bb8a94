package setup

import (
	"cmp"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containerd/errdefs"

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
			Sandboxer      string   `json:"sandboxer"`
			NoPausePull    bool     `json:"disablePauseImagePull"`
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

// CRI is what berth reads of CRI's config.
type CRI struct {
	Config controller.CRIConfig
	// Handlers are the runtime handlers as CRI hands their pods out.
	Handlers map[string]Handler
	// Root and State are CRI's directories, where it keeps each sandbox's
	// files.
	Root, State string
}

// Handler is how CRI hands a runtime handler's pods out, which berth checks
// its per-handler settings against.
type Handler struct {
	// Sandboxer is the sandbox controller that runs the handler's pods.
	Sandboxer string
	// PullsPause says whether CRI pulls the pause image before it hands
	// a pod of the handler to its sandboxer.
	PullsPause bool
}

// criDefaultSandboxer is the sandboxer of a runtime handler that names
// none (containerd v2.4's ValidateRuntimeConfig).
const criDefaultSandboxer = "podsandbox"

// DecodeCRI decodes CRI's runtime and image configs, as the JSON of CRI's
// config types, for a containerd whose root and state directories are
// root and state.
func DecodeCRI(runtimeJSON, imagesJSON []byte, root, state string) (CRI, error) {
	var rc criRuntimeConfig
	if err := json.Unmarshal(runtimeJSON, &rc); err != nil {
		return CRI{}, fmt.Errorf("decode CRI runtime config: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	var imc criImageConfig
	if err := json.Unmarshal(imagesJSON, &imc); err != nil {
		return CRI{}, fmt.Errorf("decode CRI images config: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	cfg := controller.CRIConfig{
		SandboxImage:       imc.PinnedImages["sandbox"],
		Snapshotter:        imc.Snapshotter,
		DefaultRuntimeName: rc.Containerd.DefaultRuntimeName,
		Runtimes:           map[string]controller.Runtime{},
		RuntimeSettings:    rc.RuntimeSettings,
	}
	handlers := map[string]Handler{}
	if cfg.SandboxImage == "" {
		cfg.SandboxImage = criDefaultSandboxImage
	}
	for name, r := range rc.Containerd.Runtimes {
		cfg.Runtimes[name] = controller.Runtime{
			Type: r.Type, Path: r.Path, Snapshotter: r.Snapshotter, PodAnnotations: r.PodAnnotations,
		}
		handlers[name] = Handler{Sandboxer: cmp.Or(r.Sandboxer, criDefaultSandboxer), PullsPause: !r.NoPausePull}
	}
	// CRI's directories are named after CRI's gRPC plugin under
	// containerd's; this is how containerd's CRI runtime plugin derives
	// them too.
	cri := CRI{Config: cfg, Handlers: handlers, Root: rc.RootDir, State: rc.StateDir}
	if cri.Root == "" {
		cri.Root = filepath.Join(root, "io.containerd.grpc.v1.cri")
	}
	if cri.State == "" {
		cri.State = filepath.Join(state, "io.containerd.grpc.v1.cri")
	}
	return cri, nil
}
