package setup

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/berth-dev/berth/events"
)

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	want := Config{
		StopTimeout: Duration{d: time.Minute},
		ExitRetry: ExitRetry{
			InitialDelay:   Duration{d: time.Second},
			Factor:         2,
			MaxDelay:       Duration{d: 5 * time.Minute},
			AttemptTimeout: Duration{d: 10 * time.Second},
		},
		Recovery:             Recovery{Parallelism: 16, SandboxTimeout: Duration{d: 10 * time.Second}},
		BuiltinPauseHandlers: []string{},
		BuiltinPauseBinary:   "/usr/local/bin/berth-pause",
		PodsPerShim:          16,
		HandlerPodsPerShim:   map[string]int{},
		WarmShimHandlers:     []string{},
		WarmShimIdleTimeout:  Duration{d: time.Hour},

		CrossNamespaceShimHandlers: []string{},
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("DefaultConfig() = %+v, want %+v", *c, want)
	}
	// Every call returns a fresh config: containerd decodes into it.
	DefaultConfig().StopTimeout = Duration{}
	if DefaultConfig().StopTimeout != (Duration{d: time.Minute}) {
		t.Error("DefaultConfig() shares its value between calls")
	}
}

func TestExitRetryConfig(t *testing.T) {
	r := ExitRetry{
		InitialDelay:   Duration{d: 2 * time.Second},
		Factor:         1.5,
		MaxDelay:       Duration{d: time.Minute},
		AttemptTimeout: Duration{d: 3 * time.Second},
	}
	want := events.Backoff{
		InitialDelay:   2 * time.Second,
		Factor:         1.5,
		MaxDelay:       time.Minute,
		AttemptTimeout: 3 * time.Second,
	}
	if got := r.backoff(); got != want {
		t.Errorf("backoff() = %+v, want %+v", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		modify  func(*Config)
		wantErr string // "" for a valid config
	}{
		{
			name:   "default",
			modify: func(*Config) {},
		},
		{
			name:   "factor 1",
			modify: func(c *Config) { c.ExitRetry.Factor = 1 },
		},
		{
			name: "initial delay equals max delay",
			modify: func(c *Config) {
				c.ExitRetry.InitialDelay = Duration{d: time.Minute}
				c.ExitRetry.MaxDelay = Duration{d: time.Minute}
			},
		},
		{
			name:   "tiny positive timeouts",
			modify: func(c *Config) { c.StopTimeout, c.ExitRetry.AttemptTimeout = Duration{d: 1}, Duration{d: 1} },
		},
		{
			name:    "zero stop timeout",
			modify:  func(c *Config) { c.StopTimeout = Duration{} },
			wantErr: "stop_timeout",
		},
		{
			name:    "negative stop timeout",
			modify:  func(c *Config) { c.StopTimeout = Duration{d: -time.Second} },
			wantErr: "stop_timeout",
		},
		{
			name:    "zero pods per shim",
			modify:  func(c *Config) { c.PodsPerShim = 0 },
			wantErr: "pods_per_shim",
		},
		{
			name:    "too many pods per shim for a handler",
			modify:  func(c *Config) { c.HandlerPodsPerShim = map[string]int{"berth": 1000} },
			wantErr: "handler_pods_per_shim.berth",
		},
		{
			name:   "warm shim of a sharing handler",
			modify: func(c *Config) { c.WarmShimHandlers = []string{"berth"} },
		},
		{
			name: "warm shim of a handler with a shim per pod",
			modify: func(c *Config) {
				c.WarmShimHandlers = []string{"berth", "berth-solo"}
				c.HandlerPodsPerShim = map[string]int{"berth-solo": 1}
			},
			wantErr: `warm_shim_handlers names "berth-solo"`,
		},
		{
			name: "warm shims with a shim per pod",
			modify: func(c *Config) {
				c.WarmShimHandlers, c.PodsPerShim = []string{"berth"}, 1
				c.HandlerPodsPerShim = map[string]int{"berth-grouped": 8}
			},
			wantErr: `warm_shim_handlers names "berth"`,
		},
		{
			name:   "shims across namespaces of a sharing handler",
			modify: func(c *Config) { c.CrossNamespaceShimHandlers = []string{"berth"} },
		},
		{
			name: "shims across namespaces of a handler with a shim per pod",
			modify: func(c *Config) {
				c.CrossNamespaceShimHandlers = []string{"berth-solo"}
				c.HandlerPodsPerShim = map[string]int{"berth-solo": 1}
			},
			wantErr: `cross_namespace_shim_handlers names "berth-solo"`,
		},
		{
			name:    "zero recovery parallelism",
			modify:  func(c *Config) { c.Recovery.Parallelism = 0 },
			wantErr: "recovery.parallelism",
		},
		{
			name:    "zero recovery timeout",
			modify:  func(c *Config) { c.Recovery.SandboxTimeout = Duration{} },
			wantErr: "recovery.sandbox_timeout",
		},
		{
			name:    "zero factor",
			modify:  func(c *Config) { c.ExitRetry.Factor = 0 },
			wantErr: "factor",
		},
		{
			name:    "zero initial delay",
			modify:  func(c *Config) { c.ExitRetry.InitialDelay = Duration{} },
			wantErr: "initial_delay",
		},
		{
			name:    "zero max delay",
			modify:  func(c *Config) { c.ExitRetry.MaxDelay = Duration{} },
			wantErr: "max_delay",
		},
		{
			name:    "zero attempt timeout",
			modify:  func(c *Config) { c.ExitRetry.AttemptTimeout = Duration{} },
			wantErr: "attempt_timeout",
		},
		{
			name:    "negative attempt timeout",
			modify:  func(c *Config) { c.ExitRetry.AttemptTimeout = Duration{d: -time.Second} },
			wantErr: "attempt_timeout",
		},
		{
			name:    "factor below 1",
			modify:  func(c *Config) { c.ExitRetry.Factor = 0.5 },
			wantErr: "factor",
		},
		{
			name:    "negative factor",
			modify:  func(c *Config) { c.ExitRetry.Factor = -2 },
			wantErr: "factor",
		},
		{
			name:    "NaN factor",
			modify:  func(c *Config) { c.ExitRetry.Factor = math.NaN() },
			wantErr: "factor",
		},
		{
			name: "initial delay above max delay",
			modify: func(c *Config) {
				c.ExitRetry.InitialDelay = Duration{d: time.Minute}
				c.ExitRetry.MaxDelay = Duration{d: time.Second}
			},
			wantErr: "exceeds exit_retry.max_delay",
		},
		{
			name:    "negative initial delay",
			modify:  func(c *Config) { c.ExitRetry.InitialDelay = Duration{d: -time.Second} },
			wantErr: "initial_delay",
		},
		{
			name:    "negative max delay",
			modify:  func(c *Config) { c.ExitRetry.MaxDelay = Duration{d: -time.Second} },
			wantErr: "max_delay",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.modify(c)
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error about %s", tc.wantErr)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Validate() = %v, want an invalid argument error", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate() = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

// TestConfigValidateReportsAll checks that Validate reports every invalid
// setting at once.
func TestConfigValidateReportsAll(t *testing.T) {
	c := DefaultConfig()
	c.StopTimeout = Duration{}
	c.ExitRetry.AttemptTimeout = Duration{}
	c.ExitRetry.Factor = 0.5
	err := c.Validate()
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Validate() = %v, want an invalid argument error", err)
	}
	for _, s := range []string{"stop_timeout", "attempt_timeout", "factor"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Validate() = %v, want it to mention %q", err, s)
		}
	}
}

// TestValidateBuiltinPause checks that a bad built-in pause setting is
// reported apart from the rest: it disables the built-in pause alone.
func TestValidateBuiltinPause(t *testing.T) {
	c := DefaultConfig()
	c.BuiltinPauseHandlers = []string{"berth-builtin"}
	c.BuiltinPauseBinary = "berth-pause"
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v, want nil: the built-in pause is checked apart", err)
	}
	if err := c.validateBuiltinPause(); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "builtin_pause_binary") {
		t.Errorf("validateBuiltinPause() = %v, want an invalid argument naming builtin_pause_binary", err)
	}
	c.BuiltinPauseBinary = "/usr/local/bin/berth-pause"
	if err := c.validateBuiltinPause(); err != nil {
		t.Errorf("validateBuiltinPause() = %v for an absolute path", err)
	}
}

