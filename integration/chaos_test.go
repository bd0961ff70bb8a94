package integration

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostproc"
)

var (
	chaos     = flag.Int("chaos", 0, "pod lifecycles of the chaos test; 0 skips it")
	chaosSeed = flag.Uint64("chaos-seed", 0, "seed of the chaos test's kills; 0 picks one")
)

// Chaos rates: of the lifecycles, this share has its pause process killed,
// and this share its shim; containerd is killed every chaosRestartEvery.
const (
	chaosPauseKill    = 0.05
	chaosShimKill     = 0.02
	chaosRestartEvery = 100
	chaosWidth        = 8
)

// chaosPhase is where a chaos pod is in its lifecycle, and so what its
// state must be after a restart.
type chaosPhase int

const (
	chaosReady     chaosPhase = iota // running, with its container once made
	chaosPauseDied                   // its pause was killed: NOTREADY, container running
	chaosShimDied                    // its shim was killed: NOTREADY, container exited
	chaosStopped                     // its container and pod were stopped
)

// chaosPod is one live pod of the chaos test.
type chaosPod struct {
	id, ctr string
	phase   chaosPhase
}

// TestChaos runs -chaos pod lifecycles with an app container each, 8 at a
// time, as kubelet would (one PID namespace per container), while SIGKILLs
// hit about 5% of the pause processes, 2% of the shims, and containerd
// itself every 100 lifecycles (with -berthd, berthd, containerd or both in
// turn). Each lifecycle's steps hold a read lock that a restart takes for
// writing, so a restart finds every live pod at a known step; after it,
// each pod's state and its container's are checked against what happened
// to it. At the end nothing may be left.
func TestChaos(t *testing.T) {
	if *chaos == 0 {
		t.Skip("needs -chaos N")
	}
	seed := *chaosSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (-chaos-seed to replay the kills)", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	var rngMu sync.Mutex
	roll := func() float64 {
		rngMu.Lock()
		defer rngMu.Unlock()
		return rng.Float64()
	}

	var (
		steps sync.RWMutex // read: a lifecycle step; write: a restart
		// read: a lifecycle step; write: a shim kill. A shim dying under a
		// CRI call of one of its pods fails the call (a RunPodSandbox then
		// leaves no pod to check) or leaves the pod in no state this test
		// can predict; a kill with no call in flight finds every pod the
		// shim serves and its exits handled before the next call.
		kills    sync.RWMutex
		podsMu   sync.Mutex
		pods     = map[string]*chaosPod{}
		done     atomic.Int64
		killed   struct{ pause, shim, containerd, berthd atomic.Int64 }
		restarts = make(chan struct{}, *chaos/chaosRestartEvery+1)
	)
	setPhase := func(p *chaosPod, ph chaosPhase) {
		podsMu.Lock()
		p.phase = ph
		podsMu.Unlock()
	}
	// step runs one CRI step of a lifecycle, never during a restart or a
	// shim kill.
	step := func(fn func(ctx context.Context) error) error {
		steps.RLock()
		defer steps.RUnlock()
		kills.RLock()
		defer kills.RUnlock()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		return fn(ctx)
	}
	// alone runs a shim kill with no step in flight, never during a restart.
	alone := func(fn func() error) error {
		steps.RLock()
		defer steps.RUnlock()
		kills.Lock()
		defer kills.Unlock()
		return fn()
	}

	lifecycle := func(i int) error {
		cfg := podConfig(t, withName(strconv.Itoa(i)), withKubeletNamespaces())
		p := &chaosPod{}
		if err := step(func(ctx context.Context) error {
			resp, err := daemon.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handlerBerth})
			if err != nil {
				return fmt.Errorf("run pod %d: %w", i, err)
			}
			p.id = resp.GetPodSandboxId()
			podsMu.Lock()
			pods[p.id] = p
			podsMu.Unlock()
			return nil
		}); err != nil {
			return err
		}
		// A shared shim is all its pods': another lifecycle's kill can take
		// this pod's down under any step, which then fails. The lifecycle
		// goes on to the pod's removal, as kubelet's does.
		err := step(func(ctx context.Context) error { return chaosContainer(ctx, p, cfg) })
		// A pod a shim kill took meanwhile has nothing left to kill.
		shimDied := func() bool {
			podsMu.Lock()
			defer podsMu.Unlock()
			return p.phase == chaosShimDied
		}
		if err == nil {
			switch r := roll(); {
			case r < chaosPauseKill:
				err = step(func(context.Context) error {
					if shimDied() {
						return nil
					}
					killed.pause.Add(1)
					setPhase(p, chaosPauseDied)
					return chaosKill(chaosPausePid, []string{p.id})
				})
			case r < chaosPauseKill+chaosShimKill:
				err = alone(func() error {
					if shimDied() {
						return nil
					}
					killed.shim.Add(1)
					podsMu.Lock()
					live := slices.Collect(maps.Values(pods))
					podsMu.Unlock()
					victims, err := chaosShimVictims(p.id, live)
					if err != nil {
						return err
					}
					var ids, ctrs []string
					for _, v := range victims {
						setPhase(v, chaosShimDied)
						ids = append(ids, v.id)
						if v.ctr != "" {
							ctrs = append(ctrs, v.ctr)
						}
					}
					if err := chaosKill(chaosShimPid, ids); err != nil {
						return err
					}
					return chaosExited(ctrs)
				})
			}
		}
		if err != nil && !shimDied() {
			return err
		}
		// Each step records what it did before it ends: a restart waits for
		// the steps in flight, then reads every pod's phase, and one that
		// came between a step and its record read a stopped pod as ready.
		if err := step(func(ctx context.Context) error {
			if err := chaosStop(ctx, p); err != nil {
				return err
			}
			setPhase(p, chaosStopped)
			return nil
		}); err != nil {
			return err
		}
		if err := step(func(ctx context.Context) error {
			if err := chaosRemove(ctx, p); err != nil {
				return err
			}
			podsMu.Lock()
			delete(pods, p.id)
			podsMu.Unlock()
			return nil
		}); err != nil {
			return err
		}
		if n := done.Add(1); n%chaosRestartEvery == 0 && n < int64(*chaos) {
			restarts <- struct{}{}
		}
		return nil
	}

	// The restarts: each finds the pods where their lifecycles stand.
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		n := 0
		for range restarts {
			steps.Lock()
			podsMu.Lock()
			want := map[string]chaosPod{}
			for id, p := range pods {
				want[id] = *p
			}
			podsMu.Unlock()
			kind := chaosRestartKind(n)
			n++
			if kind != "berthd" {
				killed.containerd.Add(1)
			}
			if kind != "containerd" {
				killed.berthd.Add(1)
			}
			if err := chaosRestart(kind); err != nil {
				t.Error(err)
			} else {
				t.Logf("restarted %s", kind)
				checkChaosStates(t, want)
			}
			steps.Unlock()
		}
	}()

	start := time.Now()
	err := runParallel(*chaos, chaosWidth, lifecycle)
	close(restarts)
	<-restarted
	if err != nil {
		t.Error(err)
	}
	t.Logf("%d lifecycles in %s; killed %d pause processes, %d shims, containerd %d times, berthd %d times",
		done.Load(), time.Since(start).Round(time.Second), killed.pause.Load(), killed.shim.Load(), killed.containerd.Load(), killed.berthd.Load())
	// Pods a failed lifecycle left, removed as kubelet would.
	for id, p := range pods {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		if err := chaosRemove(ctx, p); err != nil {
			t.Errorf("remove pod %s left by a failed lifecycle: %v", id, err)
		}
		cancel()
	}
	assertNothingLeft(t)
	if netns, _ := os.ReadDir(filepath.Join(daemon.criState(), "netns")); len(netns) != 0 {
		t.Errorf("leak: %d netns files", len(netns))
	}
	if ls, err := daemon.client.LeasesService().List(ctxT(t)); err != nil || len(ls) != 0 {
		t.Errorf("leak: leases %v: %v", leaseIDs(ls), err)
	}
}

