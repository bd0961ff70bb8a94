package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/berth-dev/berth/keeper"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/shimproc/shimtest"
)

// warmController is a test controller whose handler shares shims and
// keeps one warm.
func warmController(t *testing.T, client *fakeClient, change ...func(*Config)) *Controller {
	return testController(t, client, append([]func(*Config){func(cfg *Config) {
		cfg.CRI.Runtimes[testHandler] = Runtime{Type: "io.containerd.runc.v2"}
		cfg.PodsPerShim = 4
		cfg.WarmShims = []string{testHandler}
	}}, change...)...)
}

// keeperContainers lists the keeper containers of the fake containerd.
func keeperContainers(client *fakeClient) []*fakeContainer {
	client.mu.Lock()
	defer client.mu.Unlock()
	var keepers []*fakeContainer
	for _, c := range client.containers {
		if keeper.IsContainer(c.info) {
			keepers = append(keepers, c)
		}
	}
	return keepers
}

// onlyKeeper is the one keeper container, which must have a running task.
func onlyKeeper(t *testing.T, client *fakeClient) *fakeContainer {
	t.Helper()
	keepers := keeperContainers(client)
	if len(keepers) != 1 || !keepers[0].hasTask() {
		t.Fatalf("keepers %v, want one with a task", keepers)
	}
	return keepers[0]
}

// keeperGroup is the shim group a keeper container's spec names.
func keeperGroup(t *testing.T, k *fakeContainer) string {
	t.Helper()
	var spec struct{ Annotations map[string]string }
	if err := json.Unmarshal(k.info.Spec.GetValue(), &spec); err != nil {
		t.Fatal(err)
	}
	return spec.Annotations[placement.GroupAnnotation]
}

func groupOf(t *testing.T, c *Controller, id string) string {
	t.Helper()
	sb, err := c.store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return sb.Status().Instance.ShimGroup
}

