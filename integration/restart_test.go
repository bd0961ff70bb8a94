package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/integration/hostproc"
)

// restartPod is a pod made before a restart, and what the test expects of
// it after.
type restartPod struct {
	cfg       *runtimeapi.PodSandboxConfig
	id        string
	container string // "" for pods without one
	pid       int
	want      runtimeapi.PodSandboxState
}

// TestRestartRecovery kills containerd with SIGKILL while berth has 50
// running pods with containers, 10 stopped pods, and 5 pods whose pause
// process is then killed while containerd is down. After the restart every
// pod reports the right state, app containers still run and exec, and
// everything can be stopped and removed without leaks.
func TestRestartRecovery(t *testing.T) {
	const running, stopped, killed = 50, 10, 5
	pods := make([]*restartPod, running+stopped+killed)
	for i := range pods {
		p := &restartPod{cfg: podConfig(t, withName(strconv.Itoa(i))), want: runtimeapi.PodSandboxState_SANDBOX_READY}
		if i >= running {
			p.want = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		}
		pods[i] = p
	}
	t.Cleanup(func() {
		for _, p := range pods {
			if p.id != "" {
				removePod(t, p.id)
			}
		}
	})
	parallel(t, len(pods), 8, func(i int) error {
		p := pods[i]
		ctx := ctxT(t)
		resp, err := daemon.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.cfg, RuntimeHandler: handlerBerth})
		if err != nil {
			return err
		}
		p.id = resp.GetPodSandboxId()
		p.pid = podPid(t, p.id)
		switch {
		case i < running:
			p.container = startContainer(t, p.id, p.cfg, "sleep", "3600")
		case i < running+stopped:
			_, err = daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id})
		}
		return err
	})

	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods[running+stopped:] {
		if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill pause %d while containerd is down: %v", p.pid, err)
		}
	}
	start := time.Now()
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("CRI answered %s after containerd started", time.Since(start).Round(time.Millisecond))

	for _, p := range pods {
		if got := podStatus(t, p.id).GetStatus().GetState(); got != p.want {
			t.Errorf("pod %s: %v after restart, want %v", p.cfg.GetMetadata().GetName(), got, p.want)
		}
	}
	ctrl := daemon.client.SandboxController(sandboxerBerth)
	for _, p := range pods[running+stopped:] {
		// The pause process's exit, seen by its shim while containerd was
		// down, is what berth reports.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		exit, err := ctrl.Wait(ctx, p.id)
		cancel()
		if err != nil || exit.ExitStatus != 128+uint32(syscall.SIGKILL) {
			t.Errorf("pod %s killed while containerd was down: exit %+v, %v; want status %d",
				p.cfg.GetMetadata().GetName(), exit, err, 128+syscall.SIGKILL)
		}
	}
	parallel(t, running, 8, func(i int) error {
		p := pods[i]
		resp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: p.container})
		if err != nil {
			return err
		}
		if s := resp.GetStatus().GetState(); s != runtimeapi.ContainerState_CONTAINER_RUNNING {
			return fmt.Errorf("container of %s is %v after restart", p.cfg.GetMetadata().GetName(), s)
		}
		if out := execSync(t, p.container, "echo", "ok"); out != "ok\n" {
			return fmt.Errorf("exec in %s: %q", p.cfg.GetMetadata().GetName(), out)
		}
		return nil
	})
	// CRI mounts the pod's files into containers made after the restart
	// from the links berth kept in CRI's directories.
	p := pods[0]
	ctr := startNamedContainer(t, "after-restart", p.id, p.cfg, "sleep", "3600")
	// The pod sets no hostname, so its hostname file holds the node's.
	if node, _ := os.Hostname(); execSync(t, ctr, "cat", "/etc/hostname") != node+"\n" {
		t.Errorf("/etc/hostname in a container made after the restart is not the pod's")
	}
	for _, f := range []string{"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"} {
		if got := execSync(t, ctr, "grep", " "+f+" ", "/proc/self/mounts"); got == "" {
			t.Errorf("%s is not mounted into a container made after the restart", f)
		}
	}
	if got := execSync(t, ctr, "grep", " /dev/shm ", "/proc/self/mounts"); !strings.Contains(got, "tmpfs") {
		t.Errorf("/dev/shm in a container made after the restart is not the pod's tmpfs: %q", got)
	}
	// A new pod runs beside the recovered ones.
	runPod(t, podConfig(t, withName("after")), handlerBerth)
}

