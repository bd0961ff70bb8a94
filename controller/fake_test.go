package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
)

// fakeClient is containerd as the controller sees it: containers with
// tasks, CRI's sandbox records and leases, in memory. Methods the controller
// does not call are left to the embedded nil interfaces, and panic.
// Failures are injected through fail: a step name maps to the errors its
// next calls return, in order.
type fakeClient struct {
	mu         sync.Mutex
	containers map[string]*fakeContainer
	records    map[string]sandbox.Sandbox
	leases     map[string]leases.Lease
	// fail maps a step ("new container", "container info", "new task",
	// "task start", "task kill", "task delete", "container delete",
	// "container update", "task status", "containers list", "lease list",
	// "lease delete") to the errors of its next calls.
	fail map[string][]error
	// failFor maps a step to a test of the container IDs all of whose
	// calls of it fail with errInjected.
	failFor map[string]func(id string) bool
	// held maps a step to a channel its calls wait on until it is closed.
	held map[string]chan struct{}
	// calls logs the steps, with their container ID.
	calls []string
	// lostAnswers are the steps whose next call does its work and then
	// fails with errAnswerLost.
	lostAnswers map[string]bool
	// orphanedTasks are the IDs of containers whose record was deleted
	// while they had a task.
	orphanedTasks []string
	// taskServiceDeletes are the IDs the task service was asked to delete.
	taskServiceDeletes []string
	nextPid            uint32
}

var _ Client = (*fakeClient)(nil)

func newFakeClient() *fakeClient {
	return &fakeClient{
		containers:  map[string]*fakeContainer{},
		records:     map[string]sandbox.Sandbox{},
		leases:      map[string]leases.Lease{},
		fail:        map[string][]error{},
		failFor:     map[string]func(string) bool{},
		held:        map[string]chan struct{}{},
		lostAnswers: map[string]bool{},
		nextPid:     1000,
	}
}

// failNext makes the next calls of step fail with errs, one each.
func (f *fakeClient) failNext(step string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[step] = append(f.fail[step], errs...)
}

// failAlways makes every call of step for a container whose ID match
// accepts fail with errInjected.
func (f *fakeClient) failAlways(step string, match func(id string) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failFor[step] = match
}

// errAnswerLost is the error of a call whose work was done and whose
// answer was lost: containerd died under berthd before it answered.
var errAnswerLost = fmt.Errorf("answer lost: %w", errdefs.ErrUnavailable)

// loseNextAnswer makes the next call of step, "new container", "new task"
// or "lease release", do its work and fail with errAnswerLost.
func (f *fakeClient) loseNextAnswer(step string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lostAnswers[step] = true
}

// answer is the error of a call of step whose work is done, with f.mu held:
// errAnswerLost once after loseNextAnswer(step), else nil.
func (f *fakeClient) answerLocked(step string) error {
	if f.lostAnswers[step] {
		delete(f.lostAnswers, step)
		return errAnswerLost
	}
	return nil
}

// hold makes the calls of step wait until release is called: a shim slow
// to answer.
func (f *fakeClient) hold(step string) (release func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held[step] = ch
	return sync.OnceFunc(func() { close(ch) })
}

// callCtx is call for a call that gives up when ctx ends, as a call to a
// shim that does not answer does.
func (f *fakeClient) callCtx(ctx context.Context, step, id string) error {
	f.mu.Lock()
	held := f.held[step]
	f.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return f.call(step, id)
}

// call logs step for id, waits while step is held, and returns its
// injected error, if any.
func (f *fakeClient) call(step, id string) error {
	f.mu.Lock()
	f.calls = append(f.calls, step+" "+id)
	held := f.held[step]
	var err error
	if errs := f.fail[step]; len(errs) > 0 {
		f.fail[step], err = errs[1:], errs[0]
	}
	if match := f.failFor[step]; match != nil && match(id) {
		err = errInjected
	}
	f.mu.Unlock()
	if held != nil {
		<-held
	}
	return err
}

// countFor counts the calls of step for container id.
func (f *fakeClient) countFor(step, id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(slices.DeleteFunc(slices.Clone(f.calls), func(c string) bool { return c != step+" "+id }))
}

func (f *fakeClient) count(step string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if len(c) > len(step) && c[:len(step)+1] == step+" " {
			n++
		}
	}
	return n
}

func (f *fakeClient) container(id string) *fakeContainer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.containers[id]
}

func (f *fakeClient) leaseIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.leases))
}

