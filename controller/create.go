package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/store"
)

// criMetadataExtension is the sandbox record extension where CRI keeps its
// sandbox metadata; it is the only place the runtime handler is passed.
const criMetadataExtension = "metadata"

// abandonedAfter is how long a sandbox may stay created but never started
// before berth checks whether CRI gave up on it.
const abandonedAfter = 2 * time.Minute

// criMetadata mirrors the fields berth reads from CRI's metadata extension.
// CRI's own type is internal, and registering its type URL with typeurl
// would clash with CRI's registration, so the JSON is decoded directly.
type criMetadata struct {
	Metadata struct {
		RuntimeHandler string
	}
}

// Create records the sandbox CRI is about to start. It has no side effects
// outside berth's memory.
func (c *Controller) Create(ctx context.Context, info sandbox.Sandbox, opts ...sandbox.CreateOpt) error {
	var o sandbox.CreateOptions
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return fmt.Errorf("sandbox %q: create option: %w", info.ID, err)
		}
	}
	if info.ID == "" {
		return fmt.Errorf("sandbox id is empty: %w", errdefs.ErrInvalidArgument)
	}
	if o.Options == nil {
		return fmt.Errorf("sandbox %q: no PodSandboxConfig in create options: %w", info.ID, errdefs.ErrInvalidArgument)
	}
	var cfg runtimeapi.PodSandboxConfig
	if err := typeurl.UnmarshalTo(o.Options, &cfg); err != nil {
		return fmt.Errorf("sandbox %q: decode PodSandboxConfig: %w: %w", info.ID, errdefs.ErrInvalidArgument, err)
	}
	handler, err := runtimeHandler(info)
	if err != nil {
		return fmt.Errorf("sandbox %q: %w", info.ID, err)
	}
	c.sweepAbandoned(ctx)
	return c.store.Add(store.NewSandbox(store.Metadata{
		ID:             info.ID,
		RuntimeHandler: handler,
		NetNSPath:      o.NetNSPath,
		Config:         &cfg,
		Runtime:        info.Runtime,
		RecordedAt:     time.Now(),
	}))
}

// runtimeHandler reads the runtime handler from CRI's metadata extension. A
// sandbox made through the sandbox API without CRI has none and gets CRI's
// default runtime.
func runtimeHandler(info sandbox.Sandbox) (string, error) {
	ext, ok := info.Extensions[criMetadataExtension]
	if !ok || ext == nil {
		return "", nil
	}
	var md criMetadata
	if err := json.Unmarshal(ext.GetValue(), &md); err != nil {
		return "", fmt.Errorf("decode CRI metadata extension: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return md.Metadata.RuntimeHandler, nil
}

// sweepAbandoned forgets sandboxes CRI created but never started and has
// since dropped. CRI calls no controller method when RunPodSandbox fails
// between Create and Start (the pause image pull, for one), so without this
// their entries would stay in memory forever. They hold nothing else.
func (c *Controller) sweepAbandoned(ctx context.Context) {
	for _, sb := range c.store.List() {
		if sb.Status().State != store.StateCreated || time.Since(sb.RecordedAt) < abandonedAfter {
			continue
		}
		if _, err := c.client.SandboxStore().Get(ctx, sb.ID); !errdefs.IsNotFound(err) {
			continue
		}
		unlock, err := c.locks.lock(ctx, sb.ID)
		if err != nil {
			return
		}
		if sb.Status().State == store.StateCreated {
			c.forget(sb)
			log.G(ctx).WithField("sandbox_id", sb.ID).Info("forgot sandbox that was created but never started")
		}
		unlock()
	}
}

// forget removes a sandbox from the store. Waiters of a sandbox that never
// started are woken with an unknown exit; for any other, Exit already ran.
func (c *Controller) forget(sb *store.Sandbox) {
	sb.Exit(unknownExitCode, time.Now())
	sb.SetDeleted()
	c.store.Remove(sb.ID)
	clearFailpoints(sb.ID)
}