// TestRestartDuringRunPodSandbox kills containerd in the middle of 20
// concurrent RunPodSandbox calls. After the restart, kubelet's cleanup of
// the half-made pods and its retry of the same configs succeed, and once
// those pods are removed nothing is left.
func TestRestartDuringRunPodSandbox(t *testing.T) {
	const pods = 20
	// Cleanups run last first: this one, after every pod's removal.
	t.Cleanup(func() { assertNothingLeft(t) })
	cfgs := make([]*runtimeapi.PodSandboxConfig, pods)
	for i := range cfgs {
		cfgs[i] = podConfig(t, withName(strconv.Itoa(i)))
	}
	var wg sync.WaitGroup
	succeeded := make(chan struct{}, pods)
	for _, cfg := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Errors are expected: containerd dies under the call.
			_, err := daemon.runtime.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handlerBerth})
			if err == nil {
				succeeded <- struct{}{}
			}
		}()
	}
	// The first pod to be ready means the others are spread over every
	// step of RunPodSandbox, berth's Start among them.
	select {
	case <-succeeded:
	case <-time.After(time.Minute):
		t.Fatal("no RunPodSandbox succeeded")
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	removeUnrecordedNetNS(t)

	// What kubelet does: remove every sandbox of the pod that is not ready,
	// then run the pod again unless a ready sandbox is left.
	ctx := ctxT(t)
	list, err := daemon.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ready := map[string]string{}
	var readyN, notReadyN int
	for _, sb := range list.GetItems() {
		if sb.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY {
			ready[sb.GetMetadata().GetName()] = sb.GetId()
			readyN++
			continue
		}
		notReadyN++
		removePod(t, sb.GetId())
	}
	t.Logf("after the restart: %d pods ready, %d not ready (removed), %d never recorded",
		readyN, notReadyN, pods-readyN-notReadyN)
	for _, cfg := range cfgs {
		if id, ok := ready[cfg.GetMetadata().GetName()]; ok {
			t.Cleanup(func() { removePod(t, id) })
			continue
		}
		runPod(t, cfg, handlerBerth)
	}
}

// removeUnrecordedNetNS removes the network namespaces CRI made for a
// RunPodSandbox but had not yet recorded in the pod's sandbox record when
// containerd died. CRI makes and records the netns before it calls any
// sandbox controller, so none can know of them, and CRI's own removal of the
// pod misses them; they are logged, not counted as berth's leaks.
func removeUnrecordedNetNS(t *testing.T) {
	t.Helper()
	ctx := ctxT(t)
	records, err := daemon.client.SandboxStore().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[string]bool{}
	for _, r := range records {
		var md struct{ Metadata struct{ NetNSPath string } }
		if ext, ok := r.Extensions["metadata"]; ok {
			if err := json.Unmarshal(ext.GetValue(), &md); err == nil && md.Metadata.NetNSPath != "" {
				recorded[filepath.Base(md.Metadata.NetNSPath)] = true
			}
		}
	}
	dir := filepath.Join(daemon.criState(), "netns")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if recorded[e.Name()] {
			continue
		}
		p := filepath.Join(dir, e.Name())
		t.Logf("CRI made netns %s but had not recorded it when containerd died; removing it", p)
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
		if err := os.Remove(p); err != nil {
			t.Errorf("remove %s: %v", p, err)
		}
	}
}

