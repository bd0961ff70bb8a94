package controller

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/typeurl/v2"

	"github.com/berth-dev/berth/store"
)

// runcRoot is the runc shim's default state root; it adds the namespace.
const runcRoot = "/run/containerd/runc"

// deleteRuncContainer removes a pause container that runc made but the runc
// shim lost track of. When containerd dies while the shim creates the
// container, runc has made it (its init process waits to be started) but
// the shim never recorded it; deleting the task through containerd then
// ends the shim and leaves runc's container and its init process behind
// for good. runc still knows the container, so berth asks runc, as the shim
// would, to delete it. Other runtimes are left alone.
func deleteRuncContainer(ctx context.Context, md store.Metadata) error {
	if !strings.HasPrefix(md.Runtime.Name, "io.containerd.runc.") {
		return nil
	}
	binary, root := "runc", runcRoot
	if md.Runtime.Options != nil {
		var opts runcoptions.Options
		if err := typeurl.UnmarshalTo(md.Runtime.Options, &opts); err != nil {
			return fmt.Errorf("decode runc options: %w", err)
		}
		if opts.BinaryName != "" {
			binary = opts.BinaryName
		}
		if opts.Root != "" {
			root = opts.Root
		}
	}
	out, err := exec.CommandContext(ctx, binary, "--root", filepath.Join(root, Namespace), "delete", "--force", md.ID).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("does not exist")) {
		return fmt.Errorf("runc delete %s: %w: %s", md.ID, err, bytes.TrimSpace(out))
	}
	return nil
}
