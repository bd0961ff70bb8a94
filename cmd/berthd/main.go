// Command berthd serves berth's sandbox controller to a stock containerd
// 2.4, as the proxy sandbox plugin containerd's config names:
//
//	[proxy_plugins.berth]
//	  type = "sandbox"
//	  address = "/run/berthd/berthd.sock"
//
// It reads containerd's own config for everything berth reads from CRI in
// process (runtime handlers, pause image, snapshotter, directories, where
// shims listen) and berth's settings from the same table as in process,
// [plugins."io.containerd.sandbox.controller.v1.berth"], so that an
// operator writes nothing twice and a node can move between the two ways
// of running berth with its pods in place.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/berth-dev/berth/containerdconfig"
	"github.com/berth-dev/berth/containerstore"
	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/sandboxapi"
	"github.com/berth-dev/berth/setup"
	"github.com/berth-dev/berth/shimproc"
)

// options are berthd's flags.
type options struct {
	// sandboxer is berth's name in containerd: its proxy_plugins key.
	sandboxer        string
	containerdConfig string
	// containerdConfigSet says --containerd-config was given: a missing
	// file is then an error, as for containerd's --config.
	containerdConfigSet bool
	// containerd are containerd's own --address, --root and --state, as
	// its service gives them (k3s, RKE2).
	containerd     containerdconfig.Overrides
	address        string
	metricsAddress string
	logLevel       string
	// waitContainerd bounds the wait for containerd to answer at start.
	waitContainerd time.Duration
	// version asks for berthd's version alone.
	version bool
}

func main() {
	var o options
	o.register(flag.CommandLine)
	flag.Parse()
	o.parsed(flag.CommandLine)
	if o.version {
		fmt.Println(versionLine())
		return
	}
	handleSIGPIPE()
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		log.L.WithError(err).Error("berthd")
		os.Exit(1)
	}
}

// handleSIGPIPE keeps berthd alive when its standard error, where it logs,
// is a pipe or socket whose reader went away (journald stopped, a log
// supervisor gone): Go kills a program on a write there unless SIGPIPE is
// handled, and the write fails EPIPE instead. Handled, as containerd does,
// not ignored: an ignored signal stays ignored in the processes berthd
// runs (runc, shims).
func handleSIGPIPE() {
	signal.Notify(make(chan os.Signal, 1), unix.SIGPIPE)
}

// register defines berthd's flags, into o, on fs.
func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.sandboxer, "sandboxer", setup.ID, "berth's name in containerd: the key of its [proxy_plugins.NAME], the sandboxer of its runtime handlers; it names berth's table and directories too")
	fs.StringVar(&o.containerdConfig, "containerd-config", defaults.DefaultConfigDir+"/config.toml", "containerd's config file, read for CRI's runtime handlers, directories and berth's settings")
	fs.StringVar(&o.address, "address", "/run/berthd/berthd.sock", "the unix socket berthd serves containerd's sandbox controller API on: the address of containerd's [proxy_plugins.NAME]")
	fs.StringVar(&o.metricsAddress, "metrics-address", "", "host:port to serve berth's Prometheus series on, at /v1/metrics; none if empty")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.DurationVar(&o.waitContainerd, "containerd-timeout", 0, "how long to wait for containerd to answer at start; 0 waits for as long as it takes")
	fs.StringVar(&o.containerd.Address, "containerd-address", "", "containerd's --address, if its service sets one: it wins over the config's, as in containerd")
	fs.StringVar(&o.containerd.Root, "containerd-root", "", "containerd's --root, if its service sets one")
	fs.StringVar(&o.containerd.State, "containerd-state", "", "containerd's --state, if its service sets one")
	fs.BoolVar(&o.version, "version", false, "print berthd's version and exit")
}

// parsed completes o once fs, on which register defined berthd's flags,
// is parsed.
func (o *options) parsed(fs *flag.FlagSet) {
	o.address = socketPath(o.address)
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "containerd-config" {
			o.containerdConfigSet = true
		}
	})
}

