// Package integration tests berth end to end: the project's containerd
// build with berth compiled in, runc, the runc shim and CNI plugins, driven
// through the CRI gRPC API as kubelet drives it. It needs root and the
// binaries `make build` puts in bin/.
package integration

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/integration/hostproc"
)

var (
	binDir = flag.String("bin", "../bin", "directory with containerd, ctr, runc, the shim and images/")
	keep   = flag.Bool("keep", false, "keep containerd's directory after the tests, for debugging")
	// failpoints runs the suite on bin/containerd-failpoint, berth built
	// with its test-only failpoints; the tests that need them run only then.
	failpoints = flag.Bool("failpoints", false, "run on containerd-failpoint and run the failpoint tests")
	// berthdMode runs berth as berthd beside a stock containerd
	// (bin/containerd-stock, containerd's own build), its proxy sandbox
	// plugin, instead of in process.
	berthdMode    = flag.Bool("berthd", false, "run berth as berthd beside bin/containerd-stock instead of in bin/containerd")
	berthdMetrics = flag.String("berthd-metrics", "127.0.0.1:1340", "where berthd serves berth's Prometheus series, with -berthd")
	soak          = flag.Int("soak", 0, "pod lifecycles of the soak test; 0 skips it")
	// handlerBerth is the handler the suite runs berth's pods with: with
	// -handler berth-builtin the whole suite runs on the built-in pause,
	// with -handler berth-noopts on a handler without an options table.
	handlerBerth = "berth"
	// defaultRuntime, if set, is made CRI's default_runtime_name; with
	// -handler "" the suite's pods then reach berth as kubelet's pods
	// without a RuntimeClass do.
	defaultRuntime = flag.String("default-runtime", "", "CRI's default runtime handler (the config's is runc)")
	// The CNI bridge, its subnet and the Prometheus address are flags so
	// that two runs (two worktrees) can share a machine.
	testBridge  = flag.String("bridge", "berthtest0", "CNI bridge of the tests' pod network")
	testSubnet  = flag.String("subnet", "10.89.0.0/16", "subnet of the tests' pod network")
	testMetrics = flag.String("metrics", "127.0.0.1:1339", "where the tests' containerd serves Prometheus metrics")
)

// snapshotters are those the config's handlers use.
var snapshotters = []string{"overlayfs", "native"}

const (
	// sandboxerBerth is berth's sandbox controller, by its plugin ID.
	sandboxerBerth = "berth"
	handlerBuiltin = "runc"
	pauseImage     = "localhost/berth/pause:1"
	busyboxImage   = "localhost/berth/busybox:1"
	// callTimeout bounds every CRI call.
	callTimeout = 2 * time.Minute
)

// daemon is the containerd the tests run against.
var daemon *containerdProcess

func TestMain(m *testing.M) {
	flag.StringVar(&handlerBerth, "handler", handlerBerth, `runtime handler of berth's pods: berth (pause image), berth-builtin (built-in pause), berth-noopts (no options table), berth-native (native snapshotter), "" (CRI's default, with -default-runtime)`)
	flag.Parse()
	if os.Geteuid() != 0 {
		// Not a skip: a suite that passes without running proves nothing.
		fmt.Fprintln(os.Stderr, "FAIL: the integration tests need root (they run containerd, runc and CNI)")
		os.Exit(1)
	}
	var err error
	daemon, err = startContainerd(*binDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start containerd:", err)
		if daemon != nil {
			daemon.stop()
		}
		os.Exit(1)
	}
	code := m.Run()
	if err := daemon.stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop containerd:", err)
		code = 1
	}
	os.Exit(code)
}

// containerdProcess is a containerd this test binary started, with its
// config and state under dir.
type containerdProcess struct {
	dir     string
	bin     string
	cmd     *exec.Cmd
	logPath string
	// berthd, with -berthd, is the berthd beside containerd.
	berthd        *exec.Cmd
	berthdLogPath string
	conn          *grpc.ClientConn
	runtime       runtimeapi.RuntimeServiceClient
	images        runtimeapi.ImageServiceClient
	client        *containerd.Client
}

func (d *containerdProcess) socket() string { return filepath.Join(d.dir, "containerd.sock") }

// criRoot and criState are CRI's directories; berthRoot and berthState are
// berth's.
func (d *containerdProcess) criRoot() string {
	return filepath.Join(d.dir, "root", "io.containerd.grpc.v1.cri")
}
func (d *containerdProcess) criState() string {
	return filepath.Join(d.dir, "state", "io.containerd.grpc.v1.cri")
}
func (d *containerdProcess) berthRoot() string {
	return filepath.Join(d.dir, "root", "io.containerd.sandbox.controller.v1.berth")
}
func (d *containerdProcess) berthState() string {
	return filepath.Join(d.dir, "state", "io.containerd.sandbox.controller.v1.berth")
}

