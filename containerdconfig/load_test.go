package containerdconfig

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// criRuntime mirrors the keys of CRI's runtime config JSON that berth reads.
type criRuntime struct {
	Containerd struct {
		DefaultRuntimeName string                `json:"defaultRuntimeName"`
		Runtimes           map[string]criHandler `json:"runtimes"`
	} `json:"containerd"`
	RestrictOOMScoreAdj     bool   `json:"restrictOOMScoreAdj"`
	EnableUnprivilegedPorts bool   `json:"enableUnprivilegedPorts"`
	EnableUnprivilegedICMP  bool   `json:"enableUnprivilegedICMP"`
	RootDir                 string `json:"rootDir"`
	StateDir                string `json:"stateDir"`
	ContainerdEndpoint      string `json:"containerdEndpoint"`
}

type criHandler struct {
	Type           string         `json:"runtimeType"`
	Path           string         `json:"runtimePath"`
	PodAnnotations []string       `json:"PodAnnotations"`
	Snapshotter    string         `json:"snapshotter"`
	Sandboxer      string         `json:"sandboxer"`
	Options        map[string]any `json:"options"`
}

// criImages mirrors the keys of CRI's images config JSON that berth reads.
type criImages struct {
	Snapshotter  string            `json:"snapshotter"`
	PinnedImages map[string]string `json:"pinned_images"`
}

func load(t *testing.T, path string, o Overrides) *Node {
	t.Helper()
	n, err := Load(context.Background(), path, o)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return n
}

func decode(t *testing.T, n *Node) (criRuntime, criImages) {
	t.Helper()
	var rt criRuntime
	var im criImages
	if err := json.Unmarshal(n.CRIRuntime, &rt); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(n.CRIImages, &im); err != nil {
		t.Fatal(err)
	}
	return rt, im
}

// writeFile writes a config into a temporary directory.
func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runcDefault is containerd's own runc handler, which every node has.
var runcDefault = criHandler{
	Type: "io.containerd.runc.v2", Sandboxer: "podsandbox",
	Options: map[string]any{
		"BinaryName": "", "CriuImagePath": "", "CriuWorkPath": "", "IoGid": float64(0), "IoUid": float64(0),
		"NoNewKeyring": false, "Root": "", "ShimCgroup": "", "SystemdCgroup": false,
	},
}

func TestV2AndV3DescribeTheSameNode(t *testing.T) {
	v2 := load(t, "testdata/v2.toml", Overrides{})
	v3 := load(t, "testdata/v3.toml", Overrides{})
	if d := cmp.Diff(v2, v3, cmpopts.IgnoreUnexported(Node{})); d != "" {
		t.Fatalf("v2 and v3 differ (-v2 +v3):\n%s", d)
	}

	want := Node{
		GRPCAddress: "/run/node-a/containerd.sock", Root: "/var/lib/node-a", State: "/run/node-a",
		ShimSocketDir: "/run/node-a/s",
		ProxyPlugins:  map[string]ProxyPlugin{"berth": {Type: "sandbox", Address: "/run/berthd.sock"}},
	}
	if d := cmp.Diff(want, *v3, cmpopts.IgnoreUnexported(Node{}), cmpopts.IgnoreFields(Node{}, "CRIRuntime", "CRIImages")); d != "" {
		t.Errorf("node (-want +got):\n%s", d)
	}

	rt, im := decode(t, v3)
	var wantRT criRuntime
	wantRT.Containerd.DefaultRuntimeName = "berth"
	wantRT.Containerd.Runtimes = map[string]criHandler{
		"runc": runcDefault,
		"berth": {
			Type: "io.containerd.runc.v2", Path: "/opt/berth/containerd-shim-berth-v2", Sandboxer: "berth",
			Snapshotter: "overlayfs", PodAnnotations: []string{"io.berth/*"},
			Options: map[string]any{"BinaryName": "/opt/berth/runc", "SystemdCgroup": true},
		},
		// No sandboxer: CRI's own default, as CRI's Config() reports it.
		"plain": {Type: "io.containerd.runc.v2", Sandboxer: "podsandbox"},
	}
	wantRT.RestrictOOMScoreAdj = true
	wantRT.RootDir = "/var/lib/node-a/io.containerd.grpc.v1.cri"
	wantRT.StateDir = "/run/node-a/io.containerd.grpc.v1.cri"
	wantRT.ContainerdEndpoint = "/run/node-a/containerd.sock"
	if d := cmp.Diff(wantRT, rt); d != "" {
		t.Errorf("CRI runtime config (-want +got):\n%s", d)
	}
	wantIm := criImages{Snapshotter: "native", PinnedImages: map[string]string{"sandbox": "example.com/pause:9"}}
	if d := cmp.Diff(wantIm, im); d != "" {
		t.Errorf("CRI images config (-want +got):\n%s", d)
	}
}

