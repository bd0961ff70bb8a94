package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/berth-dev/berth/controller"
	"github.com/berth-dev/berth/integration/hostproc"
)

// handlerWarm is the config's handler with a warm shim.
const handlerWarm = "berth-warm"

// shimKeeper is a live shim keeper: its container's ID, its pause process
// and the shim serving it.
type shimKeeper struct {
	id        string
	pid, shim int
}

// keepersOf lists the shim keepers of handler.
func keepersOf(t *testing.T, handler string) []shimKeeper {
	t.Helper()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), controller.Namespace), 30*time.Second)
	defer cancel()
	list, err := daemon.client.Containers(ctx, keeperFilter)
	if err != nil {
		t.Fatal(err)
	}
	var keepers []shimKeeper
	for _, c := range list {
		if !strings.HasPrefix(c.ID(), "berth-keeper-"+handler+"-") {
			continue
		}
		k := shimKeeper{id: c.ID()}
		if task, err := c.Task(ctx, nil); err == nil {
			k.pid = int(task.Pid())
			if k.shim, err = hostproc.Parent(k.pid); err != nil {
				t.Fatal(err)
			}
		}
		keepers = append(keepers, k)
	}
	return keepers
}

// onlyKeeper is handler's one shim keeper, whose task runs.
func onlyKeeper(t *testing.T, handler string) shimKeeper {
	t.Helper()
	keepers := keepersOf(t, handler)
	if len(keepers) != 1 || keepers[0].pid == 0 {
		t.Fatalf("shim keepers of %s: %+v, want one running", handler, keepers)
	}
	return keepers[0]
}

// assertKeeperGone checks that nothing of keeper k is left: no container,
// no process, no shim, no cgroup.
func assertKeeperGone(t *testing.T, k shimKeeper) {
	t.Helper()
	eventually(t, 10*time.Second, "keeper "+k.id+" removed", func() bool {
		_, err := daemon.client.ContainerService().Get(ctxT(t), k.id)
		return errdefs.IsNotFound(err)
	})
	eventually(t, 10*time.Second, "keeper's shim exited", func() bool {
		return len(shimsOf(k.id)) == 0 && syscall.Kill(k.pid, 0) != nil
	})
	if dirs := cgroupDirs(k.id); len(dirs) > 0 {
		t.Errorf("leak: the keeper's cgroups %v", dirs)
	}
}

// podAfterKeeper runs and removes pod name of the warm handler after its
// keeper gone went: a new keeper is made, and serves the pod. It returns
// the new keeper.
func podAfterKeeper(t *testing.T, name string, gone shimKeeper) shimKeeper {
	t.Helper()
	pod := runPod(t, podConfig(t, withName(name)), handlerWarm)
	k := onlyKeeper(t, handlerWarm)
	if k.id == gone.id || shimOf(t, pod) != k.shim {
		t.Fatalf("after keeper %s went, keeper %+v and pod's shim %d, want a new keeper serving the pod", gone.id, k, shimOf(t, pod))
	}
	removePod(t, pod)
	assertNoLeaks(t, pod)
	return k
}

// TestWarmShim runs pods of a handler with a warm shim one after another:
// the first makes a shim keeper, and every pod runs in the keeper's shim,
// which outlives each pod, a containerd restart, and which a pod that
// starts after the restart joins. A keeper that dies is removed with its
// shim, and the next pod makes a new one; a restart on a config without
// the warm shim removes the keeper, leaving nothing.
func TestWarmShim(t *testing.T) {
	if len(keepersOf(t, handlerWarm)) != 0 {
		t.Fatal("a shim keeper runs before the test")
	}
	first := runPod(t, podConfig(t, withName("first")), handlerWarm)
	k := onlyKeeper(t, handlerWarm)
	if got := shimOf(t, first); got != k.shim {
		t.Fatalf("pod's shim %d, keeper's %d: want the same", got, k.shim)
	}
	removePod(t, first)
	assertNoLeaks(t, first)
	if got := onlyKeeper(t, handlerWarm); got != k {
		t.Fatalf("keeper %+v after the pod went, want %+v", got, k)
	}

	second := runPod(t, podConfig(t, withName("second")), handlerWarm)
	if got := shimOf(t, second); got != k.shim {
		t.Fatalf("second pod's shim %d, keeper's %d: want the same", got, k.shim)
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	if got := onlyKeeper(t, handlerWarm); got != k {
		t.Fatalf("keeper %+v after the restart, want %+v", got, k)
	}
	removePod(t, second)
	assertNoLeaks(t, second)
	third := runPod(t, podConfig(t, withName("third")), handlerWarm)
	if got := shimOf(t, third); got != k.shim {
		t.Fatalf("after the restart, a pod's shim %d, keeper's %d: want the same", got, k.shim)
	}
	removePod(t, third)
	assertNoLeaks(t, third)

	if err := syscall.Kill(k.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	assertKeeperGone(t, k)
	k2 := podAfterKeeper(t, "fourth", k)

	reconfigure(t, `warm_shim_handlers = \['berth-warm'\]`, `warm_shim_handlers = []`)
	assertKeeperGone(t, k2)
	if got := keepersOf(t, handlerWarm); len(got) != 0 {
		t.Fatalf("shim keepers %+v on a config without warm shims", got)
	}
}

// TestWarmShimIdle: a keeper outlives its namespace's last pod for
// warm_shim_idle_timeout, then is removed with its shim, leaving nothing,
// and the namespace's next pod makes a new one.
func TestWarmShimIdle(t *testing.T) {
	reconfigure(t, `warm_shim_handlers = \['berth-warm'\]`, "warm_shim_handlers = ['berth-warm']\n  warm_shim_idle_timeout = '3s'")
	first := runPod(t, podConfig(t, withName("first")), handlerWarm)
	k := onlyKeeper(t, handlerWarm)
	removePod(t, first)
	assertNoLeaks(t, first)
	if got := onlyKeeper(t, handlerWarm); got != k {
		t.Fatalf("keeper %+v right after the pod went, want %+v", got, k)
	}
	assertKeeperGone(t, k)
	k2 := podAfterKeeper(t, "second", k)
	// Gone before the config is restored: no test after finds a keeper.
	assertKeeperGone(t, k2)
}