func startContainerd(bin string) (*containerdProcess, error) {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "berth-it-")
	if err != nil {
		return nil, err
	}
	// Searchable by all, as /var/lib/containerd and /run/containerd are: the
	// root of a pod's user namespace is not the host's root and must reach
	// its bundle and rootfs under it.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	d := &containerdProcess{dir: dir, bin: bin, logPath: filepath.Join(dir, "containerd.log"), berthdLogPath: filepath.Join(dir, "berthd.log")}
	// The CNI bridge is the tests' own; one left by an earlier run may carry
	// another subnet's address.
	deleteBridge()
	// Tests run in the package directory; the script is the one make up uses.
	render := exec.Command("../hack/render-config.sh", dir, bin, *testBridge, *testSubnet, *testMetrics)
	if out, err := render.CombinedOutput(); err != nil {
		return d, fmt.Errorf("render config: %w: %s", err, out)
	}
	if *defaultRuntime != "" {
		if err := setDefaultRuntime(filepath.Join(dir, "config.toml"), *defaultRuntime); err != nil {
			return d, err
		}
	}
	if *berthdMode {
		if err := d.addProxyPlugin(); err != nil {
			return d, err
		}
	}
	if err := d.start(); err != nil {
		return d, err
	}
	for _, image := range []string{"pause.tar", "busybox.tar"} {
		if err := d.importImage(filepath.Join(bin, "images", image)); err != nil {
			return d, err
		}
	}
	return d, nil
}

// setDefaultRuntime makes handler CRI's default runtime in config.
func setDefaultRuntime(config, handler string) error {
	b, err := os.ReadFile(config)
	if err != nil {
		return err
	}
	const key = "default_runtime_name = 'runc'"
	if !strings.Contains(string(b), key) {
		return fmt.Errorf("%s has no %s", config, key)
	}
	return os.WriteFile(config, []byte(strings.Replace(string(b), key, "default_runtime_name = '"+handler+"'", 1)), 0o644)
}

// start runs containerd on d's directory, with -berthd after berthd if
// berthd does not run, and connects to it.
func (d *containerdProcess) start() error {
	if *berthdMode && d.berthd == nil {
		if err := d.startBerthd(); err != nil {
			return err
		}
	}
	binary := "containerd"
	switch {
	case *berthdMode:
		binary = "containerd-stock"
	case *failpoints:
		binary = "containerd-failpoint"
	}
	cmd, err := d.run(d.logPath, binary, "--config", filepath.Join(d.dir, "config.toml"), "--log-level", "debug")
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	d.cmd = cmd
	return d.connect()
}

// run starts binary of d.bin with args, logging to logPath.
func (d *containerdProcess) run(logPath, binary string, args ...string) (*exec.Cmd, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(d.bin, binary), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PATH="+d.bin+":"+os.Getenv("PATH"))
	// Its own process group: a signal to the test binary's group does not
	// reach it before the tests have cleaned up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, cmd.Start()
}

// berthdSocket is where berthd serves, with -berthd.
func (d *containerdProcess) berthdSocket() string { return filepath.Join(d.dir, "berthd.sock") }