func TestImportOverridesHandler(t *testing.T) {
	rt, _ := decode(t, load(t, "testdata/imports.toml", Overrides{}))
	// The drop-in's runtime_path wins; keys it does not set keep the main
	// file's values, because containerd merges plugin tables key by key.
	want := criHandler{
		Type: "io.containerd.runc.v2", Path: "/usr/local/bin/containerd-shim-berth-v2", Sandboxer: "berth",
		PodAnnotations: []string{"io.berth/*"},
	}
	if d := cmp.Diff(want, rt.Containerd.Runtimes["berth"]); d != "" {
		t.Errorf("berth handler (-want +got):\n%s", d)
	}
}

func TestNoFileGivesContainerdDefaults(t *testing.T) {
	for _, path := range []string{filepath.Join(t.TempDir(), "missing.toml"), ""} {
		n := load(t, path, Overrides{})
		want := Node{
			GRPCAddress: "/run/containerd/containerd.sock", Root: "/var/lib/containerd", State: "/run/containerd",
			ShimSocketDir: "/run/containerd/s", ProxyPlugins: map[string]ProxyPlugin{},
		}
		if d := cmp.Diff(want, *n, cmpopts.IgnoreUnexported(Node{}), cmpopts.IgnoreFields(Node{}, "CRIRuntime", "CRIImages")); d != "" {
			t.Errorf("%q: node (-want +got):\n%s", path, d)
		}
		rt, im := decode(t, n)
		var wantRT criRuntime
		wantRT.Containerd.DefaultRuntimeName = "runc"
		wantRT.Containerd.Runtimes = map[string]criHandler{"runc": runcDefault}
		wantRT.EnableUnprivilegedPorts, wantRT.EnableUnprivilegedICMP = true, true
		wantRT.RootDir = "/var/lib/containerd/io.containerd.grpc.v1.cri"
		wantRT.StateDir = "/run/containerd/io.containerd.grpc.v1.cri"
		wantRT.ContainerdEndpoint = "/run/containerd/containerd.sock"
		if d := cmp.Diff(wantRT, rt); d != "" {
			t.Errorf("%q: CRI runtime config (-want +got):\n%s", path, d)
		}
		wantIm := criImages{Snapshotter: "overlayfs", PinnedImages: map[string]string{"sandbox": "registry.k8s.io/pause:3.10.2"}}
		if d := cmp.Diff(wantIm, im); d != "" {
			t.Errorf("%q: CRI images config (-want +got):\n%s", path, d)
		}
	}
}

func TestOverridesWin(t *testing.T) {
	// containerd makes --root and --state absolute; --address it keeps as is.
	state, err := filepath.Abs("rel/state")
	if err != nil {
		t.Fatal(err)
	}
	n := load(t, "testdata/v3.toml", Overrides{Address: "/run/other/c.sock", Root: "/var/lib/other", State: "rel/state"})
	if n.GRPCAddress != "/run/other/c.sock" || n.Root != "/var/lib/other" || n.State != state {
		t.Errorf("got address %q root %q state %q", n.GRPCAddress, n.Root, n.State)
	}
	rt, _ := decode(t, n)
	if rt.RootDir != "/var/lib/other/io.containerd.grpc.v1.cri" || rt.StateDir != filepath.Join(state, "io.containerd.grpc.v1.cri") ||
		rt.ContainerdEndpoint != "/run/other/c.sock" {
		t.Errorf("CRI dirs %q %q, endpoint %q do not follow the overrides", rt.RootDir, rt.StateDir, rt.ContainerdEndpoint)
	}
}

func TestBadFile(t *testing.T) {
	for name, text := range map[string]string{
		"syntax":          "version = 3\n[plugins\n",
		"unknown version": "version = 99\n",
		"relative socket": "version = 3\n[plugins.'io.containerd.shim.v1.manager']\n  socket_dir = 'run/s'\n",
		"bad table":       "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = 'yes'\n",
	} {
		p := writeFile(t, text)
		_, err := Load(context.Background(), p, Overrides{})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: got %v, want InvalidArgument naming %s", name, err, p)
		}
	}

	// containerd's loader returns an import's syntax error without its
	// file (it logs the file): the error must not give the import's row
	// and column as the main config's.
	p := writeFile(t, "version = 3\nimports = ['conf.d/*.toml']\n")
	if err := os.Mkdir(filepath.Join(filepath.Dir(p), "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "conf.d", "10-bad.toml"), []byte("[plugins\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(context.Background(), p, Overrides{})
	if want := p + " or a file it imports"; !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("syntax error in an import: got %v, want InvalidArgument naming %q", err, want)
	}

	// A missing import is not a syntax error, but it fails, as in containerd.
	p = writeFile(t, "version = 3\nimports = ['missing.toml']\n")
	if _, err := Load(context.Background(), p, Overrides{}); err == nil || errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing import: got %v", err)
	}
}

