package integration

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/pelletier/go-toml/v2"

	"github.com/berth-dev/berth/integration/hostproc"
)

// callCounter counts runc and shim invocations through wrappers that log
// their arguments before they exec the real binaries. Only the "-counted"
// copies of the handlers use the wrappers, so the latency runs pay nothing
// for them.
type callCounter struct {
	dir string
}

const countedSuffix = "-counted"

func (c *callCounter) runc() string    { return filepath.Join(c.dir, "runc") }
func (c *callCounter) shim() string    { return c.shimWrapping("") }
func (c *callCounter) runcLog() string { return c.runc() + ".log" }
func (c *callCounter) shimLog() string { return filepath.Join(c.dir, "shim.log") }

// shimWrapping is the wrapper of the shim at a handler's runtime_path
// (the runc shim's if ""), which all log to shimLog.
func (c *callCounter) shimWrapping(runtimePath string) string {
	if runtimePath == "" {
		runtimePath = hostproc.RuncShim
	}
	return filepath.Join(c.dir, filepath.Base(runtimePath))
}

// installCounters writes the wrappers, adds a counted copy of every CRI
// handler in stats to containerd's config, and a berth-pps<N> copy of berth
// for each -bench-pods-per-shim N, and restarts containerd on it.
func installCounters(b *testing.B, stats []*handlerStats) *callCounter {
	c := &callCounter{dir: filepath.Join(daemon.dir, "counters")}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		b.Fatal(err)
	}
	for path, real := range map[string]string{
		c.runc():                           filepath.Join(daemon.bin, "runc"),
		c.shim():                           filepath.Join(daemon.bin, hostproc.RuncShim),
		c.shimWrapping(hostproc.BerthShim): filepath.Join(daemon.bin, hostproc.BerthShim),
	} {
		log := c.runcLog()
		if path != c.runc() {
			log = c.shimLog()
		}
		script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >>%s\nexec %s \"$@\"\n", log, real)
		if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	var copies []handlerCopy
	berthd := slices.ContainsFunc(stats, func(h *handlerStats) bool { return h.Handler == handlerBerthd })
	if berthd {
		copies = append(copies, handlerCopy{from: handlerBerth, to: handlerBerthd, sandboxer: handlerBerthd})
	}
	for _, f := range strings.Split(*benchPodsPerShim, ",") {
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			b.Fatalf("-bench-pods-per-shim: %v", err)
		}
		copies = append(copies, handlerCopy{from: handlerBerth, to: fmt.Sprintf("berth-pps%d", n), podsPerShim: n})
	}
	var handlers []string
	for _, h := range stats {
		if !slices.Contains(handlers, h.Handler) {
			handlers = append(handlers, h.Handler)
		}
	}
	// The counted copies after the pods-per-shim ones, which they copy.
	for _, h := range handlers {
		copies = append(copies, handlerCopy{from: h, to: h + countedSuffix, runc: c.runc(), counter: c})
	}
	if err := addHandlers(filepath.Join(daemon.dir, "config.toml"), copies); err != nil {
		b.Fatal(err)
	}
	if err := daemon.kill(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	if berthd {
		startBenchBerthd(b)
	}
	if err := daemon.start(); err != nil {
		b.Fatal(err)
	}
	return c
}

// handlerBerthd is the bench's berthd handler: berth served by a berthd
// of that name beside the containerd with berth built in, so that the two
// ways of running berth are measured side by side, in one containerd.
const handlerBerthd = "berthd"

// benchBerthdMetrics is where the bench's berthd serves its series, and
// benchBerthdStarted says it runs.
const benchBerthdMetrics = "127.0.0.1:1343"

var benchBerthdStarted bool

// startBenchBerthd adds berthd as proxy plugin handlerBerthd to
// containerd's config and starts it, for the rest of the bench. Its own
// table is absent from the config: berth's defaults, which the config's
// berth table repeats.
func startBenchBerthd(b *testing.B) {
	socket := filepath.Join(daemon.dir, "berthd-bench.sock")
	f, err := os.OpenFile(filepath.Join(daemon.dir, "config.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "\n[proxy_plugins.%s]\n  type = 'sandbox'\n  address = '%s'\n", handlerBerthd, socket)
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	cmd, err := daemon.run(filepath.Join(daemon.dir, "berthd-bench.log"), "berthd", "--sandboxer", handlerBerthd,
		"--containerd-config", filepath.Join(daemon.dir, "config.toml"), "--address", socket, "--metrics-address", benchBerthdMetrics)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		terminate(cmd)
		benchBerthdStarted = false
	})
	if !within(30*time.Second, func() bool { return dial(socket) == nil }) {
		b.Fatalf("berthd %s did not listen on %s", handlerBerthd, socket)
	}
	benchBerthdStarted = true
}

// handlerCopy is a runtime handler the bench adds to the config, a copy of
// another with its built-in pause and pods per shim.
type handlerCopy struct {
	from, to string
	// runc, if set, replaces the copy's runc binary.
	runc string
	// counter, if set, replaces the copy's shim with its wrapper.
	counter *callCounter
	// podsPerShim, if set, replaces the copy's pods per shim.
	podsPerShim int
	// sandboxer, if set, replaces the copy's sandboxer.
	sandboxer string
}