// loadNode reads containerd's config as containerd, started with o's
// flags, reads it: a config path given and missing fails, as it fails
// containerd, rather than be read as containerd's defaults, with none of
// the node's runtime handlers.
func loadNode(ctx context.Context, o options) (*containerdconfig.Node, error) {
	if o.containerdConfigSet {
		if _, err := os.Stat(o.containerdConfig); err != nil {
			return nil, fmt.Errorf("containerd config: %w", err)
		}
	}
	return containerdconfig.Load(ctx, o.containerdConfig, o.containerd)
}

// validate rejects flags berthd cannot run with before it touches
// anything.
func (o options) validate() error {
	// The name is a plugin ID and names berth's directories: a slash or
	// a dot-dot would put them elsewhere.
	if err := identifiers.Validate(o.sandboxer); err != nil {
		return fmt.Errorf("--sandboxer: %w", err)
	}
	if o.metricsAddress != "" {
		// Checked here as well as when it is listened on: a berthd that
		// containerd does not call never listens, and must fail a flag
		// it could never serve on all the same.
		if _, _, err := net.SplitHostPort(o.metricsAddress); err != nil {
			return fmt.Errorf("--metrics-address: %w: %w", errdefs.ErrInvalidArgument, err)
		}
	}
	if o.waitContainerd < 0 {
		return fmt.Errorf("--containerd-timeout %v is negative: %w", o.waitContainerd, errdefs.ErrInvalidArgument)
	}
	return nil
}

// run serves until ctx, which SIGINT and SIGTERM end, is done.
func run(ctx context.Context, o options) error {
	if err := o.validate(); err != nil {
		return err
	}
	if err := log.SetLevel(o.logLevel); err != nil {
		return err
	}
	if err := log.SetFormat(log.TextFormat); err != nil {
		return err
	}

	node, err := loadNode(ctx, o)
	if err != nil {
		return err
	}
	// berth's table and directories are named as the plugin's, so that
	// pods survive a move between the plugin and berthd.
	dirName := plugins.SandboxControllerPlugin.String() + "." + o.sandboxer
	cfg := setup.DefaultConfig()
	if err := node.DecodePlugin(ctx, dirName, cfg); err != nil {
		return err
	}
	cri, err := setup.DecodeCRI(node.CRIRuntime, node.CRIImages, node.Root, node.State)
	if err != nil {
		return err
	}
	if !checkProxy(ctx, node, o.sandboxer, o.address) {
		// containerd does not call this berthd, so the pods in berth's
		// directories are not its to take up: they may be served by
		// berth's own containerd build, which a node moved to with berthd
		// still enabled, or wait for the proxy plugin berthd was installed
		// before. Up for systemd, it waits to be restarted with containerd.
		notifyReady(ctx)
		<-ctx.Done()
		return nil
	}
	// Opened only for a berthd containerd calls, before anything is made:
	// one it does not call leaves the port to whoever serves berth.
	var metricsListener net.Listener
	if o.metricsAddress != "" {
		l, err := listenMetrics(o.metricsAddress)
		if err != nil {
			return err
		}
		defer l.Close()
		metricsListener = l
	}
	dirs := podsandbox.Dirs{
		Root:     filepath.Join(node.Root, dirName),
		State:    filepath.Join(node.State, dirName),
		CRIRoot:  cri.Root,
		CRIState: cri.State,
	}
	unlock, err := setup.LockRoot(dirs.Root)
	if err != nil {
		return err
	}
	defer unlock()

	l, err := listen(o.address)
	if err != nil {
		return err
	}
	server := sandboxapi.NewServer(o.sandboxer)
	hops := newHopMetrics()
	g := newGRPCServer(hops)
	server.Register(g)
	hops.server.InitializeMetrics(g)
	serveErr := make(chan error, 1)
	go func() { serveErr <- g.Serve(l) }()
	defer g.Stop()
	log.G(ctx).WithField("address", o.address).Info("berthd listening; calls wait for the recovery of its sandboxes")
	// Ready for systemd once listening, not once serving: containerd is
	// ordered after berthd (its CRI recovery asks berthd first), and
	// berthd's recovery waits for containerd.
	notifyReady(ctx)

	c, err := startController(ctx, o, cfg, cri, dirs, node, append(hops.clientOptions(), containerdConnOptions()...))
	if err != nil {
		if ctx.Err() != nil {
			// Stopped before containerd answered (it is down, or not yet
			// up): an ordinary stop, which systemd must not record as a
			// failure of the unit.
			log.G(ctx).WithError(err).Info("berthd stopping")
			return nil
		}
		return err
	}
	defer c.Close()
	if metricsListener != nil {
		// Scrapes before now wait in the listener's backlog: the series
		// are the controller's, which exists once containerd answers.
		go func() {
			if err := serveMetrics(ctx, metricsListener, c.MetricsNamespace(), hops.server, hops.client); err != nil {
				log.G(ctx).WithError(err).Error("berthd serves no metrics")
			}
		}()
	}
	server.Serve(c)
	log.G(ctx).Info("berthd serving")

	select {
	case <-ctx.Done():
		log.G(ctx).Info("berthd stopping")
	case err := <-serveErr:
		return fmt.Errorf("serve %s: %w", o.address, err)
	}
	// Waits in flight get Unavailable, which containerd's proxy retries
	// until a berthd answers again; the other calls in flight end before
	// the controller closes (deferred), so that none is cut short.
	server.Shutdown()
	drain(ctx, g, drainTimeout)
	return nil
}