// chaosContainer makes and starts the pod's app container, in a PID
// namespace of its own as kubelet makes it.
func chaosContainer(ctx context.Context, p *chaosPod, pod *runtimeapi.PodSandboxConfig) error {
	resp, err := daemon.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: busyboxImage},
			Command:  []string{"sleep", "3600"},
			Linux:    &runtimeapi.LinuxContainerConfig{SecurityContext: kubeletContainerSecurity()},
		},
		SandboxConfig: pod,
	})
	if err != nil {
		return fmt.Errorf("create container in %s: %w", p.id, err)
	}
	p.ctr = resp.GetContainerId()
	if _, err := daemon.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.ctr}); err != nil {
		return fmt.Errorf("start container in %s: %w", p.id, err)
	}
	return nil
}

// chaosPausePid is the pid of pod id's pause process.
func chaosPausePid(ctx context.Context, id string) (int, error) {
	resp, err := daemon.client.SandboxController(sandboxerBerth).Status(ctx, id, false)
	if err != nil {
		return 0, err
	}
	return int(resp.Pid), nil
}

// chaosShimPid is the pid of pod id's shim, its pause process's parent.
func chaosShimPid(ctx context.Context, id string) (int, error) {
	pid, err := chaosPausePid(ctx, id)
	if err != nil {
		return 0, err
	}
	return hostproc.Parent(pid)
}

