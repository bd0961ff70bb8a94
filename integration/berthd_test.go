package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/failpoint"
)

// needBerthd skips a test of berthd's own restarts when berth runs in
// process.
func needBerthd(t *testing.T) {
	t.Helper()
	if !*berthdMode {
		t.Skip("needs -berthd")
	}
}

// berthdPods runs a pod with a sleeping container that must outlive a
// restart, and a pod whose pause the test kills while something is down.
// opts apply to the live pod's config.
func berthdPods(t *testing.T, opts ...podOpt) (live *restartPod, killed *restartPod) {
	t.Helper()
	live = &restartPod{cfg: podConfig(t, append([]podOpt{withName("live")}, opts...)...)}
	live.id = runPod(t, live.cfg, handlerBerth)
	live.pid = podPid(t, live.id)
	live.container = startContainer(t, live.id, live.cfg, "sleep", "3600")
	killed = &restartPod{cfg: podConfig(t, withName("killed"))}
	killed.id = runPod(t, killed.cfg, handlerBerth)
	killed.pid = podPid(t, killed.id)
	return live, killed
}

// assertSurvived checks that the live pod is READY with the same pause and
// its container running, that the killed one is NOTREADY with its pause's
// exit, and that a new pod runs.
func assertSurvived(t *testing.T, live, killed *restartPod) {
	t.Helper()
	// containerd's connection to berthd backs off while berthd is away
	// (up to 3 s between attempts): its calls fail Unavailable until the
	// next attempt finds berthd, as kubelet's retries would.
	took := eventually(t, 30*time.Second, "CRI reaches berth again", func() bool {
		_, err := daemon.runtime.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: live.id})
		return err == nil
	})
	t.Logf("CRI reached berth %s after the restart", took.Round(time.Millisecond))
	if got := podStatus(t, live.id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("live pod is %v, want READY", got)
	}
	if pid := podPid(t, live.id); pid != live.pid {
		t.Errorf("live pod's pause is %d, was %d", pid, live.pid)
	}
	resp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: live.container})
	if err != nil || resp.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("live pod's container: %v, %v; want running", resp.GetStatus().GetState(), err)
	}
	if out := execSync(t, live.container, "echo", "ok"); out != "ok\n" {
		t.Errorf("exec in the live pod's container: %q", out)
	}
	// CRI learns of the exit through its Wait on berthd, which containerd's
	// proxy retried while berthd or containerd was away.
	eventually(t, 30*time.Second, "killed pod NOTREADY in CRI's list", func() bool {
		list, err := daemon.runtime.ListPodSandbox(ctxT(t), &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: killed.id}})
		return err == nil && len(list.GetItems()) == 1 && list.GetItems()[0].GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exit, err := daemon.client.SandboxController(sandboxerBerth).Wait(ctx, killed.id)
	if err != nil || exit.ExitStatus != 128+uint32(syscall.SIGKILL) {
		t.Errorf("killed pod: exit %+v, %v; want status %d", exit, err, 128+syscall.SIGKILL)
	}
	runPod(t, podConfig(t, withName("after")), handlerBerth)
}

// must fails the test at once if err is set.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestBerthdKilled SIGKILLs berthd with pods running: no pod changes state
// and no container dies; CRI calls that need berthd fail Unavailable while
// it is down and succeed after; a pause that exits while berthd is down is
// reported NOTREADY once it is back.
func TestBerthdKilled(t *testing.T) {
	needBerthd(t)
	live, killed := berthdPods(t)
	must(t, daemon.killBerthd(syscall.SIGKILL))
	must(t, syscall.Kill(killed.pid, syscall.SIGKILL))
	ctx := ctxT(t)
	if _, err := daemon.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig(t, withName("while-down")), RuntimeHandler: handlerBerth}); status.Code(err) != codes.Unavailable {
		t.Errorf("RunPodSandbox while berthd is down: %v, want Unavailable", err)
	}
	// CRI's own record still says READY: kubelet sees no change.
	list, err := daemon.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.GetItems() {
		if p.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod %s listed %v while berthd is down", p.GetMetadata().GetName(), p.GetState())
		}
	}
	must(t, daemon.startBerthd())
	assertSurvived(t, live, killed)
}

// TestBerthdReplaced stops berthd as a package upgrade does (SIGTERM) and
// starts it again: the same as a crash for the pods.
func TestBerthdReplaced(t *testing.T) {
	needBerthd(t)
	live, killed := berthdPods(t)
	must(t, daemon.killBerthd(syscall.SIGTERM))
	must(t, syscall.Kill(killed.pid, syscall.SIGKILL))
	must(t, daemon.startBerthd())
	assertSurvived(t, live, killed)
}

