// Command containerd is containerd v2 with all of its builtin plugins plus
// berth's sandbox controller. It holds no logic of its own: berth registers
// itself through the blank import of its plugin package.
package main

import (
	"context"
	"fmt"
	"os"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
	"github.com/containerd/containerd/v2/cmd/containerd/command"

	_ "github.com/berth-dev/berth/plugin"
)

func main() {
	if err := command.App().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "containerd:", err)
		os.Exit(1)
	}
}