// chaosShimVictims are the pods among live whose pause or app container
// the shim of pod id serves.
func chaosShimVictims(id string, live []*chaosPod) ([]*chaosPod, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	shim, err := chaosShimPid(ctx, id)
	if err != nil {
		return nil, err
	}
	var victims []*chaosPod
	for _, q := range live {
		pids := []int{}
		if pid, err := chaosPausePid(ctx, q.id); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
		if q.ctr != "" {
			if resp, err := daemon.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: q.ctr, Verbose: true}); err == nil {
				var info struct{ Pid int }
				if json.Unmarshal([]byte(resp.GetInfo()["info"]), &info) == nil && info.Pid > 0 {
					pids = append(pids, info.Pid)
				}
			}
		}
		for _, pid := range pids {
			if ppid, err := hostproc.Parent(pid); err == nil && ppid == shim {
				victims = append(victims, q)
				break
			}
		}
	}
	return victims, nil
}

// chaosKill SIGKILLs the process of pods[0] that pidOf finds, then waits
// for every pod of pods to be NOTREADY, which must take under a second.
func chaosKill(pidOf func(context.Context, string) (int, error), pods []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	pid, err := pidOf(ctx, pods[0])
	if err != nil {
		return err
	}
	// kill(2) takes 0 and -1 for groups of processes and 1 is init: only a
	// process of the pod is this test's to kill.
	if pid <= 1 {
		return fmt.Errorf("no process of %s to kill: pid %d", pods[0], pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %d of %s: %w", pid, pods[0], err)
	}
	deadline := time.Now().Add(time.Second)
	for _, id := range pods {
		for ; ; time.Sleep(10 * time.Millisecond) {
			resp, err := daemon.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
			if err != nil {
				return fmt.Errorf("status of %s: %w", id, err)
			}
			if resp.GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("pod %s still READY a second after pid %d (of %s) was killed", id, pid, pods[0])
			}
		}
	}
	return nil
}

// chaosExited waits until CRI reports containers whose shim was killed
// exited. It learns of that from containerd's cleanup of the dead shim, a
// moment after the pods' exits, on the built-in controller too: a restart
// of berthd alone, which leaves containerd and its cleanup running, must
// then find them exited, not catch that moment.
func chaosExited(ctrs []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	for _, ctr := range ctrs {
		for ; ; time.Sleep(10 * time.Millisecond) {
			resp, err := daemon.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr})
			if err != nil {
				return fmt.Errorf("status of container %s: %w", ctr, err)
			}
			if resp.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
				break
			}
		}
	}
	return nil
}