func removed(t *testing.T, c *Controller, id string) {
	t.Helper()
	if err := c.Stop(testContext(), id); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Shutdown(testContext(), id); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestWarmShimKeeper: the first pod of a warm handler has a keeper made
// before its own task, in its group, which the pods after it join though
// no pod outlived the first; the keeper is the built-in pause as nobody.
// A keeper whose task exits is removed, and the next group gets a new one.
func TestWarmShimKeeper(t *testing.T) {
	client := newFakeClient()
	c := warmController(t, client)
	started(t, c, client, "sb1")
	k := onlyKeeper(t, client)
	group := groupOf(t, c, "sb1")
	if i, j := slices.Index(client.calls, "new task "+k.info.ID), slices.Index(client.calls, "new task sb1"); i < 0 || i > j {
		t.Errorf("calls %v: want the keeper's task made before the pod's", client.calls)
	}
	var spec struct {
		Annotations map[string]string
		Process     struct {
			Args []string
			User struct{ UID, GID uint32 }
		}
		Linux struct{ CgroupsPath string }
	}
	if err := json.Unmarshal(k.info.Spec.GetValue(), &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Annotations[placement.GroupAnnotation] != group || !slices.Equal(spec.Process.Args, []string{"/pause"}) ||
		spec.Process.User.UID != 65535 || spec.Linux.CgroupsPath != "/k8s.io/"+k.info.ID {
		t.Errorf("keeper spec %+v, want the built-in pause as nobody in group %s", spec, group)
	}
	if k.info.Labels[LabelKind] != LabelKindKeeper || !strings.HasPrefix(k.info.ID, "berth-keeper-"+testHandler+"-") {
		t.Errorf("keeper %s labels %v", k.info.ID, k.info.Labels)
	}
	removed(t, c, "sb1")
	started(t, c, client, "sb2")
	if got := groupOf(t, c, "sb2"); got != group {
		t.Errorf("second pod in group %s, want the keeper's %s", got, group)
	}
	if got := onlyKeeper(t, client); got != k {
		t.Fatalf("keeper %s, want %s", got.info.ID, k.info.ID)
	}
	removed(t, c, "sb2")

	k.task.exit(137)
	eventually(t, "exited keeper removed", func() bool { return len(keeperContainers(client)) == 0 })
	eventually(t, "keeper's group retired", func() bool { return !c.groups.Has(group) })
	started(t, c, client, "sb3")
	if k2 := onlyKeeper(t, client); k2 == k || groupOf(t, c, "sb3") == group {
		t.Errorf("after the keeper's death, keeper %s in group %s: want a new one in a new group", k2.info.ID, groupOf(t, c, "sb3"))
	}
}

// TestWarmShimKeeperFails: a keeper that cannot be made is no pod's
// failure, and leaves nothing.
func TestWarmShimKeeperFails(t *testing.T) {
	for _, step := range []string{"new container", "new task", "task start"} {
		t.Run(step, func(t *testing.T) {
			client := newFakeClient()
			c := warmController(t, client)
			client.failNext(step, errInjected)
			started(t, c, client, "sb1")
			// A keeper whose task was made leaves its group's shim exiting, so
			// the pod moves to a fresh group, which gets a working keeper.
			group := groupOf(t, c, "sb1")
			eventually(t, "failed keeper removed", func() bool {
				ks := keeperContainers(client)
				return len(ks) == 0 || len(ks) == 1 && ks[0].hasTask() && keeperGroup(t, ks[0]) == group
			})
			started(t, c, client, "sb2")
			if got := groupOf(t, c, "sb2"); got != group {
				t.Errorf("second pod in group %s, want the first's %s", got, group)
			}
			if claimed := c.keepers.Claimed(warmScope); claimed != (len(keeperContainers(client)) == 1) {
				t.Errorf("keeper claimed %v with %d keepers", claimed, len(keeperContainers(client)))
			}
		})
	}
	// A keeper that always fails costs the pods nothing: a pod whose
	// group the keeper's failure ended opens a group without a keeper.
	for _, step := range []string{"new task", "task start"} {
		t.Run(step+" always", func(t *testing.T) {
			client := newFakeClient()
			c := warmController(t, client, func(cfg *Config) { cfg.PodsPerShim = 2 })
			client.failAlways(step, func(id string) bool { return strings.HasPrefix(id, "berth-keeper-") })
			started(t, c, client, "sb1")
			eventually(t, "failed keepers removed", func() bool { return len(keeperContainers(client)) == 0 })
			if claimed := c.keepers.Claimed(warmScope); claimed {
				t.Error("the scope's keeper is claimed with no keeper")
			}
			if n := client.count("new task"); n != 2 {
				t.Errorf("%d tasks made, want one keeper's and the pod's", n)
			}
			// The scope is backed off: the next pods try no keeper, though
			// the third opens a group (two pods a shim).
			started(t, c, client, "sb2")
			started(t, c, client, "sb3")
			if n := client.count("new task"); n != 4 {
				t.Errorf("%d tasks made, want one keeper's and three pods'", n)
			}
		})
	}
	// Pods that joined the group of a keeper whose task fails lose the
	// first of their Start's two tries with it; the backoff keeps a second
	// keeper from costing them the second.
	t.Run("always, pods together", func(t *testing.T) {
		client := newFakeClient()
		c := warmController(t, client)
		client.failAlways("new task", func(id string) bool { return strings.HasPrefix(id, "berth-keeper-") })
		release := client.hold("new task")
		ids := []string{"sb1", "sb2", "sb3", "sb4"}
		for _, id := range ids {
			if err := create(t, c, client, id, testPodConfig(id)); err != nil {
				t.Fatal(err)
			}
		}
		errs := make(chan error, len(ids))
		start := func(id string) {
			go func() {
				_, err := c.Start(testContext(), id)
				errs <- err
			}()
		}
		// The first pod's keeper is first in the group, as its making
		// begins before the pod's task; the others join the group while it
		// is being made. Started together, a pod's task could come first,
		// and the group keep no keeper.
		start(ids[0])
		eventually(t, "keeper's task asked for", func() bool {
			client.mu.Lock()
			defer client.mu.Unlock()
			return slices.ContainsFunc(client.calls, func(c string) bool { return strings.HasPrefix(c, "new task berth-keeper-") })
		})
		for _, id := range ids[1:] {
			start(id)
		}
		// Their files are made as they join; their tasks then wait for the
		// keeper's.
		eventually(t, "pods joining the keeper's group", func() bool {
			return !slices.ContainsFunc(ids[1:], func(id string) bool {
				_, err := os.Stat(c.config.Dirs.Files(id).Hostname())
				return err != nil
			})
		})
		release()
		for range ids {
			if err := <-errs; err != nil {
				t.Errorf("Start: %v", err)
			}
		}
		client.mu.Lock()
		keepers := len(slices.DeleteFunc(slices.Clone(client.calls), func(c string) bool { return !strings.HasPrefix(c, "new task berth-keeper-") }))
		client.mu.Unlock()
		if keepers != 1 {
			t.Errorf("%d keeper tasks asked for, want 1", keepers)
		}
	})
	t.Run("no built-in pause", func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client, func(cfg *Config) {
			cfg.CRI.Runtimes[testHandler] = Runtime{Type: "io.containerd.runc.v2"}
			cfg.PodsPerShim, cfg.WarmShims = 4, []string{testHandler}
			cfg.BuiltinPause.Handlers = nil
			cfg.BuiltinPause.Rootfs = ""
		})
		// The pod runs a pause image the fake does not have; what counts
		// is that no keeper container is made.
		_ = create(t, c, client, "sb1", testPodConfig("sb1"))
		_, _ = c.Start(testContext(), "sb1")
		if n := client.count("new container"); n > 1 {
			t.Errorf("%d containers made without a built-in pause, want no keeper", n)
		}
	})
}

