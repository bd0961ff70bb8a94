package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/version"
	"github.com/containerd/errdefs"
	"github.com/coreos/go-systemd/v22/unit"
	"github.com/docker/go-metrics"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/berth-dev/berth/containerdconfig"
	"github.com/berth-dev/berth/sandboxapi"
)

// TestSocketPath: berthd's --address is a unix socket's path, with or
// without its scheme, as kubelet's endpoints are written.
func TestSocketPath(t *testing.T) {
	for _, address := range []string{"/run/berthd/berthd.sock", "unix:///run/berthd/berthd.sock"} {
		if got := socketPath(address); got != "/run/berthd/berthd.sock" {
			t.Errorf("socketPath(%q) = %q", address, got)
		}
	}
}

// TestCheckProxy: berthd serves only when containerd's config makes it a
// sandbox controller containerd can reach: a proxy plugin address with a
// scheme is one containerd cannot dial (it puts unix:// before whatever
// the address holds), and a disabled plugin is never loaded.
func TestCheckProxy(t *testing.T) {
	const sock = "/run/berthd/berthd.sock"
	for _, tc := range []struct {
		name     string
		proxy    *containerdconfig.ProxyPlugin
		disabled []string
		serves   bool
	}{
		{"no proxy plugin", nil, nil, false},
		{"of another type", &containerdconfig.ProxyPlugin{Type: "snapshot", Address: sock}, nil, false},
		{"with a scheme", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: "unix://" + sock}, nil, false},
		{"with an opaque scheme", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: "unix:" + sock}, nil, false},
		{"relative", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: "run/berthd/berthd.sock"}, nil, false},
		{"abstract", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: "@berthd"}, nil, false},
		{"with :// in its path", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: "/run/a://b.sock"}, nil, true},
		{"disabled", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: sock}, []string{"io.containerd.sandbox.controller.v1.berth"}, false},
		{"another disabled", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: sock}, []string{"io.containerd.sandbox.controller.v1.kata"}, true},
		{"sandbox", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: sock}, nil, true},
		{"by its plugin type", &containerdconfig.ProxyPlugin{Type: "io.containerd.sandbox.controller.v1", Address: sock}, nil, true},
		// Maybe the same socket through a link: berthd warns and serves.
		{"elsewhere", &containerdconfig.ProxyPlugin{Type: "sandbox", Address: "/var/run/berthd/berthd.sock"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := &containerdconfig.Node{ProxyPlugins: map[string]containerdconfig.ProxyPlugin{}, DisabledPlugins: tc.disabled}
			if tc.proxy != nil {
				node.ProxyPlugins["berth"] = *tc.proxy
			}
			if got := checkProxy(context.Background(), node, "berth", sock); got != tc.serves {
				t.Errorf("checkProxy = %v, want %v", got, tc.serves)
			}
		})
	}
}

// TestNotProxiedHoldsNoMetricsPort: a berthd containerd does not call
// leaves the metrics port to whoever serves berth (its own containerd
// build, on a node that moved to it): it does not listen there, so a
// port another process holds does not fail it.
func TestNotProxiedHoldsNoMetricsPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, []byte("version = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := testOptions(dir)
	o.containerdConfig, o.metricsAddress = config, busy.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stopped at once: it waits for a stop, serving nothing
	if err := run(ctx, o); err != nil {
		t.Errorf("berthd without its proxy plugin, metrics port taken: %v, want no error", err)
	}
	// A flag it could never serve on still fails it.
	o.metricsAddress = "1338"
	if err := run(ctx, o); !errdefs.IsInvalidArgument(err) {
		t.Errorf("berthd without its proxy plugin, metrics address without a port: %v, want InvalidArgument", err)
	}
}

