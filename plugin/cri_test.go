package plugin

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/plugins"
	// Registers CRI's real runtime service, whose config berth decodes.
	_ "github.com/containerd/containerd/v2/plugins/cri/runtime"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/sirupsen/logrus"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/podsandbox"
)

// fakeCRIService stands in for a CRI service plugin: its Config returns
// a value with the JSON shape of CRI's config.
type fakeCRIService struct{ config any }

func (f fakeCRIService) Config() any { return f.config }

// noConfigService has no Config method.
type noConfigService struct{}

// argConfigService has a Config method berth cannot call.
type argConfigService struct{}

func (argConfigService) Config(string) any { return nil }

// fakeRuntimeConfig has the JSON shape of containerd's criconfig.Config.
type fakeRuntimeConfig struct {
	Containerd struct {
		DefaultRuntimeName string                     `json:"defaultRuntimeName"`
		Runtimes           map[string]fakeRuntimeInfo `json:"runtimes"`
	} `json:"containerd"`
	RestrictOOMScoreAdj     bool   `json:"restrictOOMScoreAdj"`
	EnableUnprivilegedPorts bool   `json:"enableUnprivilegedPorts"`
	EnableUnprivilegedICMP  bool   `json:"enableUnprivilegedICMP"`
	UnsetSeccompProfile     string `json:"unsetSeccompProfile"`
	RootDir                 string `json:"rootDir"`
	StateDir                string `json:"stateDir"`
	// Fields berth does not read.
	ContainerdEndpoint string `json:"containerdEndpoint"`
}

type fakeRuntimeInfo struct {
	Type           string            `json:"runtimeType"`
	Path           string            `json:"runtimePath"`
	PodAnnotations []string          `json:"PodAnnotations"`
	Snapshotter    string            `json:"snapshotter"`
	Options        map[string]string `json:"options"`
}

// fakeImageConfig has the JSON shape of containerd's criconfig.ImageConfig.
type fakeImageConfig struct {
	Snapshotter  string            `json:"snapshotter"`
	PinnedImages map[string]string `json:"pinned_images"`
}

const (
	testContainerdRoot  = "/var/lib/containerd"
	testContainerdState = "/run/containerd"
)

// testInitContext is the init context of berth's plugin, with CRI service
// plugins id -> instance already initialised.
func testInitContext(t *testing.T, services map[string]any) *plugin.InitContext {
	t.Helper()
	props := map[string]string{
		plugins.PropertyRootDir:  filepath.Join(testContainerdRoot, plugins.SandboxControllerPlugin.String()+"."+ID),
		plugins.PropertyStateDir: filepath.Join(testContainerdState, plugins.SandboxControllerPlugin.String()+"."+ID),
	}
	set := plugin.NewPluginSet()
	for id, svc := range services {
		r := plugin.Registration{
			Type:   plugins.CRIServicePlugin,
			ID:     id,
			InitFn: func(*plugin.InitContext) (any, error) { return svc, nil },
		}
		if err := set.Add(r.Init(plugin.NewContext(context.Background(), set, props))); err != nil {
			t.Fatal(err)
		}
	}
	return plugin.NewContext(context.Background(), set, props)
}

