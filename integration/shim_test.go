package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/integration/hostproc"
)

// podsPerShim is the config's pods_per_shim, which berth's handlers but
// berth-solo have.
const podsPerShim = 16

// sharedPod is a pod of the shared-shim tests, with an app container that
// logs a line and sleeps, in a PID namespace of its own as kubelet makes it.
type sharedPod struct {
	cfg     *runtimeapi.PodSandboxConfig
	id, ctr string
}

func runSharedPods(t *testing.T, n int, opts ...podOpt) []*sharedPod {
	t.Helper()
	logs := t.TempDir()
	pods := make([]*sharedPod, n)
	for i := range pods {
		cfg := podConfig(t, append([]podOpt{withName(strconv.Itoa(i)), withKubeletNamespaces(), func(c *runtimeapi.PodSandboxConfig) {
			c.LogDirectory = filepath.Join(logs, strconv.Itoa(i))
		}}, opts...)...)
		p := &sharedPod{cfg: cfg, id: runPod(t, cfg, handlerBerth)}
		p.ctr = startContainerWith(t, p.id, cfg, func(c *runtimeapi.ContainerConfig) {
			c.LogPath = "app.log"
			c.Linux.SecurityContext = kubeletContainerSecurity()
		}, "sh", "-c", "echo hello-"+strconv.Itoa(i)+"; exec sleep 3600")
		pods[i] = p
	}
	return pods
}

// shimsServing maps each shim serving pods to the indexes of its pods.
func shimsServing(t *testing.T, pods []*sharedPod) map[int][]int {
	t.Helper()
	shims := map[int][]int{}
	for i, p := range pods {
		shims[shimOf(t, p.id)] = append(shims[shimOf(t, p.id)], i)
	}
	return shims
}

// TestSharedShim runs more pods than a shim takes, each with an app
// container: they share ceil(n/podsPerShim) shims, each pod's container in its
// pause's shim, with exec, logs and metrics per pod; after a containerd
// restart every task reconnects to its shim, and a new pod joins the group
// with room.
func TestSharedShim(t *testing.T) {
	const n = podsPerShim + 2
	pods := runSharedPods(t, n)
	shims := shimsServing(t, pods)
	if len(shims) != 2 {
		t.Fatalf("%d pods in %d shims %v, want 2", n, len(shims), shims)
	}
	check := func() {
		t.Helper()
		for i, p := range pods {
			ctrShim, err := hostproc.Parent(containerPid(t, p.ctr))
			if err != nil {
				t.Fatal(err)
			}
			if pauseShim := shimOf(t, p.id); ctrShim != pauseShim {
				t.Errorf("pod %d: container in shim %d, its pause in %d", i, ctrShim, pauseShim)
			}
			if out := execSync(t, p.ctr, "echo", "ok"); out != "ok\n" {
				t.Errorf("pod %d: exec: %q", i, out)
			}
			log, err := os.ReadFile(filepath.Join(p.cfg.LogDirectory, "app.log"))
			if err != nil || !strings.Contains(string(log), "hello-"+strconv.Itoa(i)) {
				t.Errorf("pod %d: log %q, %v", i, log, err)
			}
			if _, err := daemon.client.SandboxController(sandboxerBerth).Metrics(ctxT(t), p.id); err != nil {
				t.Errorf("pod %d: Metrics: %v", i, err)
			}
		}
	}
	check()

	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if got := podStatus(t, p.id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod %s is %v after the restart", p.id, got)
		}
	}
	if after := shimsServing(t, pods); len(after) != len(shims) {
		t.Errorf("shims after the restart %v, before %v", after, shims)
	}
	check()
	// The group with room, the second, takes the next pod.
	next := runPod(t, podConfig(t, withName("next")), handlerBerth)
	if got, want := shimOf(t, next), shimOf(t, pods[n-1].id); got != want {
		t.Errorf("a new pod's shim is %d, want %d, the group with room", got, want)
	}
}