// TestSurvivesSIGPIPE: berthd survives a log write to a standard error
// whose reader is gone. The test runs itself again as that process.
func TestSurvivesSIGPIPE(t *testing.T) {
	if os.Getenv("BERTHD_TEST_SIGPIPE") == "1" {
		handleSIGPIPE()
		_, err := fmt.Fprintln(os.Stderr, "a log line nobody reads")
		if !errors.Is(err, syscall.EPIPE) {
			os.Exit(3)
		}
		os.Exit(0)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSurvivesSIGPIPE$")
	cmd.Env = append(os.Environ(), "BERTHD_TEST_SIGPIPE=1")
	cmd.Stderr = w
	err = cmd.Run()
	w.Close()
	if err != nil {
		t.Errorf("a write to a pipe with no reader: %v, want the write to fail EPIPE and the process to live", err)
	}
}

// TestSystemdUnit checks berthd's unit against what berthd needs of it:
// started before containerd, which wants it, and restarted with it, so
// that a change to containerd's config reaches berthd; ready once it
// listens (sd_notify); and flags berthd has.
func TestSystemdUnit(t *testing.T) {
	f, err := os.Open("../../config/systemd/berthd.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatal(err)
	}
	values := func(section, name string) []string {
		var vs []string
		for _, o := range opts {
			if o.Section == section && o.Name == name {
				vs = append(vs, strings.Fields(o.Value)...)
			}
		}
		return vs
	}
	for _, want := range []struct{ section, name, value string }{
		{"Unit", "Before", "containerd.service"},
		{"Unit", "PartOf", "containerd.service"},
		{"Unit", "StartLimitIntervalSec", "0"},
		{"Install", "WantedBy", "containerd.service"},
		{"Service", "Type", "notify"},
	} {
		if !slices.Contains(values(want.section, want.name), want.value) {
			t.Errorf("[%s] %s lacks %s: %v", want.section, want.name, want.value, values(want.section, want.name))
		}
	}
	exec := values("Service", "ExecStart")
	if len(exec) == 0 {
		t.Fatal("no ExecStart")
	}
	fs := flag.NewFlagSet("berthd", flag.ContinueOnError)
	new(options).register(fs)
	if err := fs.Parse(exec[1:]); err != nil || fs.NArg() != 0 {
		t.Errorf("ExecStart %v: %v, arguments left %v", exec, err, fs.Args())
	}
}

// TestUninstallNeedsNoGo: make uninstall removes what make install put in
// place, and the directory it made, on a node without Go (one installed
// from another host's build), leaving anything else.
func TestUninstallNeedsNoGo(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	root := t.TempDir()
	installed := []string{
		"usr/local/bin/berthd", "usr/local/bin/containerd-shim-berth-v2", "usr/local/bin/berth-pause",
		"usr/local/share/berth/berth.toml", "usr/local/lib/systemd/system/berthd.service",
	}
	other := "usr/local/bin/other"
	for _, p := range append(installed, other) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("make", "-C", "../..", "uninstall", "DESTDIR="+root)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin", "GO=/no/such/go")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	for _, p := range append(installed, "usr/local/share/berth") {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, other)); err != nil {
		t.Errorf("%s, not installed, removed: %v", other, err)
	}
}

// TestLoadNode: berthd reads containerd's config as containerd started
// with the same flags does. A config path given and missing fails; the
// default path missing is containerd's defaults. containerd's own flags,
// as k3s and RKE2 give them, win over the file.
func TestLoadNode(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "config.toml")
	parse := func(args ...string) options {
		t.Helper()
		var o options
		fs := flag.NewFlagSet("berthd", flag.ContinueOnError)
		o.register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		o.parsed(fs)
		return o
	}
	ctx := context.Background()
	if _, err := loadNode(ctx, parse("--containerd-config", missing)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a config given and missing: %v, want it not found", err)
	}
	o := parse()
	o.containerdConfig = missing
	if _, err := loadNode(ctx, o); err != nil {
		t.Errorf("the default config path missing: %v, want containerd's defaults", err)
	}
	n, err := loadNode(ctx, parse("--containerd-config", "../../containerdconfig/testdata/v3.toml",
		"--containerd-address", "/run/k3s/containerd/containerd.sock",
		"--containerd-root", "/var/lib/rancher/k3s/agent/containerd",
		"--containerd-state", "/run/k3s/containerd"))
	if err != nil {
		t.Fatal(err)
	}
	if n.GRPCAddress != "/run/k3s/containerd/containerd.sock" || n.Root != "/var/lib/rancher/k3s/agent/containerd" || n.State != "/run/k3s/containerd" {
		t.Errorf("address %s, root %s, state %s: want containerd's flags'", n.GRPCAddress, n.Root, n.State)
	}
}

