package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/shimproc/shimtest"
	"github.com/berth-dev/berth/store"
)

const (
	testHandler = "berth-builtin"
	// testRuntime is no runc, so that recovery's cleanup runs no runc.
	testRuntime = "io.containerd.fake.v1"
)

var errInjected = errors.New("injected failure")

// testController is a controller on a fake containerd, running every pod
// on the built-in pause (whose options need no client) from a rootfs that
// is never mounted.
func testController(t *testing.T, client *fakeClient, change ...func(*Config)) *Controller {
	t.Helper()
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Sandboxer: "berth",
		CRI: CRIConfig{
			DefaultRuntimeName: testHandler,
			Runtimes:           map[string]Runtime{testHandler: {Type: testRuntime}},
		},
		Dirs: podsandbox.Dirs{
			Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"),
			CRIRoot: filepath.Join(dir, "cri-root"), CRIState: filepath.Join(dir, "cri-state"),
		},
		StopTimeout:  time.Minute,
		ExitTimeout:  10 * time.Second,
		ExitRetry:    events.Backoff{InitialDelay: time.Second, Factor: 2, MaxDelay: time.Minute, AttemptTimeout: 10 * time.Second},
		HostFiles:    podsandbox.HostFiles{Hosts: hosts, ResolvConf: hosts, Hostname: func() (string, error) { return "node", nil }},
		BuiltinPause: BuiltinPause{Handlers: []string{testHandler}, Rootfs: filepath.Join(dir, "pause")},
	}
	for _, f := range change {
		f(&cfg)
	}
	c := New(cfg, client)
	t.Cleanup(func() { c.Close() })
	return c
}

func testContext() context.Context {
	return namespaces.WithNamespace(context.Background(), Namespace)
}

// testPodConfig shares the node's network and IPC namespaces, so that the
// pod's files need no mount.
func testPodConfig(name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name + "-uid"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Ipc: runtimeapi.NamespaceMode_NODE},
		}},
	}
}

// create records id in CRI's sandbox store and creates it, as CRI does.
func create(t *testing.T, c *Controller, client *fakeClient, id string, cfg *runtimeapi.PodSandboxConfig) error {
	t.Helper()
	return createWith(t, c, client, testContext(), id, cfg)
}

// createWith is create with the context of CRI's call.
func createWith(t *testing.T, c *Controller, client *fakeClient, ctx context.Context, id string, cfg *runtimeapi.PodSandboxConfig) error {
	t.Helper()
	md, err := json.Marshal(map[string]any{"Metadata": map[string]string{"RuntimeHandler": testHandler}})
	if err != nil {
		t.Fatal(err)
	}
	info := sandbox.Sandbox{
		ID:         id,
		Sandboxer:  "berth",
		Runtime:    sandbox.RuntimeOpts{Name: testRuntime},
		Extensions: map[string]typeurl.Any{criMetadataExtension: &anypb.Any{TypeUrl: "cri.Metadata", Value: md}},
	}
	if _, err := client.SandboxStore().Create(testContext(), info); err != nil {
		t.Fatal(err)
	}
	return c.Create(ctx, info, sandbox.WithOptions(cfg))
}

// started creates and starts sandbox id.
func started(t *testing.T, c *Controller, client *fakeClient, id string) *fakeTask {
	t.Helper()
	if err := create(t, c, client, id, testPodConfig(id)); err != nil {
		t.Fatalf("Create: %v", err)
	}
	inst, err := c.Start(testContext(), id)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	task := client.container(id).task
	if inst.Pid != task.pid {
		t.Fatalf("Start returned pid %d, the task has %d", inst.Pid, task.pid)
	}
	return task
}

func state(t *testing.T, c *Controller, id string) string {
	t.Helper()
	st, err := c.Status(testContext(), id, false)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return st.State
}

// assertGone checks that nothing of sandbox id is left: entry, container,
// task, files, start lease.
func assertGone(t *testing.T, c *Controller, client *fakeClient, id string) {
	t.Helper()
	if _, err := c.store.Get(id); !errdefs.IsNotFound(err) {
		t.Errorf("store entry: %v", err)
	}
	if ctr := client.container(id); ctr != nil {
		t.Errorf("container left, with a task: %v", ctr.hasTask())
	}
	if ls := client.leaseIDs(); len(ls) != 0 {
		t.Errorf("leases left: %v", ls)
	}
	client.mu.Lock()
	if slices.Contains(client.orphanedTasks, id) {
		t.Error("container record deleted under its task")
	}
	client.mu.Unlock()
	f := c.config.Dirs.Files(id)
	for _, p := range []string{f.RootDir, f.StateDir, f.CRIRootDir, f.CRIStateDir} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", p, err)
		}
	}
}