func TestDecodePlugin(t *testing.T) {
	type berthConfig struct {
		StopTimeout string `toml:"stop_timeout"`
		PodsPerShim int    `toml:"pods_per_shim"`
		Unset       string `toml:"unset"`
	}
	for _, path := range []string{"testdata/v2.toml", "testdata/v3.toml"} {
		n := load(t, path, Overrides{})
		got := berthConfig{Unset: "kept"}
		if err := n.DecodePlugin(context.Background(), "io.containerd.sandbox.controller.v1.berth", &got); err != nil {
			t.Fatal(err)
		}
		if want := (berthConfig{StopTimeout: "1m", PodsPerShim: 16, Unset: "kept"}); got != want {
			t.Errorf("%s: got %+v, want %+v", path, got, want)
		}
		absent := berthConfig{Unset: "kept"}
		if err := n.DecodePlugin(context.Background(), "io.containerd.sandbox.controller.v1.other", &absent); err != nil || absent != (berthConfig{Unset: "kept"}) {
			t.Errorf("%s: absent table gave %+v, %v", path, absent, err)
		}
		var wrong struct {
			PodsPerShim string `toml:"pods_per_shim"`
		}
		if err := n.DecodePlugin(context.Background(), "io.containerd.sandbox.controller.v1.berth", &wrong); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: mistyped decode gave %v, want InvalidArgument", path, err)
		}
	}
}

// TestShimMigrationAgreesWithContainerd pins a quirk of containerd v2.4.2
// berthd must share: in a v2 or v3 file with an io.containerd.runtime.v2.task
// table, the shim manager's migration replaces the shim manager's table, so
// containerd puts shim sockets in its default dir whatever socket_dir says.
func TestShimMigrationAgreesWithContainerd(t *testing.T) {
	p := writeFile(t, `version = 3
[plugins.'io.containerd.runtime.v2.task']
  platforms = ['linux/amd64']
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '/run/node-a/s'
`)
	if got := load(t, p, Overrides{}).ShimSocketDir; got != "/run/containerd/s" {
		t.Errorf("ShimSocketDir = %q, want containerd's default /run/containerd/s", got)
	}
}

// TestDefaultsCopied checks that the deep copy of each CRI default loses
// nothing, and that loading a file leaves the registered defaults alone.
func TestDefaultsCopied(t *testing.T) {
	regs, err := registrations()
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]string{}
	for _, uri := range []string{criRuntimeURI, criImagesURI} {
		b, err := json.Marshal(regs[uri].Config)
		if err != nil {
			t.Fatal(err)
		}
		before[uri] = string(b)
		copied, err := (&Node{cfg: defaultConfig()}).pluginJSON(context.Background(), regs[uri])
		if err != nil {
			t.Fatal(err)
		}
		if string(copied) != string(b) {
			t.Errorf("%s: copy differs from the default:\n%s\n%s", uri, copied, b)
		}
	}
	load(t, writeFile(t, `version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = '/opt/runc'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'native'
`), Overrides{})
	for uri, b := range before {
		after, _ := json.Marshal(regs[uri].Config)
		if string(after) != b {
			t.Errorf("%s: Load changed the registered default", uri)
		}
	}
}