// TestSharedShimTenants runs pods of two Kubernetes namespaces on one
// handler: each namespace's pods share a shim, and no shim serves both, so
// that one tenant's shim crash or OOM kill takes none of another's pods.
// After a containerd restart the recovered pods are in their namespace's
// groups again: a new pod of each namespace joins its namespace's shim.
func TestSharedShimTenants(t *testing.T) {
	inNamespace := func(ns string) podOpt {
		return func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Namespace = ns }
	}
	a := runSharedPods(t, 2, inNamespace("tenant-a"))
	b := runSharedPods(t, 1, inNamespace("tenant-b"))
	shimA, shimB := shimOf(t, a[0].id), shimOf(t, b[0].id)
	if other := shimOf(t, a[1].id); other != shimA {
		t.Errorf("pods of namespace tenant-a in shims %d and %d, want one", shimA, other)
	}
	if shimA == shimB {
		t.Fatalf("pods of namespaces tenant-a and tenant-b share shim %d", shimA)
	}

	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	for ns, want := range map[string]int{"tenant-a": shimA, "tenant-b": shimB} {
		next := runPod(t, podConfig(t, withName("next"), inNamespace(ns)), handlerBerth)
		if got := shimOf(t, next); got != want {
			t.Errorf("a new pod of namespace %s after the restart is in shim %d, want its namespace's, %d", ns, got, want)
		}
	}
}

// TestSharedShimKilled kills a shim serving several pods: every one of them
// is NOTREADY within a second and its container exits, and so they stay
// across a restart; all of them are removed without leaks.
func TestSharedShimKilled(t *testing.T) {
	made := time.Now()
	pods := runSharedPods(t, 4)
	shims := shimsServing(t, pods)
	if len(shims) != 1 {
		t.Fatalf("4 pods in shims %v, want one", shims)
	}
	dead := shimOf(t, pods[0].id)
	start := time.Now()
	if err := syscall.Kill(dead, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i, p := range pods {
		eventually(t, time.Second-time.Since(start), "pod "+strconv.Itoa(i)+" NOTREADY", func() bool {
			return podStatus(t, p.id).GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		})
	}
	t.Logf("4 pods NOTREADY %s after their shared shim's death", time.Since(start).Round(time.Millisecond))
	exited := func() {
		t.Helper()
		for i, p := range pods {
			eventually(t, 10*time.Second, "container of pod "+strconv.Itoa(i)+" exited", func() bool {
				resp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: p.ctr})
				return err == nil && resp.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED
			})
		}
	}
	exited()
	// A killed shim leaves its sockets, which berth removes.
	eventually(t, 5*time.Second, "the killed shim's sockets removed", func() bool { return len(hostproc.DeadShimSockets(made)) == 0 })
	// A pod started now, as kubelet starts each again, runs in a new shim:
	// the dead one's group takes no pod.
	again := runSharedPods(t, 1, withName("again"))
	if _, ok := shimsServing(t, again)[dead]; ok {
		t.Error("a pod started after the shim's death is served by the dead shim's pid")
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if got := podStatus(t, p.id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
			t.Errorf("pod %s is %v after the restart, want NOTREADY", p.id, got)
		}
	}
	exited()
}

// TestSharedShimOOM runs out of memory in a container of one of two pods
// sharing a shim: CRI reports that container OOMKilled, from the shim's OOM
// event for it, and the other pod, its container and the shim live on.
func TestSharedShimOOM(t *testing.T) {
	pods := runSharedPods(t, 2)
	if shims := shimsServing(t, pods); len(shims) != 1 {
		t.Fatalf("2 pods in shims %v, want one", shims)
	}
	const limit = 32 << 20
	hog := startContainerWith(t, pods[1].id, pods[1].cfg, func(c *runtimeapi.ContainerConfig) {
		c.Metadata.Name = "hog"
		c.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: limit, MemorySwapLimitInBytes: limit}
		c.Linux.SecurityContext = kubeletContainerSecurity()
	}, "/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1")
	eventually(t, 30*time.Second, "the hog OOMKilled", func() bool {
		resp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: hog})
		return err == nil && resp.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED &&
			resp.GetStatus().GetReason() == "OOMKilled"
	})
	for i, p := range pods {
		if got := podStatus(t, p.id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod %d is %v after its neighbour's OOM", i, got)
		}
		if out := execSync(t, p.ctr, "echo", "ok"); out != "ok\n" {
			t.Errorf("pod %d: exec after the OOM: %q", i, out)
		}
	}
}