func TestLifecycle(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	started(t, c, client, "sb1")
	if got := state(t, c, "sb1"); got != runtimeapi.PodSandboxState_SANDBOX_READY.String() {
		t.Fatalf("state %s after Start, want READY", got)
	}
	if ls := client.leaseIDs(); len(ls) != 0 {
		t.Errorf("start lease %v outlives Start", ls)
	}
	if err := c.Stop(testContext(), "sb1"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	exit, err := c.Wait(testContext(), "sb1")
	if err != nil || exit.ExitStatus != 137 {
		t.Errorf("Wait = %+v, %v; want status 137", exit, err)
	}
	if err := c.Shutdown(testContext(), "sb1"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	assertGone(t, c, client, "sb1")
	if n := client.count("task delete"); n != 1 {
		t.Errorf("%d task deletes, want 1", n)
	}
	// Stop's kill reaches every process of the pause's cgroup, as
	// containerd's client and the built-in do when they delete an exited
	// pause (runc 1.1, or a runtime BinaryName names, signals the cgroup's
	// processes); that deletion then kills nothing again.
	if n := client.count("task kill"); n != 0 {
		t.Errorf("%d kills of the pause alone, want none", n)
	}
	if n := client.count("task killall"); n != 1 {
		t.Errorf("%d kills of all the pause's processes, want Stop's only", n)
	}
}

// TestContainerLabels: the pause container carries the pod's labels but
// not CRI's kind label, which a pod may set.
func TestContainerLabels(t *testing.T) {
	sb := store.NewSandbox(store.Metadata{Config: &runtimeapi.PodSandboxConfig{Labels: map[string]string{
		"app": "web", criLabelKind: "sandbox",
	}}})
	got := containerLabels(sb)
	if want := map[string]string{"app": "web", LabelKind: LabelKindSandbox}; !maps.Equal(got, want) {
		t.Errorf("labels %v, want %v", got, want)
	}
}

// TestExitedPauseKilledAll: a pause that exits by itself, or whose kill
// failed, has what is left in its cgroup killed before its task is
// deleted.
func TestExitedPauseKilledAll(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	task := started(t, c, client, "sb1")
	task.exit(0)
	if _, err := c.Wait(testContext(), "sb1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(testContext(), "sb1"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := client.count("task killall"); n != 1 {
		t.Errorf("%d kills of all the exited pause's processes, want 1", n)
	}
}

// startHeld creates sandbox id and starts it on ctx in the background,
// its pause task's start held until release; it returns once the shim was
// asked to start the task, with the channel Start's error comes on.
func startHeld(t *testing.T, c *Controller, client *fakeClient, ctx context.Context, id string) (done <-chan error, release func()) {
	t.Helper()
	if err := create(t, c, client, id, testPodConfig(id)); err != nil {
		t.Fatal(err)
	}
	release = client.hold("task start")
	t.Cleanup(release)
	started := make(chan error, 1)
	go func() {
		_, err := c.Start(ctx, id)
		started <- err
	}()
	eventually(t, "the pause task's start", func() bool { return client.count("task start") == 1 })
	return started, release
}

// TestStartCallerGaveUp: a Start whose caller's context ends while the
// shim starts the pause task fails with the context's error and leaves
// nothing: the caller (CRI, or containerd's proxy under berthd) shuts
// nothing down after a failed Start.
func TestStartCallerGaveUp(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	ctx, cancel := context.WithCancel(testContext())
	done, release := startHeld(t, c, client, ctx, "sb1")
	cancel()
	release()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Start = %v, want the caller's context's error", err)
	}
	eventually(t, "the Start undone", func() bool { return client.container("sb1") == nil })
	assertGone(t, c, client, "sb1")
}

// TestShimDeathDuringStart: a shared shim that dies between the pause
// task's start and Start's end has the pod's exit recorded (shimDied); Start
// leaves it NOTREADY, not READY, and the pause's own exit, when containerd
// reports it, still has the task deleted.
func TestShimDeathDuringStart(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	done, release := startHeld(t, c, client, testContext(), "sb1")
	c.shimDied([]string{"sb1"})
	release()
	if err := <-done; err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got := state(t, c, "sb1"); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY.String() {
		t.Errorf("state %s after Start, want the shim's death to stand: NOTREADY", got)
	}
	exit, err := c.Wait(testContext(), "sb1")
	if err != nil || exit.ExitStatus != events.UnknownExitCode {
		t.Errorf("Wait = %+v, %v; want the dead shim's status %d", exit, err, events.UnknownExitCode)
	}
	client.container("sb1").task.exit(137)
	if err := c.Shutdown(testContext(), "sb1"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	assertGone(t, c, client, "sb1")
}

// TestStartRollsBack fails each step of Start: the error is Start's, and
// nothing is left.
func TestStartRollsBack(t *testing.T) {
	for _, step := range []string{"new container", "new task", "task start"} {
		t.Run(step, func(t *testing.T) {
			client := newFakeClient()
			c := testController(t, client)
			if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
				t.Fatal(err)
			}
			client.failNext(step, errInjected)
			if _, err := c.Start(testContext(), "sb1"); !errors.Is(err, errInjected) {
				t.Fatalf("Start = %v, want the injected error", err)
			}
			assertGone(t, c, client, "sb1")
			if step == "task start" && client.count("task delete") != 1 {
				t.Errorf("the task made before the failure was not deleted")
			}
			// A created task is killed before its deletion.
			if step == "task start" && client.count("task killall") != 1 {
				t.Errorf("the created task was not killed before its deletion")
			}
		})
	}
}

// TestStartRollbackRetried fails an undo step of a failed Start: Start
// returns at once, and the retry queue finishes the rollback.
func TestStartRollbackRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
			t.Fatal(err)
		}
		client.failNext("task start", errInjected)
		client.failNext("task delete", errdefs.ErrUnavailable, errdefs.ErrUnavailable)
		if _, err := c.Start(testContext(), "sb1"); !errors.Is(err, errInjected) {
			t.Fatalf("Start = %v, want the injected error", err)
		}
		if _, err := c.store.Get("sb1"); !errdefs.IsNotFound(err) {
			t.Errorf("store entry kept while the rollback is retried: %v", err)
		}
		if client.container("sb1") == nil {
			t.Fatal("container deleted before its task")
		}
		eventually(t, "rollback retried to the end", func() bool { return client.container("sb1") == nil })
		synctest.Wait()
		assertGone(t, c, client, "sb1")
		// The first try and the two retries that failed, then success.
		if n := client.count("task delete"); n != 3 {
			t.Errorf("%d task deletes, want 3", n)
		}
	})
}

// TestStartLeaseReleaseRetried fails the release of a Start's lease, as a
// containerd restarting under berthd fails it: Start succeeds, and the
// retry queue releases the lease once containerd answers.
func TestStartLeaseReleaseRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		client.failNext("lease release", errdefs.ErrUnavailable)
		started(t, c, client, "sb1")
		if got := state(t, c, "sb1"); got != runtimeapi.PodSandboxState_SANDBOX_READY.String() {
			t.Fatalf("state %s after Start, want READY", got)
		}
		eventually(t, "start lease released", func() bool { return len(client.leaseIDs()) == 0 })
		if n := client.count("lease release"); n != 2 {
			t.Errorf("%d lease releases, want 2: the failed one and its retry", n)
		}
		if err := c.Shutdown(testContext(), "sb1"); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		assertGone(t, c, client, "sb1")
	})
}

// TestStartLeaseReleaseBounded: a containerd that does not answer the
// release of a start lease holds Start, and the sandbox's lock with it, for
// an undo step's bound, not for good; the release is retried.
func TestStartLeaseReleaseBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		release := client.hold("lease release")
		start := time.Now()
		started(t, c, client, "sb1")
		if took := time.Since(start); took > rollback.StepTimeout {
			t.Errorf("Start took %v with the lease release unanswered, want at most %v", took, rollback.StepTimeout)
		}
		release()
		eventually(t, "start lease released", func() bool { return len(client.leaseIDs()) == 0 })
		removed(t, c, "sb1")
		assertGone(t, c, client, "sb1")
	})
}

// TestExitDeleteRetried fails the deletion of an exited pause task: the
// exit is reported at once, and the deletion retried until it succeeds.
func TestExitDeleteRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		task := started(t, c, client, "sb1")
		client.failNext("task delete", errdefs.ErrUnavailable, errdefs.ErrUnavailable)
		task.exit(1)
		synctest.Wait()
		if got := state(t, c, "sb1"); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY.String() {
			t.Fatalf("state %s after the exit, want NOTREADY", got)
		}
		sb, _ := c.store.Get("sb1")
		select {
		case <-sb.Deleted():
			t.Fatal("deleted while its deletion fails")
		default:
		}
		eventually(t, "task deleted", func() bool { return !client.container("sb1").hasTask() })
		if err := c.Shutdown(testContext(), "sb1"); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		assertGone(t, c, client, "sb1")
		if n := client.count("task delete"); n != 3 {
			t.Errorf("%d task deletes, want 3", n)
		}
	})
}

// TestStopShimDiedUnderKill: a Stop whose kill finds the shim gone (it
// died before its death was seen) waits for the pod's exit and the task's
// deletion, and succeeds, instead of failing a pod that is dying anyway.
func TestStopShimDiedUnderKill(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	task := started(t, c, client, "sb1")
	client.failNext("task killall", errgrpc.ToNative(status.Error(codes.Unknown, "ttrpc: closed")))
	stopped := make(chan error, 1)
	go func() { stopped <- c.Stop(testContext(), "sb1") }()
	eventually(t, "the kill sent", func() bool { return client.count("task killall") == 1 })
	c.shimDied([]string{"sb1"})
	// containerd's cleanup after the dead shim ends the pause.
	task.exit(137)
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if client.container("sb1").hasTask() {
		t.Error("Stop returned before the task's deletion")
	}
}

// TestShutdownRetriesDeletionNow: the exited pause task's deletion failed
// long enough for its retry to back off for minutes; once its cause is
// gone, Shutdown (CRI's removal of the pod) deletes it then, as the
// built-in does, instead of failing until the retry's time.
func TestShutdownRetriesDeletionNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		// berth's default: up to 5 minutes between retries.
		c := testController(t, client, func(cfg *Config) { cfg.ExitRetry.MaxDelay = 5 * time.Minute })
		task := started(t, c, client, "sb1")
		// The first try and retries at 1s, 3s, ... 255s: the next is at
		// 511s.
		fails := make([]error, 9)
		for i := range fails {
			fails[i] = errdefs.ErrUnavailable
		}
		client.failNext("task delete", fails...)
		task.exit(0)
		time.Sleep(260 * time.Second)
		synctest.Wait()
		start := time.Now()
		if err := c.Shutdown(testContext(), "sb1"); err != nil {
			t.Fatalf("Shutdown after %v: %v", time.Since(start), err)
		}
		if waited := time.Since(start); waited > 0 {
			t.Errorf("Shutdown waited %v for the retry's time", waited)
		}
		assertGone(t, c, client, "sb1")
	})
}

