package reaper

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"

	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/shimproc/shimtest"
)

// TestOtherContainers checks that the tasks a shim is asked about, before
// it is ended, are those of every container containerd knows but the
// pause's (shimproc's TestServing: which of them the shim serves).
func TestOtherContainers(t *testing.T) {
	client := &fakeClient{}
	for _, id := range []string{"pause", "app", "elsewhere", "neighbour"} {
		client.containers = append(client.containers, fakeContainer{id: id})
	}
	r := New(Config{Client: client})
	got, err := r.otherContainers(context.Background(), "pause")
	if err != nil || !slices.Equal(got, []string{"app", "elsewhere", "neighbour"}) {
		t.Errorf("otherContainers = %v, %v; want every container but the pause", got, err)
	}
}

// fakeClient lists containers; it has no task service.
type fakeClient struct {
	Client
	containers []containerd.Container
}

func (f *fakeClient) Containers(context.Context, ...string) ([]containerd.Container, error) {
	return f.containers, nil
}

// fakeContainer is a container of which only the ID is asked.
type fakeContainer struct {
	containerd.Container
	id string
}

func (f fakeContainer) ID() string { return f.id }

func testContext() context.Context {
	return namespaces.WithNamespace(context.Background(), "k8s.io")
}

// pidShim answers Connect with pids, of processes of the test's, in turn,
// the last one from then on, and counts the calls: with more than one, a
// shim whose first answers are lost.
type pidShim struct {
	taskapi.TTRPCTaskService
	mu       sync.Mutex
	pids     []uint32
	connects int
}

func (s *pidShim) Connect(context.Context, *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connects++
	pid := s.pids[0]
	if len(s.pids) > 1 {
		s.pids = s.pids[1:]
	}
	return &taskapi.ConnectResponse{ShimPid: pid}, nil
}

func (s *pidShim) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connects
}

// watchedGroup is a group of r's, with the tasks of sbs made in it, whose
// shim r's watch reports dead on died.
func watchedGroup(t *testing.T, sockets shimproc.Sockets, sbs ...string) (r *Reaper, groups *placement.Groups, id string, died <-chan []string) {
	t.Helper()
	groups = placement.NewGroups(func(string) int { return 4 })
	deaths := make(chan []string, 1)
	r = New(Config{Shims: sockets, Groups: groups, ShimDied: func(ids []string) { deaths <- ids }})
	id = groups.Join(placement.Scope{Handler: "h"})
	for i, sb := range sbs {
		if i > 0 {
			groups.Join(placement.Scope{Handler: "h"})
		}
		making, err := groups.MakeTask(context.Background(), id, sb)
		if err != nil {
			t.Fatal(err)
		}
		making.End(placement.Made)
	}
	return r, groups, id, deaths
}

// startShim starts a process standing for a shim, reaped by the test: the
// returned channel is closed once it is.
func startShim(t *testing.T) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	shim := exec.Command("sleep", "60")
	if err := shim.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = shim.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = shim.Process.Kill(); <-reaped })
	return shim, reaped
}

// TestWatchShim checks that the death of a shared shim is seen at once:
// the exits of the tasks made in its group are recorded when its process
// dies, without waiting for containerd.
func TestWatchShim(t *testing.T) {
	sockets := shimtest.Sockets(t, "k8s.io")
	shim, reaped := startShim(t)
	r, groups, id, died := watchedGroup(t, sockets, "sb1", "sb2")
	shimtest.Serve(t, sockets, id, &pidShim{pids: []uint32{uint32(shim.Process.Pid)}})
	// Each task made in the group asks; the shim is watched once.
	r.WatchShim(testContext(), id, "sb1")
	r.WatchShim(testContext(), id, "sb2")

	select {
	case ids := <-died:
		t.Fatalf("shim death reported while it runs: %v", ids)
	case <-time.After(100 * time.Millisecond):
	}
	killed := time.Now()
	if err := shim.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-reaped
	select {
	case ids := <-died:
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"sb1", "sb2"}) {
			t.Errorf("shim death reported for %v, want sb1 and sb2", ids)
		}
		t.Logf("shim death seen %s after the kill", time.Since(killed))
		if got := groups.Join(placement.Scope{Handler: "h"}); got == id {
			t.Error("a pod joined the group whose shim died")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shim death not reported")
	}
	select {
	case ids := <-died:
		t.Errorf("shim death reported twice, the second time for %v", ids)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestWatchShimRetried: a shared shim that did not answer for its watch
// (here: with another pid the second time) is watched at the group's next
// task, and its death is seen.
func TestWatchShimRetried(t *testing.T) {
	sockets := shimtest.Sockets(t, "k8s.io")
	shim, _ := startShim(t)
	r, _, id, died := watchedGroup(t, sockets, "sb1")
	pid := uint32(shim.Process.Pid)
	svc := &pidShim{pids: []uint32{pid, 1, pid}}
	shimtest.Serve(t, sockets, id, svc)
	// The first watch's pidfd is refused (two answers); the group's next
	// tasks ask until one takes the watch up (two more).
	r.WatchShim(testContext(), id, "sb1")
	for deadline := time.Now().Add(5 * time.Second); svc.calls() < 4; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the shim's watch not taken up again: %d calls", svc.calls())
		}
		r.WatchShim(testContext(), id, "sb1")
	}
	if err := shim.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case ids := <-died:
		if !slices.Equal(ids, []string{"sb1"}) {
			t.Errorf("shim death reported for %v, want sb1", ids)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shim death not reported")
	}
}