// TestWarmShimKeeperNotFirst: a keeper not made because another's task
// ended its group first says nothing of the keeper: the scope is not
// backed off, and its next pod makes one.
func TestWarmShimKeeperNotFirst(t *testing.T) {
	client := newFakeClient()
	c := warmController(t, client)
	group := c.groups.Join(warmScope)
	making, err := c.groups.MakeTask(testContext(), group, "other")
	if err != nil {
		t.Fatal(err)
	}
	making.End(placement.Failed) // the group's first task: it ends the group
	if err := c.keepers.KeepWarm(testContext(), sandbox.RuntimeOpts{Name: testRuntime}, warmScope, group); !errors.Is(err, placement.ErrShimEnding) {
		t.Fatalf("KeepWarm in an ended group: %v, want ErrShimEnding", err)
	}
	c.groups.Leave(group)
	started(t, c, client, "sb1")
	if n := len(keeperContainers(client)); n != 1 {
		t.Errorf("%d keepers after a keeper not made for want of a first task, want 1", n)
	}
}

// TestWarmShimKeeperIdle: a keeper outlives its scope's last pod for the
// idle timeout, and a pod that comes meanwhile finds its shim warm; then it
// is removed with its group, and the scope's next pod makes a new one.
func TestWarmShimKeeperIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := warmController(t, client, func(cfg *Config) { cfg.WarmShimIdleTimeout = time.Hour })
		started(t, c, client, "sb1")
		k := onlyKeeper(t, client)
		group := groupOf(t, c, "sb1")
		removed(t, c, "sb1")
		time.Sleep(50 * time.Minute)
		started(t, c, client, "sb2")
		if got := groupOf(t, c, "sb2"); got != group || onlyKeeper(t, client) != k {
			t.Errorf("a pod 50 minutes after the last joined group %s, want the keeper's %s", got, group)
		}
		removed(t, c, "sb2")
		time.Sleep(59 * time.Minute)
		synctest.Wait()
		if onlyKeeper(t, client) != k {
			t.Fatal("keeper removed 59 minutes after its scope's last pod")
		}
		time.Sleep(7 * time.Minute)
		synctest.Wait()
		if ks := keeperContainers(client); len(ks) != 0 || c.groups.Has(group) {
			t.Fatalf("an hour idle: keepers %v, group in use %v; want none", ks, c.groups.Has(group))
		}
		// Removed once: the exit the removal's kill caused is not taken
		// for the keeper's death.
		if n := client.countFor("container delete", k.info.ID); n != 1 {
			t.Errorf("idle keeper's container deleted %d times, want once", n)
		}
		started(t, c, client, "sb3")
		if k3 := onlyKeeper(t, client); k3 == k || groupOf(t, c, "sb3") == group {
			t.Errorf("after the idle keeper's removal, keeper %s in group %s: want a new one in a new group", k3.info.ID, groupOf(t, c, "sb3"))
		}
		removed(t, c, "sb3")
		// Nothing left waiting in the bubble.
		onlyKeeper(t, client).task.exit(137)
		eventually(t, "last keeper removed", func() bool { return len(keeperContainers(client)) == 0 })
	})
}

