package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/store"
)

// criMetadataExtension is the sandbox record extension where CRI keeps its
// sandbox metadata; it is the only place the runtime handler is passed.
const criMetadataExtension = "metadata"

// abandonedAfter is how long a sandbox may stay created but never started
// before berth checks whether CRI gave up on it.
const abandonedAfter = 2 * time.Minute

// abandonedLookupTimeout bounds the check's lookup of CRI's record, made
// with the sandbox's lock held: a containerd that does not answer must not
// hold a Start of the sandbox.
const abandonedLookupTimeout = 10 * time.Second

// criMetadata mirrors CRI's metadata extension, and criSandboxMetadata the
// fields berth reads of its Metadata. CRI's own type is internal, and
// registering its type URL with typeurl would clash with CRI's
// registration, so the JSON is decoded directly.
type criMetadata struct {
	Metadata json.RawMessage
}

type criSandboxMetadata struct {
	RuntimeHandler string
	CNIResult      json.RawMessage
}

// Create records the sandbox CRI is about to start, after checking that it
// can ever run: a pod config that cannot fails here, with an error naming
// the field, before anything is made for it. It has no side effects
// outside berth's memory.
func (c *Controller) Create(ctx context.Context, info sandbox.Sandbox, opts ...sandbox.CreateOpt) error {
	var o sandbox.CreateOptions
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return fmt.Errorf("create option: %w", err)
		}
	}
	if err := c.awaitRecovery(ctx); err != nil {
		return err
	}
	// The ID names berth's directories and containerd's objects.
	if err := identifiers.Validate(info.ID); err != nil {
		return fmt.Errorf("sandbox id: %w", err)
	}
	if o.Options == nil {
		return fmt.Errorf("no PodSandboxConfig in create options: %w", errdefs.ErrInvalidArgument)
	}
	var cfg runtimeapi.PodSandboxConfig
	if err := typeurl.UnmarshalTo(o.Options, &cfg); err != nil {
		return fmt.Errorf("decode PodSandboxConfig: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	md := store.Metadata{
		ID:        info.ID,
		NetNSPath: o.NetNSPath,
		Config:    &cfg,
		Runtime:   sandbox.RuntimeOpts{Name: info.Runtime.Name, Options: present(info.Runtime.Options)},
	}
	if err := withCRIMetadata(&md, info); err != nil {
		return err
	}
	if err := c.runnable(md); err != nil {
		return err
	}
	sb := store.NewSandbox(md)
	if err := c.store.Add(sb); err != nil {
		return err
	}
	c.forgetIfAbandoned(ctx, sb.ID)
	return nil
}

// runnable says why berth cannot run a sandbox: its pod config, its
// handler, or berth's own config.
func (c *Controller) runnable(md store.Metadata) error {
	if err := c.config.ConfigErr; err != nil {
		return fmt.Errorf("berth's config is invalid, so it runs no new sandboxes: %w: %w", errdefs.ErrFailedPrecondition, err)
	}
	if _, err := c.runtime(md); err != nil {
		return err
	}
	if c.builtinPause(md) && c.config.BuiltinPause.Err != nil {
		return fmt.Errorf("built-in pause of runtime handler %q: %w: %w", c.handler(md), errdefs.ErrFailedPrecondition, c.config.BuiltinPause.Err)
	}
	return podsandbox.Validate(md.Config, c.config.CRI.RuntimeSettings, c.config.Node)
}

// withCRIMetadata records in md what CRI's metadata extension of its
// sandbox record says: the runtime handler, and the metadata and CNI result
// for verbose status. A sandbox made through the sandbox API without CRI
// has none and gets CRI's default runtime.
func withCRIMetadata(md *store.Metadata, info sandbox.Sandbox) error {
	ext, ok := info.Extensions[criMetadataExtension]
	if !ok || ext == nil {
		return nil
	}
	var cri criMetadata
	if err := json.Unmarshal(ext.GetValue(), &cri); err != nil {
		return fmt.Errorf("decode CRI metadata extension: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	var sb criSandboxMetadata
	if len(cri.Metadata) > 0 {
		if err := json.Unmarshal(cri.Metadata, &sb); err != nil {
			return fmt.Errorf("decode CRI sandbox metadata: %w: %w", errdefs.ErrInvalidArgument, err)
		}
	}
	// Whole, with its version: CRI decodes it as its own in verbose status.
	md.RuntimeHandler, md.CRIMetadata, md.CNIResult = sb.RuntimeHandler, ext.GetValue(), sb.CNIResult
	return nil
}

// forgetIfAbandoned forgets sandbox id once CRI has dropped it without
// starting it. CRI calls no controller method when RunPodSandbox fails
// between Create and Start (the pause image pull, for one), so without this
// the entry would stay in memory forever. The check holds the sandbox's ID
// and no more, and Start and forget disarm it: nothing of a pod outlives
// the pod by the check's two minutes.
func (c *Controller) forgetIfAbandoned(ctx context.Context, id string) {
	ctx = events.Detached(ctx)
	c.abandoned.arm(id, abandonedAfter, func() {
		unlock, err := c.locks.lock(ctx, id)
		if err != nil {
			return
		}
		defer unlock()
		sb, err := c.store.Get(id)
		if err != nil || sb.Status().State != store.StateCreated {
			return
		}
		lookup, cancel := context.WithTimeout(ctx, abandonedLookupTimeout)
		_, err = c.client.SandboxStore().Get(lookup, id)
		cancel()
		if !errdefs.IsNotFound(err) {
			// CRI still has it (a slow pull), or cannot say: look again later.
			c.forgetIfAbandoned(ctx, id)
			return
		}
		c.forget(sb)
		log.G(ctx).WithField("sandbox_id", id).Info("forgot sandbox that was created but never started")
	})
}

// timers are pending timers by key, each armed until it fires or is
// disarmed.
type timers struct {
	mu      sync.Mutex // guards pending
	pending map[string]*time.Timer
}

func newTimers() *timers { return &timers{pending: map[string]*time.Timer{}} }

// arm calls fn after d unless key is disarmed first; it replaces key's
// pending timer, if any.
func (t *timers) arm(key string, d time.Duration, fn func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.pending[key]; ok {
		old.Stop()
	}
	var timer *time.Timer
	timer = time.AfterFunc(d, func() {
		t.mu.Lock()
		if t.pending[key] == timer {
			delete(t.pending, key)
		}
		t.mu.Unlock()
		fn()
	})
	t.pending[key] = timer
}

// disarm stops key's pending timer, releasing what its fn holds.
func (t *timers) disarm(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if timer, ok := t.pending[key]; ok {
		timer.Stop()
		delete(t.pending, key)
	}
}

// forget removes a sandbox from the store. Waiters of a sandbox that never
// started are woken with an unknown exit; for any other, Exit already ran.
func (c *Controller) forget(sb *store.Sandbox) {
	c.abandoned.disarm(sb.ID)
	sb.Exit(events.UnknownExitCode, time.Now())
	sb.SetDeleted()
	c.store.Remove(sb.ID)
}
