package setup

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"

	"github.com/berth-dev/berth/events"
)

// Config is berth's section of containerd's config,
// [plugins."io.containerd.sandbox.controller.v1.berth"]; the README's
// "Configuration reference" shows every key with its default. Everything
// else (pause image, snapshotter, runtime handlers) comes from CRI's own
// config, so a handler behaves the same under berth as under the built-in
// controller.
type Config struct {
	// StopTimeout bounds how long StopPodSandbox waits for the pause task to
	// die and its exit to be handled. Default 1m.
	StopTimeout Duration `toml:"stop_timeout"`
	// ExitRetry is the backoff for exit handling that failed, e.g. because
	// the shim did not answer the task delete.
	ExitRetry ExitRetry `toml:"exit_retry"`
	// Recovery bounds the reload of berth's sandboxes when containerd
	// starts.
	Recovery Recovery `toml:"recovery"`
	// BuiltinPauseHandlers are the CRI runtime handlers whose pods run
	// berth's built-in pause: BuiltinPauseBinary in a read-only rootfs that
	// berth prepares once and every such pod shares, with no pause image,
	// pull, unpack or per-pod snapshot. Pair each with CRI's
	// disable_pause_image_pull = true. Default none.
	BuiltinPauseHandlers []string `toml:"builtin_pause_handlers"`
	// BuiltinPauseBinary is the static pause binary (cmd/berth-pause) the
	// built-in pause runs. Default /usr/local/bin/berth-pause.
	BuiltinPauseBinary string `toml:"builtin_pause_binary"`
	// PodsPerShim is how many pods of a runc-based handler share one runc
	// shim (their pause tasks and app containers), pods of one Kubernetes
	// namespace only unless CrossNamespaceShimHandlers names the handler;
	// 1 gives every pod a shim of its own. Default 16.
	PodsPerShim int `toml:"pods_per_shim"`
	// HandlerPodsPerShim sets PodsPerShim for some runtime handlers.
	HandlerPodsPerShim map[string]int `toml:"handler_pods_per_shim"`
	// WarmShimHandlers are the runc-based handlers, sharing shims, whose
	// shim berth keeps running while none of their pods runs: a shim
	// keeper, BuiltinPauseBinary alone in its own namespaces, is the first
	// task of a group, so that every pod joins a running shim. It costs a
	// shim (about 4 MB) and a pause process per handler and Kubernetes
	// namespace its pods run in (per handler, with
	// CrossNamespaceShimHandlers). Default none.
	WarmShimHandlers []string `toml:"warm_shim_handlers"`
	// WarmShimIdleTimeout is how long a shim keeper keeps a shim warm for
	// a namespace (a handler, with CrossNamespaceShimHandlers) none of
	// whose pods runs. It is then removed, and the namespace's next pod
	// makes another: namespaces that come and go leave no shims behind.
	// Default 1h.
	WarmShimIdleTimeout Duration `toml:"warm_shim_idle_timeout"`
	// CrossNamespaceShimHandlers are the runc-based handlers whose pods
	// share shims with pods of other Kubernetes namespaces. A shim's crash,
	// or its OOM kill, takes every pod it serves, so by default a pod shares
	// one only with pods of its own namespace, the usual tenant boundary;
	// across namespaces, fewer shims serve a node of many small namespaces.
	// Default none.
	CrossNamespaceShimHandlers []string `toml:"cross_namespace_shim_handlers"`
}

// Recovery configures the reload of sandboxes after a containerd restart.
type Recovery struct {
	// Parallelism is how many sandboxes, then how many shim keepers, are
	// reloaded at once. Default 16.
	Parallelism int `toml:"parallelism"`
	// SandboxTimeout bounds each attempt at the reload of one sandbox; a
	// sandbox whose shim does not answer in time is reported NOTREADY and
	// its task deleted in the background, and an attempt containerd itself
	// does not answer (berthd's, restarting) is made again. Default 10s.
	SandboxTimeout Duration `toml:"sandbox_timeout"`
}

// ExitRetry configures the retry of failed exit handling.
type ExitRetry struct {
	// InitialDelay before the first retry. Default 1s.
	InitialDelay Duration `toml:"initial_delay"`
	// Factor the delay grows by after each failed retry. Default 2.
	Factor float64 `toml:"factor"`
	// MaxDelay caps the delay. Default 5m.
	MaxDelay Duration `toml:"max_delay"`
	// AttemptTimeout bounds every attempt, the first included. Default 10s.
	AttemptTimeout Duration `toml:"attempt_timeout"`
}

// DefaultConfig is the config berth runs with when its section is absent.
func DefaultConfig() *Config {
	return &Config{
		StopTimeout: Duration{d: time.Minute},
		ExitRetry: ExitRetry{
			InitialDelay:   Duration{d: time.Second},
			Factor:         2,
			MaxDelay:       Duration{d: 5 * time.Minute},
			AttemptTimeout: Duration{d: 10 * time.Second},
		},
		Recovery: Recovery{Parallelism: 16, SandboxTimeout: Duration{d: 10 * time.Second}},
		// Empty, not nil, so that `containerd config dump` shows the key.
		BuiltinPauseHandlers: []string{},
		BuiltinPauseBinary:   "/usr/local/bin/berth-pause",
		PodsPerShim:          defaultPodsPerShim,
		HandlerPodsPerShim:   map[string]int{},
		WarmShimHandlers:     []string{},
		WarmShimIdleTimeout:  Duration{d: time.Hour},
		// Empty, not nil, so that `containerd config dump` shows the key.
		CrossNamespaceShimHandlers: []string{},
	}
}