// TestFailpointBerthdStoppedMidStart stops berthd (SIGTERM) while it
// starts a pod: berthd lets the Start finish before it exits, so the pod
// runs, and the berthd started after it finds it READY. Named for make
// integration's -berthd -failpoints pass (-run Failpoint).
func TestFailpointBerthdStoppedMidStart(t *testing.T) {
	needBerthd(t)
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	ran := runHeldPod(t, "mid-start")
	stopped := time.Now()
	must(t, daemon.killBerthd(syscall.SIGTERM))
	t.Logf("berthd stopped %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	r := <-ran
	must(t, daemon.startBerthd())
	if r.err != nil {
		t.Fatalf("RunPodSandbox across berthd's stop: %v", r.err)
	}
	t.Cleanup(func() { removePod(t, r.id) })
	eventually(t, 30*time.Second, "CRI reaches berth again", func() bool {
		_, err := daemon.runtime.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: r.id})
		return err == nil
	})
	if got := podStatus(t, r.id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("the pod started across berthd's stop is %v, want READY", got)
	}
}

// TestContainerdKilledUnderBerthd SIGKILLs containerd under a running
// berthd: berthd's waits on the pause tasks are begun again once
// containerd is back (no pod is taken for exited), and the exit of a pause
// killed in the gap is reported.
func TestContainerdKilledUnderBerthd(t *testing.T) {
	needBerthd(t)
	live, killed := berthdPods(t)
	must(t, daemon.killContainerd(syscall.SIGKILL))
	must(t, syscall.Kill(killed.pid, syscall.SIGKILL))
	time.Sleep(time.Second)
	if err := syscall.Kill(daemon.berthd.Process.Pid, 0); err != nil {
		t.Fatalf("berthd died while containerd was down: %v", err)
	}
	// berthd lives on: start starts containerd alone.
	must(t, daemon.start())
	assertSurvived(t, live, killed)
}

// TestFailpointContainerdStoppedDuringRecovery stops containerd while a
// restarted berthd reloads its sandboxes, held just before it reattaches
// to the live pod's pause task: the reattach waits for containerd to come
// back, and the pod is READY with its pause and container, not taken for
// one whose shim is wedged, its pause deleted. Named for make
// integration's -berthd -failpoints pass (-run Failpoint).
func TestFailpointContainerdStoppedDuringRecovery(t *testing.T) {
	needBerthd(t)
	if !*failpoints {
		t.Skip("needs -failpoints")
	}
	live, killed := berthdPods(t, func(c *runtimeapi.PodSandboxConfig) {
		c.Annotations[failpoint.AnnotationPrefix+failpoint.HoldReattach] = "4s"
	})
	must(t, daemon.killBerthd(syscall.SIGKILL))
	logged, err := os.Stat(daemon.berthdLogPath)
	must(t, err)
	must(t, daemon.startBerthd())
	// berthd serves once its recovery has begun; the live pod's reload
	// is then held.
	eventually(t, 30*time.Second, "berthd serving", func() bool {
		b, err := os.ReadFile(daemon.berthdLogPath)
		return err == nil && bytes.Contains(b[logged.Size():], []byte("berthd serving"))
	})
	// Stopped cleanly, containerd removes its socket, which containerd's
	// dialer then waits for: longer than berth's bound on the reattach
	// (sandbox_timeout, 10 s), which must not take the dialer's wait for
	// a shim that does not answer.
	must(t, daemon.killContainerd(syscall.SIGTERM))
	must(t, syscall.Kill(killed.pid, syscall.SIGKILL))
	time.Sleep(15 * time.Second)
	// The test is only worth its name if the reattach found containerd
	// away.
	b, err := os.ReadFile(daemon.berthdLogPath)
	must(t, err)
	if !bytes.Contains(b[logged.Size():], []byte("containerd does not answer; reattaching to the pause task again")) {
		t.Error("berthd reattached to the live pod's pause task before containerd stopped")
	}
	must(t, daemon.start())
	assertSurvived(t, live, killed)
}

// TestCallsRightAfterContainerdRestart keeps containerd down long enough
// for berthd's connection to it to back off (5 s), then makes CRI calls
// that need containerd the moment CRI answers again: each succeeds at its
// first try, as in process, rather than fail Unavailable until berthd's
// next connection attempt.
func TestCallsRightAfterContainerdRestart(t *testing.T) {
	needBerthd(t)
	old := runPod(t, podConfig(t, withName("old")), handlerBerth)
	must(t, daemon.killContainerd(syscall.SIGKILL))
	time.Sleep(5 * time.Second)
	must(t, daemon.start())
	start := time.Now()
	removePod(t, old)
	runPod(t, podConfig(t, withName("new")), handlerBerth)
	t.Logf("a pod removed and one run %s after CRI answered", time.Since(start).Round(time.Millisecond))
}

// TestBerthdBeforeContainerd starts berthd, then containerd 2 s later, as
// at a node's boot: berthd waits for containerd, and every pod comes back.
func TestBerthdBeforeContainerd(t *testing.T) {
	needBerthd(t)
	live, killed := berthdPods(t)
	must(t, daemon.kill(syscall.SIGKILL))
	must(t, syscall.Kill(killed.pid, syscall.SIGKILL))
	must(t, daemon.startBerthd())
	time.Sleep(2 * time.Second)
	must(t, daemon.start())
	assertSurvived(t, live, killed)
}