// killTask is a pause task whose kill answers err; it records whether each
// kill reached every process of its cgroup.
type killTask struct {
	containerd.Task
	err  error
	alls []bool
}

func (t *killTask) Kill(ctx context.Context, _ syscall.Signal, opts ...containerd.KillOpts) error {
	var info containerd.KillInfo
	for _, o := range opts {
		if err := o(ctx, &info); err != nil {
			return err
		}
	}
	t.alls = append(t.alls, info.All)
	return t.err
}

// TestKillAllRecorded checks that a kill of a pause's whole cgroup is
// recorded only while its task's deletion may still need it: kept once
// sent, for the deletion to drop, and dropped at once if the kill failed
// or found the task gone, whose deletion may be over.
func TestKillAllRecorded(t *testing.T) {
	for _, tc := range []struct {
		err    error
		kept   bool
		failed bool
	}{
		{err: nil, kept: true},
		{err: errdefs.ErrNotFound},
		{err: errdefs.ErrUnavailable, failed: true},
	} {
		r := New(Config{})
		task := &killTask{err: tc.err}
		err := r.killAll(testContext(), "sb1", task)
		if (err != nil) != tc.failed {
			t.Errorf("kill answering %v: %v", tc.err, err)
		}
		if !slices.Equal(task.alls, []bool{true}) {
			t.Errorf("kills %v, want one of every process of the cgroup", task.alls)
		}
		if got := r.killedAll["sb1"]; got != tc.kept {
			t.Errorf("kill answering %v recorded: %v, want %v", tc.err, got, tc.kept)
		}
	}
}

// TestDeleteRuncContainer: runc is asked to delete a lost container only
// where it keeps one (its state directory), so that a node whose runc is
// on containerd's PATH alone, as k3s's is, and not on berthd's, still
// cleans up every lost task that left none.
func TestDeleteRuncContainer(t *testing.T) {
	root := t.TempDir()
	opts, err := typeurl.MarshalAny(&runcoptions.Options{BinaryName: "/no/such/runc", Root: root})
	if err != nil {
		t.Fatal(err)
	}
	runtime := sandbox.RuntimeOpts{Name: "io.containerd.runc.v2", Options: opts}
	if err := deleteRuncContainer(context.Background(), "gone", "k8s.io", runtime); err != nil {
		t.Errorf("a container runc keeps no state for: %v, want nothing asked of runc", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "k8s.io", "left"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := deleteRuncContainer(context.Background(), "left", "k8s.io", runtime); err == nil || !strings.Contains(err.Error(), "/no/such/runc") {
		t.Errorf("a container runc keeps: %v, want runc's delete run (and failing here)", err)
	}
}

// noTasks is a task service that knows no task.
type noTasks struct{ tasks.TasksClient }

func (noTasks) Delete(context.Context, *tasks.DeleteTaskRequest, ...grpc.CallOption) (*tasks.DeleteResponse, error) {
	return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
}

// lostShimClient knows no task and no container but the shim's.
type lostShimClient struct{ fakeClient }

func (*lostShimClient) TaskService() tasks.TasksClient { return noTasks{} }

// TestLeaveGroupEndsLostShim: a group's first task failed with its shim
// left running (containerd died under berthd before it recorded the
// shim). Start's undo cleans up the lost task while the pod is still in
// the group, so the shim is left for the group's pods; the pod's leaving,
// the last, ends it. A pod leaving a group others are in ends nothing.
func TestLeaveGroupEndsLostShim(t *testing.T) {
	sockets := shimtest.Sockets(t, "k8s.io")
	groups := placement.NewGroups(func(string) int { return 4 })
	r := New(Config{Client: &lostShimClient{}, Shims: sockets, Groups: groups})
	id := groups.Join(placement.Scope{Handler: "h"})
	groups.Join(placement.Scope{Handler: "h"})
	making, err := groups.MakeTask(context.Background(), id, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	making.End(placement.Failed)
	shim := &shimtest.IdleShim{}
	shimtest.Serve(t, sockets, id, shim)

	if err := r.CleanupLost(testContext(), LostTask{ID: "sb1", Group: id}); err != nil {
		t.Fatal(err)
	}
	r.LeaveGroup(testContext(), id, "sb1")
	if n := shim.Shutdowns(); n != 0 {
		t.Fatalf("%d shutdowns of the shim while a pod is in its group", n)
	}
	r.LeaveGroup(testContext(), id, "sb2")
	if n := shim.Shutdowns(); n != 1 {
		t.Errorf("%d shutdowns of the lost shim once its group is empty, want 1", n)
	}
}
