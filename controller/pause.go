package controller

import (
	"context"
	"fmt"
	"slices"
	"sync"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/podsandbox"
)

// pause is what a pause container is made from: an image, or berth's
// built-in pause.
type pause struct {
	// image is nil for the built-in pause.
	image containerd.Image
	// unpacked is the image as unpacked for the pod's snapshotter.
	unpacked unpackedImage
	// name is the image's name, ref the name CRI's config gives it, which
	// may be shorter: the built-in controller puts that in the pause spec.
	name, ref string
	// rootfs is the built-in pause's rootfs mount, nil for an image, whose
	// snapshot the task mounts.
	rootfs []mount.Mount
}

// unpackedImage is what a pause container needs of its image, unpacked for
// a snapshotter: its config, and the chain ID of its rootfs, the committed
// snapshot the pause's own is prepared from.
type unpackedImage struct {
	target  digest.Digest
	config  imagespec.ImageConfig
	chainID string
}

// pauseImages remembers the pause image as last unpacked for each
// snapshotter, so that a Start reads the image's index, manifest and config
// once, not each time: three blobs, two reads each, and a Stat of its
// snapshot, which are round trips to containerd when berth runs as berthd.
// An entry holds while the image's target is the same: the snapshot of an
// image is kept while the image is (its config's garbage collection label
// names it), and one removed by hand is found when preparing from it fails
// (withPauseSnapshot).
type pauseImages struct {
	mu sync.Mutex
	// unpacked is, by snapshotter, the image last found unpacked there.
	unpacked map[string]unpackedImage
}

func (p *pauseImages) get(snapshotter string, target digest.Digest) (unpackedImage, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	u, ok := p.unpacked[snapshotter]
	return u, ok && u.target == target
}

func (p *pauseImages) put(snapshotter string, u unpackedImage) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.unpacked == nil {
		p.unpacked = map[string]unpackedImage{}
	}
	p.unpacked[snapshotter] = u
}

func (p *pauseImages) forget(snapshotter string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.unpacked, snapshotter)
}

// pauseSource returns what the sandbox's pause container is made from.
func (c *Controller) pauseSource(ctx context.Context, builtin bool, snapshotter string) (pause, error) {
	if builtin {
		// Bound read-only into each pod's bundle by the shim: the bundle is
		// where a pod's user namespace can reach its rootfs, and berth's
		// own directory is not.
		return pause{
			unpacked: unpackedImage{config: podsandbox.BuiltinPauseImage},
			name:     podsandbox.BuiltinPauseName, ref: podsandbox.BuiltinPauseName,
			rootfs: podsandbox.RootfsMounts(c.config.BuiltinPause.Rootfs),
		}, nil
	}
	ref := c.config.CRI.SandboxImage
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return pause{}, fmt.Errorf("pause image %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	// CRI pulls the image before Start unless the handler disables that;
	// berth does not pull.
	image, err := c.client.GetImage(ctx, named.String())
	if err != nil {
		return pause{}, fmt.Errorf("pause image %q is not present: %w", named, err)
	}
	u, ok := c.pauseImages.get(snapshotter, image.Target().Digest)
	if !ok {
		if u, err = c.unpackPause(ctx, image, snapshotter); err != nil {
			return pause{}, err
		}
	}
	return pause{image: image, unpacked: u, name: image.Name(), ref: ref}, nil
}

// unpackPause unpacks the pause image for snapshotter if it is not, reads
// what a pause container needs of it, and remembers that.
func (c *Controller) unpackPause(ctx context.Context, image containerd.Image, snapshotter string) (unpackedImage, error) {
	unpacked, err := image.IsUnpacked(ctx, snapshotter)
	if err != nil {
		return unpackedImage{}, fmt.Errorf("check pause image %q is unpacked: %w", image.Name(), err)
	}
	if !unpacked {
		if err := image.Unpack(ctx, snapshotter); err != nil {
			return unpackedImage{}, fmt.Errorf("unpack pause image %q: %w", image.Name(), err)
		}
	}
	diffIDs, err := image.RootFS(ctx)
	if err != nil {
		return unpackedImage{}, fmt.Errorf("read pause image %q rootfs: %w", image.Name(), err)
	}
	spec, err := image.Spec(ctx)
	if err != nil {
		return unpackedImage{}, fmt.Errorf("read pause image %q config: %w", image.Name(), err)
	}
	u := unpackedImage{target: image.Target().Digest, config: spec.Config, chainID: identity.ChainID(diffIDs).String()}
	c.pauseImages.put(snapshotter, u)
	return u, nil
}

// withPauseSnapshot prepares sandbox id's rootfs snapshot from the pause
// image, as containerd.WithNewSnapshot does but from what berth knows of
// the image. A pod with a user namespace of its own is left to
// WithNewSnapshot: its snapshot may need a parent remapped to its IDs.
func (c *Controller) withPauseSnapshot(id string, p startPlan, opts ...snapshots.Opt) containerd.NewContainerOpts {
	if len(p.spec.SnapshotOpts) > 0 {
		return containerd.WithNewSnapshot(id, p.pause.image, slices.Concat(p.spec.SnapshotOpts, opts)...)
	}
	return func(ctx context.Context, _ *containerd.Client, ctr *containers.Container) error {
		sn := c.client.SnapshotService(p.snapshotter)
		_, err := sn.Prepare(ctx, id, p.pause.unpacked.chainID, opts...)
		if errdefs.IsNotFound(err) {
			// The image's snapshot was removed behind berth's back: unpack
			// it again.
			log.G(ctx).WithError(err).WithField("snapshotter", p.snapshotter).Warn("pause image snapshot is gone; unpacking the image again")
			c.pauseImages.forget(p.snapshotter)
			var u unpackedImage
			if u, err = c.unpackPause(ctx, p.pause.image, p.snapshotter); err != nil {
				return err
			}
			_, err = sn.Prepare(ctx, id, u.chainID, opts...)
		}
		if err != nil {
			return fmt.Errorf("prepare pause snapshot: %w", err)
		}
		ctr.Snapshotter, ctr.SnapshotKey, ctr.Image = p.snapshotter, id, p.pause.name
		return nil
	}
}
