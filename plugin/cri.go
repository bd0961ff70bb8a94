package plugin

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"

	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"

	"github.com/berth-dev/berth/setup"
)

// loadCRIConfig reads CRI's runtime and image config from CRI's service
// plugins, with CRI's root and state directories.
func loadCRIConfig(ic *plugin.InitContext) (setup.CRI, error) {
	runtime, err := pluginConfig(ic, "runtime")
	if err != nil {
		return setup.CRI{}, err
	}
	images, err := pluginConfig(ic, "images")
	if err != nil {
		return setup.CRI{}, err
	}
	// berth's directories are named after its plugin under containerd's.
	return setup.DecodeCRI(runtime, images, filepath.Dir(ic.Properties[plugins.PropertyRootDir]), filepath.Dir(ic.Properties[plugins.PropertyStateDir]))
}

// pluginConfig is the config of CRI service plugin id, as JSON. The
// plugin's Config method returns an internal type, so it is called through
// reflection and its JSON decoded into berth's mirror (setup.DecodeCRI).
func pluginConfig(ic *plugin.InitContext, id string) ([]byte, error) {
	p, err := ic.GetByID(plugins.CRIServicePlugin, id)
	if err != nil {
		return nil, fmt.Errorf("CRI %s service: %w", id, err)
	}
	m := reflect.ValueOf(p).MethodByName("Config")
	if !m.IsValid() || m.Type().NumIn() != 0 || m.Type().NumOut() != 1 {
		return nil, fmt.Errorf("CRI %s service %T has no Config() method", id, p)
	}
	b, err := json.Marshal(m.Call(nil)[0].Interface())
	if err != nil {
		return nil, fmt.Errorf("encode CRI %s config: %w", id, err)
	}
	return b, nil
}