// TestLargeRequest: berthd takes a request as large as containerd's proxy
// client sends (16 MiB), not only gRPC's default 4 MiB. The server is shut
// down, so the call, once read, fails Unavailable, not ResourceExhausted.
func TestLargeRequest(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "berthd.sock")
	l, err := listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	server := sandboxapi.NewServer("berth")
	server.Shutdown()
	g := newGRPCServer(newHopMetrics())
	server.Register(g)
	go func() { _ = g.Serve(l) }()
	defer g.Stop()
	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := &api.ControllerCreateRequest{SandboxID: "sb", Sandboxer: "berth", Options: &anypb.Any{Value: make([]byte, 6<<20)}}
	_, err = api.NewControllerClient(conn).Create(context.Background(), req)
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Create of %d bytes: %v; want Unavailable", len(req.Options.Value), err)
	}
}

// TestListenLeavesOthers: berthd replaces a socket no process listens on
// (a dead berthd's) and nothing else: a file at a mistyped --address is
// kept, and so is a socket another process serves.
func TestListenLeavesOthers(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(file, []byte("version = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := listen(file); !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), file) {
		t.Errorf("listen on a file: %v, want AlreadyExists naming it", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "version = 3\n" {
		t.Errorf("the file at the address: %q, %v; want it kept", b, err)
	}

	sock := filepath.Join(dir, "berthd.sock")
	l, err := listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listen(sock); !errdefs.IsAlreadyExists(err) {
		t.Errorf("listen on a served socket: %v, want AlreadyExists", err)
	}
	// A closed listener removes its socket; a dead process leaves it.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l, err = listen(sock)
	if err != nil {
		t.Fatalf("listen on a dead berthd's socket: %v", err)
	}
	l.Close()
}

// testOptions are berthd's flags for a node whose containerd, configured
// by testdata/v3.toml with its directories under dir, is not running.
func testOptions(dir string) options {
	return options{
		sandboxer:           "berth",
		containerdConfig:    "../../containerdconfig/testdata/v3.toml",
		containerdConfigSet: true,
		containerd: containerdconfig.Overrides{
			Address: filepath.Join(dir, "containerd.sock"), // no containerd
			Root:    filepath.Join(dir, "root"),
			State:   filepath.Join(dir, "state"),
		},
		address:  filepath.Join(dir, "berthd.sock"),
		logLevel: "info",
	}
}

// TestStopWaitingForContainerd: stopped while it waits for containerd to
// answer, berthd exits as from any stop, not failed: systemd would record
// an ordinary stop as the unit's failure.
func TestStopWaitingForContainerd(t *testing.T) {
	o := testOptions(t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := run(ctx, o); err != nil {
		t.Errorf("berthd stopped while waiting for containerd: %v, want no error", err)
	}
}

// TestBadFlags: a flag berthd cannot run with fails it at once, before it
// serves, listens or makes anything.
func TestBadFlags(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		set  func(o *options)
		want string
	}{
		{"metrics address without a port", func(o *options) { o.metricsAddress = "1338" }, "metrics-address"},
		{"metrics address taken", func(o *options) { o.metricsAddress = busy.Addr().String() }, "address already in use"},
		{"negative containerd timeout", func(o *options) { o.waitContainerd = -time.Second }, "negative"},
		{"empty sandboxer", func(o *options) { o.sandboxer = "" }, "--sandboxer"},
		{"sandboxer with a slash", func(o *options) { o.sandboxer = "../berth" }, "--sandboxer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			o := testOptions(dir)
			tc.set(&o)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := run(ctx, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want an error with %q", err, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("left %v in %s", entries, dir)
			}
		})
	}
}

// TestListenMetricsBeforeTheAddress: an IP the node does not have yet (at
// boot, before the network is up) is listened on; a port in use is not.
func TestListenMetricsBeforeTheAddress(t *testing.T) {
	addrs := []string{"192.0.2.1:0"}
	if l, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		l.Close()
		addrs = append(addrs, "[2001:db8::1]:0")
	}
	for _, addr := range addrs {
		l, err := listenMetrics(addr)
		if err != nil {
			t.Errorf("listen on %s, not the node's yet: %v", addr, err)
			continue
		}
		l.Close()
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if l, err := listenMetrics(busy.Addr().String()); err == nil {
		l.Close()
		t.Errorf("listened on %s, which is in use", busy.Addr())
	}
}

// TestServeMetrics serves the series until berthd stops, by its context
// or by the closing of the listener, neither of which is a failure.
func TestServeMetrics(t *testing.T) {
	for _, stop := range []string{"context", "listener"} {
		t.Run(stop, func(t *testing.T) {
			l, err := listenMetrics("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ns := metrics.NewNamespace("berth", "test", nil)
			ns.NewCounter("served", "a series to scrape").Inc()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			served := make(chan error, 1)
			go func() { served <- serveMetrics(ctx, l, ns) }()

			resp, err := http.Get("http://" + l.Addr().String() + "/v1/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), "berth_test_served_total 1") {
				t.Errorf("scrape:\n%s", body)
			}

			if stop == "context" {
				cancel()
			} else {
				l.Close()
			}
			select {
			case err := <-served:
				if err != nil {
					t.Errorf("serveMetrics stopped by its %s: %v, want nil", stop, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("serveMetrics still serving after its %s ended", stop)
			}
		})
	}
}

// TestCompareRelease: berthd refuses a containerd before 2, and warns of
// any other release than its own or a version it cannot read.
func TestCompareRelease(t *testing.T) {
	for _, tc := range []struct {
		running string
		warns   bool
		refused bool
	}{
		{running: "v2.4.2"},
		{running: "2.4.0+unknown"},
		{running: "v2.4.2+berth.8f406f4"},
		{running: "2.1.4~ds1", warns: true},
		{running: "v2.5.0", warns: true},
		{running: "v3.0.0", warns: true},
		{running: "", warns: true},
		{running: "main", warns: true},
		{running: "1.7.24-0ubuntu1", refused: true},
	} {
		warning, err := compareRelease(tc.running, "2.4.2+unknown")
		if tc.refused != errdefs.IsFailedPrecondition(err) || (err != nil && !tc.refused) {
			t.Errorf("containerd %q: error %v, want refused %v", tc.running, err, tc.refused)
		}
		if tc.warns != (warning != "") {
			t.Errorf("containerd %q: warning %q, want one %v", tc.running, warning, tc.warns)
		}
	}
}

// TestVersionFlag: --version asks for the version containerd's version
// package holds, which make stamps.
func TestVersionFlag(t *testing.T) {
	fs := flag.NewFlagSet("berthd", flag.ContinueOnError)
	var o options
	o.register(fs)
	if err := fs.Parse([]string{"--version"}); err != nil || !o.version {
		t.Fatalf("--version parsed to %v (%v)", o.version, err)
	}
	if line := versionLine(); !strings.HasPrefix(line, "berthd ") || !strings.HasSuffix(line, " "+version.Version) {
		t.Errorf("version line %q, want berthd's and the version %s", line, version.Version)
	}
}