// TestWarmShimKeeperAnswerLost: a keeper whose container or task was made
// with its answer lost (containerd died under berthd) is undone, to the
// last step (its group's release); the pod starts without it.
func TestWarmShimKeeperAnswerLost(t *testing.T) {
	for _, step := range []string{"new container", "new task"} {
		t.Run(step, func(t *testing.T) {
			client := newFakeClient()
			c := warmController(t, client)
			client.loseNextAnswer(step)
			started(t, c, client, "sb1")
			eventually(t, "lost keeper removed", func() bool { return len(keeperContainers(client)) == 0 })
			removed(t, c, "sb1")
		})
	}
}

// TestWarmShimKeeperLostShimEnded: a keeper whose task was made with its
// answer lost, and whose cleanup then failed (containerd still away), is
// undone by the retry queue. The retry's cleanup leaves the lost shim to
// the group the keeper still holds; the keeper's leaving the group, last,
// ends it.
func TestWarmShimKeeperLostShimEnded(t *testing.T) {
	client := newFakeClient()
	sockets := shimtest.Sockets(t, Namespace)
	c := warmController(t, client, func(cfg *Config) { cfg.Shims = sockets })
	client.loseNextAnswer("new task")
	client.failNext("task delete", errdefs.ErrUnavailable)
	started(t, c, client, "sb1")
	keepers := keeperContainers(client)
	if len(keepers) != 1 {
		t.Fatalf("%d keeper containers, want the lost one's, its undo retried", len(keepers))
	}
	shim := &shimtest.IdleShim{}
	shimtest.Serve(t, sockets, keeperGroup(t, keepers[0]), shim)
	eventually(t, "lost keeper removed", func() bool { return len(keeperContainers(client)) == 0 })
	// The group's release is the undo's last step, after the container's
	// deletion.
	for deadline := time.Now().Add(5 * time.Second); shim.Shutdowns() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := shim.Shutdowns(); n != 1 {
		t.Errorf("%d shutdowns of the lost keeper's shim, want 1", n)
	}
	removed(t, c, "sb1")
}

// TestKeeperRefusedCallerGone: a pod leaves the group its keeper's refused
// task ended, and ends the group's shim, though its caller gave up while
// the keeper was being made: the pod was in the group, so only its leaving
// can end the shim.
func TestKeeperRefusedCallerGone(t *testing.T) {
	client := newFakeClient()
	sockets := shimtest.Sockets(t, Namespace)
	c := warmController(t, client, func(cfg *Config) { cfg.Shims = sockets })
	if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
		t.Fatal(err)
	}
	client.failNext("new task", errgrpc.ToNative(status.Error(codes.Unknown, "ttrpc: closed")))
	release := client.hold("new task")
	ctx, cancel := context.WithCancel(testContext())
	done := make(chan error, 1)
	go func() {
		_, err := c.Start(ctx, "sb1")
		done <- err
	}()
	eventually(t, "keeper's task asked for", func() bool { return client.count("new task") == 1 })
	shim := &shimtest.IdleShim{}
	shimtest.Serve(t, sockets, keeperGroup(t, onlyKeeperContainer(t, client)), shim)
	cancel()
	release()
	<-done
	// By Start, on its first try: the retry queue would end the shim
	// later whatever ctx Start left the group on.
	if shim.Shutdowns() == 0 {
		t.Error("the ended group's shim not shut down by the time Start returned")
	}
}

