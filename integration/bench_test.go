package integration

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkCompare drives CRI as kubelet does with each handler of
// -bench-handlers in the same containerd, in alternating blocks so that
// machine noise hits every handler alike, and writes bench.json, bench.md
// and bench.png to -bench-out. Run it with `make bench`.
var (
	benchOut      = flag.String("bench-out", "", "directory for bench.json, bench.md and bench.png")
	benchHandlers = flag.String("bench-handlers", "runc,runc-grouped,berth,berth-solo,berth-builtin,runc",
		"handlers to compare; the first is the baseline of the ratios, a repeated one measures noise")
	benchSerial   = flag.Int("bench-serial", 20, "serial lifecycles per handler")
	benchParallel = flag.Int("bench-parallel", 40, "lifecycles per handler run 8 at a time")
	benchBlock    = flag.Int("bench-block", 8, "lifecycles per handler before the next handler's turn (serial)")
	benchLive     = flag.String("bench-live", "10,100,300", "live pod counts at which containerd's RSS and goroutines, and the node memory of shims and pause processes, are read")
	// Each handler's live run takes about two minutes on 2 cores.
	benchLiveHandlers = flag.String("bench-live-handlers", "runc,runc-grouped,berth,berth-solo", "handlers whose live pods are measured")
	benchCount        = flag.Int("bench-count", 4, "lifecycles per handler through the counting runc and shim wrappers")
	benchPodsPerShim  = flag.String("bench-pods-per-shim", "", "comma-separated pods per shim N: adds a handler berth-ppsN, berth with N pods per shim, for -bench-handlers to name")
	benchWidth        = flag.Int("bench-width", 8, "lifecycles the parallel blocks run at once")
	benchNamespaces   = flag.Int("bench-namespaces", 1, "Kubernetes namespaces the bench's pods are spread over, round robin: berth's pods share shims only within one")
	benchShimKills    = flag.Int("bench-shim-kills", 3, "shims of podsPerShim pods killed per handler; the figure is the median kill's, beside the slowest; 0 kills none")
	benchIdlePods     = flag.Int("bench-idle-pods", 0, "pods of each handler that stay running, with no app container, while the lifecycles run: a node that already runs pods")
)

const (
	// statusCalls is how many PodSandboxStatus calls a lifecycle makes:
	// kubelet's PLEG asks for every pod's status every second; one in five
	// is verbose, as crictl inspectp asks.
	statusCalls = 10
	floorName   = "floor"
)

// Operations of a lifecycle, in the order a lifecycle runs them.
const (
	opRun    = "RunPodSandbox"
	opStatus = "PodSandboxStatus"
	// opStatusVerbose is what crictl inspectp asks for.
	opStatusVerbose   = "PodSandboxStatus verbose"
	opCreate          = "CreateContainer"
	opStart           = "StartContainer"
	opStopContainer   = "StopContainer"
	opStop            = "StopPodSandbox"
	opRemoveContainer = "RemoveContainer"
	opRemove          = "RemovePodSandbox"
	// opPod is RunPodSandbox + StopPodSandbox + RemovePodSandbox of one
	// lifecycle: the pod's own cost, comparable with the floor's.
	opPod       = "pod run+stop+remove"
	opLifecycle = "lifecycle"
)

// handlerStats holds what the bench measured for one handler.
type handlerStats struct {
	Name    string `json:"name"`
	Handler string `json:"handler"`
	// Latencies by mode ("serial", "parallel") and operation.
	latencies map[string]map[string][]time.Duration
	// Per mode: containerd CPU, wall time and lifecycles of its blocks.
	cpu        map[string]time.Duration
	wall       map[string]time.Duration
	lifecycles map[string]int
	// Calls per lifecycle through the counting wrappers: runc by
	// subcommand, the shim binary by subcommand.
	RuncCalls map[string]float64 `json:"runc_calls_per_lifecycle,omitempty"`
	ShimCalls map[string]float64 `json:"shim_calls_per_lifecycle,omitempty"`
	Live      []liveSample       `json:"live,omitempty"`
	// machineCPU is the whole machine's CPU during the blocks, by mode.
	machineCPU map[string]time.Duration
	// groupWait is the time berth's pods waited on other pods of their
	// shim group during the blocks, by mode (berth_sandbox_group_wait):
	// what sharing a shim costs a lifecycle, which a saturated machine's
	// CPU figures cannot show.
	groupWait map[string]time.Duration
	// ShimKill is how fast the pods of a killed shim were NOTREADY.
	ShimKill *shimKill `json:"shim_kill,omitempty"`
}

