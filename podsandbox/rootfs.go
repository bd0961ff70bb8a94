package podsandbox

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BuiltinPauseImage is the image config of berth's built-in pause: its
// static binary at /pause, run as nobody, like the pause image's.
var BuiltinPauseImage = imagespec.ImageConfig{
	Entrypoint: []string{"/pause"},
	User:       "65535:65535",
}

// BuiltinPauseName names the built-in pause where an image name would go
// (the pause spec's image-name annotation, verbose status).
const BuiltinPauseName = "berth-builtin-pause"

// PrepareRootfs makes, under dir, the read-only rootfs every pod in
// built-in pause mode shares: the pause binary and the mount points of the
// pause spec, nothing else. Made once per containerd start, it replaces the
// pull, unpack and per-pod snapshot of a pause image. The mount points
// exist beforehand so that runc never writes into the shared directory.
// It returns the rootfs path.
func PrepareRootfs(dir, pauseBinary string) (string, error) {
	bin, err := os.ReadFile(pauseBinary)
	if err != nil {
		return "", fmt.Errorf("read pause binary: %w", err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"dev", "proc", "sys", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return "", fmt.Errorf("prepare pause rootfs: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "resolv.conf"), nil, 0o644); err != nil {
		return "", fmt.Errorf("prepare pause rootfs: %w", err)
	}
	// Replace the binary atomically: running pods keep the one they have.
	tmp := filepath.Join(rootfs, ".pause.new")
	if err := os.WriteFile(tmp, bin, 0o755); err != nil {
		return "", fmt.Errorf("install pause binary: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(rootfs, "pause")); err != nil {
		return "", fmt.Errorf("install pause binary: %w", err)
	}
	return rootfs, nil
}

// RootfsMounts is the mount of the built-in pause's shared rootfs, rootfs,
// bound read-only into a task's bundle.
func RootfsMounts(rootfs string) []mount.Mount {
	return []mount.Mount{{Type: "bind", Source: rootfs, Options: []string{"rbind", "ro"}}}
}