// chaosStop stops the pod's container and the pod, as kubelet does: it
// stops the container until CRI reports it exited, which for a container
// whose shim died takes CRI a moment (on the built-in controller too).
func chaosStop(ctx context.Context, p *chaosPod) error {
	for p.ctr != "" {
		if _, err := daemon.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: p.ctr}); err != nil {
			return fmt.Errorf("stop container of %s: %w", p.id, err)
		}
		resp, err := daemon.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: p.ctr})
		if err != nil {
			return fmt.Errorf("status of the container of %s: %w", p.id, err)
		}
		if resp.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container of %s still running: %w", p.id, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return fmt.Errorf("stop pod %s: %w", p.id, err)
	}
	return nil
}

// chaosRemove stops and removes the pod and its container.
func chaosRemove(ctx context.Context, p *chaosPod) error {
	if err := chaosStop(ctx, p); err != nil {
		return err
	}
	if p.ctr != "" {
		if _, err := daemon.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: p.ctr}); err != nil {
			return fmt.Errorf("remove container of %s: %w", p.id, err)
		}
	}
	if _, err := daemon.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return fmt.Errorf("remove pod %s: %w", p.id, err)
	}
	return nil
}

// chaosRestartKind is what the chaos test's restart n SIGKILLs: in
// process, containerd; with -berthd, in turn berthd alone (containerd's
// CRI waits for it), containerd alone under a running berthd, and both.
func chaosRestartKind(n int) string {
	if !*berthdMode {
		return "containerd"
	}
	return []string{"berthd", "containerd", "containerd and berthd"}[n%3]
}

// chaosRestart SIGKILLs what kind names and starts it again. A berthd
// restarted alone is reached once containerd's proxy connection to it,
// which backs off while berthd is away (up to 3 s), tries again: kubelet
// retries what fails meanwhile, and so does this wait.
func chaosRestart(kind string) error {
	switch kind {
	case "berthd":
		if err := daemon.killBerthd(syscall.SIGKILL); err != nil {
			return err
		}
		if err := daemon.startBerthd(); err != nil {
			return err
		}
		// Every 200 ms: containerd logs each call.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := daemon.client.SandboxController(sandboxerBerth).Status(ctx, "no-such-pod", false)
			cancel()
			if errdefs.IsNotFound(err) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("containerd did not reach the restarted berthd in 30 s: %w", err)
			}
		}
	case "containerd":
		if err := daemon.killContainerd(syscall.SIGKILL); err != nil {
			return err
		}
	default:
		if err := daemon.kill(syscall.SIGKILL); err != nil {
			return err
		}
	}
	return daemon.start()
}

// checkChaosStates checks, after a restart, each live pod's state and its
// container's against the phase its lifecycle was at.
func checkChaosStates(t *testing.T, want map[string]chaosPod) {
	t.Helper()
	wrong := 0
	for id, p := range want {
		resp, err := daemon.runtime.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
		if err != nil {
			t.Errorf("status of %s: %v", id, err)
			continue
		}
		st := resp.GetStatus().GetState()
		ready := p.phase == chaosReady
		if (st == runtimeapi.PodSandboxState_SANDBOX_READY) != ready {
			t.Errorf("pod %s at phase %d is %v after the restart", id, p.phase, st)
			wrong++
		}
		if p.ctr == "" {
			continue
		}
		cresp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: p.ctr})
		if err != nil {
			t.Errorf("container of %s: %v", id, err)
			continue
		}
		running := p.phase == chaosReady || p.phase == chaosPauseDied
		if cs := cresp.GetStatus().GetState(); (cs == runtimeapi.ContainerState_CONTAINER_RUNNING) != running {
			t.Errorf("container of pod %s at phase %d is %v after the restart", id, p.phase, cs)
			wrong++
		}
	}
	t.Logf("restart with %d live pods: %d wrong states", len(want), wrong)
}