// TestRestartLostSharedShim makes containerd lose one pod's bundle in a
// shared shim across a restart: that pod's pause is ended and the pod is
// NOTREADY, and the shim, which serves the other pod, lives on.
func TestRestartLostSharedShim(t *testing.T) {
	pods := runSharedPods(t, 2)
	shim := restartLosingBundle(t, pods)
	if got := podStatus(t, pods[0].id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod with a lost bundle is %v, want NOTREADY", got)
	}
	time.Sleep(2 * time.Second)
	if got := podStatus(t, pods[1].id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("the other pod of the shim is %v, want READY", got)
	}
	if syscall.Kill(shim, 0) != nil {
		t.Error("the shared shim was ended while it served the other pod")
	}
	if out := execSync(t, pods[1].ctr, "echo", "ok"); out != "ok\n" {
		t.Errorf("exec in the other pod: %q", out)
	}
}

// restartLosingBundle kills containerd under pods, which share a shim, and
// removes the first pod's bootstrap.json before it starts again, as a
// containerd that died while that pod's task was made would leave it:
// containerd then forgets the task, which the shim still serves. It returns
// the shim's pid.
func restartLosingBundle(t *testing.T, pods []*sharedPod) int {
	t.Helper()
	shim := shimOf(t, pods[0].id)
	for _, p := range pods[1:] {
		if other := shimOf(t, p.id); other != shim {
			t.Fatalf("pods in shims %d and %d, want one", shim, other)
		}
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	bootstrap := filepath.Join(taskBundle(pods[0].id), "bootstrap.json")
	if err := os.Remove(bootstrap); err != nil {
		t.Fatalf("make the pause bundle incomplete: %v", err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	return shim
}

// TestFailpointLostSharedShimDeleteRetried is TestRestartLostSharedShim
// with the first deletion of the lost pause task in the shim failing. The
// deletion is retried: once both pods are removed the shim is gone. A shim
// left holding a task containerd forgot would outlive its last pod, serving
// nothing, for good; and if it does all the same, the reaper ends it.
func TestFailpointLostSharedShimDeleteRetried(t *testing.T) {
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	pods := runSharedPods(t, 2, withFailpoints(map[string]int{failpoint.LostShimDelete: 1}))
	shim := restartLosingBundle(t, pods)
	removePod(t, pods[0].id)
	if out := execSync(t, pods[1].ctr, "echo", "ok"); out != "ok\n" {
		t.Errorf("exec in the other pod: %q", out)
	}
	removePod(t, pods[1].id)
	eventually(t, 10*time.Second, "the shared shim exits with its last pod", func() bool {
		return syscall.Kill(shim, 0) != nil
	})
}

// TestFailpointSharedShimRefuses fails a pause task's creation in a shared
// shim, as a shim shutting down as the pod joins it fails it: the pod runs
// all the same, in another shim.
func TestFailpointSharedShimRefuses(t *testing.T) {
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	first := runPod(t, podConfig(t, withName("first")), handlerBerth)
	refused := runPod(t, podConfig(t, withName("refused"), withFailpoints(map[string]int{failpoint.SharedShimRefuses: 1})), handlerBerth)
	if shimOf(t, refused) == shimOf(t, first) {
		t.Error("the pod refused by the group's shim runs in it")
	}
}

// podRun is what RunPodSandbox answered.
type podRun struct {
	id  string
	err error
}

// runHeldPod runs pod name on berth in the background, its Start held for
// 2 s (failpoint.HoldTaskMake) just before its pause task is made, and
// returns once its pause container is made, with the channel
// RunPodSandbox's answer comes on.
func runHeldPod(t *testing.T, name string) <-chan podRun {
	t.Helper()
	cfg := podConfig(t, withName(name), func(c *runtimeapi.PodSandboxConfig) {
		c.Labels["role"] = name
		c.Annotations[failpoint.AnnotationPrefix+failpoint.HoldTaskMake] = "2s"
	})
	ran := make(chan podRun, 1)
	go func() {
		resp, err := daemon.runtime.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handlerBerth})
		ran <- podRun{resp.GetPodSandboxId(), err}
	}()
	// Its pause container is made just before the hold begins.
	eventually(t, 30*time.Second, "the pause container of pod "+name, func() bool {
		cs, err := daemon.client.Containers(ctxT(t), fmt.Sprintf(`labels."role"==%q`, name))
		return err == nil && len(cs) == 1
	})
	return ran
}

// TestFailpointLastTaskWaitsForMake stops the only running pod of a group
// while another pod's pause task is being made in it. Deleting the group's
// last task ends its shim, so the deletion waits for the making: the
// joining pod runs in the group's shim, which did not exit under it.
func TestFailpointLastTaskWaitsForMake(t *testing.T) {
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	first := runPod(t, podConfig(t, withName("first")), handlerBerth)
	shim := shimOf(t, first)
	ran := runHeldPod(t, "joining")
	time.Sleep(200 * time.Millisecond)
	// Removed by its cleanup, once the joining pod is listed: the leak
	// check counts network namespaces against listed pods.
	if _, err := daemon.runtime.StopPodSandbox(ctxT(t), &runtimeapi.StopPodSandboxRequest{PodSandboxId: first}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	r := <-ran
	if r.err != nil {
		t.Fatalf("RunPodSandbox of the joining pod: %v", r.err)
	}
	t.Cleanup(func() { removePod(t, r.id) })
	if got := shimOf(t, r.id); got != shim {
		t.Errorf("the joining pod runs in shim %d, not in its group's shim %d: that exited under the making", got, shim)
	}
}

// TestSharedShimConcurrentStarts runs a group's worth of pods at once, as
// kubelet does on a busy node, a few times over: all run in one shim, and
// no shim is left idle. The runc shim's start command is not safe to run
// twice at once for a group (one can take a live shim that does not answer
// within 100 ms for a dead one, and bind a socket of its own): berth runs
// it for a group's first task alone, and the others join the shim at its
// socket.
func TestSharedShimConcurrentStarts(t *testing.T) {
	for round := range 3 {
		var wg sync.WaitGroup
		ids := make([]string, podsPerShim)
		for i := range ids {
			cfg := podConfig(t, withName(fmt.Sprintf("%d-%d", round, i)))
			wg.Go(func() {
				resp, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handlerBerth})
				if err != nil {
					t.Errorf("RunPodSandbox: %v", err)
					return
				}
				ids[i] = resp.GetPodSandboxId()
			})
		}
		wg.Wait()
		shims := map[int]bool{}
		for _, id := range ids {
			if id != "" {
				shims[shimOf(t, id)] = true
			}
		}
		if idle := hostproc.IdleShims(daemon.socket(), ""); len(idle) > 0 {
			t.Errorf("round %d: shims %v are idle", round, idle)
		}
		if len(shims) != 1 {
			t.Errorf("round %d: %d pods started at once run in %d shims, want one", round, len(ids), len(shims))
		}
		for _, id := range ids {
			if id != "" {
				removePod(t, id)
			}
		}
	}
}