// defaultPodsPerShim was chosen with make bench (docs/performance.md,
// "Density"): at 16 a shim's own memory is below each pod's share of what
// no controller removes, where 32 would save little more and double what a
// shim's death takes; no latency or throughput cost appeared up to 32.
const defaultPodsPerShim = 16

// maxPodsPerShim bounds how many pods one shim process may serve: its
// death is all of theirs.
const maxPodsPerShim = 64

// podsPerShim lists every pods-per-shim setting by its key.
func (c *Config) podsPerShim() map[string]int {
	m := map[string]int{"pods_per_shim": c.PodsPerShim}
	for h, n := range c.HandlerPodsPerShim {
		m["handler_pods_per_shim."+h] = n
	}
	return m
}

// backoff is the retry queue's backoff.
func (r ExitRetry) backoff() events.Backoff {
	return events.Backoff{
		InitialDelay:   r.InitialDelay.Duration(),
		Factor:         r.Factor,
		MaxDelay:       r.MaxDelay.Duration(),
		AttemptTimeout: r.AttemptTimeout.Duration(),
	}
}

// Validate reports every invalid setting but the built-in pause's (see
// validateBuiltinPause), as errdefs.ErrInvalidArgument. Every setting has a
// default, so a zero here was written by the operator and is rejected
// rather than silently replaced.
func (c *Config) Validate() error {
	var errs []error
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"stop_timeout", c.StopTimeout},
		{"exit_retry.initial_delay", c.ExitRetry.InitialDelay},
		{"exit_retry.max_delay", c.ExitRetry.MaxDelay},
		{"exit_retry.attempt_timeout", c.ExitRetry.AttemptTimeout},
		{"recovery.sandbox_timeout", c.Recovery.SandboxTimeout},
		{"warm_shim_idle_timeout", c.WarmShimIdleTimeout},
	} {
		switch {
		case d.v.invalid:
			errs = append(errs, fmt.Errorf("%s must be a Go duration such as \"30s\", got %q", d.key, d.v.text))
		case d.v.Duration() <= 0:
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", d.key, d.v))
		}
	}
	for key, n := range c.podsPerShim() {
		if n < 1 || n > maxPodsPerShim {
			errs = append(errs, fmt.Errorf("%s must be within 1..%d, got %d", key, maxPodsPerShim, n))
		}
	}
	for key, handlers := range map[string][]string{"warm_shim_handlers": c.WarmShimHandlers, "cross_namespace_shim_handlers": c.CrossNamespaceShimHandlers} {
		for _, h := range handlers {
			if n, ok := c.HandlerPodsPerShim[h]; (ok && n == 1) || (!ok && c.PodsPerShim == 1) {
				errs = append(errs, fmt.Errorf("%s names %q, whose pods have a shim each (pods per shim 1)", key, h))
			}
		}
	}
	if c.Recovery.Parallelism < 1 {
		errs = append(errs, fmt.Errorf("recovery.parallelism must be at least 1, got %d", c.Recovery.Parallelism))
	}
	// Written as !(>= 1) so that NaN is rejected too.
	if !(c.ExitRetry.Factor >= 1) {
		errs = append(errs, fmt.Errorf("exit_retry.factor must be at least 1, got %v", c.ExitRetry.Factor))
	}
	if r := c.ExitRetry; !r.InitialDelay.invalid && !r.MaxDelay.invalid && r.InitialDelay.Duration() > r.MaxDelay.Duration() {
		errs = append(errs, fmt.Errorf("exit_retry.initial_delay %s exceeds exit_retry.max_delay %s", c.ExitRetry.InitialDelay, c.ExitRetry.MaxDelay))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return nil
}

// validateBuiltinPause reports an invalid built-in pause setting, as
// errdefs.ErrInvalidArgument. It disables the built-in pause alone.
func (c *Config) validateBuiltinPause() error {
	if !filepath.IsAbs(c.BuiltinPauseBinary) {
		return fmt.Errorf("builtin_pause_binary must be an absolute path, got %q: %w", c.BuiltinPauseBinary, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Duration is a time.Duration written in TOML as a string such as "30s".
// Text that is no duration (a bare TOML integer too, whose text go-toml
// hands to UnmarshalText, rather than nanoseconds) decodes, and Validate
// reports it: containerd decodes every plugin's config before any plugin
// starts, and a decode error fails its whole config load, CRI and every
// pod with it.
type Duration struct {
	d time.Duration
	// invalid says the text was no duration; text is the text.
	invalid bool
	text    string
}

// UnmarshalText parses a Go duration string, and keeps text that is none
// for Validate.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		*d = Duration{invalid: true, text: string(b)}
		return nil
	}
	*d = Duration{d: v}
	return nil
}

// MarshalText writes the duration as a Go duration string, so that
// `containerd config dump` shows it as it is written; text that is no
// duration as it was written.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

func (d Duration) String() string {
	if d.invalid {
		return d.text
	}
	return d.d.String()
}

// Duration returns d as a time.Duration.
func (d Duration) Duration() time.Duration { return d.d }