// TestShutdownDuringDeletionRetry: Shutdown comes while a retry of the
// exited pause task's deletion is in its call to a slow shim, which then
// fails: the deletion is tried again at once, not after the retry's next
// delay, for which Shutdown would wait.
func TestShutdownDuringDeletionRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		task := started(t, c, client, "sb1")
		// The first try and the retry at 1s fail; the next would be at 3s.
		client.failNext("task delete", errdefs.ErrUnavailable, errdefs.ErrUnavailable)
		task.exit(0)
		synctest.Wait()
		release := client.hold("task delete")
		defer release()
		time.Sleep(time.Second)
		synctest.Wait() // the retry at 1s is in its call.

		shut := make(chan error, 1)
		go func() { shut <- c.Shutdown(testContext(), "sb1") }()
		synctest.Wait()
		start := time.Now()
		release()
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if waited := time.Since(start); waited > 0 {
			t.Errorf("Shutdown waited %v after the slow retry failed, for the retry's time", waited)
		}
		assertGone(t, c, client, "sb1")
	})
}

// TestKillRetriedOnce fails the kills of Stop: however many Stops fail,
// one kill is retried in the background, until the pause dies.
func TestKillRetriedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		started(t, c, client, "sb1")
		client.failNext("task killall", errdefs.ErrUnavailable, errdefs.ErrUnavailable, errdefs.ErrUnavailable, errdefs.ErrUnavailable, errdefs.ErrUnavailable)
		for range 3 {
			if err := c.Stop(testContext(), "sb1"); err == nil {
				t.Fatal("Stop succeeded while the kill fails")
			}
		}
		// Retries at 1s and 3s fail; the one at 7s kills, and the exited
		// pause's deletion kills nothing again.
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := client.count("task killall"); n != 6 {
			t.Errorf("%d kills, want 3 by Stop and 3 by one retry", n)
		}
		if got := state(t, c, "sb1"); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY.String() {
			t.Errorf("state %s, want NOTREADY once the retried kill succeeded", got)
		}
	})
}

// TestKillRetryEndsAtExit: a kill being retried stops once the pause
// exits by itself, and does not hold up the task's deletion.
func TestKillRetryEndsAtExit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		task := started(t, c, client, "sb1")
		client.failNext("task killall", errdefs.ErrUnavailable)
		if err := c.Stop(testContext(), "sb1"); err == nil {
			t.Fatal("Stop succeeded while the kill fails")
		}
		task.exit(0)
		time.Sleep(time.Hour)
		synctest.Wait()
		// Stop's, which failed, and the deletion's of what its failure may
		// have left; none by the retry: the pause exited before it.
		if n := client.count("task killall"); n != 2 {
			t.Errorf("%d kills, want Stop's and the deletion's", n)
		}
		if client.container("sb1").hasTask() {
			t.Error("exited task not deleted")
		}
	})
}

// sharingController is testController with the test handler's pods on
// runc, 4 to a shim, whose sockets berth knows.
func sharingController(t *testing.T, client *fakeClient, change ...func(*Config)) *Controller {
	t.Helper()
	return testController(t, client, append([]func(*Config){func(cfg *Config) {
		cfg.CRI.Runtimes[testHandler] = Runtime{Type: "io.containerd.runc.v2"}
		cfg.PodsPerShim = 4
		cfg.Shims = shimproc.Sockets{ContainerdAddress: "/run/berth-test/containerd.sock", Dir: "/run/berth-test/s", Namespace: Namespace}
	}}, change...)...)
}

// refusingShim is an idle shim whose first connects fail, as a shim too
// slow to answer does.
type refusingShim struct {
	shimtest.IdleShim
	refusals atomic.Int32
}

func (s *refusingShim) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	if s.refusals.Add(-1) >= 0 {
		return nil, errgrpc.ToGRPC(fmt.Errorf("shim busy: %w", errdefs.ErrUnavailable))
	}
	return s.IdleShim.Connect(ctx, r)
}

// TestIdleShimEndRetried: the shim of a group the last pod left is shut
// down though it did not answer at first: the retry queue tries again.
func TestIdleShimEndRetried(t *testing.T) {
	client := newFakeClient()
	sockets := shimtest.Sockets(t, Namespace)
	c := sharingController(t, client, func(cfg *Config) { cfg.Shims = sockets })
	started(t, c, client, "sb1")
	shim := &refusingShim{}
	shim.refusals.Store(1)
	shimtest.Serve(t, sockets, groupOf(t, c, "sb1"), shim)
	removed(t, c, "sb1")
	eventually(t, "the idle shim shut down", func() bool { return shim.Shutdowns() == 1 })
}

// TestStartAnswerLost: a pause container or task whose making's answer
// was lost (containerd died under berthd before it answered) is undone
// with the rest of the failed Start. In a shared shim the loss is not the
// shim's refusal (containerd, not the shim, was away): the group, whose
// shim serves its other pod, takes the next pod.
func TestStartAnswerLost(t *testing.T) {
	for _, shared := range []bool{false, true} {
		for _, step := range []string{"new container", "new task"} {
			t.Run(fmt.Sprintf("%s shared=%v", step, shared), func(t *testing.T) {
				client := newFakeClient()
				c := testController(t, client)
				if shared {
					c = sharingController(t, client)
					// Its shim serves the lost task beside another's.
					started(t, c, client, "sb0")
				}
				if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
					t.Fatal(err)
				}
				client.loseNextAnswer(step)
				if _, err := c.Start(testContext(), "sb1"); !errors.Is(err, errAnswerLost) {
					t.Fatalf("Start: %v, want the lost answer's error", err)
				}
				assertGone(t, c, client, "sb1")
				if !shared {
					return
				}
				if !client.container("sb0").hasTask() {
					t.Error("the other pod's task was deleted")
				}
				started(t, c, client, "sb2")
				if a, b := groupOf(t, c, "sb0"), groupOf(t, c, "sb2"); a != b {
					t.Errorf("the next pod started in shim group %s, want sb0's %s", b, a)
				}
			})
		}
	}
}

// TestStartFailsUndoFails: a Start that fails before its pause task is
// made, and whose undo then fails, does not hold its shim group's next
// pod, which makes the group's first task while the undo is retried.
func TestStartFailsUndoFails(t *testing.T) {
	client := newFakeClient()
	c := sharingController(t, client)
	if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
		t.Fatal(err)
	}
	client.failNext("container info", errInjected)
	client.failAlways("container delete", func(id string) bool { return id == "sb1" })
	if _, err := c.Start(testContext(), "sb1"); !errors.Is(err, errInjected) {
		t.Fatalf("Start = %v, want the injected error", err)
	}
	if err := create(t, c, client, "sb2", testPodConfig("sb2")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(testContext(), 5*time.Second)
	defer cancel()
	if _, err := c.Start(ctx, "sb2"); err != nil {
		t.Fatalf("Start of the group's next pod: %v", err)
	}
	client.failAlways("container delete", nil)
	eventually(t, "the failed Start undone", func() bool {
		_, err := c.store.Get("sb1")
		return errdefs.IsNotFound(err) && client.container("sb1") == nil
	})
}

