package setup

import (
	"bytes"
	"os"
	"reflect"
	"regexp"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// tomlBlock is a TOML sample of the README.
var tomlBlock = regexp.MustCompile("(?s)```toml\n(.*?)```")

// readmeRuntime is what a CRI runtime handler sample may set: the keys of
// containerd v2.4's CRI runtime config the README uses.
type readmeRuntime struct {
	RuntimeType           string         `toml:"runtime_type"`
	RuntimePath           string         `toml:"runtime_path"`
	Sandboxer             string         `toml:"sandboxer"`
	Snapshotter           string         `toml:"snapshotter"`
	PodAnnotations        []string       `toml:"pod_annotations"`
	DisablePauseImagePull bool           `toml:"disable_pause_image_pull"`
	Options               map[string]any `toml:"options"`
}

// TestReadmeTOML parses every TOML sample of the README and checks that
// each key lands where the text says: berth's section decodes strictly
// into Config (a key under the wrong table header is unknown there), every
// runtime handler strictly into the keys CRI knows, and the configuration
// reference, which sets every key, shows the defaults.
func TestReadmeTOML(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := tomlBlock.FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("no TOML samples in the README")
	}
	sawReference := false
	for i, b := range blocks {
		var raw map[string]any
		if err := toml.Unmarshal(b[1], &raw); err != nil {
			t.Errorf("sample %d is not TOML: %v\n%s", i, err, b[1])
			continue
		}
		plugins, _ := raw["plugins"].(map[string]any)
		if section, ok := plugins["io.containerd.sandbox.controller.v1.berth"].(map[string]any); ok {
			cfg, err := decodeSection(section, DefaultConfig())
			if err != nil {
				t.Errorf("sample %d: berth's section: %v\n%s", i, err, b[1])
			} else if len(section) == reflect.TypeOf(Config{}).NumField() {
				sawReference = true
				if !reflect.DeepEqual(cfg, DefaultConfig()) {
					t.Errorf("sample %d sets every key but not to the defaults: %+v", i, cfg)
				}
			}
		}
		cri, _ := plugins["io.containerd.cri.v1.runtime"].(map[string]any)
		containerd, _ := cri["containerd"].(map[string]any)
		runtimes, _ := containerd["runtimes"].(map[string]any)
		for name, r := range runtimes {
			if _, err := decodeSection(r.(map[string]any), &readmeRuntime{}); err != nil {
				t.Errorf("sample %d: runtime handler %s: %v", i, name, err)
			}
		}
	}
	if !sawReference {
		t.Error("no sample sets every key of berth's section: the configuration reference is incomplete")
	}
}

// decodeSection decodes a parsed TOML table into v strictly, as containerd
// decodes a plugin's section.
func decodeSection[T any](section map[string]any, v T) (T, error) {
	b, err := toml.Marshal(section)
	if err != nil {
		return v, err
	}
	return v, toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields().Decode(v)
}