// newGRPCServer is berthd's gRPC server, counted by hops. It takes and
// sends messages as large as containerd's proxy client does (16 MiB, not
// gRPC's 4): a pod config CRI hands berth in process (a Create carries it
// twice) reaches berthd too.
func newGRPCServer(hops hopMetrics) *grpc.Server {
	return grpc.NewServer(append(hops.serverOptions(),
		grpc.MaxRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
		grpc.MaxSendMsgSize(defaults.DefaultMaxSendMsgSize))...)
}

// drainTimeout bounds how long a stopping berthd lets the calls in flight
// finish: a Start or a Shutdown cut short leaves its undo to the next
// berthd's recovery. Under systemd's default stop timeout (90 s).
const drainTimeout = 30 * time.Second

// drain stops g once the calls in flight have ended, or after timeout.
func drain(ctx context.Context, g *grpc.Server, timeout time.Duration) {
	drained := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(timeout):
		log.G(ctx).WithField("timeout", timeout).Warn("calls still in flight; stopping without them")
		g.Stop()
	}
}

// startController waits for containerd to answer, then builds the
// controller and begins the recovery of its sandboxes.
func startController(ctx context.Context, o options, cfg *setup.Config, cri setup.CRI, dirs podsandbox.Dirs, node *containerdconfig.Node, dialOpts []grpc.DialOption) (*controller.Controller, error) {
	// Container records berthd wrote are read back from memory
	// (containerstore), through the client's own connection.
	var cc *client.Client
	records := containerstore.New(func() containers.Store {
		return client.NewRemoteContainerStore(containersapi.NewContainersClient(cc.Conn().(*grpc.ClientConn)))
	}, controller.Namespace)
	cc, err := client.New(node.GRPCAddress,
		client.WithDefaultNamespace(controller.Namespace),
		client.WithDefaultPlatform(platforms.Default()),
		client.WithExtraDialOpts(dialOpts),
		client.WithServices(client.WithContainerStore(records)),
	)
	if err != nil {
		return nil, fmt.Errorf("containerd client: %w", err)
	}
	if err := waitServing(ctx, cc, node.GRPCAddress, o.waitContainerd); err != nil {
		cc.Close()
		return nil, err
	}
	if err := checkContainerdVersion(ctx, cc); err != nil {
		cc.Close()
		return nil, err
	}
	return setup.NewController(ctx, cfg, setup.Node{
		Sandboxer: o.sandboxer,
		CRI:       cri.Config,
		Handlers:  cri.Handlers,
		Dirs:      dirs,
		Shims: shimproc.Sockets{
			ContainerdAddress: node.GRPCAddress,
			Dir:               node.ShimSocketDir,
			Bundles:           filepath.Join(node.State, plugins.RuntimePluginV2.String()+".task"),
			Namespace:         controller.Namespace,
		},
	}, cc)
}