// onlyKeeperContainer is the one keeper container, with a task or not.
func onlyKeeperContainer(t *testing.T, client *fakeClient) *fakeContainer {
	t.Helper()
	keepers := keeperContainers(client)
	if len(keepers) != 1 {
		t.Fatalf("keepers %v, want one", keepers)
	}
	return keepers[0]
}

// warmScope is the shim scope of warmController's pods of namespace
// default.
var warmScope = placement.Scope{Handler: testHandler, Namespace: "default", Runtime: shimRuntime(Runtime{Type: "io.containerd.runc.v2"}, nil)}

// keeperContainer is a keeper container of handler's pods of namespace
// default, running what warmController's pods run, as a previous
// containerd left it.
func keeperContainer(t *testing.T, id, handler, group string) containers.Container {
	t.Helper()
	return keeperContainerOf(t, id, keeper.Record{RuntimeHandler: handler, Namespace: "default", ShimGroup: group, ShimRuntime: shimRuntime(Runtime{Type: "io.containerd.runc.v2"}, nil)})
}

// keeperContainerOf is a keeper container with record rec.
func keeperContainerOf(t *testing.T, id string, rec keeper.Record) containers.Container {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return containers.Container{
		ID:         id,
		Labels:     map[string]string{LabelKind: LabelKindKeeper},
		Runtime:    containers.RuntimeInfo{Name: testRuntime},
		Extensions: map[string]typeurl.Any{keeper.Extension: &anypb.Any{TypeUrl: keeper.TypeURL, Value: b}},
	}
}

