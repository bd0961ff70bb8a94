// containerd-shim-berth-v2 is the runc shim with berth's task service
// (package shimtask) and manager (package shimmanager): a drop-in for
// containerd-shim-runc-v2, selected with a runtime handler's runtime_path,
// that answers containerd's Pids calls without running runc, and does not
// run runc in its delete command for a container runc no longer has.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/berth-dev/berth/shimmanager"
	"github.com/berth-dev/berth/shimtask"
)

// init registers the task service as the runc shim's own plugin does
// (cmd/containerd-shim-runc-v2/task/plugin), wrapped.
func init() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			runc, err := task.NewTaskService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			return shimtask.New(runc, shimtask.HostCgroups{}), nil
		},
	})
}

func main() {
	// The runc shim's manager: same runtime name, socket grouping and
	// start command, so containerd and berth's shared shims treat this
	// shim as the runc shim.
	shim.RunShim(context.Background(), shimmanager.New(manager.NewShimManager("io.containerd.runc.v2")))
}