// TestRepoTemplate loads config/containerd.toml.in as hack/render-config.sh
// renders it.
func TestRepoTemplate(t *testing.T) {
	tmpl, err := os.ReadFile("../config/containerd.toml.in")
	if err != nil {
		t.Fatal(err)
	}
	out, bin := "/tmp/berth-out", "/tmp/berth-bin"
	text := strings.NewReplacer("@OUT@", out, "@BIN@", bin, "@METRICS@", "127.0.0.1:1338").Replace(string(tmpl))
	n := load(t, writeFile(t, text), Overrides{})
	if n.GRPCAddress != out+"/containerd.sock" || n.Root != out+"/root" || n.State != out+"/state" ||
		n.ShimSocketDir != "/run/containerd/s" {
		t.Errorf("got %+v", n)
	}
	rt, im := decode(t, n)
	if rt.Containerd.DefaultRuntimeName != "runc" || !rt.RestrictOOMScoreAdj || rt.RootDir != out+"/root/io.containerd.grpc.v1.cri" {
		t.Errorf("runtime config: %+v", rt)
	}
	wantBerth := criHandler{
		Type: "io.containerd.runc.v2", Path: bin + "/containerd-shim-berth-v2", Sandboxer: "berth",
		PodAnnotations: []string{"io.berth.parity/*"}, Options: map[string]any{"BinaryName": bin + "/runc"},
	}
	if d := cmp.Diff(wantBerth, rt.Containerd.Runtimes["berth"]); d != "" {
		t.Errorf("berth handler (-want +got):\n%s", d)
	}
	if h := rt.Containerd.Runtimes["berth-native"]; h.Snapshotter != "native" || h.Sandboxer != "berth" {
		t.Errorf("berth-native handler: %+v", h)
	}
	if im.Snapshotter != "overlayfs" || im.PinnedImages["sandbox"] != "localhost/berth/pause:1" {
		t.Errorf("images config: %+v", im)
	}
	var berth struct {
		PodsPerShim        int            `toml:"pods_per_shim"`
		HandlerPodsPerShim map[string]int `toml:"handler_pods_per_shim"`
	}
	if err := n.DecodePlugin(context.Background(), "io.containerd.sandbox.controller.v1.berth", &berth); err != nil {
		t.Fatal(err)
	}
	if berth.PodsPerShim != 16 || berth.HandlerPodsPerShim["berth-solo"] != 1 {
		t.Errorf("berth section: %+v", berth)
	}
}

// TestReadmeShowsDropIn checks that the README's install steps show
// config/conf.d/berth.toml as it is (indented as a list item's block).
func TestReadmeShowsDropIn(t *testing.T) {
	dropIn, err := os.ReadFile("../config/conf.d/berth.toml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	shown := strings.ReplaceAll("\n"+string(readme), "\n   ", "\n")
	if !strings.Contains(shown, "```toml\n"+string(dropIn)+"```") {
		t.Errorf("README.md does not show config/conf.d/berth.toml as it is:\n%s", dropIn)
	}
}

// TestInstalledDropIn loads config/conf.d/berth.toml, berth's part of a
// node's config as the README installs it, imported by a config.toml of
// any version: berth's handler and proxy plugin are added, and the
// node's own handlers keep their options. (Pasted into a version-2 file
// instead, its version-3 tables would make CRI's migration drop that
// file's handlers.)
func TestInstalledDropIn(t *testing.T) {
	// The node's own config.toml of version 3 or 4, which write CRI's
	// tables alike.
	const v3Main = `imports = ["@DIR@/*.toml"]
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.other]
  runtime_type = 'io.containerd.other.v1'
`
	dropIn, err := os.ReadFile("../config/conf.d/berth.toml")
	if err != nil {
		t.Fatal(err)
	}
	for name, main := range map[string]string{
		"version 2": `version = 2
imports = ["@DIR@/*.toml"]
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.other]
  runtime_type = "io.containerd.other.v1"
`,
		"version 3": "version = 3\n" + v3Main,
		// What containerd 2.4's config default writes.
		"version 4": "version = 4\n" + v3Main,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "berth.toml"), dropIn, 0o644); err != nil {
				t.Fatal(err)
			}
			n := load(t, writeFile(t, strings.ReplaceAll(main, "@DIR@", dir)), Overrides{})
			if p := n.ProxyPlugins["berth"]; p.Type != "sandbox" || p.Address != "/run/berthd/berthd.sock" {
				t.Errorf("proxy plugin berth: %+v", p)
			}
			rt, _ := decode(t, n)
			wantBerth := criHandler{
				Type: "io.containerd.runc.v2", Path: "/usr/local/bin/containerd-shim-berth-v2", Sandboxer: "berth",
				Options: map[string]any{"SystemdCgroup": true},
			}
			if d := cmp.Diff(wantBerth, rt.Containerd.Runtimes["berth"]); d != "" {
				t.Errorf("berth handler (-want +got):\n%s", d)
			}
			if got := rt.Containerd.Runtimes["runc"].Options["SystemdCgroup"]; got != true {
				t.Errorf("the node's runc handler lost its options: SystemdCgroup %v", got)
			}
			if got := rt.Containerd.Runtimes["other"].Type; got != "io.containerd.other.v1" {
				t.Errorf("the node's handler other: runtime_type %q", got)
			}
			var berth struct {
				BuiltinPauseBinary string `toml:"builtin_pause_binary"`
			}
			if err := n.DecodePlugin(context.Background(), "io.containerd.sandbox.controller.v1.berth", &berth); err != nil || berth.BuiltinPauseBinary != "/usr/local/bin/berth-pause" {
				t.Errorf("berth's table: %+v, %v; want the built-in pause's path", berth, err)
			}
		})
	}
}
