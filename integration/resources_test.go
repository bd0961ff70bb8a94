package integration

import (
	"context"
	"encoding/json"
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

// TestUpdatePodResources resizes a pod in place through CRI: berth writes
// the pod cgroup's CPU quota and shares and memory limit, keeps them across
// a containerd restart, and rejects nonsense.
func TestUpdatePodResources(t *testing.T) {
	skipUnlessCgroupV1(t)
	parent := "/berth-it-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() { removeCgroup(t, parent) })
	id := runPod(t, podConfig(t, withCgroupParent(parent)), handlerBerth)

	res := &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: 256 << 20}
	if _, err := daemon.runtime.UpdatePodSandboxResources(ctxT(t), &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: id, Resources: res,
	}); err != nil {
		t.Fatalf("UpdatePodSandboxResources: %v", err)
	}
	want := map[string]string{
		"cpu/cpu.cfs_quota_us":         "50000",
		"cpu/cpu.cfs_period_us":        "100000",
		"cpu/cpu.shares":               "512",
		"memory/memory.limit_in_bytes": strconv.Itoa(256 << 20),
	}
	checkCgroup(t, parent, want)

	for _, bad := range []*runtimeapi.LinuxContainerResources{
		{CpuQuota: 5},
		{MemoryLimitInBytes: -1},
		{CpuShares: 1},
	} {
		_, err := daemon.runtime.UpdatePodSandboxResources(ctxT(t), &runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: id, Resources: bad})
		if s, _ := status.FromError(err); s.Code() != codes.InvalidArgument {
			t.Errorf("UpdatePodSandboxResources(%v) = %v, want InvalidArgument", bad, err)
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
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatal(err)
	}
	if got := info.Resources.GetLinux(); got.GetCpuQuota() != 50000 || got.GetMemoryLimitInBytes() != 256<<20 {
		t.Errorf("berth's verbose status after a restart has resources %v, want the update", got)
	}
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

// TestPrometheusSeries scrapes containerd's metrics endpoint after a pod
// lifecycle: berth's series are there.
func TestPrometheusSeries(t *testing.T) {
	removePod(t, runPod(t, podConfig(t), handlerBerth))
	resp, err := http.Get("http://" + *testMetrics + "/v1/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, series := range []string{
		`berth_sandbox_sandboxes{state="ready"}`,
		`berth_sandbox_operation_seconds_count{operation="start"}`,
		`berth_sandbox_operation_seconds_count{operation="stop"}`,
		`berth_sandbox_operation_seconds_count{operation="shutdown"}`,
		`berth_sandbox_exit_retries_total`,
		`berth_sandbox_exit_retry_failures_total`,
		`berth_sandbox_recovery_duration_seconds`,
	} {
		if !strings.Contains(string(b), series) {
			t.Errorf("no %s in containerd's metrics", series)
		}
	}
}
