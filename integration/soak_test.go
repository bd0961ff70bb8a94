package integration

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
)

var (
	soakIdle     = flag.Duration("soak-idle", 0, "how long the soak test leaves containerd idle after its lifecycles before it samples the heap again")
	soakProfiles = flag.String("soak-profiles", "", "directory for containerd's heap profiles at each sample of the soak test")
)

// Slack of the soak test's memory comparisons: the heap in use after a
// forced collection varies by a few spans between runs, RSS by what the
// runtime has not yet returned to the kernel.
const (
	soakHeapSlack = 1 << 20
	soakRSSSlack  = 4 << 20
)

// TestSoak runs -soak pod lifecycles with an app container each (criLifecycle,
// 8 at a time) on the built-in controller and then on berth, each in a
// fresh containerd process, and checks that nothing leaked, that
// containerd's goroutines came back to within 10% of where they were after
// a warm-up, and that berth holds no more memory for its pods than the
// built-in: containerd's heap in use (after a forced collection) grows no
// more from a tenth of the lifecycles to all of them, falls no more in
// -soak-idle with nothing running (what it held for pods that were gone),
// and its RSS grows no more from the warm-up to the end.
func TestSoak(t *testing.T) {
	if *soak == 0 {
		t.Skip("needs -soak N")
	}
	builtin := soakHandler(t, "built-in", handlerBuiltin)
	berth := soakHandler(t, "berth", handlerBerth)
	for _, r := range []soakRun{builtin, berth} {
		t.Logf("%s: %d lifecycles in %s (%.1f/s); goroutines %d -> %d; RSS %d -> %d KiB, %d KiB idle; heap in use %.1f MiB at %d, %.1f MiB at %d, %.1f MiB %s idle",
			r.name, *soak, r.took.Round(time.Millisecond), float64(*soak)/r.took.Seconds(),
			r.before.goroutines, r.late.goroutines, r.before.rssKiB, r.late.rssKiB, r.idle.rssKiB,
			mib(r.early.heapInuse), *soak/10, mib(r.late.heapInuse), *soak, mib(r.idle.heapInuse), *soakIdle)
	}
	if berth.heapGrowth() > builtin.heapGrowth()+soakHeapSlack {
		t.Errorf("berth's heap grew %.1f MiB from %d to %d lifecycles, the built-in's %.1f MiB", mib(berth.heapGrowth()), *soak/10, *soak, mib(builtin.heapGrowth()))
	}
	if *soakIdle > 0 && berth.idleFall() > builtin.idleFall()+soakHeapSlack {
		t.Errorf("berth's heap fell %.1f MiB in %s idle, the built-in's %.1f MiB: memory held for pods that were gone", mib(berth.idleFall()), *soakIdle, mib(builtin.idleFall()))
	}
	if berth.rssGrowth() > builtin.rssGrowth()+soakRSSSlack/1024 {
		t.Errorf("berth's RSS grew %d KiB over %d lifecycles and the idle time, the built-in's %d KiB", berth.rssGrowth(), *soak, builtin.rssGrowth())
	}
}

// soakRun is what a soak of one handler measured of containerd: after the
// warm-up, after a tenth of the lifecycles, after all of them, and after
// -soak-idle with nothing running.
type soakRun struct {
	name                      string
	before, early, late, idle daemonSample
	took                      time.Duration
}

func (r soakRun) heapGrowth() int64 { return int64(r.late.heapInuse) - int64(r.early.heapInuse) }
func (r soakRun) idleFall() int64   { return int64(r.late.heapInuse) - int64(r.idle.heapInuse) }

// rssGrowth is the RSS growth from the warm-up to the last sample, after
// the idle time if any: the runtime returns freed memory to the kernel
// over minutes, and the faster run has freed more of it later.
func (r soakRun) rssGrowth() int { return r.idle.rssKiB - r.before.rssKiB }

func mib[T int64 | uint64](b T) float64 { return float64(b) / (1 << 20) }

