package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostproc"
	"github.com/berth-dev/berth/placement"
)

// handlerGrouped is the built-in controller with pods that put themselves
// into shared shims through the runc shim's group annotation, which the
// handler's pod_annotations pass: what an operator can configure without
// berth, podsPerShim pods to a shim as berth's default groups them.
const handlerGrouped = "runc-grouped"

// benchPodConfigFor is benchPodConfig for handler: the grouped handler's
// pods carry their shim group.
func benchPodConfigFor(handler, prefix string, i int) *runtimeapi.PodSandboxConfig {
	cfg := benchPodConfig(prefix, i)
	if handler == handlerGrouped {
		cfg.Annotations = map[string]string{placement.GroupAnnotation: fmt.Sprintf("bench-%s-%d", prefix, i/podsPerShim)}
	}
	return cfg
}

// nodeMemory is what this containerd's pods cost the node beyond
// containerd itself: its shims and the pause processes they serve.
type nodeMemory struct {
	shims             int
	shimKiB, pauseKiB int
}

// sampleNodeMemory sums the proportional set size (PSS, which splits
// shared pages among their users) of every shim of this containerd and of
// every process it serves.
func sampleNodeMemory(b testing.TB) nodeMemory {
	var m nodeMemory
	for _, shim := range shimsOf("") {
		m.shims++
		m.shimKiB += pssKiB(b, shim)
		for _, child := range hostproc.Children(shim) {
			m.pauseKiB += pssKiB(b, child)
		}
	}
	return m
}

// pssKiB is the PSS of process pid, from /proc/<pid>/smaps_rollup; 0 for a
// process gone meanwhile.
func pssKiB(b testing.TB, pid int) int {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) >= 2 && fields[0] == "Pss:" {
			kib, err := strconv.Atoi(fields[1])
			if err != nil {
				b.Fatalf("smaps_rollup of %d: %v", pid, err)
			}
			return kib
		}
	}
	return 0
}

// machineCPU is the CPU time every process of the machine used so far,
// from /proc/stat: what a lifecycle costs the node, runc, shims, CNI and
// the kernel's work included.
func machineCPU(b testing.TB) time.Duration {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	// "cpu  user nice system idle iowait irq softirq steal ...", in ticks.
	f := strings.Fields(strings.SplitN(string(stat), "\n", 2)[0])
	var ticks int
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.Atoi(v)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// measureShimKill kills a shim serving podsPerShim pods of h's handler
// -bench-shim-kills times, each time a shim of fresh pods, and records how
// long until every pod that shim served was NOTREADY. One kill says
// little on a small machine: containerd forks a `shim delete` for every
// task of the dead shim at once, and its own goroutines, CRI's answers
// among them, wait for the Go processors and the CPUs those forks and
// processes hold (docs/performance.md, "Tenants and a shared shim's
// death").
func measureShimKill(b *testing.B, h *handlerStats) {
	k := &shimKill{}
	for round := range *benchShimKills {
		pods, took := killShimOnce(b, h, round)
		k.Pods = pods
		k.RoundsMS = append(k.RoundsMS, float64(took.Microseconds())/1000)
	}
	h.ShimKill = k
}

// killShimOnce runs podsPerShim pods of h's handler, SIGKILLs the shim
// serving the first, and returns how many pods that shim served and how
// long until the last of them was NOTREADY.
func killShimOnce(b *testing.B, h *handlerStats, round int) (int, time.Duration) {
	ids := runBenchPods(b, h.Handler, fmt.Sprintf("shimkill%d-%s", round, h.Name), 0, podsPerShim)
	defer removeKilledBenchPods(b, ids)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	pauseOf := func(id string) int {
		resp, err := daemon.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
		if err != nil {
			b.Fatal(err)
		}
		var info struct{ Pid int }
		if err := json.Unmarshal([]byte(resp.GetInfo()["info"]), &info); err != nil {
			b.Fatal(err)
		}
		return info.Pid
	}
	shim, err := hostproc.Parent(pauseOf(ids[0]))
	if err != nil {
		b.Fatal(err)
	}
	var victims []string
	for _, id := range ids {
		if p, err := hostproc.Parent(pauseOf(id)); err == nil && p == shim {
			victims = append(victims, id)
		}
	}
	// Each pod is watched by a poller of its own, so that the figure is
	// when the last pod turned NOTREADY, not the sum of one status call per
	// pod on a node busy with the dead shim's cleanup.
	start := time.Now()
	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		b.Fatal(err)
	}
	notReady := make([]time.Duration, len(victims))
	parallel(b, len(victims), len(victims), func(i int) error {
		for {
			resp, err := daemon.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: victims[i]})
			if err != nil {
				return err
			}
			if resp.GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
				notReady[i] = time.Since(start)
				return nil
			}
			if time.Since(start) > time.Minute {
				return fmt.Errorf("%s: pod %s READY a minute after its shim's death", h.Name, victims[i])
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	return len(victims), slices.Max(notReady)
}

// shimKill is how long the pods of a killed shim took to be NOTREADY, in
// each kill.
type shimKill struct {
	Pods     int       `json:"pods"`
	RoundsMS []float64 `json:"rounds_ms"`
}

// medianAndMax returns the median and the longest of the kills.
func (k *shimKill) medianAndMax() (median, longest float64) {
	sorted := slices.Sorted(slices.Values(k.RoundsMS))
	return sorted[(len(sorted)-1)/2], sorted[len(sorted)-1]
}