// TestBerthdBadSetup checks that berthd refuses, with a clear error and
// changing nothing, a containerd config it cannot read and a second berthd
// for the same node; the berthd that runs keeps serving.
func TestBerthdBadSetup(t *testing.T) {
	needBerthd(t)
	bad := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(bad, []byte("version = 3\n[plugins\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(t.TempDir(), "berthd.sock")
	// A node of its own, so that the socket check is what refuses it.
	elsewhere := filepath.Join(t.TempDir(), "config.toml")
	// Its containerd is not there.
	dir := filepath.Dir(elsewhere)
	if err := os.WriteFile(elsewhere, []byte(fmt.Sprintf("version = 3\nroot = %q\nstate = %q\n[grpc]\n  address = %q\n[proxy_plugins.%s]\n  type = 'sandbox'\n  address = %q\n",
		dir+"/root", dir+"/state", dir+"/absent.sock", sandboxerBerth, second)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, want string
		args       []string
	}{
		{"invalid containerd config", "containerd config " + bad, []string{"--containerd-config", bad, "--address", second}},
		{"a second berthd of the node", "held by another berth", []string{"--containerd-config", filepath.Join(daemon.dir, "config.toml"), "--address", second}},
		{"a second berthd on the socket", "another process serves", []string{"--containerd-config", elsewhere, "--address", daemon.berthdSocket()}},
		{"containerd unreachable past --containerd-timeout", "does not answer", []string{"--containerd-config", elsewhere, "--address", second, "--containerd-timeout", "1s"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, filepath.Join(daemon.bin, "berthd"), c.args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Errorf("berthd: %v, output %s; want it to fail with %q", err, out, c.want)
			}
			if _, err := os.Stat(second); err == nil {
				t.Errorf("a refused berthd left its socket %s", second)
			}
		})
	}
	runPod(t, podConfig(t), handlerBerth)
	// A sandbox berthd does not know is NotFound, through containerd.
	if _, err := daemon.client.SandboxController(sandboxerBerth).Status(ctxT(t), "nosuch", false); !errdefs.IsNotFound(err) {
		t.Errorf("status of an unknown sandbox: %v, want NotFound", err)
	}
}

// TestBerthdNotProxied starts a second berthd of the node on a copy of its
// containerd config without berth's proxy plugin, as a berthd left enabled
// on a node that moved to berth's own containerd build: it must take up
// none of the pods (not even berth's root lock, which the running berthd
// holds) and wait, serving nothing, until it is stopped; the berthd that
// runs keeps serving.
func TestBerthdNotProxied(t *testing.T) {
	needBerthd(t)
	id := runPod(t, podConfig(t), handlerBerth)
	config, err := os.ReadFile(filepath.Join(daemon.dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	proxy := strings.Index(string(config), "\n[proxy_plugins.")
	if proxy < 0 {
		t.Fatal("the node's config has no proxy plugin")
	}
	unproxied := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(unproxied, config[:proxy], 0o644); err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(t.TempDir(), "berthd.sock")
	var out bytes.Buffer
	cmd := exec.Command(filepath.Join(daemon.bin, "berthd"), "--containerd-config", unproxied, "--address", second)
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("berthd without its proxy plugin exited: %v\n%s", err, out.String())
	case <-time.After(2 * time.Second):
	}
	must(t, cmd.Process.Signal(syscall.SIGTERM))
	if err := <-exited; err != nil {
		t.Errorf("berthd without its proxy plugin, stopped: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "no [proxy_plugins."+sandboxerBerth+"]") {
		t.Errorf("berthd without its proxy plugin did not say so:\n%s", out.String())
	}
	if _, err := os.Stat(second); err == nil {
		t.Errorf("berthd without its proxy plugin listens on %s", second)
	}
	if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("pod %s is %v, want READY", id, got)
	}
	runPod(t, podConfig(t, withName("after")), handlerBerth)
}

// TestRootHeldInProcess starts berthd, with containerd's config and a proxy
// plugin for it, beside containerd with berth built in, as on a node moving
// to berthd before containerd's restart: the berth in process holds berth's
// root, and berthd refuses to take up its sandboxes.
func TestRootHeldInProcess(t *testing.T) {
	if *berthdMode {
		t.Skip("berth runs as berthd")
	}
	runPod(t, podConfig(t), handlerBerth)
	socket := filepath.Join(t.TempDir(), "berthd.sock")
	config, err := os.ReadFile(filepath.Join(daemon.dir, "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	proxied := filepath.Join(t.TempDir(), "config.toml")
	config = fmt.Appendf(config, "\n[proxy_plugins.%s]\n  type = 'sandbox'\n  address = %q\n", sandboxerBerth, socket)
	if err := os.WriteFile(proxied, config, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(daemon.bin, "berthd"), "--containerd-config", proxied, "--address", socket).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "held by another berth") {
		t.Errorf("berthd beside berth in process: %v, output %s; want it refused", err, out)
	}
	if _, err := os.Stat(socket); err == nil {
		t.Errorf("the refused berthd left its socket %s", socket)
	}
	runPod(t, podConfig(t, withName("after")), handlerBerth)
}
