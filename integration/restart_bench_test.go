package integration

import (
	"context"
	"flag"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var (
	restartPods     = flag.Int("restart-pods", 300, "live pods per handler in BenchmarkRestart")
	restartHandlers = flag.String("restart-handlers", "berth,berth-solo,runc,runc-grouped,runc-berthshim", "handlers of BenchmarkRestart, in turn")
)

// BenchmarkRestart measures how long containerd takes, after a SIGKILL and
// a restart with -restart-pods live pods, until CRI reports every pod READY:
// with each of -restart-handlers' pods in turn (berth's with shared shims
// and with a shim per pod, both on berth's shim; the built-in controller's
// alone, grouped, and on berth's shim), in the same run. Run it with `make bench-restart`.
func BenchmarkRestart(b *testing.B) {
	for _, handler := range strings.Split(*restartHandlers, ",") {
		b.Run(handler, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				ids := runBenchPods(b, handler, handler, 0, *restartPods)
				if err := daemon.kill(syscall.SIGKILL); err != nil {
					b.Fatal(err)
				}

				b.StartTimer()
				start := time.Now()
				if err := daemon.start(); err != nil {
					b.Fatal(err)
				}
				answered := time.Since(start)
				for !allReady(ids) {
					time.Sleep(10 * time.Millisecond)
				}
				ready := time.Since(start)
				b.StopTimer()
				b.ReportMetric(ready.Seconds(), "s-to-all-ready")
				b.ReportMetric(answered.Seconds(), "s-to-CRI")
				b.Logf("%s: %d pods: CRI answered after %s, all READY after %s", handler, len(ids), answered.Round(time.Millisecond), ready.Round(time.Millisecond))

				removeBenchPods(b, ids)
			}
		})
	}
}

// benchPodConfig is pod i of a benchmark, named after prefix, in its
// Kubernetes namespace of -bench-namespaces, with the Linux namespaces
// kubelet asks for a pod without shareProcessNamespace.
func benchPodConfig(prefix string, i int) *runtimeapi.PodSandboxConfig {
	name := "bench-" + prefix + "-" + strconv.Itoa(i)
	namespace := "berth-bench"
	if *benchNamespaces > 1 {
		namespace += "-" + strconv.Itoa(i%*benchNamespaces)
	}
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
		}},
	}
}

// runBenchPods runs pods from..from+n-1 named after prefix with handler, 8
// at a time, and returns their IDs.
func runBenchPods(b *testing.B, handler, prefix string, from, n int) []string {
	ids := make([]string, n)
	parallel(b, n, 8, func(i int) error {
		resp, err := daemon.runtime.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{
			Config: benchPodConfigFor(handler, prefix, from+i), RuntimeHandler: handler,
		})
		ids[i] = resp.GetPodSandboxId()
		return err
	})
	return ids
}

// removeBenchPods stops and removes pods, 8 at a time.
func removeBenchPods(b *testing.B, ids []string) {
	parallel(b, len(ids), 8, func(i int) error { return removeBenchPod(ids[i]) })
}

// removeKilledBenchPods removes pods whose shim was killed, 8 at a time,
// retrying each for up to a minute as kubelet's garbage collection does:
// the built-in controller's removal can race containerd's cleanup of the
// dead shim and fail with "ttrpc: closed" (containerd/containerd#12387).
func removeKilledBenchPods(b *testing.B, ids []string) {
	parallel(b, len(ids), 8, func(i int) error {
		var err error
		if within(time.Minute, func() bool { err = removeBenchPod(ids[i]); return err == nil }) {
			return nil
		}
		return err
	})
}

// removeBenchPod stops and removes pod id.
func removeBenchPod(id string) error {
	ctx := context.Background()
	if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return err
	}
	_, err := daemon.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
	return err
}

// allReady reports whether CRI lists every pod in ids as READY.
func allReady(ids []string) bool {
	resp, err := daemon.runtime.ListPodSandbox(context.Background(), &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}},
	})
	if err != nil {
		return false
	}
	ready := map[string]bool{}
	for _, sb := range resp.GetItems() {
		ready[sb.GetId()] = true
	}
	for _, id := range ids {
		if !ready[id] {
			return false
		}
	}
	return true
}