// TestRecoverKeepers: recovery takes up one running keeper of a warm
// handler's namespace in its group, and removes a second, one whose task is
// gone or stopped, one of a handler that keeps no warm shim, and one of
// every namespace, which the handler's pods, sharing shims by namespace,
// never join. A container labelled as a keeper without berth's record is
// not touched.
func TestRecoverKeepers(t *testing.T) {
	client := newFakeClient()
	client.addContainer(keeperContainer(t, "k-live", testHandler, "g1")).setTask(containerd.Running)
	client.addContainer(keeperContainer(t, "k-second", testHandler, "g2")).setTask(containerd.Running)
	client.addContainer(keeperContainer(t, "k-stopped", testHandler, "g3")).setTask(containerd.Stopped)
	client.addContainer(keeperContainer(t, "k-no-task", testHandler, "g4"))
	client.addContainer(keeperContainer(t, "k-cold", "other", "g5")).setTask(containerd.Running)
	client.addContainer(keeperContainerOf(t, "k-all-namespaces", keeper.Record{RuntimeHandler: testHandler, ShimGroup: "g6"})).setTask(containerd.Running)
	client.addContainer(containers.Container{ID: "impostor", Labels: map[string]string{LabelKind: LabelKindKeeper}}).setTask(containerd.Running)
	// Another berth's on the same containerd: its to recover.
	client.addContainer(keeperContainerOf(t, "k-others", keeper.Record{Sandboxer: "berthd", RuntimeHandler: testHandler, Namespace: "default", ShimGroup: "g7"})).setTask(containerd.Running)
	c := warmController(t, client)
	if err := c.Recover(testContext(), RecoverConfig{Parallelism: 2, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := c.awaitRecovery(testContext()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "keepers removed", func() bool { return len(keeperContainers(client)) == 2 })
	if ctr := client.container("k-others"); ctr == nil || !ctr.hasTask() {
		t.Fatal("another berth's keeper was touched")
	}
	kept := ownKeepers(client)[0]
	if !kept.hasTask() || !c.groups.IsOpen(warmScope, groupFor(kept)) {
		t.Errorf("kept keeper %s: task %v, group open %v", kept.info.ID, kept.hasTask(), c.groups.IsOpen(warmScope, groupFor(kept)))
	}
	if ctr := client.container("impostor"); ctr == nil || !ctr.hasTask() {
		t.Error("a container labelled as a keeper by someone else was touched")
	}
	// The next pod joins the recovered keeper's group.
	started(t, c, client, "sb1")
	if got := groupOf(t, c, "sb1"); got != groupFor(kept) {
		t.Errorf("pod in group %s, want the recovered keeper's %s", got, groupFor(kept))
	}
	if n := len(ownKeepers(client)); n != 1 {
		t.Errorf("%d keepers after a pod started, want the recovered one", n)
	}
}

// TestRecoverKeeperWhileContainerdAway: a keeper whose load containerd
// does not answer (berthd's containerd restarting during berthd's
// recovery) is taken up once it answers, not removed with its warm shim.
func TestRecoverKeeperWhileContainerdAway(t *testing.T) {
	client := newFakeClient()
	client.addContainer(keeperContainer(t, "k-live", testHandler, "g1")).setTask(containerd.Running)
	client.failNext("task status", errdefs.ErrUnavailable, errdefs.ErrUnavailable)
	c := warmController(t, client)
	if err := c.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := c.awaitRecovery(testContext()); err != nil {
		t.Fatal(err)
	}
	kept := client.container("k-live")
	if kept == nil || !kept.hasTask() || !c.groups.IsOpen(warmScope, "g1") {
		t.Fatal("the keeper was not taken up once containerd answered")
	}
	if n := killsAndDeletes(client); n != 0 {
		t.Errorf("%d kills and deletions of a live keeper's task", n)
	}
}

// TestRecoverKeepersInvalidConfig: with berth's config invalid, recovery
// leaves the keepers as they are. The defaults berth then runs on keep no
// shim warm; a typo elsewhere in the config must not tear down the node's
// warm shims.
func TestRecoverKeepersInvalidConfig(t *testing.T) {
	client := newFakeClient()
	client.addContainer(keeperContainer(t, "k-live", testHandler, "g1")).setTask(containerd.Running)
	client.addContainer(keeperContainer(t, "k-stopped", testHandler, "g2")).setTask(containerd.Stopped)
	// What setup.NewController runs on: the defaults, which warm no handler.
	c := warmController(t, client, func(cfg *Config) {
		cfg.WarmShims = nil
		cfg.ConfigErr = errInjected
	})
	if err := c.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	// Close waits for the keeper removals recovery began.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"k-live", "k-stopped"} {
		if ctr := client.container(id); ctr == nil || !ctr.hasTask() {
			t.Errorf("keeper %s removed while berth's config is invalid", id)
		}
	}
}

// recoveredWithWedgedKeeper is a warm controller that recovered a
// running keeper of a handler keeping no warm shim, whose removal waits in
// the task's deletion until release is called.
func recoveredWithWedgedKeeper(t *testing.T, client *fakeClient) (c *Controller, release func()) {
	t.Helper()
	client.addContainer(keeperContainer(t, "k-cold", "other", "g1")).setTask(containerd.Running)
	release = client.hold("task delete")
	c = warmController(t, client)
	if err := c.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Second}); err != nil {
		release()
		t.Fatal(err)
	}
	if err := c.awaitRecovery(testContext()); err != nil {
		release()
		t.Fatal(err)
	}
	return c, release
}

// TestRecoverKeeperWedged: the removal of a keeper whose shim does not
// answer holds recovery, and every call waiting for it, only for a bounded
// time; the removal goes on in the background.
func TestRecoverKeeperWedged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		start := time.Now()
		_, release := recoveredWithWedgedKeeper(t, client)
		defer release()
		if took := time.Since(start); took > time.Minute {
			t.Errorf("recovery took %v with a wedged keeper's shim, want it bounded", took)
		}
		release()
		eventually(t, "wedged keeper removed once its shim answers", func() bool { return len(keeperContainers(client)) == 0 })
	})
}

// groupFor is the group in keeper container c's record.
func groupFor(c *fakeContainer) string {
	var rec keeper.Record
	_ = json.Unmarshal(c.info.Extensions[keeper.Extension].GetValue(), &rec)
	return rec.ShimGroup
}

