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
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestUpdatePodResources resizes a pod in place through CRI as kubelet
// does: berth writes the pod cgroup's CPU quota and shares and memory
// limit, with the RuntimeClass overhead added back as kubelet sets it,
// keeps them across a containerd restart, and refuses what it cannot
// apply with the cgroup unchanged.
func TestUpdatePodResources(t *testing.T) {
	skipUnlessCgroupV1(t)
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

	if err := update(&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 256 << 20}, nil); err != nil {
		t.Fatalf("UpdatePodSandboxResources: %v", err)
	}
	want := map[string]string{
		"cpu/cpu.cfs_quota_us":         "50000",
		"cpu/cpu.cfs_period_us":        "100000",
		"cpu/cpu.shares":               "512",
		"memory/memory.limit_in_bytes": strconv.Itoa(256 << 20),
	}
	checkCgroup(t, parent, want)

	// A pod with a RuntimeClass overhead of 100m and 32Mi resized to
	// 300m/96Mi: kubelet passes the resources without the overhead and
	// sets the pod cgroup to their sum, 400m/128Mi.
	if err := update(
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 30000, CpuShares: 307, MemoryLimitInBytes: 96 << 20},
		&runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 10000, CpuShares: 102, MemoryLimitInBytes: 32 << 20},
	); err != nil {
		t.Fatalf("UpdatePodSandboxResources with overhead: %v", err)
	}
	want = map[string]string{
		"cpu/cpu.cfs_quota_us":         "40000",
		"cpu/cpu.cfs_period_us":        "100000",
		"cpu/cpu.shares":               "409",
		"memory/memory.limit_in_bytes": strconv.Itoa(128 << 20),
	}
	checkCgroup(t, parent, want)

	// 32 MiB in the pod's /dev/shm is charged to the pod's cgroup.
	startContainer(t, id, cfg, "sh", "-c", "head -c 33554432 /dev/zero > /dev/shm/fill; sleep 3600")
	eventually(t, 10*time.Second, "the pod uses 32 MiB", func() bool {
		b, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", parent, "memory.usage_in_bytes"))
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n >= 32<<20
	})
	for _, bad := range []struct {
		res  *runtimeapi.LinuxContainerResources
		code codes.Code
	}{
		{&runtimeapi.LinuxContainerResources{CpuQuota: 5}, codes.InvalidArgument},
		{&runtimeapi.LinuxContainerResources{MemoryLimitInBytes: -1}, codes.InvalidArgument},
		{&runtimeapi.LinuxContainerResources{CpuShares: 1}, codes.InvalidArgument},
		// cgroup v1 has no unified keys: refused, not dropped.
		{&runtimeapi.LinuxContainerResources{CpuQuota: 20000, CpuPeriod: 100000, Unified: map[string]string{"memory.high": "max"}}, codes.InvalidArgument},
		// Below what the pod uses: refused before anything is written.
		{&runtimeapi.LinuxContainerResources{CpuQuota: 20000, CpuPeriod: 100000, MemoryLimitInBytes: 16 << 20}, codes.FailedPrecondition},
	} {
		if s, _ := status.FromError(update(bad.res, nil)); s.Code() != bad.code {
			t.Errorf("UpdatePodSandboxResources(%v) = %v, want %s", bad.res, s.Err(), bad.code)
		}
	}
	checkCgroup(t, parent, want)

	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	checkCgroup(t, parent, want)
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
	checkCgroup(t, parent, map[string]string{
		"cpu/cpu.cfs_quota_us":         "50000",
		"memory/memory.limit_in_bytes": strconv.Itoa(160 << 20),
	})
}

// skipUnlessCgroupV1 skips tests that read cgroup v1 files and stats.
// berth handles v2 too; these tests only check v1, the hierarchy of the
// machines this project runs on.
func skipUnlessCgroupV1(t *testing.T) {
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("asserts cgroup v1 files; this host has cgroup v2 only")
	}
}

// checkCgroup compares cgroup v1 files of the pod cgroup parent.
func checkCgroup(t *testing.T, parent string, want map[string]string) {
	t.Helper()
	for file, v := range want {
		ctrl, name, _ := strings.Cut(file, "/")
		b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", ctrl, parent, name))
		if err != nil {
			t.Errorf("read %s: %v", file, err)
			continue
		}
		if got := strings.TrimSpace(string(b)); got != v {
			t.Errorf("%s of %s = %s, want %s", file, parent, got, v)
		}
	}
}

// TestPodMetrics reads a pod's metrics through containerd's sandbox
// controller API while a container in the pod burns CPU and fills memory.
func TestPodMetrics(t *testing.T) {
	skipUnlessCgroupV1(t)
	parent := "/berth-it-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() { removeCgroup(t, parent) })
	cfg := podConfig(t, withCgroupParent(parent))
	id := runPod(t, cfg, handlerBerth)
	// 32 MiB in the pod's /dev/shm is charged to the pod's memory.
	startContainer(t, id, cfg, "sh", "-c", "head -c 33554432 /dev/zero > /dev/shm/fill; while :; do :; done")

	ctrl := daemon.client.SandboxController(sandboxerBerth)
	read := func() *v1.Metrics {
		t.Helper()
		m, err := ctrl.Metrics(ctxT(t), id)
		if err != nil {
			t.Fatalf("Metrics: %v", err)
		}
		v, err := typeurl.UnmarshalAny(m.GetData())
		if err != nil {
			t.Fatal(err)
		}
		stats, ok := v.(*v1.Metrics)
		if !ok {
			t.Fatalf("metrics data is %T, want cgroup v1 metrics", v)
		}
		return stats
	}
	first := read()
	eventually(t, 10*time.Second, "pod CPU usage grows and memory holds the 32 MiB", func() bool {
		m := read()
		return m.GetCPU().GetUsage().GetTotal() > first.GetCPU().GetUsage().GetTotal()+uint64(100*time.Millisecond) &&
			m.GetMemory().GetUsage().GetUsage() >= 32<<20
	})
	m := read()
	t.Logf("pod cpu %s, memory %d MiB, pids %d", time.Duration(m.GetCPU().GetUsage().GetTotal()), m.GetMemory().GetUsage().GetUsage()>>20, m.GetPids().GetCurrent())

	if _, err := daemon.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.Metrics(ctxT(t), id); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Metrics of a stopped pod: %v, want FailedPrecondition", err)
	}
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
}

// scrapeMetrics reads berth's series from containerd's metrics endpoint,
// keyed by name and labels as Prometheus writes them.
func scrapeMetrics(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + *testMetrics + "/v1/metrics")
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
		if !strings.HasPrefix(line, "berth_") {
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