type liveSample struct {
	Pods       int `json:"pods"`
	RSSKiB     int `json:"rss_kib"`
	Goroutines int `json:"goroutines"`
	// Shims serving the pods, their PSS and the pause processes'.
	Shims       int `json:"shims"`
	ShimPSSKiB  int `json:"shim_pss_kib"`
	PausePSSKiB int `json:"pause_pss_kib"`
	// NodeKiBPerPod is what each pod costs the node outside its own
	// cgroup: shims, pause processes and containerd's growth.
	NodeKiBPerPod float64 `json:"node_kib_per_pod"`
}

func (h *handlerStats) record(mode string, lat map[string][]time.Duration) {
	if h.latencies[mode] == nil {
		h.latencies[mode] = map[string][]time.Duration{}
	}
	for op, d := range lat {
		h.latencies[mode][op] = append(h.latencies[mode][op], d...)
	}
}

func BenchmarkCompare(b *testing.B) {
	if *benchOut == "" {
		b.Skip("needs -bench-out DIR")
	}
	var stats []*handlerStats
	seen := map[string]int{}
	for _, h := range strings.Split(*benchHandlers, ",") {
		seen[h]++
		name := h
		if seen[h] > 1 {
			name = fmt.Sprintf("%s#%d", h, seen[h])
		}
		stats = append(stats, newHandlerStats(name, h))
	}
	floor := newHandlerStats(floorName, "")
	all := append([]*handlerStats{floor}, stats...)
	b.Logf("handlers %v, %d serial and %d parallel lifecycles each", *benchHandlers, *benchSerial, *benchParallel)

	start := time.Now()
	counter := installCounters(b, stats)
	for _, h := range all {
		countCalls(b, counter, h)
	}
	b.Logf("counted calls in %s", time.Since(start).Round(time.Second))

	idle := runIdlePods(b, stats)
	// A warm-up lifecycle per handler: the first pod of a handler loads what
	// every later one reuses.
	for _, h := range all {
		if _, err := lifecycleOf(h, "warmup", nil)(0); err != nil {
			b.Fatal(err)
		}
	}
	runBlocks(b, all, "serial", *benchSerial, *benchBlock, 1)
	b.Logf("serial done at %s", time.Since(start).Round(time.Second))
	runBlocks(b, all, "parallel", *benchParallel, 2*(*benchWidth), *benchWidth)
	b.Logf("parallel done at %s", time.Since(start).Round(time.Second))
	removeBenchPods(b, idle)

	for _, h := range stats {
		// containerd's memory depends on the handler, not on the run.
		if h.Name == h.Handler && slices.Contains(strings.Split(*benchLiveHandlers, ","), h.Handler) {
			measureLive(b, h)
		}
	}
	b.Logf("live pods done at %s", time.Since(start).Round(time.Second))
	for _, h := range stats {
		if h.Name == h.Handler && *benchShimKills > 0 {
			measureShimKill(b, h)
		}
	}
	b.Logf("shim kills done at %s", time.Since(start).Round(time.Second))

	r := newReport(floor, stats)
	if err := r.write(*benchOut); err != nil {
		b.Fatal(err)
	}
	b.Logf("wrote %s in %s", filepath.Join(*benchOut, "bench.{json,md,png}"), time.Since(start).Round(time.Second))
}

// runIdlePods runs -bench-idle-pods pods of each handler, for the
// lifecycles to run beside. A node rarely runs no pod at all: with one pod
// of a handler live, berth's next pods join that pod's running shim, where
// on an empty node each serial pod is its group's first and starts a shim.
func runIdlePods(b *testing.B, stats []*handlerStats) []string {
	var ids []string
	for _, h := range stats {
		if h.Name == h.Handler && *benchIdlePods > 0 {
			ids = append(ids, runBenchPods(b, h.Handler, "idle-"+h.Name, 0, *benchIdlePods)...)
		}
	}
	return ids
}

