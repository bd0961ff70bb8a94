package controller

import (
	"context"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/podsandbox"
)

// pause is what a pause container is made from: an image, or berth's
// built-in pause.
type pause struct {
	// image is nil for the built-in pause.
	image  containerd.Image
	config imagespec.ImageConfig
	// name is the image's name, ref the name CRI's config gives it, which
	// may be shorter: the built-in controller puts that in the pause spec.
	name, ref string
	// rootfs is the built-in pause's rootfs mount, nil for an image, whose
	// snapshot the task mounts.
	rootfs []mount.Mount
}

// pauseSource returns what the sandbox's pause container is made from.
func (c *Controller) pauseSource(ctx context.Context, builtin bool, snapshotter string) (pause, error) {
	if builtin {
		// Bound read-only into each pod's bundle by the shim: the bundle is
		// where a pod's user namespace can reach its rootfs, and berth's
		// own directory is not.
		return pause{
			config: podsandbox.BuiltinPauseImage,
			name:   podsandbox.BuiltinPauseName, ref: podsandbox.BuiltinPauseName,
			rootfs: podsandbox.RootfsMounts(c.config.BuiltinPause.Rootfs),
		}, nil
	}
	image, err := c.pauseImage(ctx, snapshotter)
	if err != nil {
		return pause{}, err
	}
	imageSpec, err := image.Spec(ctx)
	if err != nil {
		return pause{}, fmt.Errorf("read pause image config: %w", err)
	}
	return pause{image: image, config: imageSpec.Config, name: image.Name(), ref: c.config.CRI.SandboxImage}, nil
}

// pauseImage returns the pause image CRI pinned, unpacked for snapshotter.
// CRI pulls it before Start unless the handler disables that; berth does
// not pull.
func (c *Controller) pauseImage(ctx context.Context, snapshotter string) (containerd.Image, error) {
	ref := c.config.CRI.SandboxImage
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("pause image %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	image, err := c.client.GetImage(ctx, named.String())
	if err != nil {
		return nil, fmt.Errorf("pause image %q is not present: %w", named, err)
	}
	unpacked, err := image.IsUnpacked(ctx, snapshotter)
	if err != nil {
		return nil, fmt.Errorf("check pause image %q is unpacked: %w", named, err)
	}
	if !unpacked {
		if err := image.Unpack(ctx, snapshotter); err != nil {
			return nil, fmt.Errorf("unpack pause image %q: %w", named, err)
		}
	}
	return image, nil
}