// waitServing waits until containerd at address answers, for at most
// timeout (0: no bound): berthd may start before containerd, as at boot.
func waitServing(ctx context.Context, cc *client.Client, address string, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	for logged := false; ; logged = true {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		serving, err := cc.IsServing(attempt)
		cancel()
		if serving {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("containerd at %s does not answer: %w", address, errors.Join(ctx.Err(), err))
		}
		if !logged {
			log.G(ctx).WithError(err).WithField("address", address).Info("waiting for containerd")
		}
	}
}

// notifyReady tells systemd berthd is up (Type=notify).
func notifyReady(ctx context.Context) {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.G(ctx).WithError(err).Warn("tell systemd berthd is ready")
	}
}

// checkProxy says whether containerd, by its config, calls berthd as its
// sandbox controller name, logging why not, and warns when that proxy
// plugin's address is not berthd's (it may name the same socket another
// way).
func checkProxy(ctx context.Context, node *containerdconfig.Node, name, address string) bool {
	p, ok := node.ProxyPlugins[name]
	uri := plugins.SandboxControllerPlugin.String() + "." + name
	const until = "berthd serves nothing and takes up no pods until it is restarted with a config that"
	switch {
	case !ok:
		log.G(ctx).Errorf("containerd's config has no [proxy_plugins.%s]: %s has it", name, until)
		return false
	case p.Type != "sandbox" && p.Type != plugins.SandboxControllerPlugin.String():
		log.G(ctx).Errorf("containerd's [proxy_plugins.%s] is of type %q, not \"sandbox\": %s makes it a sandbox controller", name, p.Type, until)
		return false
	case slices.Contains(node.DisabledPlugins, uri):
		log.G(ctx).Errorf("containerd's config lists %s in disabled_plugins: %s enables it", uri, until)
		return false
	}
	dialed, ok := proxySocket(p.Address)
	switch {
	case !ok:
		log.G(ctx).Errorf("containerd's [proxy_plugins.%s] address %q is no socket containerd can dial (it dials unix:// and the address, which must be an absolute path, with no scheme): %s gives the socket's path alone", name, p.Address, until)
		return false
	case dialed != address:
		log.G(ctx).Warnf("containerd's [proxy_plugins.%s] address is %q, berthd serves %q", name, dialed, address)
	}
	return true
}

// proxySocket is the path of the unix socket containerd dials for a proxy
// plugin's address, and whether it can dial one: it puts unix:// before
// the address whatever it holds, and gRPC's unix resolver refuses a target
// with a host, which a scheme ("unix:///run/x.sock"), a relative path or
// an abstract socket's "@" name gives it.
func proxySocket(address string) (string, bool) {
	u, err := url.Parse(dialer.DialAddress(address))
	if err != nil || u.Host != "" || !filepath.IsAbs(u.Path) {
		return "", false
	}
	return u.Path, true
}

// socketPath is the path of --address, given with or without a unix://
// scheme, as kubelet's endpoints are.
func socketPath(address string) string {
	return strings.TrimPrefix(address, "unix://")
}

// listen binds the unix socket at address. A socket left by a berthd that
// died is replaced; anything else at address is an error.
func listen(address string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, err
	}
	if err := removeDeadSocket(address); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(address, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// removeDeadSocket removes the unix socket at address if it refuses
// connections: no process listens on it. What else may be there is not
// berthd's to remove: a file at a mistyped --address, or a socket whose
// connect fails otherwise (a full backlog, EAGAIN) that another process
// may still serve.
func removeDeadSocket(address string) error {
	fi, err := os.Lstat(address)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSocket == 0:
		return fmt.Errorf("%s is no socket; not replacing it: %w", address, errdefs.ErrAlreadyExists)
	}
	conn, err := net.DialTimeout("unix", address, time.Second)
	switch {
	case err == nil:
		conn.Close()
		return fmt.Errorf("another process serves %s: %w", address, errdefs.ErrAlreadyExists)
	case !errors.Is(err, unix.ECONNREFUSED):
		return fmt.Errorf("socket %s may be another process's; not replacing it: %w: %w", address, errdefs.ErrFailedPrecondition, err)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove dead socket: %w", err)
	}
	return nil
}