func newHandlerStats(name, handler string) *handlerStats {
	return &handlerStats{
		Name: name, Handler: handler,
		latencies:  map[string]map[string][]time.Duration{},
		cpu:        map[string]time.Duration{},
		machineCPU: map[string]time.Duration{},
		groupWait:  map[string]time.Duration{},
		wall:       map[string]time.Duration{},
		lifecycles: map[string]int{},
	}
}

// lifecycleFunc runs lifecycle i and returns its operations' latencies.
type lifecycleFunc func(i int) (map[string][]time.Duration, error)

// lifecycleOf is a lifecycle of h's handler through CRI, or the floor's;
// tag goes into the pods' names. With a counter it runs on the handler's
// counted copy, and the floor on the counter's runc and shim wrappers.
func lifecycleOf(h *handlerStats, tag string, counter *callCounter) lifecycleFunc {
	handler, runc, shim := h.Handler, "", ""
	if counter != nil {
		handler, runc, shim = h.Handler+countedSuffix, counter.runc(), counter.shim()
	}
	if h.Name == floorName {
		return func(i int) (map[string][]time.Duration, error) {
			return floorLifecycle(fmt.Sprintf("floor-%s-%d-%d", tag, i, time.Now().UnixNano()), runc, shim)
		}
	}
	return func(i int) (map[string][]time.Duration, error) {
		return criLifecycle(benchPodConfigFor(h.Handler, strings.ReplaceAll(h.Name, "#", "-")+"-"+tag, i), handler)
	}
}

// runBlocks runs n lifecycles per handler, block at a time each, rotating
// the handlers' order every round, width lifecycles at once.
func runBlocks(b *testing.B, all []*handlerStats, mode string, n, block, width int) {
	for round := 0; round*block < n; round++ {
		for k := range all {
			h := all[(round+k)%len(all)]
			count := min(block, n-round*block)
			cpuBefore, machineBefore, waitBefore := daemonCPU(b), machineCPU(b), groupWait(b)
			begin := time.Now()
			var mu sync.Mutex
			err := runParallel(count, width, func(i int) error {
				lat, err := lifecycleOf(h, mode, nil)(round*block + i)
				if err != nil {
					return err
				}
				mu.Lock()
				h.record(mode, lat)
				mu.Unlock()
				return nil
			})
			if err != nil {
				b.Fatalf("%s %s: %v", mode, h.Name, err)
			}
			h.wall[mode] += time.Since(begin)
			h.cpu[mode] += daemonCPU(b) - cpuBefore
			h.machineCPU[mode] += machineCPU(b) - machineBefore
			h.groupWait[mode] += groupWait(b) - waitBefore
			h.lifecycles[mode] += count
		}
	}
}