// soakHandler restarts containerd, so that the run starts from a fresh
// process, and soaks handler: a warm-up, then -soak lifecycles, sampled
// after the first tenth and at the end, then -soak-idle of nothing.
func soakHandler(t *testing.T, name, handler string) soakRun {
	t.Helper()
	if err := daemon.kill(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	const width, warmup = 8, 32
	lifecycle := func(i int) error {
		_, err := criLifecycle(benchPodConfig("soak-"+name, i), handler)
		return err
	}
	sample := func(tag string) daemonSample {
		// Let the last exits' goroutines finish.
		time.Sleep(2 * time.Second)
		s := sampleDaemon(t)
		s.heapInuse = sampleHeap(t, name+"-"+tag)
		return s
	}

	parallel(t, warmup, width, lifecycle)
	// Every connection the checks use is open before the baseline, so only
	// containerd's own goroutines are compared.
	snapshotsBefore := countSnapshots(t)
	assertNothingLeft(t)
	r := soakRun{name: name, before: sample("warm")}
	start := time.Now()
	early := max(*soak/10, 1)
	parallel(t, early, width, func(i int) error { return lifecycle(warmup + i) })
	r.early = sample(strconv.Itoa(early))
	parallel(t, *soak-early, width, func(i int) error { return lifecycle(warmup + early + i) })
	r.took = time.Since(start)
	r.late = sample(strconv.Itoa(*soak))
	r.idle = r.late
	if *soakIdle > 0 {
		time.Sleep(*soakIdle)
		r.idle = sample("idle")
	}

	if r.late.goroutines > r.before.goroutines*11/10 {
		t.Errorf("%s: containerd goroutines grew from %d to %d; stacks that grew:\n%s", name, r.before.goroutines, r.late.goroutines, grownStacks(r.before.stacks, r.late.stacks))
	}
	assertNothingLeft(t)
	if n := countSnapshots(t); n != snapshotsBefore {
		t.Errorf("leak: %d snapshots, %d before", n, snapshotsBefore)
	}
	if pids := shimsOf(""); len(pids) != 0 {
		t.Errorf("leak: shims %v", pids)
	}
	netns, _ := os.ReadDir(filepath.Join(daemon.criState(), "netns"))
	if len(netns) != 0 {
		t.Errorf("leak: %d netns files", len(netns))
	}
	return r
}

type daemonSample struct {
	goroutines int
	rssKiB     int
	// heapInuse is the heap in use after a forced collection, in bytes.
	heapInuse uint64
	// stacks counts goroutines by stack, from the debug=1 profile.
	stacks map[string]int
}

// grownStacks lists the stacks with more goroutines in after than before.
func grownStacks(before, after map[string]int) string {
	var b strings.Builder
	for stack, n := range after {
		if n > before[stack] {
			fmt.Fprintf(&b, "%d -> %d:\n%s\n", before[stack], n, stack)
		}
	}
	return b.String()
}

// sampleDaemon reads containerd's goroutine count from its pprof endpoint
// on the debug socket, and its RSS from /proc.
func sampleDaemon(t testing.TB) daemonSample {
	t.Helper()
	b, err := debugGet("/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatalf("containerd pprof: %v", err)
	}
	s := daemonSample{stacks: map[string]int{}}
	// "goroutine profile: total N", then "N @ addrs" and its frames per
	// stack, stacks separated by blank lines.
	if _, err := fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "goroutine profile: total %d", &s.goroutines); err != nil {
		t.Fatalf("parse goroutine profile: %v", err)
	}
	for _, block := range strings.Split(string(b), "\n\n")[1:] {
		head, frames, _ := strings.Cut(block, "\n")
		var n int
		if _, err := fmt.Sscanf(head, "%d @", &n); err == nil {
			s.stacks[frames] += n
		}
	}
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(daemon.cmd.Process.Pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			s.rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	return s
}

// sampleHeap returns containerd's heap in use, in bytes, after a forced
// collection, from its pprof endpoint. With -soak-profiles it keeps the
// heap profile as <dir>/heap-<tag>.pb.gz.
func sampleHeap(t testing.TB, tag string) uint64 {
	t.Helper()
	// gc=1 collects first; debug=1 ends with the runtime's MemStats.
	heap, err := debugGet("/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		t.Fatalf("containerd heap profile: %v", err)
	}
	var inuse uint64
	for _, line := range strings.Split(string(heap), "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapInuse = "); ok {
			inuse, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	if inuse == 0 {
		t.Fatal("containerd's heap profile has no HeapInuse")
	}
	if *soakProfiles != "" {
		profile, err := debugGet("/debug/pprof/heap")
		if err == nil {
			err = os.WriteFile(filepath.Join(*soakProfiles, "heap-"+tag+".pb.gz"), profile, 0o644)
		}
		if err != nil {
			t.Fatalf("keep containerd heap profile: %v", err)
		}
	}
	return inuse
}

// debugGet reads path from containerd's debug socket (pprof, expvar).
func debugGet(path string) ([]byte, error) {
	// No keep-alive: an idle scrape connection would count as a goroutine.
	hc := http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(daemon.dir, "debug.sock"))
	}}}
	resp, err := hc.Get("http://containerd" + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func countSnapshots(t *testing.T) int {
	t.Helper()
	n := 0
	for _, sn := range snapshotters {
		if err := daemon.client.SnapshotService(sn).Walk(ctxT(t), func(context.Context, snapshots.Info) error {
			n++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return n
}