// NewContainer applies opts as containerd's client does. The options the
// controller passes for the built-in pause use no client.
func (f *fakeClient) NewContainer(ctx context.Context, id string, opts ...containerd.NewContainerOpts) (containerd.Container, error) {
	info := containers.Container{ID: id, CreatedAt: time.Now()}
	for _, o := range opts {
		if err := o(ctx, nil, &info); err != nil {
			return nil, err
		}
	}
	if err := f.call("new container", id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.containers[id]; ok {
		return nil, errdefs.ErrAlreadyExists
	}
	c := &fakeContainer{client: f, info: info}
	f.containers[id] = c
	if err := f.answerLocked("new container"); err != nil {
		return nil, err
	}
	return c, nil
}

// addContainer adds a container as a previous containerd left it.
func (f *fakeClient) addContainer(info containers.Container) *fakeContainer {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := &fakeContainer{client: f, info: info}
	f.containers[info.ID] = c
	return c
}

func (f *fakeClient) Containers(context.Context, ...string) ([]containerd.Container, error) {
	if err := f.call("containers list", ""); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []containerd.Container
	for _, id := range slices.Sorted(maps.Keys(f.containers)) {
		out = append(out, f.containers[id])
	}
	return out, nil
}

func (f *fakeClient) GetImage(context.Context, string) (containerd.Image, error) {
	return nil, errdefs.ErrNotFound
}

func (f *fakeClient) WithLease(ctx context.Context, opts ...leases.Opt) (context.Context, func(context.Context) error, error) {
	var l leases.Lease
	for _, o := range opts {
		if err := o(&l); err != nil {
			return nil, nil, err
		}
	}
	f.mu.Lock()
	f.leases[l.ID] = l
	f.mu.Unlock()
	return ctx, func(ctx context.Context) error {
		if err := f.callCtx(ctx, "lease release", l.ID); err != nil {
			return err
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.leases, l.ID)
		return f.answerLocked("lease release")
	}, nil
}

func (f *fakeClient) SnapshotService(string) snapshots.Snapshotter { return nil }
func (f *fakeClient) ContainerService() containers.Store           { return fakeContainerStore{f} }
func (f *fakeClient) SandboxStore() sandbox.Store                  { return fakeSandboxStore{f} }
func (f *fakeClient) LeasesService() leases.Manager                { return fakeLeases{f} }
func (f *fakeClient) TaskService() tasks.TasksClient               { return fakeTaskService{fakeClient: f} }

type fakeSandboxStore struct {
	*fakeClient
}

func (s fakeSandboxStore) Create(_ context.Context, sb sandbox.Sandbox) (sandbox.Sandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[sb.ID] = sb
	return sb, nil
}

func (s fakeSandboxStore) Update(context.Context, sandbox.Sandbox, ...string) (sandbox.Sandbox, error) {
	panic("not used")
}

func (s fakeSandboxStore) Get(ctx context.Context, id string) (sandbox.Sandbox, error) {
	if err := s.callCtx(ctx, "sandbox get", id); err != nil {
		return sandbox.Sandbox{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sb, ok := s.records[id]
	if !ok {
		return sandbox.Sandbox{}, errdefs.ErrNotFound
	}
	return asStored(sb), nil
}

func (s fakeSandboxStore) List(context.Context, ...string) ([]sandbox.Sandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var list []sandbox.Sandbox
	for _, sb := range s.records {
		list = append(list, asStored(sb))
	}
	return list, nil
}

// asStored is record sb as containerd's stores hand it back: through its
// protobuf form, a field not set (Spec) a typed nil.
func asStored(sb sandbox.Sandbox) sandbox.Sandbox {
	return sandbox.FromProto(sandbox.ToProto(&sb))
}

func (s fakeSandboxStore) Delete(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, id)
	return nil
}

type fakeLeases struct {
	*fakeClient
}

func (l fakeLeases) Create(context.Context, ...leases.Opt) (leases.Lease, error) { panic("not used") }

// Delete logs "lease delete", or "lease delete and collect" when the
// deletion waits for a garbage collection.
func (l fakeLeases) Delete(ctx context.Context, lease leases.Lease, opts ...leases.DeleteOpt) error {
	var do leases.DeleteOptions
	for _, o := range opts {
		if err := o(ctx, &do); err != nil {
			return err
		}
	}
	step := "lease delete"
	if do.Synchronous {
		step = "lease delete and collect"
	}
	if err := l.call(step, lease.ID); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.leases, lease.ID)
	return nil
}

func (l fakeLeases) List(context.Context, ...string) ([]leases.Lease, error) {
	if err := l.call("lease list", ""); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Collect(maps.Values(l.leases)), nil
}

func (l fakeLeases) AddResource(context.Context, leases.Lease, leases.Resource) error {
	panic("not used")
}

func (l fakeLeases) DeleteResource(context.Context, leases.Lease, leases.Resource) error {
	panic("not used")
}

func (l fakeLeases) ListResources(context.Context, leases.Lease) ([]leases.Resource, error) {
	panic("not used")
}

type fakeTaskService struct {
	*fakeClient
	tasks.TasksClient
}

// Delete is logged as "task delete", as a task's own Delete is. Errors
// are as they cross containerd's API.
func (s fakeTaskService) Delete(_ context.Context, r *tasks.DeleteTaskRequest, _ ...grpc.CallOption) (*tasks.DeleteResponse, error) {
	if err := s.call("task delete", r.ContainerID); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.taskServiceDeletes = append(s.taskServiceDeletes, r.ContainerID)
	c := s.containers[r.ContainerID]
	if c == nil || c.task == nil {
		return nil, errgrpc.ToGRPC(errdefs.ErrNotFound)
	}
	if st, _ := c.task.state(); st == containerd.Running {
		return nil, errgrpc.ToGRPC(fmt.Errorf("task %s is running: %w", r.ContainerID, errdefs.ErrFailedPrecondition))
	}
	c.task = nil
	return &tasks.DeleteResponse{}, nil
}

// fakeContainer is a container with at most one task.
type fakeContainer struct {
	containerd.Container
	client *fakeClient
	info   containers.Container // guarded by client.mu
	task   *fakeTask            // guarded by client.mu
}

func (c *fakeContainer) ID() string { return c.info.ID }

func (c *fakeContainer) Info(context.Context, ...containerd.InfoOpts) (containers.Container, error) {
	if err := c.client.call("container info", c.info.ID); err != nil {
		return containers.Container{}, err
	}
	c.client.mu.Lock()
	defer c.client.mu.Unlock()
	return c.info, nil
}

// Delete refuses a container with a task, as containerd's client does.
func (c *fakeContainer) Delete(ctx context.Context, _ ...containerd.DeleteOpts) error {
	if c.hasTask() {
		return fmt.Errorf("container has a task: %w", errdefs.ErrFailedPrecondition)
	}
	return fakeContainerStore{c.client}.Delete(ctx, c.info.ID)
}

// fakeContainerStore is containerd's container records as the controller
// deletes them. Its Delete deletes a record whatever its task, as
// containerd's container service does, and records a task it leaves
// behind so (orphanedTasks), which assertGone fails on.
type fakeContainerStore struct {
	*fakeClient
}

func (s fakeContainerStore) Delete(_ context.Context, id string) error {
	if err := s.call("container delete", id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return errdefs.ErrNotFound
	}
	if c.task != nil {
		s.orphanedTasks = append(s.orphanedTasks, id)
	}
	delete(s.containers, id)
	return nil
}

func (fakeContainerStore) Get(context.Context, string) (containers.Container, error) {
	panic("not used")
}

func (fakeContainerStore) List(context.Context, ...string) ([]containers.Container, error) {
	panic("not used")
}

func (fakeContainerStore) Create(context.Context, containers.Container) (containers.Container, error) {
	panic("not used")
}

// Update writes the extensions fieldpaths name ("extensions.KEY"), as
// containerd's store does; it refuses any other field.
func (s fakeContainerStore) Update(_ context.Context, c containers.Container, fieldpaths ...string) (containers.Container, error) {
	if err := s.call("container update", c.ID); err != nil {
		return containers.Container{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	stored, ok := s.containers[c.ID]
	if !ok {
		return containers.Container{}, errdefs.ErrNotFound
	}
	for _, path := range fieldpaths {
		key, ok := strings.CutPrefix(path, "extensions.")
		if !ok {
			return containers.Container{}, fmt.Errorf("fake updates extensions only, not %s: %w", path, errdefs.ErrNotImplemented)
		}
		if stored.info.Extensions == nil {
			stored.info.Extensions = map[string]typeurl.Any{}
		}
		stored.info.Extensions[key] = c.Extensions[key]
	}
	return stored.info, nil
}

func (c *fakeContainer) NewTask(context.Context, cio.Creator, ...containerd.NewTaskOpts) (containerd.Task, error) {
	if err := c.client.call("new task", c.info.ID); err != nil {
		return nil, err
	}
	c.client.mu.Lock()
	defer c.client.mu.Unlock()
	c.client.nextPid++
	c.task = newFakeTask(c, c.client.nextPid, containerd.Created)
	if err := c.client.answerLocked("new task"); err != nil {
		return nil, err
	}
	return c.task, nil
}

// setTask gives the container a task in status, as a previous containerd
// left it.
func (c *fakeContainer) setTask(status containerd.ProcessStatus) *fakeTask {
	c.client.mu.Lock()
	defer c.client.mu.Unlock()
	c.client.nextPid++
	c.task = newFakeTask(c, c.client.nextPid, status)
	return c.task
}

func (c *fakeContainer) hasTask() bool {
	c.client.mu.Lock()
	defer c.client.mu.Unlock()
	return c.task != nil
}

func (c *fakeContainer) Task(context.Context, cio.Attach) (containerd.Task, error) {
	c.client.mu.Lock()
	defer c.client.mu.Unlock()
	if c.task == nil {
		return nil, errdefs.ErrNotFound
	}
	return c.task, nil
}

// fakeTask is a pause task: exit makes it exit with a code.
type fakeTask struct {
	containerd.Task
	c      *fakeContainer
	pid    uint32
	exited chan struct{}
	once   sync.Once

	mu     sync.Mutex // guards status and code
	status containerd.ProcessStatus
	code   uint32
}

func newFakeTask(c *fakeContainer, pid uint32, status containerd.ProcessStatus) *fakeTask {
	t := &fakeTask{c: c, pid: pid, status: status, exited: make(chan struct{})}
	if status == containerd.Stopped {
		t.exit(137)
	}
	return t
}

func (t *fakeTask) ID() string  { return t.c.info.ID }
func (t *fakeTask) Pid() uint32 { return t.pid }

// exit makes the task exit with code, as the pause process's death does.
func (t *fakeTask) exit(code uint32) {
	t.once.Do(func() {
		t.mu.Lock()
		t.status, t.code = containerd.Stopped, code
		t.mu.Unlock()
		close(t.exited)
	})
}

func (t *fakeTask) Start(context.Context) error {
	if err := t.c.client.call("task start", t.ID()); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status = containerd.Running
	return nil
}

func (t *fakeTask) Wait(ctx context.Context) (<-chan containerd.ExitStatus, error) {
	ch := make(chan containerd.ExitStatus, 1)
	go func() {
		select {
		case <-t.exited:
			t.mu.Lock()
			ch <- *containerd.NewExitStatus(t.code, time.Now(), nil)
			t.mu.Unlock()
		case <-ctx.Done():
		}
	}()
	return ch, nil
}

// Kill is logged as "task kill", or "task killall" for a kill of
// every process of the task's container.
func (t *fakeTask) Kill(ctx context.Context, sig syscall.Signal, opts ...containerd.KillOpts) error {
	var info containerd.KillInfo
	for _, o := range opts {
		if err := o(ctx, &info); err != nil {
			return err
		}
	}
	name := "task kill"
	if info.All {
		name = "task killall"
	}
	if err := t.c.client.call(name, t.ID()); err != nil {
		return err
	}
	if sig == syscall.SIGKILL {
		t.exit(128 + uint32(sig))
	}
	return nil
}

// Delete runs opts first, as containerd's client does.
func (t *fakeTask) Delete(ctx context.Context, opts ...containerd.ProcessDeleteOpts) (*containerd.ExitStatus, error) {
	for _, o := range opts {
		if err := o(ctx, t); err != nil {
			return nil, err
		}
	}
	if err := t.c.client.callCtx(ctx, "task delete", t.ID()); err != nil {
		return nil, err
	}
	t.exit(137)
	t.c.client.mu.Lock()
	defer t.c.client.mu.Unlock()
	if t.c.task != t {
		return nil, errdefs.ErrNotFound
	}
	t.c.task = nil
	return containerd.NewExitStatus(t.code, time.Now(), nil), nil
}

// state is the task's status and exit code, as containerd's shim holds
// them.
func (t *fakeTask) state() (containerd.ProcessStatus, uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status, t.code
}

func (t *fakeTask) Status(context.Context) (containerd.Status, error) {
	if err := t.c.client.call("task status", t.ID()); err != nil {
		return containerd.Status{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return containerd.Status{Status: t.status, ExitStatus: t.code}, nil
}

// Metrics is the task's metrics as its shim reports them: the task's ID,
// no data.
func (t *fakeTask) Metrics(context.Context) (*types.Metric, error) {
	if err := t.c.client.call("task metrics", t.ID()); err != nil {
		return nil, err
	}
	return &types.Metric{ID: t.ID()}, nil
}

// eventually polls cond until it holds, failing t after a while. Inside a
// synctest bubble, the wait is on the bubble's clock.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Hour); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within an hour", what)
		}
	}
}