// criLifecycle runs a pod through CRI as kubelet does: run it, poll its
// status, run a container in it, stop and remove the container, then stop
// and remove the pod.
func criLifecycle(cfg *runtimeapi.PodSandboxConfig, handler string) (map[string][]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	rt := daemon.runtime
	lat := map[string]time.Duration{}
	begin := time.Now()
	timed := func(op string, call func() error) error {
		t0 := time.Now()
		if err := call(); err != nil {
			return fmt.Errorf("%s %s: %w", op, cfg.GetMetadata().GetName(), err)
		}
		lat[op] += time.Since(t0)
		return nil
	}
	var podID, ctrID string
	if err := timed(opRun, func() error {
		resp, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
		podID = resp.GetPodSandboxId()
		return err
	}); err != nil {
		return nil, err
	}
	samples := map[string][]time.Duration{}
	for i := range statusCalls {
		// Every fifth call is verbose.
		verbose := i%5 == 4
		op := opStatus
		if verbose {
			op = opStatusVerbose
		}
		t0 := time.Now()
		resp, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID, Verbose: verbose})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		samples[op] = append(samples[op], time.Since(t0))
		if resp.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
			return nil, fmt.Errorf("pod %s is %s", podID, resp.GetStatus().GetState())
		}
	}
	steps := []struct {
		op   string
		call func() error
	}{
		{opCreate, func() error {
			resp, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
				PodSandboxId: podID,
				Config: &runtimeapi.ContainerConfig{
					Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
					Image:    &runtimeapi.ImageSpec{Image: busyboxImage},
					Command:  []string{"sleep", "3600"},
					Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: kubeletContainerSecurity()},
				},
				SandboxConfig: cfg,
			})
			ctrID = resp.GetContainerId()
			return err
		}},
		{opStart, func() error {
			_, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctrID})
			return err
		}},
		{opStopContainer, func() error {
			_, err := rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: ctrID})
			return err
		}},
		{opStop, func() error {
			_, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID})
			return err
		}},
		{opRemoveContainer, func() error {
			_, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: ctrID})
			return err
		}},
		{opRemove, func() error {
			_, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
			return err
		}},
	}
	for _, s := range steps {
		if err := timed(s.op, s.call); err != nil {
			return nil, err
		}
	}
	lat[opLifecycle] = time.Since(begin)
	lat[opPod] = lat[opRun] + lat[opStop] + lat[opRemove]
	for op, d := range lat {
		samples[op] = []time.Duration{d}
	}
	return samples, nil
}

// daemonCPU is containerd's user+system CPU time so far, from
// /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s).
func daemonCPU(b testing.TB) time.Duration {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(daemon.cmd.Process.Pid), "stat"))
	if err != nil {
		b.Fatal(err)
	}
	// The command may hold spaces; fields are counted after its ')'.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// measureLive restarts containerd, so every handler starts from a fresh
// process, then reads its RSS and goroutines with 0 and then each
// -bench-live count of h's pods running, saves a heap profile as
// heap-<handler>.pprof, and removes the pods.
func measureLive(b *testing.B, h *handlerStats) {
	if err := daemon.kill(syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		b.Fatal(err)
	}
	settle := func(pods int) {
		time.Sleep(3 * time.Second)
		s, m := sampleDaemon(b), sampleNodeMemory(b)
		l := liveSample{Pods: pods, RSSKiB: s.rssKiB, Goroutines: s.goroutines, Shims: m.shims, ShimPSSKiB: m.shimKiB, PausePSSKiB: m.pauseKiB}
		if pods > 0 {
			l.NodeKiBPerPod = float64(m.shimKiB+m.pauseKiB+s.rssKiB-h.Live[0].RSSKiB) / float64(pods)
		}
		h.Live = append(h.Live, l)
	}
	settle(0)
	var ids []string
	for _, f := range strings.Split(*benchLive, ",") {
		target, err := strconv.Atoi(f)
		if err != nil {
			b.Fatalf("-bench-live: %v", err)
		}
		ids = append(ids, runBenchPods(b, h.Handler, "live-"+h.Handler, len(ids), target-len(ids))...)
		settle(len(ids))
	}
	// The heap with the most pods, to see what each live pod costs.
	heap, err := debugGet("/debug/pprof/heap?gc=1")
	if err != nil {
		b.Fatalf("containerd heap profile: %v", err)
	}
	if err := os.MkdirAll(*benchOut, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*benchOut, "heap-"+h.Name+".pprof"), heap, 0o644); err != nil {
		b.Fatal(err)
	}
	removeBenchPods(b, ids)
}

// groupWait is the time berth's pods have waited on other pods of their
// shim group so far, from containerd's metrics endpoint and, with the
// bench's berthd running, from berthd's.
func groupWait(b testing.TB) time.Duration {
	scrapes := []map[string]float64{scrapeMetrics(b)}
	if benchBerthdStarted {
		scrapes = append(scrapes, scrapeMetricsAt(b, benchBerthdMetrics))
	}
	var total float64
	for _, m := range scrapes {
		for series, v := range m {
			if strings.HasPrefix(series, "berth_sandbox_group_wait_seconds_sum") {
				total += v
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}