// refusingSecondPod is a controller sharing shims with pod sb1 started
// and sb2 created, whose pause task sb1's shim will refuse, as a shim
// shutting down refuses it (its connection closed).
func refusingSecondPod(t *testing.T, client *fakeClient) *Controller {
	t.Helper()
	c := sharingController(t, client)
	started(t, c, client, "sb1")
	if err := create(t, c, client, "sb2", testPodConfig("sb2")); err != nil {
		t.Fatal(err)
	}
	client.failNext("new task", errgrpc.ToNative(status.Error(codes.Unknown, "ttrpc: closed")))
	return c
}

// TestStartInRefusingSharedShim fails the pause task's creation in a
// shared shim, as a shim shutting down fails it (its connection closed): Start undoes what it made
// and makes the pod again in another shim group, and the refusing group
// takes no pod again. A pod whose group's shim is up joins it at its
// socket, which containerd takes only for a container of a sandbox.
func TestStartInRefusingSharedShim(t *testing.T) {
	client := newFakeClient()
	c := refusingSecondPod(t, client)
	sb1, _ := c.store.Get("sb1")
	first := sb1.Status().Instance.ShimGroup
	if first == "" {
		t.Fatal("no shim group with 4 pods per shim")
	}
	if _, err := c.Start(testContext(), "sb2"); err != nil {
		t.Fatalf("Start in a refusing shared shim: %v", err)
	}
	sb, _ := c.store.Get("sb2")
	group := sb.Status().Instance.ShimGroup
	if group == "" || group == first {
		t.Errorf("started in shim group %q, want another than %s", group, first)
	}
	var spec struct{ Annotations map[string]string }
	info, _ := client.container("sb2").Info(testContext())
	if err := json.Unmarshal(info.Spec.GetValue(), &spec); err != nil || spec.Annotations[placement.GroupAnnotation] != group {
		t.Errorf("pause spec annotations %v (%v), want the group %s", spec.Annotations, err, group)
	}
	if n := client.count("new container"); n != 3 {
		t.Errorf("%d containers made, want sb1's and sb2's twice", n)
	}
	if err := create(t, c, client, "sb3", testPodConfig("sb3")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(testContext(), "sb3"); err != nil {
		t.Fatal(err)
	}
	if sb3, _ := c.store.Get("sb3"); sb3.Status().Instance.ShimGroup != group {
		t.Errorf("sb3 is in shim group %s, want sb2's, %s", sb3.Status().Instance.ShimGroup, group)
	}
	// The first pod of a group starts its shim; the next joins it.
	for id, want := range map[string]string{"sb1": "", "sb2": "", "sb3": "sb3"} {
		if info, _ := client.container(id).Info(testContext()); info.SandboxID != want {
			t.Errorf("pause container %s is of sandbox %q, want %q", id, info.SandboxID, want)
		}
	}
}

// TestStartRefusedLeaseReleaseLost: a Start whose pause task a shared
// shim refused, and whose release of its first attempt's lease lost its
// answer, tries again under a lease of its own: the retried release of the
// first does not end the second's while the pod is made.
func TestStartRefusedLeaseReleaseLost(t *testing.T) {
	client := newFakeClient()
	c := refusingSecondPod(t, client)
	client.loseNextAnswer("lease release")
	releases, taskStarts := client.count("lease release"), client.count("task start")
	release := client.hold("task start")
	defer release()
	started := make(chan error, 1)
	go func() {
		_, err := c.Start(testContext(), "sb2")
		started <- err
	}()
	eventually(t, "the second attempt at its task's start", func() bool { return client.count("task start") == taskStarts+1 })
	eventually(t, "the first attempt's release retried", func() bool { return client.count("lease release") == releases+2 })
	if ls := client.leaseIDs(); len(ls) != 1 {
		t.Errorf("leases while the second attempt starts its task: %v, want its own", ls)
	}
	release()
	if err := <-started; err != nil {
		t.Fatalf("Start: %v", err)
	}
	if ls := client.leaseIDs(); len(ls) != 0 {
		t.Errorf("start leases %v outlive Start", ls)
	}
}

// TestStartRefusedUndoFails: a Start whose pause task a shared shim
// refused, and whose undo of it then fails, fails with both errors, and
// its retried undo leaves nothing.
func TestStartRefusedUndoFails(t *testing.T) {
	client := newFakeClient()
	c := refusingSecondPod(t, client)
	client.failNext("container delete", errInjected)
	if _, err := c.Start(testContext(), "sb2"); !errors.Is(err, errSharedShimRefused) || !errors.Is(err, errInjected) {
		t.Fatalf("Start = %v, want the refusal and the undo's error", err)
	}
	eventually(t, "sb2's container removed", func() bool { return client.container("sb2") == nil })
}

// TestStartFailsInSharedShim checks that a pause task that fails to be
// made in a shared shim for a reason of its own (a hook, runc) fails Start
// with that error, once, and leaves the group to its pods: the next pod
// joins it. Before, every such failure was taken for a refusal: Start ran
// again in a new group, and the old one was joined no more.
func TestStartFailsInSharedShim(t *testing.T) {
	client := newFakeClient()
	c := sharingController(t, client)
	started(t, c, client, "sb1")
	group := c.store.List()[0].Status().Instance.ShimGroup
	if err := create(t, c, client, "sb2", testPodConfig("sb2")); err != nil {
		t.Fatal(err)
	}
	client.failNext("new task", errInjected)
	if _, err := c.Start(testContext(), "sb2"); !errors.Is(err, errInjected) || errors.Is(err, errSharedShimRefused) {
		t.Fatalf("Start = %v, want the task's own error", err)
	}
	if n := client.count("new container"); n != 2 {
		t.Errorf("%d containers made, want sb1's and sb2's once", n)
	}
	started(t, c, client, "sb3")
	if sb3, _ := c.store.Get("sb3"); sb3.Status().Instance.ShimGroup != group {
		t.Errorf("sb3 is in shim group %s, want sb1's, %s", sb3.Status().Instance.ShimGroup, group)
	}
}

// TestShimTenantBoundary checks that a pod shares a shim only with pods
// of its Kubernetes namespace, unless its handler shares shims across
// namespaces.
func TestShimTenantBoundary(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cross []string
		same  bool
	}{
		{name: "by namespace", same: false},
		{name: "across namespaces", cross: []string{testHandler}, same: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newFakeClient()
			c := sharingController(t, client, func(cfg *Config) { cfg.CrossNamespaceShims = tc.cross })
			groups := map[string]string{}
			for _, p := range []struct{ id, namespace string }{{"a1", "a"}, {"a2", "a"}, {"b1", "b"}} {
				cfg := testPodConfig(p.id)
				cfg.Metadata.Namespace = p.namespace
				if err := create(t, c, client, p.id, cfg); err != nil {
					t.Fatal(err)
				}
				if _, err := c.Start(testContext(), p.id); err != nil {
					t.Fatal(err)
				}
				groups[p.id] = groupOf(t, c, p.id)
			}
			if groups["a1"] == "" || groups["a2"] != groups["a1"] {
				t.Errorf("pods of one namespace in groups %q and %q, want one", groups["a1"], groups["a2"])
			}
			if same := groups["b1"] == groups["a1"]; same != tc.same {
				t.Errorf("pods of namespaces a and b in groups %q and %q; want one group: %v", groups["a1"], groups["b1"], tc.same)
			}
		})
	}
}