func TestLoadCRIConfig(t *testing.T) {
	full := fakeRuntimeConfig{
		RestrictOOMScoreAdj:     true,
		EnableUnprivilegedPorts: true,
		EnableUnprivilegedICMP:  true,
		UnsetSeccompProfile:     "runtime/default",
		RootDir:                 "/custom/cri-root",
		StateDir:                "/custom/cri-state",
		ContainerdEndpoint:      "/run/containerd/containerd.sock",
	}
	full.Containerd.DefaultRuntimeName = "runc"
	full.Containerd.Runtimes = map[string]fakeRuntimeInfo{
		"runc": {Type: "io.containerd.runc.v2"},
		"berth": {
			Type:           "io.containerd.runc.v2",
			Path:           "/usr/local/bin/containerd-shim-runc-v2",
			PodAnnotations: []string{"io.example/*"},
			Snapshotter:    "native",
			Options:        map[string]string{"SystemdCgroup": "true"},
		},
	}

	for _, tc := range []struct {
		name      string
		runtime   fakeRuntimeConfig
		images    fakeImageConfig
		want      controller.CRIConfig
		wantRoot  string
		wantState string
	}{
		{
			name:    "full",
			runtime: full,
			images: fakeImageConfig{
				Snapshotter:  "overlayfs",
				PinnedImages: map[string]string{"sandbox": "example.com/pause:1"},
			},
			want: controller.CRIConfig{
				SandboxImage:       "example.com/pause:1",
				Snapshotter:        "overlayfs",
				DefaultRuntimeName: "runc",
				Runtimes: map[string]controller.Runtime{
					"runc": {Type: "io.containerd.runc.v2"},
					"berth": {
						Type:           "io.containerd.runc.v2",
						Path:           "/usr/local/bin/containerd-shim-runc-v2",
						PodAnnotations: []string{"io.example/*"},
						Snapshotter:    "native",
					},
				},
				RuntimeSettings: podsandbox.RuntimeSettings{
					RestrictOOMScoreAdj:     true,
					EnableUnprivilegedPorts: true,
					EnableUnprivilegedICMP:  true,
					UnsetSeccompProfile:     "runtime/default",
				},
			},
			wantRoot:  "/custom/cri-root",
			wantState: "/custom/cri-state",
		},
		{
			name: "defaults",
			want: controller.CRIConfig{
				SandboxImage: "registry.k8s.io/pause:3.10.2",
				Runtimes:     map[string]controller.Runtime{},
			},
			wantRoot:  filepath.Join(testContainerdRoot, "io.containerd.grpc.v1.cri"),
			wantState: filepath.Join(testContainerdState, "io.containerd.grpc.v1.cri"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ic := testInitContext(t, map[string]any{
				"runtime": fakeCRIService{tc.runtime},
				"images":  fakeCRIService{tc.images},
			})
			cri, err := loadCRIConfig(ic)
			got, root, state := cri.Config, cri.Root, cri.State
			if err != nil {
				t.Fatalf("loadCRIConfig: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("config = %+v, want %+v", got, tc.want)
			}
			if root != tc.wantRoot || state != tc.wantState {
				t.Errorf("dirs = %q, %q, want %q, %q", root, state, tc.wantRoot, tc.wantState)
			}
		})
	}
}

func TestLoadCRIConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		services map[string]any
		wantErr  string
		is       func(error) bool
	}{
		{
			name:     "no runtime service",
			services: map[string]any{"images": fakeCRIService{fakeImageConfig{}}},
			wantErr:  "CRI runtime service",
			is:       func(err error) bool { return errors.Is(err, plugin.ErrPluginNotFound) },
		},
		{
			name:     "no images service",
			services: map[string]any{"runtime": fakeCRIService{fakeRuntimeConfig{}}},
			wantErr:  "CRI images service",
			is:       func(err error) bool { return errors.Is(err, plugin.ErrPluginNotFound) },
		},
		{
			name: "no Config method",
			services: map[string]any{
				"runtime": noConfigService{},
				"images":  fakeCRIService{fakeImageConfig{}},
			},
			wantErr: "has no Config() method",
		},
		{
			name: "Config method with arguments",
			services: map[string]any{
				"runtime": fakeCRIService{fakeRuntimeConfig{}},
				"images":  argConfigService{},
			},
			wantErr: "has no Config() method",
		},
		{
			name: "config that does not encode",
			services: map[string]any{
				"runtime": fakeCRIService{func() {}},
				"images":  fakeCRIService{fakeImageConfig{}},
			},
			wantErr: "encode CRI runtime config",
		},
		{
			name: "config of the wrong shape",
			services: map[string]any{
				"runtime": fakeCRIService{map[string]any{"containerd": "not an object"}},
				"images":  fakeCRIService{fakeImageConfig{}},
			},
			wantErr: "decode CRI runtime config",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadCRIConfig(testInitContext(t, tc.services))
			if err == nil {
				t.Fatal("loadCRIConfig succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("loadCRIConfig error %q does not mention %q", err, tc.wantErr)
			}
			if tc.is != nil && !tc.is(err) {
				t.Errorf("loadCRIConfig error %v has the wrong kind", err)
			}
		})
	}
}

