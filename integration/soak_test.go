package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestSoak runs -soak pod lifecycles (run, stop, remove), 8 at a time, then
// checks that nothing leaked and that containerd's goroutines and RSS came
// back to within 10% of where they were after a warm-up.
func TestSoak(t *testing.T) {
	if *soak == 0 {
		t.Skip("needs -soak N")
	}
	const width, warmup = 8, 32
	lifecycle := func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		resp, err := daemon.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{
			Config: podConfig(t, withName(strconv.Itoa(i))), RuntimeHandler: handlerBerth,
		})
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		id := resp.GetPodSandboxId()
		if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			return fmt.Errorf("stop %s: %w", id, err)
		}
		if _, err := daemon.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			return fmt.Errorf("remove %s: %w", id, err)
		}
		return nil
	}

	parallel(t, warmup, width, lifecycle)
	// Every connection the checks use is open before the baseline, so only
	// containerd's own goroutines are compared.
	snapshotsBefore := countSnapshots(t)
	assertNothingLeft(t)
	before := sampleDaemon(t)
	start := time.Now()
	parallel(t, *soak, width, func(i int) error { return lifecycle(warmup + i) })
	took := time.Since(start)
	// Let the last exits' goroutines finish.
	time.Sleep(2 * time.Second)
	after := sampleDaemon(t)

	t.Logf("%d lifecycles in %s (%.1f/s); goroutines %d -> %d; RSS %d KiB -> %d KiB",
		*soak, took.Round(time.Millisecond), float64(*soak)/took.Seconds(),
		before.goroutines, after.goroutines, before.rssKiB, after.rssKiB)
	if after.goroutines > before.goroutines*11/10 {
		t.Errorf("containerd goroutines grew from %d to %d; stacks that grew:\n%s", before.goroutines, after.goroutines, grownStacks(before.stacks, after.stacks))
	}
	if after.rssKiB > before.rssKiB*11/10 {
		t.Errorf("containerd RSS grew from %d KiB to %d KiB", before.rssKiB, after.rssKiB)
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
}

type daemonSample struct {
	goroutines int
	rssKiB     int
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