// TestIsShimRefusal checks which task creation errors say the shim is
// exiting or gone, in the forms they reach berth through containerd.
func TestIsShimRefusal(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		code codes.Code
		want bool
	}{
		{"ttrpc: closed", codes.Unknown, true},
		{`failed to start shim: failed to load sandbox task "x": failed to create TTRPC connection: dial unix /run/s/1: connect: connection refused`, codes.Unknown, true},
		{"write unix @->/run/s/1: write: broken pipe", codes.Unknown, true},
		{"read unix @->/run/s/1: read: connection reset by peer", codes.Unknown, true},
		// containerd away under berthd: the task may be made.
		{"connection error: desc = \"transport: Error while dialing: dial unix /run/containerd/containerd.sock: connect: connection refused\"", codes.Unavailable, false},
		{"error reading from server: read unix @->/run/containerd/containerd.sock: read: connection reset by peer", codes.Unavailable, false},
		// A call that ran out of time while berthd's connection to
		// containerd came back carries its last error.
		{"context deadline exceeded: latest balancer error: read unix @->/run/containerd/containerd.sock: read: connection reset by peer", codes.DeadlineExceeded, false},
		{"context canceled: write unix @->/run/containerd/containerd.sock: write: broken pipe", codes.Canceled, false},
		{`failed to create shim task: OCI runtime create failed: runc create failed: error running hook #0: exit status 1`, codes.Unknown, false},
		{"failed to create shim task: OCI runtime create failed: invalid mount", codes.InvalidArgument, false},
	} {
		err := errgrpc.ToNative(status.Error(tc.code, tc.msg))
		if got := isShimRefusal(err); got != tc.want {
			t.Errorf("isShimRefusal(%s: %q) = %v, want %v", tc.code, tc.msg, got, tc.want)
		}
	}
}

func TestCreateRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		id     string
		cfg    func(*runtimeapi.PodSandboxConfig)
		change func(*Config)
		is     func(error) bool
	}{
		{name: "id outside berth's directories", id: "../x", is: errdefs.IsInvalidArgument},
		{name: "pod config that can never run", cfg: func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Uid = "" }, is: errdefs.IsInvalidArgument},
		{name: "invalid berth config", change: func(c *Config) { c.ConfigErr = errInjected }, is: errdefs.IsFailedPrecondition},
		{name: "built-in pause disabled", change: func(c *Config) { c.BuiltinPause.Err = errInjected }, is: errdefs.IsFailedPrecondition},
		{name: "handler not configured", change: func(c *Config) { c.CRI.Runtimes = nil }, is: errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newFakeClient()
			var change []func(*Config)
			if tc.change != nil {
				change = append(change, tc.change)
			}
			c := testController(t, client, change...)
			id := tc.id
			if id == "" {
				id = "sb1"
			}
			cfg := testPodConfig("sb1")
			if tc.cfg != nil {
				tc.cfg(cfg)
			}
			if err := create(t, c, client, id, cfg); !tc.is(err) {
				t.Fatalf("Create = %v, want another class", err)
			}
			if len(c.store.List()) != 0 {
				t.Error("a rejected sandbox is in the store")
			}
		})
	}
}

// TestAbandonedForgotten: an entry CRI created and never started is
// forgotten once CRI has dropped its record, not before.
func TestAbandonedForgotten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * abandonedAfter)
		synctest.Wait()
		if _, err := c.store.Get("sb1"); err != nil {
			t.Fatalf("forgotten while CRI still has its record: %v", err)
		}
		if err := client.SandboxStore().Delete(testContext(), "sb1"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(abandonedAfter)
		synctest.Wait()
		if _, err := c.store.Get("sb1"); !errdefs.IsNotFound(err) {
			t.Fatalf("kept after CRI dropped it: %v", err)
		}
	})
}

// TestAbandonedCheckBounded: the check for an abandoned sandbox holds its
// lock while it asks containerd for CRI's record; a containerd that does
// not answer holds a Start of the sandbox for the lookup's bound, not for
// good.
func TestAbandonedCheckBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		c := testController(t, client)
		if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
			t.Fatal(err)
		}
		release := client.hold("sandbox get")
		defer release()
		time.Sleep(abandonedAfter)
		synctest.Wait()
		start := time.Now()
		ctx, cancel := context.WithTimeout(testContext(), time.Minute)
		defer cancel()
		if _, err := c.Start(ctx, "sb1"); err != nil {
			t.Fatalf("Start while the check's lookup hangs: %v", err)
		}
		if took := time.Since(start); took > abandonedLookupTimeout {
			t.Errorf("Start waited %v for the check, want at most %v", took, abandonedLookupTimeout)
		}
		release()
		removed(t, c, "sb1")
	})
}

// TestRecoveredDroppedShutDown: a sandbox recovered while CRI had not yet
// recorded its Start (berthd killed under the Start) is shut down once CRI
// drops its record, as CRI does for a Start that failed, and not before; one
// whose Start CRI recorded is left to CRI's own calls.
func TestRecoveredDroppedShutDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		ownedContainer(t, client, "starting").setTask(containerd.Running)
		ownedContainer(t, client, "created").setTask(containerd.Created)
		client.addContainer(berthContainer(t, "started")).setTask(containerd.Running)
		if _, err := client.SandboxStore().Create(testContext(), sandbox.Sandbox{ID: "started", Sandboxer: "berth", Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec"}}); err != nil {
			t.Fatal(err)
		}
		c := testController(t, client)
		if err := c.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Second}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * abandonedAfter)
		synctest.Wait()
		for _, id := range []string{"starting", "created", "started"} {
			if _, err := c.store.Get(id); err != nil || client.container(id) == nil {
				t.Fatalf("%s shut down while CRI still has its record: %v", id, err)
			}
		}
		for _, id := range []string{"starting", "created", "started"} {
			if err := client.SandboxStore().Delete(testContext(), id); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(abandonedAfter)
		synctest.Wait()
		for _, id := range []string{"starting", "created"} {
			if _, err := c.store.Get(id); !errdefs.IsNotFound(err) {
				t.Errorf("%s kept after CRI dropped it: %v", id, err)
			}
			if client.container(id) != nil {
				t.Errorf("%s: pause container left after CRI dropped it", id)
			}
		}
		if _, err := c.store.Get("started"); err != nil {
			t.Errorf("a sandbox CRI saw start shut down unasked: %v", err)
		}
		removed(t, c, "started")
	})
}