// addProxyPlugin sends containerd's calls for sandboxer berth to berthd.
func (d *containerdProcess) addProxyPlugin() error {
	f, err := os.OpenFile(filepath.Join(d.dir, "config.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "\n[proxy_plugins.%s]\n  type = \"sandbox\"\n  address = %q\n", sandboxerBerth, d.berthdSocket())
	return err
}

// startBerthd runs berthd on d's config and waits for its socket.
func (d *containerdProcess) startBerthd() error {
	binary := "berthd"
	if *failpoints {
		binary = "berthd-failpoint"
	}
	cmd, err := d.run(d.berthdLogPath, binary, "--containerd-config", filepath.Join(d.dir, "config.toml"),
		"--address", d.berthdSocket(), "--metrics-address", *berthdMetrics, "--log-level", "debug")
	if err != nil {
		return fmt.Errorf("start berthd: %w", err)
	}
	d.berthd = cmd
	if !within(30*time.Second, func() bool { return dial(d.berthdSocket()) == nil }) {
		b, _ := os.ReadFile(d.berthdLogPath)
		return fmt.Errorf("berthd socket did not appear; log: %s", tail(b))
	}
	return nil
}

// dial checks that socket accepts connections.
func dial(socket string) error {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	return c.Close()
}

// kill sends sig to containerd, and with -berthd to berthd, and waits for
// them to exit. Shims and pods live on, as they do when a node's
// containerd crashes.
func (d *containerdProcess) kill(sig syscall.Signal) error {
	if err := d.killContainerd(sig); err != nil {
		return err
	}
	if d.berthd != nil {
		return d.killBerthd(sig)
	}
	return nil
}

// killContainerd sends sig to containerd alone and waits for it to exit.
func (d *containerdProcess) killContainerd(sig syscall.Signal) error {
	d.client.Close()
	d.conn.Close()
	return signalAndWait(d.cmd, sig)
}

// killBerthd sends sig to berthd, with -berthd, and waits for it to exit.
func (d *containerdProcess) killBerthd(sig syscall.Signal) error {
	err := signalAndWait(d.berthd, sig)
	d.berthd = nil
	return err
}

func signalAndWait(cmd *exec.Cmd, sig syscall.Signal) error {
	if err := cmd.Process.Signal(sig); err != nil {
		return err
	}
	_ = cmd.Wait()
	return nil
}

// connect waits for containerd's socket and dials CRI and containerd.
func (d *containerdProcess) connect() error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", d.socket()); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd socket did not appear; log: %s", d.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+d.socket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	d.conn = conn
	d.runtime = runtimeapi.NewRuntimeServiceClient(conn)
	d.images = runtimeapi.NewImageServiceClient(conn)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.runtime.Version(ctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRI did not answer: %w; log: %s", err, d.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.client, err = containerd.New(d.socket(), containerd.WithDefaultNamespace("k8s.io"))
	return err
}

func (d *containerdProcess) importImage(path string) error {
	out, err := exec.Command(filepath.Join(d.bin, "ctr"), "-a", d.socket(), "-n", "k8s.io",
		"images", "import", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s: %w: %s", path, err, out)
	}
	return nil
}

// stop ends the containerd this binary started (SIGTERM, then SIGKILL) and
// removes its directory, unmounting what is still mounted under it.
func (d *containerdProcess) stop() error {
	// Pods a failed test left behind would outlive containerd: their shims
	// and pause processes run on their own.
	d.removeAllPods()
	// So would berth's shim keepers, which are no pods.
	d.removeKeepers()
	if d.client != nil {
		d.client.Close()
	}
	if d.conn != nil {
		d.conn.Close()
	}
	for _, cmd := range []*exec.Cmd{d.cmd, d.berthd} {
		if cmd != nil && cmd.Process != nil {
			terminate(cmd)
		}
	}
	if *keep {
		fmt.Println("containerd directory kept:", d.dir)
		return nil
	}
	deleteBridge()
	for _, m := range mountsUnder(d.dir) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	return os.RemoveAll(d.dir)
}

// removeAllPods stops and removes every pod CRI lists, best effort.
func (d *containerdProcess) removeAllPods() {
	if d.runtime == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	list, err := d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return
	}
	for _, sb := range list.GetItems() {
		fmt.Fprintln(os.Stderr, "removing pod left behind:", sb.GetId())
		_, _ = d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.GetId()})
		_, _ = d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.GetId()})
	}
}

// keeperFilter lists berth's shim keepers. Tests may trust the label
// berth puts on its own keepers: no pod of theirs sets it.
var keeperFilter = "labels." + strconv.Quote(controller.LabelKind) + "==" + controller.LabelKindKeeper

// removeKeepers kills and removes berth's shim keepers, best effort.
func (d *containerdProcess) removeKeepers() {
	if d.client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), controller.Namespace), time.Minute)
	defer cancel()
	keepers, _ := d.client.Containers(ctx, keeperFilter)
	for _, c := range keepers {
		if task, err := c.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, containerd.WithProcessKill)
		}
		_ = c.Delete(ctx)
	}
}

func deleteBridge() {
	_ = exec.Command("ip", "link", "delete", *testBridge).Run()
}

// logTail is the end of containerd's log, for failure messages.
// terminate sends cmd SIGTERM, and SIGKILL if it has not exited 30 s on.
func terminate(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (d *containerdProcess) logTail() string {
	b, _ := os.ReadFile(d.logPath)
	return tail(b)
}

// tail is the end of a log, to quote in an error.
func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// mountsUnder lists mount points under dir, deepest first.
func mountsUnder(dir string) []string { return hostproc.Mounts(dir) }