// TestLoadCRIConfigRealRuntime decodes the config of containerd's own CRI
// runtime service, so that a change of its JSON shape is caught here.
func TestLoadCRIConfigRealRuntime(t *testing.T) {
	var reg *plugin.Registration
	for _, r := range registry.Graph(func(*plugin.Registration) bool { return false }) {
		if r.Type == plugins.CRIServicePlugin && r.ID == "runtime" {
			reg = &r
			break
		}
	}
	if reg == nil {
		t.Fatal("CRI runtime service not registered")
	}

	base := t.TempDir()
	props := map[string]string{
		plugins.PropertyRootDir:  filepath.Join(base, "root", "io.containerd.cri.v1.runtime"),
		plugins.PropertyStateDir: filepath.Join(base, "state", "io.containerd.cri.v1.runtime"),
	}
	set := plugin.NewPluginSet()
	// The service logs its whole config at info level.
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	ric := plugin.NewContext(log.WithLogger(context.Background(), logrus.NewEntry(quiet)), set, props)
	ric.Config = reg.Config
	p := reg.Init(ric)
	if _, err := p.Instance(); err != nil {
		t.Fatalf("init CRI runtime service: %v", err)
	}
	if err := set.Add(p); err != nil {
		t.Fatal(err)
	}
	images := plugin.Registration{
		Type: plugins.CRIServicePlugin,
		ID:   "images",
		InitFn: func(*plugin.InitContext) (any, error) {
			return fakeCRIService{fakeImageConfig{Snapshotter: "overlayfs"}}, nil
		},
	}
	if err := set.Add(images.Init(plugin.NewContext(context.Background(), set, props))); err != nil {
		t.Fatal(err)
	}

	berthProps := map[string]string{
		plugins.PropertyRootDir:  filepath.Join(base, "root", "io.containerd.sandbox.controller.v1.berth"),
		plugins.PropertyStateDir: filepath.Join(base, "state", "io.containerd.sandbox.controller.v1.berth"),
	}
	cri, err := loadCRIConfig(plugin.NewContext(context.Background(), set, berthProps))
	cfg, root, state := cri.Config, cri.Root, cri.State
	if err != nil {
		t.Fatalf("loadCRIConfig: %v", err)
	}
	if cfg.DefaultRuntimeName != "runc" {
		t.Errorf("default runtime = %q, want runc", cfg.DefaultRuntimeName)
	}
	if rt, ok := cfg.Runtimes["runc"]; !ok || rt.Type != plugins.RuntimeRuncV2 {
		t.Errorf("runtimes = %+v, want runc of type %s", cfg.Runtimes, plugins.RuntimeRuncV2)
	}
	if cfg.SandboxImage != "registry.k8s.io/pause:3.10.2" {
		t.Errorf("sandbox image = %q, want %q", cfg.SandboxImage, "registry.k8s.io/pause:3.10.2")
	}
	// Both CRI and berth derive the directories from containerd's.
	if want := filepath.Join(base, "root", "io.containerd.grpc.v1.cri"); root != want {
		t.Errorf("CRI root = %q, want %q", root, want)
	}
	if want := filepath.Join(base, "state", "io.containerd.grpc.v1.cri"); state != want {
		t.Errorf("CRI state = %q, want %q", state, want)
	}
}