// berthContainer is a pause container of sandbox id as Start leaves it.
func berthContainer(t *testing.T, id string) containers.Container {
	t.Helper()
	info := containers.Container{
		ID:      id,
		Runtime: containers.RuntimeInfo{Name: testRuntime},
		Spec:    &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte(`{"linux":{"cgroupsPath":"/k8s.io/` + id + `"}}`)},
		Labels:  map[string]string{LabelKind: LabelKindSandbox},
	}
	if err := withRecord(record{RuntimeHandler: testHandler}, testPodConfig(id))(testContext(), nil, &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// ownedContainer is a berth pause container that a CRI sandbox record
// naming berth owns: what a restart finds of a sandbox of berth's.
func ownedContainer(t *testing.T, client *fakeClient, id string) *fakeContainer {
	t.Helper()
	if _, err := client.SandboxStore().Create(testContext(), sandbox.Sandbox{ID: id, Sandboxer: "berth"}); err != nil {
		t.Fatal(err)
	}
	return client.addContainer(berthContainer(t, id))
}

// TestRecover checks recovery's decision for each kind of container a
// restart can find.
func TestRecover(t *testing.T) {
	client := newFakeClient()
	ownedContainer(t, client, "running").setTask(containerd.Running)
	ownedContainer(t, client, "stopped").setTask(containerd.Stopped)
	ownedContainer(t, client, "created").setTask(containerd.Created)
	ownedContainer(t, client, "no-task")
	// CRI forgot it (a rollback cut short): removed.
	client.addContainer(berthContainer(t, "orphan")).setTask(containerd.Running)
	// The built-in's pod, labelled as berth's by its pod: not berth's.
	impostor := client.addContainer(containers.Container{ID: "impostor", Labels: map[string]string{LabelKind: LabelKindSandbox, "io.berth.sandbox.resources": "{not json"}})
	impostor.setTask(containerd.Running)
	if _, err := client.SandboxStore().Create(testContext(), sandbox.Sandbox{ID: "impostor", Sandboxer: "podsandbox"}); err != nil {
		t.Fatal(err)
	}
	// Another berth's on the same containerd (berthd beside the build with
	// berth), CRI's record naming it: neither recovered nor removed.
	others := berthContainer(t, "others")
	if err := withRecord(record{Sandboxer: "berthd", RuntimeHandler: testHandler}, testPodConfig("others"))(testContext(), nil, &others); err != nil {
		t.Fatal(err)
	}
	client.addContainer(others).setTask(containerd.Running)
	if _, err := client.SandboxStore().Create(testContext(), sandbox.Sandbox{ID: "others", Sandboxer: "berthd"}); err != nil {
		t.Fatal(err)
	}
	// Another berth's, made before records named their berth: CRI's
	// record says whose it is.
	client.addContainer(berthContainer(t, "others-legacy")).setTask(containerd.Running)
	if _, err := client.SandboxStore().Create(testContext(), sandbox.Sandbox{ID: "others-legacy", Sandboxer: "berthd"}); err != nil {
		t.Fatal(err)
	}
	// What a Start cut short left.
	if _, _, err := client.WithLease(testContext(), startLeaseOpts("berth", "no-task", 1)...); err != nil {
		t.Fatal(err)
	}
	// A Start another berth has in flight, and one of a berth from before
	// start leases carried the berth's name and the attempt (released).
	if _, _, err := client.WithLease(testContext(), startLeaseOpts("berthd", "others-starting", 1)...); err != nil {
		t.Fatal(err)
	}
	if _, _, err := client.WithLease(testContext(), leases.WithID(startLeasePrefix+"unnamed"), leases.WithLabel(LabelKind, LabelKindStartLease)); err != nil {
		t.Fatal(err)
	}
	other := leases.Lease{ID: "no-task", Labels: map[string]string{LabelKind: LabelKindStartLease}}
	client.leases[other.ID] = other

	c := testController(t, client)
	if err := c.Recover(testContext(), RecoverConfig{Parallelism: 2, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]runtimeapi.PodSandboxState{
		"running": runtimeapi.PodSandboxState_SANDBOX_READY,
		"stopped": runtimeapi.PodSandboxState_SANDBOX_NOTREADY,
		"created": runtimeapi.PodSandboxState_SANDBOX_NOTREADY,
		"no-task": runtimeapi.PodSandboxState_SANDBOX_NOTREADY,
	} {
		if got := state(t, c, id); got != want.String() {
			t.Errorf("%s: %s after recovery, want %s", id, got, want)
		}
	}
	if exit, err := c.Wait(testContext(), "stopped"); err != nil || exit.ExitStatus != 137 {
		t.Errorf("stopped: Wait = %+v, %v; want its exit status, 137", exit, err)
	}
	for _, id := range []string{"stopped", "created"} {
		if client.container(id).hasTask() {
			t.Errorf("%s: task not deleted", id)
		}
	}
	if !slices.Contains(client.taskServiceDeletes, "no-task") {
		t.Error("no-task: no task service delete for a shim it may have left")
	}
	eventually(t, "orphan removed", func() bool { return client.container("orphan") == nil })
	if _, err := c.store.Get("orphan"); !errdefs.IsNotFound(err) {
		t.Errorf("orphan in the store: %v", err)
	}
	if _, err := c.store.Get("impostor"); !errdefs.IsNotFound(err) {
		t.Errorf("the built-in's pod is in berth's store: %v", err)
	}
	if ctr := client.container("impostor"); ctr == nil || !ctr.hasTask() {
		t.Error("the built-in's pod was touched")
	}
	for _, id := range []string{"others", "others-legacy"} {
		if ctr := client.container(id); ctr == nil || !ctr.hasTask() {
			t.Errorf("another berth's pod %s was touched", id)
		}
		if _, err := c.store.Get(id); !errdefs.IsNotFound(err) {
			t.Errorf("another berth's pod %s is in berth's store: %v", id, err)
		}
	}
	if _, err := c.store.Get("others"); !errdefs.IsNotFound(err) {
		t.Errorf("another berth's pod is in berth's store: %v", err)
	}
	if got := client.leaseIDs(); !slices.Equal(got, []string{startLeasePrefix + "others-starting.1", "no-task"}) {
		t.Errorf("leases after recovery %v, want berth's start leases released, CRI's and the other berth's kept", got)
	}
	// The pod's removal right after the restart finds its snapshot gone.
	if n := client.count("lease delete and collect"); n != 1 {
		t.Errorf("%d start lease deletions waited for a garbage collection, want 1", n)
	}
}

// recovering is a controller recovering what client holds, one sandbox at
// a time, each for up to a minute.
func recovering(t *testing.T, client *fakeClient) *Controller {
	t.Helper()
	c := testController(t, client)
	if err := c.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestVerboseBuiltinPause: the verbose status of a pod on the built-in
// pause names it as its image and no snapshot, as its container records
// it, before and after a restart.
func TestVerboseBuiltinPause(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	started(t, c, client, "sb1")
	verbose := func(c *Controller) (image, snapshotter, key any) {
		t.Helper()
		st, err := c.Status(testContext(), "sb1", true)
		if err != nil {
			t.Fatalf("Status: %v", err)
		}
		var info map[string]any
		if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
			t.Fatal(err)
		}
		return info["image"], info["snapshotter"], info["snapshotKey"]
	}
	for _, c := range []*Controller{c, recovering(t, client)} {
		image, snapshotter, key := verbose(c)
		if image != podsandbox.BuiltinPauseName || snapshotter != "" || key != "" {
			t.Errorf("verbose image %q, snapshotter %q, snapshot key %q; want %s and no snapshot", image, snapshotter, key, podsandbox.BuiltinPauseName)
		}
	}
}

// TestRecoverInBackground: Recover returns before a sandbox whose shim is
// slow to answer is reloaded; every operation waits for the reload, and
// then finds the sandbox in its true state.
func TestRecoverInBackground(t *testing.T) {
	client := newFakeClient()
	ownedContainer(t, client, "running").setTask(containerd.Running)
	release := client.hold("task status")
	// Before the controller's Close, which waits for the reload.
	defer release()
	c := recovering(t, client)
	ctx, cancel := context.WithTimeout(testContext(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Status(ctx, "running", false); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Status during the reload: %v, want it to wait until its context ends", err)
	}
	stopCtx, stopCancel := context.WithTimeout(testContext(), 100*time.Millisecond)
	defer stopCancel()
	if err := c.Stop(stopCtx, "running"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop during the reload: %v, want it to wait until its context ends", err)
	}
	if n := client.count("task killall"); n != 0 {
		t.Error("Stop during the reload killed the pause task")
	}
	release()
	if got := state(t, c, "running"); got != runtimeapi.PodSandboxState_SANDBOX_READY.String() {
		t.Errorf("%s after the reload, want READY", got)
	}
}

// TestStopAfterReattachFailed: a sandbox whose shim did not answer at
// recovery is NOTREADY at once, but its pause may still run until the
// background deletion ends it; Stop returns only after that deletion.
func TestStopAfterReattachFailed(t *testing.T) {
	client := newFakeClient()
	ownedContainer(t, client, "unanswered").setTask(containerd.Running)
	client.failNext("task status", context.DeadlineExceeded)
	release := client.hold("task delete")
	// Before the controller's Close, which waits for the retry queue.
	defer release()
	c := testController(t, client)
	if err := c.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if got := state(t, c, "unanswered"); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY.String() {
		t.Errorf("%s after a failed reattach, want NOTREADY", got)
	}
	ctx, cancel := context.WithTimeout(testContext(), 100*time.Millisecond)
	defer cancel()
	if err := c.Stop(ctx, "unanswered"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop while the pause task is not deleted: %v, want it to wait until its context ends", err)
	}
	release()
	if err := c.Stop(testContext(), "unanswered"); err != nil {
		t.Errorf("Stop after the deletion: %v", err)
	}
	if client.container("unanswered").hasTask() {
		t.Error("Stop returned with the pause task not deleted")
	}
}

// TestReattachWhileContainerdAway: a reattach that containerd does not
// answer (berthd's containerd restarting during berthd's recovery) is
// tried again until it answers; the pod stays READY and its pause runs.
func TestReattachWhileContainerdAway(t *testing.T) {
	client := newFakeClient()
	ownedContainer(t, client, "running").setTask(containerd.Running)
	client.failNext("task status", errdefs.ErrUnavailable, errdefs.ErrUnavailable, errdefs.ErrUnavailable)
	c := recovering(t, client)
	if got := state(t, c, "running"); got != runtimeapi.PodSandboxState_SANDBOX_READY.String() {
		t.Errorf("%s after containerd answered again, want READY", got)
	}
	if n := client.count("task status"); n != 4 {
		t.Errorf("%d reattach attempts, want 4 (three unanswered)", n)
	}
	if n := killsAndDeletes(client); n != 0 {
		t.Errorf("%d kills and deletions of a live pod's pause task", n)
	}
}

// TestRecoverListsWhileContainerdAway: Recover waits for a containerd
// that does not answer its listings (berthd's, restarting right after it
// answered berthd), until its context ends.
func TestRecoverListsWhileContainerdAway(t *testing.T) {
	client := newFakeClient()
	ownedContainer(t, client, "running").setTask(containerd.Running)
	client.failNext("containers list", errdefs.ErrUnavailable, errdefs.ErrUnavailable)
	c := recovering(t, client)
	if got := state(t, c, "running"); got != runtimeapi.PodSandboxState_SANDBOX_READY.String() {
		t.Errorf("%s after containerd answered the listing, want READY", got)
	}

	away := newFakeClient()
	away.failNext("containers list", slices.Repeat([]error{errdefs.ErrUnavailable}, 1000)...)
	ctx, cancel := context.WithTimeout(testContext(), 500*time.Millisecond)
	defer cancel()
	if err := testController(t, away).Recover(ctx, RecoverConfig{Parallelism: 1, Timeout: time.Second}); !errdefs.IsUnavailable(err) || ctx.Err() == nil {
		t.Errorf("Recover with containerd away: %v, want Unavailable once its context ended", err)
	}
}

// TestReleaseStartLeasesWhileContainerdAway: recovery releases the leases
// of interrupted Starts once containerd answers, not leaving them to
// expire: no Start may release them after recovery.
func TestReleaseStartLeasesWhileContainerdAway(t *testing.T) {
	client := newFakeClient()
	if _, _, err := client.WithLease(testContext(), startLeaseOpts("berth", "cut-short", 1)...); err != nil {
		t.Fatal(err)
	}
	client.failNext("lease list", errdefs.ErrUnavailable, errdefs.ErrUnavailable)
	client.failNext("lease delete and collect", errdefs.ErrUnavailable)
	c := recovering(t, client)
	if err := c.awaitRecovery(testContext()); err != nil {
		t.Fatal(err)
	}
	if got := client.leaseIDs(); len(got) != 0 {
		t.Errorf("leases after recovery %v, want the interrupted start's released", got)
	}
	if n := client.count("lease list"); n != 4 {
		t.Errorf("%d lease lists, want 4 (two unanswered, one whose deletion was not answered)", n)
	}
}

// killsAndDeletes counts the kills and deletions of tasks client was
// asked for.
func killsAndDeletes(client *fakeClient) int {
	return client.count("task delete") + client.count("task kill") + client.count("task killall")
}

// TestCloseWhileContainerdAway: Close ends a recovery that waits for a
// containerd that does not answer, and leaves the pod's pause task as it
// is for the next recovery.
func TestCloseWhileContainerdAway(t *testing.T) {
	client := newFakeClient()
	ownedContainer(t, client, "running").setTask(containerd.Running)
	client.failNext("task status", slices.Repeat([]error{errdefs.ErrUnavailable}, 1000)...)
	c := recovering(t, client)
	eventually(t, "a reattach tried again", func() bool { return client.count("task status") >= 2 })
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waits for a recovery that waits for containerd")
	}
	if n := killsAndDeletes(client); n != 0 {
		t.Errorf("%d kills and deletions of a live pod's pause task", n)
	}
}

// updateResources calls Update as CRI's UpdatePodSandboxResources does,
// with the pod's new resources in the sandbox's extension.
func updateResources(t *testing.T, c *Controller, id string, res *runtimeapi.LinuxContainerResources) error {
	t.Helper()
	ext, err := json.Marshal(criUpdatedResources{Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	return c.Update(testContext(), id, sandbox.Sandbox{Extensions: map[string]typeurl.Any{
		criUpdatedResourcesExtension: &anypb.Any{Value: ext},
	}}, "extensions")
}

// TestRecoverUpdatedResources: the pod resources Update recorded come back
// after a restart; a pod label of the same name as berth's old label does
// nothing.
func TestRecoverUpdatedResources(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	started(t, c, client, "sb1")
	if err := updateResources(t, c, "sb1", &runtimeapi.LinuxContainerResources{CpuQuota: 20000, CpuPeriod: 100000}); err != nil {
		t.Fatalf("Update: %v", err)
	}

	// A new controller on the same containerd: a restart.
	c2 := testController(t, client, func(cfg *Config) { cfg.Dirs = c.config.Dirs })
	if err := c2.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	sb, err := c2.sandbox(testContext(), "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if got := sb.Status(); got.State != store.StateReady || got.Resources.GetCpuQuota() != 20000 {
		t.Errorf("recovered %s with resources %v, want ready with the update's", got.State, got.Resources)
	}
}

// TestOwnCgroup: a pod's cgroup parent is its own to resize and report
// unless it is the root or another pod's too; a new sandbox of the same
// pod shares it as its own.
func TestOwnCgroup(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	pod := func(id, uid, parent string) *store.Sandbox {
		t.Helper()
		cfg := testPodConfig(id)
		cfg.Metadata.Uid, cfg.Linux.CgroupParent = uid, parent
		if err := create(t, c, client, id, cfg); err != nil {
			t.Fatal(err)
		}
		sb, err := c.store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return sb
	}
	const slice = "kubepods-besteffort-poda.slice"
	const path = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poda.slice"
	none, root := pod("none", "none", ""), pod("root", "root", "/")
	a1 := pod("a1", "a", slice)
	a2 := pod("a2", "a", slice) // kubelet's new sandbox of pod a
	for sb, want := range map[*store.Sandbox]string{none: "", root: "", a1: path, a2: path} {
		if got := c.ownCgroup(sb); got != want {
			t.Errorf("ownCgroup(%s) = %q, want %q", sb.ID, got, want)
		}
	}
	b := pod("b", "b", path) // the same cgroup, as cgroupfs names it
	for _, sb := range []*store.Sandbox{a1, a2, b} {
		if got := c.ownCgroup(sb); got != "" {
			t.Errorf("ownCgroup(%s) = %q with pods a and b in it, want none", sb.ID, got)
		}
	}
}

// TestUpdateNotReady: an Update of a pod whose pause has exited succeeds
// and changes nothing, as the built-in's, which kubelet would otherwise
// report as a rejected resize.
func TestUpdateNotReady(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	task := started(t, c, client, "sb1")
	task.exit(0)
	eventually(t, "NOTREADY", func() bool {
		return state(t, c, "sb1") == runtimeapi.PodSandboxState_SANDBOX_NOTREADY.String()
	})
	if err := updateResources(t, c, "sb1", &runtimeapi.LinuxContainerResources{CpuQuota: 20000, CpuPeriod: 100000}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	sb, err := c.sandbox(testContext(), "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if got := sb.Status().Resources; got != nil {
		t.Errorf("resources %v recorded for a pod that is not ready", got)
	}
}

// TestMetricsNotReady: Metrics of a pod berth does not have is NotFound,
// and of one that is not READY Unavailable, which CRI's
// ListPodSandboxStats skips (any other error fails the node's list).
func TestMetricsNotReady(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	if _, err := c.Metrics(testContext(), "nosuch"); !errdefs.IsNotFound(err) {
		t.Errorf("Metrics of an unknown pod: %v, want NotFound", err)
	}
	if err := create(t, c, client, "sb1", testPodConfig("sb1")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Metrics(testContext(), "sb1"); !errdefs.IsUnavailable(err) {
		t.Errorf("Metrics of a created pod: %v, want Unavailable", err)
	}
}

// TestMetricsOfPauseTask: a pod without a cgroup of its own (here none
// given) reports its pause container's cgroup as the shim reads it, which
// under the systemd driver berth could not find from the spec's
// "slice:prefix:name"; a shim that died or stats it could not read are
// Unavailable, which CRI's ListPodSandboxStats skips: any error but that
// and NotFound fails the node's whole list.
func TestMetricsOfPauseTask(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)
	started(t, c, client, "sb1")
	m, err := c.Metrics(testContext(), "sb1")
	if err != nil || m.GetID() != "sb1" {
		t.Fatalf("Metrics: %v, %v; want the pause task's", m, err)
	}
	client.failNext("task metrics", errgrpc.ToNative(status.Error(codes.Unknown, "ttrpc: closed")))
	if _, err := c.Metrics(testContext(), "sb1"); !errdefs.IsUnavailable(err) {
		t.Errorf("Metrics with the shim gone: %v, want Unavailable", err)
	}
	// containerd's client, when the shim could not read the cgroup.
	client.failNext("task metrics", errors.New("no metrics received"))
	if _, err := c.Metrics(testContext(), "sb1"); !errdefs.IsUnavailable(err) {
		t.Errorf("Metrics the shim could not read: %v, want Unavailable", err)
	}
	client.failNext("task metrics", errdefs.ErrNotFound)
	if _, err := c.Metrics(testContext(), "sb1"); !errdefs.IsNotFound(err) {
		t.Errorf("Metrics of a task gone: %v, want NotFound", err)
	}
	ctx, cancel := context.WithCancel(testContext())
	cancel()
	client.failNext("task metrics", context.Canceled)
	if _, err := c.Metrics(ctx, "sb1"); !errors.Is(err, context.Canceled) || errdefs.IsUnavailable(err) {
		t.Errorf("Metrics the caller gave up: %v, want its cancellation alone", err)
	}
}

// TestAnsweredDuringRecovery: while recovery runs, Platform answers the
// node's platform for any sandbox, as the built-in does (CRI asks it as it
// handles app containers' exits, under a deadline of its own), and Metrics
// answers Unavailable, so that CRI's stats list skips berth's pods instead
// of failing for every pod when its deadline passes. Neither waits; once
// recovery ends Metrics answers as ever.
func TestAnsweredDuringRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFakeClient()
		ownedContainer(t, client, "stopped").setTask(containerd.Stopped)
		release := client.hold("task delete")
		defer release()
		c := recovering(t, client)
		ctx, cancel := context.WithTimeout(testContext(), 100*time.Millisecond)
		defer cancel()
		for _, id := range []string{"stopped", "nosuch"} {
			if p, err := c.Platform(ctx, id); err != nil || p.OS != runtime.GOOS {
				t.Errorf("Platform(%s) during recovery = %+v, %v; want the node's at once", id, p, err)
			}
		}
		if _, err := c.Metrics(ctx, "stopped"); !errdefs.IsUnavailable(err) || ctx.Err() != nil {
			t.Errorf("Metrics during recovery = %v (caller's context: %v), want Unavailable at once", err, ctx.Err())
		}
		release()
		if err := c.awaitRecovery(testContext()); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Metrics(testContext(), "stopped"); !errdefs.IsUnavailable(err) {
			t.Errorf("Metrics of a recovered pod not ready = %v, want Unavailable", err)
		}
		if _, err := c.Metrics(testContext(), "nosuch"); !errdefs.IsNotFound(err) {
			t.Errorf("Metrics of an unknown pod after recovery = %v, want NotFound", err)
		}
	})
}

// TestRecoveredGroupAfterRuntimeChange: a handler's runtime_path (its shim
// binary) changed across a restart. A pod started before runs on in its
// shim, which a new pod of the handler does not join, so that the change
// (a shim upgrade, a move from berth's shim to runc's) reaches new pods; a
// restart with no change keeps the pods' sharing.
func TestRecoveredGroupAfterRuntimeChange(t *testing.T) {
	client := newFakeClient()
	withPath := func(path string) func(*Config) {
		return func(cfg *Config) { cfg.CRI.Runtimes[testHandler] = Runtime{Type: "io.containerd.runc.v2", Path: path} }
	}
	restart := func(c *Controller, path string) *Controller {
		c.Close()
		c = sharingController(t, client, withPath(path))
		if err := c.Recover(testContext(), RecoverConfig{Parallelism: 1, Timeout: time.Second}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := sharingController(t, client, withPath("/opt/berth/containerd-shim-berth-v2"))
	started(t, c, client, "old")
	old := groupOf(t, c, "old")

	c = restart(c, "/opt/berth/containerd-shim-runc-v2")
	started(t, c, client, "new")
	if got := groupOf(t, c, "new"); got == "" || got == old {
		t.Errorf("a pod after the handler's change started in group %q, want another than the old shim's %s", got, old)
	}
	if got := groupOf(t, c, "old"); got != old {
		t.Errorf("the old pod is in group %s after the restart, want %s", got, old)
	}

	c = restart(c, "/opt/berth/containerd-shim-runc-v2")
	started(t, c, client, "next")
	if got, want := groupOf(t, c, "next"), groupOf(t, c, "new"); got != want {
		t.Errorf("a pod after a restart with no change started in group %s, want the group of its runtime, %s", got, want)
	}
}

// TestShimRuntime: what a shim runs is named by the runtime type, the shim
// binary down to its file (an upgrade replaces it) and the options.
func TestShimRuntime(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "containerd-shim-berth-v2")
	install := func(content string) {
		tmp := bin + ".new"
		if err := os.WriteFile(tmp, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, bin); err != nil {
			t.Fatal(err)
		}
	}
	install("v1")
	rt := Runtime{Type: "io.containerd.runc.v2", Path: bin}
	opts := &anypb.Any{TypeUrl: "runc.Options", Value: []byte{1}}
	first := shimRuntime(rt, opts)
	if got := shimRuntime(rt, opts); got != first {
		t.Errorf("the same runtime named %s, then %s", first, got)
	}
	for name, got := range map[string]string{
		"other options":   shimRuntime(rt, &anypb.Any{TypeUrl: "runc.Options", Value: []byte{2}}),
		"no options":      shimRuntime(rt, nil),
		"no runtime_path": shimRuntime(Runtime{Type: rt.Type}, opts),
		"other type":      shimRuntime(Runtime{Type: "io.containerd.other.v1", Path: bin}, opts),
	} {
		if got == first {
			t.Errorf("%s: named as the first runtime, %s", name, got)
		}
	}
	install("v2")
	if got := shimRuntime(rt, opts); got == first {
		t.Errorf("a replaced shim binary named as the old one, %s", got)
	}
}
