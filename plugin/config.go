package plugin

import (
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/berth-dev/berth/events"
)

// Config is berth's section of containerd's config:
//
//	[plugins."io.containerd.sandbox.controller.v1.berth"]
//	  stop_timeout = "1m"
//	  [plugins."io.containerd.sandbox.controller.v1.berth".exit_retry]
//	    initial_delay = "1s"
//	    factor = 2.0
//	    max_delay = "5m"
//	    attempt_timeout = "10s"
//
// Everything else (pause image, snapshotter, runtime handlers) comes from
// CRI's own config, so a handler behaves the same under berth as under the
// built-in controller.
type Config struct {
	// StopTimeout bounds how long StopPodSandbox waits for the pause task to
	// die and its exit to be handled. Default 1m.
	StopTimeout Duration `toml:"stop_timeout"`
	// ExitRetry is the backoff for exit handling that failed, e.g. because
	// the shim did not answer the task delete.
	ExitRetry ExitRetry `toml:"exit_retry"`
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
	d := events.DefaultConfig()
	return &Config{
		StopTimeout: Duration(time.Minute),
		ExitRetry: ExitRetry{
			InitialDelay:   Duration(d.InitialDelay),
			Factor:         d.Factor,
			MaxDelay:       Duration(d.MaxDelay),
			AttemptTimeout: Duration(d.AttemptTimeout),
		},
	}
}

// Events returns the retry monitor's config.
func (r ExitRetry) Events() events.Config {
	return events.Config{
		InitialDelay:   r.InitialDelay.Duration(),
		Factor:         r.Factor,
		MaxDelay:       r.MaxDelay.Duration(),
		AttemptTimeout: r.AttemptTimeout.Duration(),
	}
}

// Validate reports every invalid setting, as errdefs.ErrInvalidArgument.
func (c *Config) Validate() error {
	var errs []error
	if c.StopTimeout <= 0 {
		errs = append(errs, fmt.Errorf("stop_timeout must be positive, got %s", c.StopTimeout))
	}
	if c.ExitRetry.AttemptTimeout <= 0 {
		errs = append(errs, fmt.Errorf("exit_retry.attempt_timeout must be positive, got %s", c.ExitRetry.AttemptTimeout))
	}
	if err := c.ExitRetry.Events().Validate(); err != nil {
		errs = append(errs, fmt.Errorf("exit_retry: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return nil
}

// Duration is a time.Duration written in TOML as a string such as "30s".
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as a Go duration string, so that
// `containerd config dump` shows it as it is written.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}

func (d Duration) String() string { return time.Duration(d).String() }

// Duration returns d as a time.Duration.
func (d Duration) Duration() time.Duration { return time.Duration(d) }