// TestRestartLostShim makes containerd lose a running pod's shim across a
// restart, as it does when it dies while the shim starts (it finds the
// shim's bundle incomplete, deletes it and forgets the shim): berth still
// ends the shim and the pause process, and the pod removes without leaks.
func TestRestartLostShim(t *testing.T) {
	id := runPod(t, podConfig(t), handlerBerth)
	shim := shimOf(t, id)
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	bootstrap := filepath.Join(taskBundle(id), "bootstrap.json")
	if err := os.Remove(bootstrap); err != nil {
		t.Fatalf("make the shim's bundle incomplete: %v", err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod with a lost shim is %v, want NOTREADY", got)
	}
	eventually(t, 10*time.Second, "lost shim ended", func() bool {
		return syscall.Kill(shim, 0) != nil
	})
}

// TestRestartReleasesStartLease leaves what a containerd killed in the
// middle of Start leaves: a pause snapshot under berth's start lease, with
// no container yet. Once CRI answers after the restart, the lease and the
// snapshot are gone.
func TestRestartReleasesStartLease(t *testing.T) {
	ctx := ctxT(t)
	id := strings.Repeat("ab", 32) // a sandbox ID no pod has
	ls := daemon.client.LeasesService()
	lease, err := ls.Create(ctx, leases.WithID("io.berth.start."+id+".1"), leases.WithExpiration(time.Hour),
		leases.WithLabel(controller.LabelKind, controller.LabelKindStartLease), leases.WithLabel("io.berth.sandboxer", sandboxerBerth))
	if err != nil {
		t.Fatal(err)
	}
	sn := daemon.client.SnapshotService("overlayfs")
	if _, err := sn.Prepare(leases.WithLease(ctx, lease.ID), id, pauseChainID(t)); err != nil {
		t.Fatal(err)
	}

	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	ctx = ctxT(t)
	if l, err := daemon.client.LeasesService().List(ctx, "id=="+lease.ID); err != nil || len(l) != 0 {
		t.Errorf("start lease after restart: %v, %v", l, err)
	}
	// Gone already: kubelet removes the half-made pod as soon as CRI
	// answers, and that removal must leave nothing.
	if _, err := daemon.client.SnapshotService("overlayfs").Stat(ctx, id); !errdefs.IsNotFound(err) {
		t.Errorf("snapshot of the interrupted start after restart: %v", err)
	}
}

// withKubeletNamespaces gives the pod the PID namespace mode kubelet sends
// for a pod without shareProcessNamespace: one PID namespace per container,
// so that the pause's death kills no app container.
func withKubeletNamespaces() podOpt {
	return func(c *runtimeapi.PodSandboxConfig) {
		c.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_CONTAINER
	}
}

// TestRestartKeepsContainersOfDeadPause kills a pod's pause while its app
// container runs on (own PID namespace, as kubelet makes them), then
// restarts containerd: the app container is alive afterwards, as on the
// built-in. Its shim serves it, and recovery must not end that shim:
// kubelet, not recovery, decides when a pod's containers stop.
func TestRestartKeepsContainersOfDeadPause(t *testing.T) {
	type pod struct {
		handler, id, ctr string
		pid              int
	}
	var pods []*pod
	for _, handler := range []string{handlerBuiltin, handlerBerth} {
		cfg := podConfig(t, withName(handler), withKubeletNamespaces())
		p := &pod{handler: handler, id: runPod(t, cfg, handler)}
		p.ctr = startContainerWith(t, p.id, cfg, func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext = kubeletContainerSecurity()
		}, "sleep", "3600")
		p.pid = containerPid(t, p.ctr)
		if err := syscall.Kill(podPid(t, p.id), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, handler+" pod NOTREADY", func() bool {
			return podStatus(t, p.id).GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		})
		pods = append(pods, p)
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	// Recovery's cleanup of a lost shim gave up after a second, then killed.
	time.Sleep(3 * time.Second)
	for _, p := range pods {
		resp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: p.ctr})
		if err != nil {
			t.Fatal(err)
		}
		if s := resp.GetStatus().GetState(); s != runtimeapi.ContainerState_CONTAINER_RUNNING || syscall.Kill(p.pid, 0) != nil {
			t.Errorf("%s: app container of a dead pause is %v after the restart, want running", p.handler, s)
		}
	}
}

// TestRestartIgnoresPodLabels gives pods the labels berth once read back:
// a built-in pod labelled as berth's sandbox, a berth pod with labels of
// berth's keys. Pod labels reach the pause container, and must not steer
// berth: after a restart both pods are READY, the built-in's untouched.
func TestRestartIgnoresPodLabels(t *testing.T) {
	labels := func(l map[string]string) podOpt {
		return func(c *runtimeapi.PodSandboxConfig) { maps.Copy(c.Labels, l) }
	}
	builtin := runPod(t, podConfig(t, withName("builtin"), labels(map[string]string{
		controller.LabelKind: controller.LabelKindSandbox,
	})), handlerBuiltin)
	berth := runPod(t, podConfig(t, withName("berth"), labels(map[string]string{
		controller.LabelKind:               controller.LabelKindStartLease,
		"io.berth.sandbox.resources":       "{not json",
		"io.berth.sandbox.netns":           "/proc/1/ns/net",
		"io.berth.sandbox.runtime-handler": handlerBuiltin,
		"io.berth.sandbox.selinux-label":   "system_u:system_r:spc_t:s0",
	})), handlerBerth)
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{builtin, berth} {
		if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod %s is %v after the restart, want READY", id, got)
		}
	}
	if _, err := daemon.client.LoadContainer(ctxT(t), builtin); err != nil {
		t.Errorf("the built-in pod's pause container: %v", err)
	}
	if _, err := daemon.client.SandboxController(sandboxerBerth).Status(ctxT(t), builtin, false); !errdefs.IsNotFound(err) {
		t.Errorf("berth knows the built-in's pod: %v", err)
	}
	if info := verboseInfo(t, podStatus(t, berth).GetInfo()); info["sandboxMetadata"] == nil || info["cniResult"] == nil {
		t.Errorf("verbose info after the restart has no sandboxMetadata or cniResult: %v", info)
	}
	st, err := daemon.client.SandboxController(sandboxerBerth).Status(ctxT(t), berth, true)
	if err != nil {
		t.Fatal(err)
	}
	if info := verboseInfo(t, st.Info); info["runtimeHandler"] != handlerBerth {
		t.Errorf("berth pod's runtime handler after the restart is %v, want %s", info["runtimeHandler"], handlerBerth)
	}
}