// decodeConfig decodes data into a copy of the default config the way
// containerd decodes a plugin's section: strictly, into the registration's
// default.
func decodeConfig(data string) (*Config, error) {
	c := DefaultConfig()
	err := toml.NewDecoder(bytes.NewReader([]byte(data))).DisallowUnknownFields().Decode(c)
	return c, err
}

func TestConfigDecode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		data   string
		modify func(*Config) // applied to DefaultConfig() for the expected config
	}{
		{
			name:   "empty",
			data:   "",
			modify: func(*Config) {},
		},
		{
			name: "partial",
			data: "stop_timeout = \"30s\"\n[exit_retry]\ninitial_delay = \"2s\"\n",
			modify: func(c *Config) {
				c.StopTimeout = Duration{d: 30 * time.Second}
				c.ExitRetry.InitialDelay = Duration{d: 2 * time.Second}
			},
		},
		{
			name: "full",
			data: `stop_timeout = "1m30s"
[exit_retry]
initial_delay = "500ms"
factor = 1.5
max_delay = "10m"
attempt_timeout = "1h"
`,
			modify: func(c *Config) {
				c.StopTimeout = Duration{d: 90 * time.Second}
				c.ExitRetry = ExitRetry{
					InitialDelay:   Duration{d: 500 * time.Millisecond},
					Factor:         1.5,
					MaxDelay:       Duration{d: 10 * time.Minute},
					AttemptTimeout: Duration{d: time.Hour},
				}
			},
		},
		{
			name:   "integer factor",
			data:   "[exit_retry]\nfactor = 3\n",
			modify: func(c *Config) { c.ExitRetry.Factor = 3 },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeConfig(tc.data)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			want := DefaultConfig()
			tc.modify(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decoded %+v, want %+v", *got, *want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("decoded config invalid: %v", err)
			}
		})
	}
}

func TestConfigDecodeInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
	}{
		{name: "unknown key", data: `stop_timeot = "30s"`},
		{name: "array", data: `stop_timeout = ["30s"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := decodeConfig(tc.data)
			if err == nil {
				t.Errorf("decode %q = %+v, want an error", tc.data, *c)
			}
		})
	}
}

// TestConfigDecodeNotADuration: text that is no duration decodes, so that
// containerd's config load, and CRI with it, does not fail on it, and
// Validate names the key.
func TestConfigDecodeNotADuration(t *testing.T) {
	for _, tc := range []struct{ data, key string }{
		{`stop_timeout = "soon"`, "stop_timeout"},
		{`stop_timeout = "30"`, "stop_timeout"},
		{`stop_timeout = "1 minute"`, "stop_timeout"},
		// go-toml hands a TextUnmarshaler an integer's text.
		{`stop_timeout = 30`, "stop_timeout"},
		{"[exit_retry]\nmax_delay = \"5 minutes\"\n", "exit_retry.max_delay"},
		{"[recovery]\nsandbox_timeout = \"\"\n", "recovery.sandbox_timeout"},
		{`warm_shim_idle_timeout = "never"`, "warm_shim_idle_timeout"},
	} {
		c, err := decodeConfig(tc.data)
		if err != nil {
			t.Errorf("decode %q: %v, want it decoded", tc.data, err)
			continue
		}
		if err := c.Validate(); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.key+" must be a Go duration") {
			t.Errorf("Validate after %q = %v, want %s named", tc.data, err, tc.key)
		}
	}
}

func TestConfigEncodeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config *Config
	}{
		{"default", DefaultConfig()},
		{"custom", &Config{
			StopTimeout: Duration{d: 90 * time.Second},
			ExitRetry: ExitRetry{
				InitialDelay:   Duration{d: 250 * time.Millisecond},
				Factor:         1.25,
				MaxDelay:       Duration{d: 2 * time.Hour},
				AttemptTimeout: Duration{d: 1500 * time.Millisecond},
			},
			Recovery:             Recovery{Parallelism: 4, SandboxTimeout: Duration{d: 3 * time.Second}},
			BuiltinPauseHandlers: []string{"berth-builtin"},
			BuiltinPauseBinary:   "/opt/berth/pause",
			PodsPerShim:          16,
			HandlerPodsPerShim:   map[string]int{"berth-solo": 1},
			WarmShimHandlers:     []string{"berth"},

			CrossNamespaceShimHandlers: []string{"berth-dense"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := toml.Marshal(tc.config)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			// Durations are written the way they are read, for
			// `containerd config dump`.
			if want := "stop_timeout = '" + tc.config.StopTimeout.String() + "'"; !strings.Contains(string(b), want) {
				t.Errorf("encoded config\n%s\nlacks %s", b, want)
			}
			got, err := decodeConfig(string(b))
			if err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if !reflect.DeepEqual(got, tc.config) {
				t.Errorf("round trip = %+v, want %+v", *got, *tc.config)
			}
		})
	}
}

func TestDurationText(t *testing.T) {
	for _, tc := range []struct {
		text    string
		want    time.Duration
		invalid bool
	}{
		{text: "30s", want: 30 * time.Second},
		{text: "1m30s", want: 90 * time.Second},
		{text: "250ms", want: 250 * time.Millisecond},
		{text: "0", want: 0},
		{text: "-5s", want: -5 * time.Second},
		{text: "", invalid: true},
		{text: "30", invalid: true},
		{text: "soon", invalid: true},
		{text: "1d", invalid: true},
		{text: "1 minute", invalid: true},
	} {
		t.Run(tc.text, func(t *testing.T) {
			d := Duration{d: 42}
			// Never an error: containerd would fail its whole config.
			if err := d.UnmarshalText([]byte(tc.text)); err != nil {
				t.Fatalf("UnmarshalText(%q) = %v", tc.text, err)
			}
			want := tc.want.String()
			if tc.invalid {
				want = tc.text
				if d != (Duration{invalid: true, text: tc.text}) {
					t.Errorf("UnmarshalText(%q) = %+v, want the text kept as invalid", tc.text, d)
				}
			} else if d != (Duration{d: tc.want}) {
				t.Errorf("UnmarshalText(%q) = %+v, want %v", tc.text, d, tc.want)
			}
			// MarshalText and String write what UnmarshalText read.
			b, err := d.MarshalText()
			if err != nil {
				t.Fatalf("MarshalText() = %v", err)
			}
			if string(b) != want || d.String() != want {
				t.Errorf("MarshalText() = %q, String() = %q, want %q", b, d.String(), want)
			}
			var back Duration
			if err := back.UnmarshalText(b); err != nil || back != d {
				t.Errorf("UnmarshalText(MarshalText()) = %v, %v, want %v", back, err, d)
			}
		})
	}
}