// ownKeepers are the keeper containers but another berth's (k-others).
func ownKeepers(client *fakeClient) []*fakeContainer {
	return slices.DeleteFunc(keeperContainers(client), func(c *fakeContainer) bool { return c.info.ID == "k-others" })
}

// TestKeeperUndoFailureHoldsPods: a keeper whose container create fails,
// and whose container delete then fails once, ends its task making as it
// fails, not when its undo's retry deletes the container: the pod whose
// Start made it, and the group's other pods, go on at once (before, they
// waited in MakeTask for the retry's backoff, up to max_delay).
func TestKeeperUndoFailureHoldsPods(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := warmController(t, client, func(cfg *Config) {
			cfg.ExitRetry.InitialDelay = 30 * time.Second
		})
		client.failNext("new container", errInjected)    // the keeper's
		client.failNext("container delete", errInjected) // its undo's
		if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(testContext(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := c.Start(ctx, "sb1")
		took := time.Since(start)
		if err != nil || took > time.Second {
			t.Errorf("Start took %v (fake clock), err %v: want the pod started at once, its keeper's undo retried in the background", took, err)
		}
		if err == nil {
			removed(t, c, "sb1")
		}
	})
}

// TestCloseWaitsForKeeperRemovals: Close waits for the keeper removals
// recovery left running in the background, which queue their retries if
// they fail, before it stops the retry queue.
func TestCloseWaitsForKeeperRemovals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c, release := recoveredWithWedgedKeeper(t, client)
		defer release()
		closed := make(chan struct{})
		go func() {
			c.Close()
			close(closed)
		}()
		synctest.Wait()
		select {
		case <-closed:
			t.Fatal("Close returned while a keeper's removal ran")
		default:
		}
		release()
		<-closed
		if n := len(keeperContainers(client)); n != 0 {
			t.Errorf("%d keeper containers after Close", n)
		}
	})
}

// TestRecoverWedgedKeepers: keepers whose shims do not answer are removed
// in the background, so recovery, which every call to berth waits for,
// does not grow by a removal's bound (rollback.StepTimeout) per keeper.
func TestRecoverWedgedKeepers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		for _, id := range []string{"k1", "k2", "k3", "k4"} {
			client.addContainer(keeperContainer(t, id, "other", "g-"+id)).setTask(containerd.Running)
		}
		release := client.hold("task delete")
		defer release()
		c := warmController(t, client)
		start := time.Now()
		if err := c.Recover(testContext(), RecoverConfig{Parallelism: 16, Timeout: time.Second}); err != nil {
			t.Fatal(err)
		}
		if err := c.awaitRecovery(testContext()); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 31*time.Second {
			t.Errorf("recovery took %v with 4 wedged keepers (fake clock), want no more than one keeper's bound", took)
		}
		release()
		eventually(t, "keepers removed", func() bool { return len(keeperContainers(client)) == 0 })
	})
}

// TestCloseLeavesStaleKeeper: a stale keeper that a Start finds once Close
// has waited for the keeper removals is not removed in the background,
// where Close could neither wait for it nor retry it; it is left to the
// next start's recovery, and the pod starts all the same.
func TestCloseLeavesStaleKeeper(t *testing.T) {
	client := newFakeClient()
	c := warmController(t, client)
	started(t, c, client, "sb1")
	stale := onlyKeeper(t, client)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// sb2's group refuses its task, as a shim exiting does: it ends, and
	// sb2 starts in a new group, whose keeper replaces the ended one's.
	if err := create(t, c, client, "sb2", testPodConfig("sb2")); err != nil {
		t.Fatal(err)
	}
	client.failNext("new task", errgrpc.ToNative(status.Error(codes.Unknown, "ttrpc: closed")))
	if _, err := c.Start(testContext(), "sb2"); err != nil {
		t.Fatal(err)
	}
	if groupOf(t, c, "sb2") == groupOf(t, c, "sb1") || len(keeperContainers(client)) != 2 {
		t.Fatalf("sb2 in sb1's group or no new keeper: keepers %v", keeperContainers(client))
	}
	if !stale.hasTask() {
		t.Errorf("stale keeper %s removed after Close", stale.info.ID)
	}
}