// TestRestartAfterReboot reboots the node under containerd, as far as a
// test can: containerd, every shim and every pod process die at once, and
// what lives on tmpfs or in the kernel is gone when containerd starts
// again (containerd's state directory with the task bundles, rootfs, shm
// and netns mounts, berth's and CRI's state, runc's state, the shims'
// sockets, the pods' cgroups, the CNI bridge). containerd's metadata,
// CRI's and berth's root directories and CNI's IP leases remain. A
// built-in pod, two pods sharing a berth shim and a pod of a warm handler
// with its shim keeper are then NOTREADY with their containers exited, on
// both controllers alike; each stops and removes leaving nothing, the
// dead keeper goes, and new pods run in new shims.
func TestRestartAfterReboot(t *testing.T) {
	since := time.Now()
	builtinCfg := podConfig(t, withName("builtin"), withKubeletNamespaces())
	builtin := &sharedPod{cfg: builtinCfg, id: runPod(t, builtinCfg, handlerBuiltin)}
	builtin.ctr = startContainerWith(t, builtin.id, builtinCfg, func(c *runtimeapi.ContainerConfig) {
		c.Linux.SecurityContext = kubeletContainerSecurity()
	}, "sleep", "3600")
	pods := append(runSharedPods(t, 2), builtin)
	warm := runPod(t, podConfig(t, withName("warm")), handlerWarm)
	keeper := onlyKeeper(t, handlerWarm)

	ids := []string{warm, keeper.id}
	shims := map[int]bool{shimOf(t, warm): true}
	for _, p := range pods {
		ids = append(ids, p.id, p.ctr)
		shims[shimOf(t, p.id)] = true
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for shim := range shims {
		for _, pid := range append(hostproc.Children(shim), shim) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, id := range ids {
		eventually(t, 10*time.Second, "processes of "+id+" gone", func() bool { return len(cgroupProcs(id)) == 0 })
		for _, dir := range cgroupDirs(id) {
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.RemoveAll(filepath.Join(runcNamespaceDir, id)); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(daemon.dir, "state")
	for _, m := range mountsUnder(state) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Fatalf("unmount %s: %v", m, err)
		}
	}
	if err := os.RemoveAll(state); err != nil {
		t.Fatal(err)
	}
	for _, s := range hostproc.DeadShimSockets(since) {
		if err := os.Remove(filepath.Join(hostproc.ShimSocketDir, s)); err != nil {
			t.Fatal(err)
		}
	}
	deleteBridge()
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}

	for _, p := range pods {
		if got := podStatus(t, p.id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
			t.Errorf("pod %s is %v after the reboot, want NOTREADY", p.id, got)
		}
		resp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: p.ctr})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetStatus().GetState(); got != runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Errorf("container %s of pod %s is %v after the reboot, want EXITED", p.ctr, p.id, got)
		}
	}
	if got := podStatus(t, warm).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("warm handler's pod is %v after the reboot, want NOTREADY", got)
	}
	assertKeeperGone(t, keeper)
	for _, p := range pods {
		removePod(t, p.id)
	}
	removePod(t, warm)

	after := runSharedPods(t, 2)
	if shim := shimOf(t, after[0].id); shims[shim] || shimOf(t, after[1].id) != shim {
		t.Errorf("pods after the reboot in shims %d and %d, want one new shim", shim, shimOf(t, after[1].id))
	}
	for i, p := range after {
		if out := execSync(t, p.ctr, "echo", "ok"); out != "ok\n" {
			t.Errorf("exec in pod %d after the reboot: %q", i, out)
		}
	}
	// Gone before the test ends, by berth's own path for a keeper that
	// dies: no test after finds a keeper.
	k := podAfterKeeper(t, "warm-after", keeper)
	if err := syscall.Kill(k.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	assertKeeperGone(t, k)
}