// TestSharedShimRuntimeChanged changes handler berth's shim binary
// (runtime_path: berth's shim, then none, the runc shim) across a
// containerd restart: the running pod stays in its shim, and a new pod
// starts in a shim of the new binary rather than join the old one.
func TestSharedShimRuntimeChanged(t *testing.T) {
	shimBinary := func(pid int) string {
		t.Helper()
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Base(exe)
	}
	old := runPod(t, podConfig(t, withName("old")), handlerBerthShim)
	shim := shimOf(t, old)
	if got := shimBinary(shim); got != "containerd-shim-berth-v2" {
		t.Fatalf("the pod's shim runs %s, want berth's", got)
	}
	const handler = "runtimes.berth]\n      runtime_type = 'io.containerd.runc.v2'\n"
	reconfigure(t, regexp.QuoteMeta(handler)+`      runtime_path = '[^']*'\n`, handler)
	if got := podStatus(t, old).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("the pod is %v after the restart", got)
	}
	if got := shimOf(t, old); got != shim {
		t.Errorf("the pod's shim is %d after the restart, want %d", got, shim)
	}
	next := runPod(t, podConfig(t, withName("next")), handlerBerthShim)
	if got := shimOf(t, next); got == shim {
		t.Errorf("a pod after the change joined the old pod's shim %d", shim)
	} else if bin := shimBinary(got); bin != "containerd-shim-runc-v2" {
		t.Errorf("a pod after the change runs in a shim of %s, want the runc shim", bin)
	}
}