// TestRecoverKeepersInParallel: keepers load up to the recovery's
// parallelism at once, as sandboxes do: with shims slow to answer after a
// restart, one at a time would hold every call to berth for a timeout per
// warm namespace.
func TestRecoverKeepersInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		var ids []string
		for i := range 4 {
			id := fmt.Sprint("k", i)
			ids = append(ids, id)
			client.addContainer(keeperContainerOf(t, id, keeper.Record{Sandboxer: "berth", RuntimeHandler: testHandler,
				Namespace: fmt.Sprint("ns", i), ShimGroup: fmt.Sprint("g", i), ShimRuntime: warmScope.Runtime})).setTask(containerd.Running)
		}
		release := client.hold("task status")
		c := warmController(t, client)
		if err := c.Recover(testContext(), RecoverConfig{Parallelism: 16, Timeout: 10 * time.Second}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		asked := client.count("task status")
		release()
		if err := c.awaitRecovery(testContext()); err != nil {
			t.Fatal(err)
		}
		if asked != len(ids) {
			t.Errorf("%d of %d keepers loading at once, want all", asked, len(ids))
		}
		if n := len(ownKeepers(client)); n != len(ids) {
			t.Errorf("%d keepers taken up, want %d", n, len(ids))
		}
		for _, id := range ids {
			client.container(id).task.exit(137)
		}
		eventually(t, "keepers removed", func() bool { return len(keeperContainers(client)) == 0 })
	})
}

// TestRecoverKeeperBesideStopped: of two keepers of one scope loading at
// once, the one whose task runs is kept, though the other, whose task has
// stopped, was first to ask: a scope's keeper is claimed once its task is
// known to run.
func TestRecoverKeeperBesideStopped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		client.addContainer(keeperContainer(t, "k-stopped", testHandler, "g1")).setTask(containerd.Stopped)
		client.addContainer(keeperContainer(t, "k-live", testHandler, "g2")).setTask(containerd.Running)
		release := client.hold("task status")
		c := warmController(t, client)
		if err := c.Recover(testContext(), RecoverConfig{Parallelism: 2, Timeout: time.Minute}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // each keeper's load asks for its task's status
		release()
		if err := c.awaitRecovery(testContext()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the stopped keeper's removal
		if ctr := client.container("k-live"); ctr == nil || !ctr.hasTask() {
			t.Error("the running keeper was removed")
		}
		if client.container("k-stopped") != nil {
			t.Error("the stopped keeper was kept")
		}
		if ctr := client.container("k-live"); ctr != nil && ctr.hasTask() {
			ctr.task.exit(137)
		}
		synctest.Wait()
	})
}

// TestCloseDuringIdleSweep: Close stops an idle sweep between removals:
// each removal may wait on a wedged shim for its bound, and Close waits for
// the sweep; the keepers left are the next start's to expire.
func TestCloseDuringIdleSweep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := warmController(t, client, func(cfg *Config) { cfg.WarmShimIdleTimeout = time.Hour })
		for i := range 4 {
			id := fmt.Sprint("sb", i)
			cfg := testPodConfig(id)
			cfg.Metadata.Namespace = fmt.Sprint("ns", i) // a keeper each
			if err := create(t, c, client, id, cfg); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Start(testContext(), id); err != nil {
				t.Fatal(err)
			}
			removed(t, c, id)
		}
		release := client.hold("task delete")
		defer release()
		time.Sleep(time.Hour + time.Minute) // a sweep runs; its first removal waits
		synctest.Wait()
		start := time.Now()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > rollback.StepTimeout {
			t.Errorf("Close took %v during an idle sweep, want at most the removal under way (%v)", took, rollback.StepTimeout)
		}
		release()
		for _, k := range keeperContainers(client) {
			if k.hasTask() {
				k.task.exit(137)
			}
		}
		synctest.Wait()
	})
}
