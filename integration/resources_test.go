package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostcgroup"
)

// TestUpdatePodResources resizes a pod in place through CRI as kubelet
// does: berth writes the pod cgroup's CPU quota and shares and memory
// limit, with the RuntimeClass overhead added back as kubelet sets it,
// keeps them across a containerd restart, and refuses what it cannot
// apply with the cgroup unchanged. It reads the cgroup v1 or v2 files,
// whichever the host has (checkPodCgroup).
func TestUpdatePodResources(t *testing.T) {
	parent := "/berth-it-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() { removeCgroup(t, parent) })
	cfg := podConfig(t, withCgroupParent(parent))
	id := runPod(t, cfg, handlerBerth)
	update := func(res, overhead *runtimeapi.LinuxContainerResources) error {
		_, err := daemon.runtime.UpdatePodSandboxResources(ctxT(t), &runtimeapi.UpdatePodSandboxResourcesRequest{
			PodSandboxId: id, Resources: res, Overhead: overhead,
		})
		return err
	}

	// A label another client puts on the pause container outlives the
	// resize's record: berthd's client reads the container from what
	// berthd wrote last, and must not write that back whole.
	const ownerLabel = "example.com/owner"
	ctrs := daemon.client.ContainerService()
	if _, err := ctrs.Update(ctxT(t), containers.Container{ID: id, Labels: map[string]string{ownerLabel: "it"}}, "labels."+ownerLabel); err != nil {
		t.Fatal(err)
	}
	if err := update(&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 256 << 20}, nil); err != nil {
		t.Fatalf("UpdatePodSandboxResources: %v", err)
	}
	checkPodCgroup(t, parent, podLimits{quota: 50000, period: 100000, shares: 512, memory: 256 << 20})
	if ctr, err := ctrs.Get(ctxT(t), id); err != nil || ctr.Labels[ownerLabel] != "it" {
		t.Errorf("pause container's labels after a resize: %v (%v), want %s kept", ctr.Labels, err, ownerLabel)
	}

	// A pod with a RuntimeClass overhead of 100m and 32Mi resized to
	// 300m/96Mi: kubelet passes the resources without the overhead and
	// sets the pod cgroup to their sum, 400m/128Mi.
	if err := update(
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 30000, CpuShares: 307, MemoryLimitInBytes: 96 << 20},
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 102, MemoryLimitInBytes: 32 << 20},
	); err != nil {
		t.Fatalf("UpdatePodSandboxResources with overhead: %v", err)
	}
	want := podLimits{quota: 40000, period: 100000, shares: 409, memory: 128 << 20}
	checkPodCgroup(t, parent, want)

	// 32 MiB in the pod's /dev/shm is charged to the pod's cgroup.
	startContainer(t, id, cfg, "sh", "-c", "head -c 33554432 /dev/zero > /dev/shm/fill; sleep 3600")
	eventually(t, 10*time.Second, "the pod uses 32 MiB", func() bool {
		return podMemoryUsage(parent) >= 32<<20
	})
	// Unified keys: cgroup v1 has none, and refuses them rather than drop
	// them; cgroup v2 writes a controller's interface file and refuses any
	// other key.
	badUnified := map[string]string{"memory.high": "max"}
	if cgroups.Mode() == cgroups.Unified {
		badUnified = map[string]string{"cgroup.freeze": "1"}
		high := strconv.Itoa(192 << 20)
		if err := update(
			&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 30000, CpuShares: 307, MemoryLimitInBytes: 96 << 20, Unified: map[string]string{"memory.high": high}},
			&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 102, MemoryLimitInBytes: 32 << 20},
		); err != nil {
			t.Fatalf("UpdatePodSandboxResources with memory.high: %v", err)
		}
		file := filepath.Join("/sys/fs/cgroup", parent, "memory.high")
		if b, err := os.ReadFile(file); err != nil || strings.TrimSpace(string(b)) != high {
			t.Errorf("%s = %q (%v), want %s", file, b, err, high)
		}
	}
	for _, bad := range []struct {
		res  *runtimeapi.LinuxContainerResources
		code codes.Code
	}{
		{&runtimeapi.LinuxContainerResources{CpuQuota: 5}, codes.InvalidArgument},
		{&runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 100}, codes.InvalidArgument},
		{&runtimeapi.LinuxContainerResources{CpuShares: 1}, codes.InvalidArgument},
		{&runtimeapi.LinuxContainerResources{CpuQuota: 20000, CpuPeriod: 100000, Unified: badUnified}, codes.InvalidArgument},
		// Below what the pod uses: refused before anything is written.
		{&runtimeapi.LinuxContainerResources{CpuQuota: 20000, CpuPeriod: 100000, MemoryLimitInBytes: 16 << 20}, codes.FailedPrecondition},
	} {
		if s, _ := status.FromError(update(bad.res, nil)); s.Code() != bad.code {
			t.Errorf("UpdatePodSandboxResources(%v) = %v, want %s", bad.res, s.Err(), bad.code)
		}
	}
	checkPodCgroup(t, parent, want)

	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	checkPodCgroup(t, parent, want)
	st, err := daemon.client.SandboxController(sandboxerBerth).Status(ctxT(t), id, true)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Resources *runtimeapi.ContainerResources `json:"resources"`
		Overhead  *runtimeapi.ContainerResources `json:"overhead"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatal(err)
	}
	if got := info.Resources.GetLinux(); got.GetCpuQuota() != 30000 || got.GetMemoryLimitInBytes() != 96<<20 {
		t.Errorf("berth's verbose status after a restart has resources %v, want the last update", got)
	}
	if got := info.Overhead.GetLinux(); got.GetMemoryLimitInBytes() != 32<<20 {
		t.Errorf("berth's verbose status after a restart has overhead %v, want the last update's", got)
	}
	// The recovered sandbox resizes as before.
	if err := update(
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 40000, CpuShares: 409, MemoryLimitInBytes: 128 << 20},
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 102, MemoryLimitInBytes: 32 << 20},
	); err != nil {
		t.Fatalf("UpdatePodSandboxResources after the restart: %v", err)
	}
	// 400m + 100m is 512 shares, as kubelet converts them.
	checkPodCgroup(t, parent, podLimits{quota: 50000, period: 100000, shares: 512, memory: 160 << 20})

	// The CPU limit lifted (kubelet's quota -1, less the overhead's).
	if err := update(
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: -1 - 10000, CpuShares: 409, MemoryLimitInBytes: 128 << 20},
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 102, MemoryLimitInBytes: 32 << 20},
	); err != nil {
		t.Fatalf("UpdatePodSandboxResources without a CPU limit: %v", err)
	}
	checkPodCgroup(t, parent, podLimits{quota: -1, period: 100000, shares: 512, memory: 160 << 20})

	// A negative memory limit is none, and leaves the cgroup's: kubelet
	// reads cgroup v2's memory.max of "max" as -1, subtracts the overhead,
	// and sends it with a CPU resize.
	if err := update(
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 30000, CpuShares: 409, MemoryLimitInBytes: -1 - 32<<20},
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 102, MemoryLimitInBytes: 32 << 20},
	); err != nil {
		t.Fatalf("UpdatePodSandboxResources with memory max read back: %v", err)
	}
	checkPodCgroup(t, parent, podLimits{quota: 40000, period: 100000, shares: 512, memory: 160 << 20})
}

// podLimits are a pod cgroup's CPU and memory limits in CRI's terms, which
// are cgroup v1's: CPU quota and period in µs (a quota of -1 is none), CPU
// shares, and the memory limit in bytes.
type podLimits struct {
	quota  int64
	period uint64
	shares uint64
	memory int64
}

// checkPodCgroup compares the limits of the pod cgroup parent with want,
// in the files of the host's cgroup version (hostcgroup.Check): the
// version berth writes a pod's limits in (v1 on a hybrid host).
//   - v1: cpu.cfs_quota_us, cpu.cfs_period_us and cpu.shares in the cpu
//     hierarchy, memory.limit_in_bytes in the memory one.
//   - v2: cpu.max ("$MAX $PERIOD", $MAX "max" for no quota), cpu.weight
//     (the shares converted as kubelet converts them for the pod cgroup,
//     which is kubelet's, hostcgroup.KubeletWeight: 1024 shares are 39)
//     and memory.max. berth alone writes this cgroup here: no kubelet.
func checkPodCgroup(t *testing.T, parent string, want podLimits) {
	t.Helper()
	if err := hostcgroup.Check(parent, hostcgroup.Limits{
		Quota:     want.quota,
		Period:    want.period,
		CPUWeight: hostcgroup.CPUWeight(want.shares),
		Memory:    want.memory,
	}); err != nil {
		t.Error(err)
	}
}

// podMemoryUsage is the memory charged to the pod cgroup parent: v1's
// memory.usage_in_bytes, v2's memory.current; 0 if it cannot be read.
func podMemoryUsage(parent string) int64 {
	n, _ := hostcgroup.MemoryUsage(parent)
	return n
}

// podMetrics are the figures of a pod's metrics TestPodMetrics checks, as
// cgroup v1 and v2 metrics both have them.
type podMetrics struct {
	cpu    time.Duration // CPU time used
	memory uint64        // bytes charged (v1 memory.usage_in_bytes, v2 memory.current)
	pids   uint64
}

// TestPodMetrics reads a pod's metrics through containerd's sandbox
// controller API while a container in the pod burns CPU and fills memory:
// cgroup v2 metrics on a cgroup v2 host, v1 metrics on any other.
func TestPodMetrics(t *testing.T) {
	parent := "/berth-it-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() { removeCgroup(t, parent) })
	cfg := podConfig(t, withCgroupParent(parent))
	id := runPod(t, cfg, handlerBerth)
	// 32 MiB in the pod's /dev/shm is charged to the pod's memory.
	startContainer(t, id, cfg, "sh", "-c", "head -c 33554432 /dev/zero > /dev/shm/fill; while :; do :; done")

	ctrl := daemon.client.SandboxController(sandboxerBerth)
	read := func() podMetrics { return readPodMetrics(t, id) }
	first := read()
	eventually(t, 10*time.Second, "pod CPU usage grows and memory holds the 32 MiB", func() bool {
		m := read()
		return m.cpu > first.cpu+100*time.Millisecond && m.memory >= 32<<20
	})
	m := read()
	if m.pids == 0 {
		t.Errorf("pod metrics count no pids, with a pause and a container running")
	}
	t.Logf("pod cpu %s, memory %d MiB, pids %d", m.cpu, m.memory>>20, m.pids)

	if _, err := daemon.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.Metrics(ctxT(t), id); !errdefs.IsUnavailable(err) {
		t.Errorf("Metrics of a stopped pod: %v, want Unavailable", err)
	}
}

// readPodMetrics reads pod id's metrics through containerd's sandbox
// controller API: cgroup v2 metrics on a cgroup v2 host, v1 on any other.
func readPodMetrics(t *testing.T, id string) podMetrics {
	t.Helper()
	m, err := daemon.client.SandboxController(sandboxerBerth).Metrics(ctxT(t), id)
	if err != nil {
		t.Fatalf("Metrics: %v", err)
	}
	v, err := typeurl.UnmarshalAny(m.GetData())
	if err != nil {
		t.Fatal(err)
	}
	unified := cgroups.Mode() == cgroups.Unified
	switch s := v.(type) {
	case *v1.Metrics:
		if !unified {
			return podMetrics{time.Duration(s.GetCPU().GetUsage().GetTotal()), s.GetMemory().GetUsage().GetUsage(), s.GetPids().GetCurrent()}
		}
	case *v2.Metrics:
		if unified {
			return podMetrics{time.Duration(s.GetCPU().GetUsageUsec()) * time.Microsecond, s.GetMemory().GetUsage(), s.GetPids().GetCurrent()}
		}
	}
	t.Fatalf("metrics data is %T on a host with cgroups mode %d (cgroup v2 only: %v)", v, cgroups.Mode(), unified)
	return podMetrics{}
}

// TestPodMetricsOfPause: a pod without a cgroup of its own (the root for
// its parent) reports its pause container's cgroup, as the shim reads it:
// the pause alone, once runc's init (threads of its own, which the pids
// controller counts) has become it, which runc start does not wait for.
func TestPodMetricsOfPause(t *testing.T) {
	id := runPod(t, podConfig(t, withCgroupParent("/")), handlerBerth)
	eventually(t, 10*time.Second, "the pause container's metrics count the pause", func() bool {
		return readPodMetrics(t, id).pids == 1
	})
}

// TestPrometheusSeries scrapes containerd's metrics endpoint around one pod
// lifecycle: berth's series count it.
func TestPrometheusSeries(t *testing.T) {
	before := scrapeMetrics(t)
	id := runPod(t, podConfig(t), handlerBerth)
	running := scrapeMetrics(t)
	removePod(t, id)
	after := scrapeMetrics(t)

	if d := running[`berth_sandbox_sandboxes{state="ready"}`] - before[`berth_sandbox_sandboxes{state="ready"}`]; d != 1 {
		t.Errorf("ready sandboxes grew by %v with the pod running, want 1", d)
	}
	if d := after[`berth_sandbox_sandboxes{state="ready"}`] - before[`berth_sandbox_sandboxes{state="ready"}`]; d != 0 {
		t.Errorf("ready sandboxes grew by %v once the pod was removed, want 0", d)
	}
	for _, op := range []string{"start", "stop", "shutdown"} {
		series := fmt.Sprintf(`berth_sandbox_operation_seconds_count{operation=%q}`, op)
		if d := after[series] - before[series]; d != 1 {
			t.Errorf("%s grew by %v, want 1", series, d)
		}
	}
	// A lifecycle that goes well retries nothing.
	for series, v := range after {
		if strings.HasPrefix(series, "berth_sandbox_retries_total") && v != before[series] {
			t.Errorf("%s grew from %v to %v", series, before[series], v)
		}
	}
	if v, ok := after["berth_sandbox_recovery_duration_seconds"]; !ok || v <= 0 {
		t.Errorf("berth_sandbox_recovery_duration_seconds = %v (present: %v), want the time containerd's start took", v, ok)
	}
	if *berthdMode {
		checkHopSeries(t, before, after)
	}
}

// checkHopSeries checks that berthd's gRPC series counted one lifecycle's
// calls from containerd, and logs the calls berthd made to containerd for
// it: what running out of process adds to a lifecycle.
func checkHopSeries(t *testing.T, before, after map[string]float64) {
	t.Helper()
	served := func(method string) float64 {
		series := fmt.Sprintf(`grpc_server_handled_total{grpc_code="OK",grpc_method=%q,grpc_service="containerd.services.sandbox.v1.Controller",grpc_type="unary"}`, method)
		return after[series] - before[series]
	}
	for _, method := range []string{"Create", "Start", "Stop", "Shutdown"} {
		if d := served(method); d != 1 {
			t.Errorf("berthd served %v %s calls for one lifecycle, want 1", d, method)
		}
	}
	calls := map[string]float64{}
	var total float64
	for series, v := range after {
		if !strings.HasPrefix(series, "grpc_client_handled_total{") {
			continue
		}
		if d := v - before[series]; d > 0 {
			calls[series[len("grpc_client_handled_total"):]] = d
			total += d
		}
	}
	if calls[`{grpc_code="OK",grpc_method="Create",grpc_service="containerd.services.tasks.v1.Tasks",grpc_type="unary"}`] < 1 {
		t.Errorf("berthd's calls to containerd for one lifecycle count no task Create: %v", calls)
	}
	// A lifecycle that goes well asks containerd for nothing it does not
	// have: each such question is a round trip of the hop.
	for series := range calls {
		if !strings.Contains(series, `grpc_code="OK"`) {
			t.Errorf("berthd's call %s failed in a lifecycle that went well", series)
		}
	}
	t.Logf("berthd's calls to containerd for one lifecycle: %v in all, %v", total, calls)
}

// scrapeMetrics reads berth's series from containerd's metrics endpoint,
// keyed by name and labels as Prometheus writes them; with -berthd,
// berthd's, and the gRPC series of its hops too.
func scrapeMetrics(t testing.TB) map[string]float64 {
	t.Helper()
	address := *testMetrics
	if *berthdMode {
		// berth's series are berthd's, on its own endpoint.
		address = *berthdMetrics
	}
	return scrapeMetricsAt(t, address)
}

// scrapeMetricsAt reads the berth and gRPC series served at address.
func scrapeMetricsAt(t testing.TB, address string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + address + "/v1/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "berth_") && !strings.HasPrefix(line, "grpc_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}