// addHandlers adds copies to the config file at path, in order.
func addHandlers(path string, copies []handlerCopy) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := toml.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	plugins := cfg["plugins"].(map[string]any)
	runtimes := plugins["io.containerd.cri.v1.runtime"].(map[string]any)["containerd"].(map[string]any)["runtimes"].(map[string]any)
	berth := plugins["io.containerd.sandbox.controller.v1.berth"].(map[string]any)
	builtin, _ := berth["builtin_pause_handlers"].([]any)
	perShim, _ := berth["handler_pods_per_shim"].(map[string]any)
	if perShim == nil {
		perShim = map[string]any{}
	}
	for _, c := range copies {
		rt, ok := runtimes[c.from].(map[string]any)
		if !ok {
			return fmt.Errorf("no runtime handler %q in %s", c.from, path)
		}
		cp := maps.Clone(rt)
		opts := map[string]any{}
		if o, ok := rt["options"].(map[string]any); ok {
			opts = maps.Clone(o)
		}
		if c.runc != "" {
			opts["BinaryName"] = c.runc
		}
		if c.counter != nil {
			path, _ := rt["runtime_path"].(string)
			cp["runtime_path"] = c.counter.shimWrapping(path)
		}
		cp["options"] = opts
		if c.sandboxer != "" {
			cp["sandboxer"] = c.sandboxer
		}
		runtimes[c.to] = cp
		if slices.Contains(builtin, any(c.from)) {
			builtin = append(builtin, c.to)
		}
		if c.podsPerShim > 0 {
			perShim[c.to] = c.podsPerShim
		} else if n, ok := perShim[c.from]; ok {
			perShim[c.to] = n
		}
	}
	berth["builtin_pause_handlers"] = builtin
	berth["handler_pods_per_shim"] = perShim
	out, err := toml.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}

// countCalls runs -bench-count lifecycles of h through the wrappers and
// records h's runc and shim invocations per lifecycle, by subcommand.
func countCalls(b *testing.B, c *callCounter, h *handlerStats) {
	for _, f := range []string{c.runcLog(), c.shimLog()} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			b.Fatal(err)
		}
	}
	for i := range *benchCount {
		if _, err := lifecycleOf(h, "counted", c)(i); err != nil {
			b.Fatalf("counted lifecycle of %s: %v", h.Name, err)
		}
	}
	// Exits are handled after Stop returns; let their deletes land.
	time.Sleep(time.Second)
	h.RuncCalls = perLifecycle(c.runcLog(), runcSubcommands)
	h.ShimCalls = perLifecycle(c.shimLog(), []string{"start", "delete"})
}

var runcSubcommands = []string{"create", "start", "state", "kill", "delete", "exec", "update", "events", "ps", "pause", "resume", "features", "run", "list"}

// perLifecycle counts the log's lines by the first argument that is one of
// subcommands (global flags come first), divided by -bench-count, with
// their sum under "total".
func perLifecycle(log string, subcommands []string) map[string]float64 {
	raw, _ := os.ReadFile(log)
	counts := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		for _, arg := range strings.Fields(line) {
			if slices.Contains(subcommands, arg) {
				counts[arg] += 1 / float64(*benchCount)
				counts["total"] += 1 / float64(*benchCount)
				break
			}
		}
	}
	return counts
}

// floorLifecycle is the least any sandbox controller must do for a pod: a
// pause container and task created, started, killed and deleted directly
// through containerd, with no CRI and no CNI. runc and shim are the
// binaries the task runs with; "" means the defaults.
func floorLifecycle(id, runc, shim string) (map[string][]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	client := daemon.client
	lat := map[string][]time.Duration{}
	begin := time.Now()
	image, err := client.GetImage(ctx, pauseImage)
	if err != nil {
		return nil, err
	}
	if runc == "" {
		runc = filepath.Join(daemon.bin, "runc")
	}
	var taskOpts []containerd.NewTaskOpts
	if shim != "" {
		taskOpts = append(taskOpts, containerd.WithRuntimePath(shim))
	}
	container, err := client.NewContainer(ctx, id,
		containerd.WithImage(image),
		containerd.WithNewSnapshot(id, image),
		containerd.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: runc}),
		containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithAnnotations(map[string]string{"io.kubernetes.cri.sandbox-id": id})),
	)
	if err != nil {
		return nil, fmt.Errorf("floor container: %w", err)
	}
	task, err := container.NewTask(ctx, cio.NullIO, taskOpts...)
	if err != nil {
		return nil, fmt.Errorf("floor task: %w", err)
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		return nil, err
	}
	if err := task.Start(ctx); err != nil {
		return nil, fmt.Errorf("floor start: %w", err)
	}
	lat[opRun] = []time.Duration{time.Since(begin)}

	t0 := time.Now()
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		return nil, fmt.Errorf("floor kill: %w", err)
	}
	<-exited
	if _, err := task.Delete(ctx); err != nil {
		return nil, fmt.Errorf("floor task delete: %w", err)
	}
	lat[opStop] = []time.Duration{time.Since(t0)}

	t0 = time.Now()
	if err := container.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		return nil, fmt.Errorf("floor container delete: %w", err)
	}
	lat[opRemove] = []time.Duration{time.Since(t0)}
	total := time.Since(begin)
	lat[opPod] = []time.Duration{total}
	lat[opLifecycle] = []time.Duration{total}
	return lat, nil
}
