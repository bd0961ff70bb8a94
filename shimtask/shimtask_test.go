package shimtask

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
)

// fakeRunc is the runc shim's task service: the states of its processes by
// container and exec ID, and a count of the Pids it answered with runc.
type fakeRunc struct {
	taskAPI.TTRPCTaskService

	mu       sync.Mutex
	states   map[[2]string]*taskAPI.StateResponse
	runcPids int
	// runcKills are the kills the runc shim ran runc for.
	runcKills []*taskAPI.KillRequest
	execErr   error
	// createPid is the pid of the init process Create makes, and
	// createErr its error.
	createPid uint32
	createErr error
}

var _ taskAPI.TTRPCTaskService = (*fakeRunc)(nil)

func (f *fakeRunc) set(id, execID string, pid uint32, status apitask.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states[[2]string{id, execID}] = &taskAPI.StateResponse{ID: id, ExecID: execID, Pid: pid, Status: status}
}

func (f *fakeRunc) State(_ context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.states[[2]string{r.ID, r.ExecID}]
	if !ok {
		return nil, errors.New("not found")
	}
	return st, nil
}

// Create makes the container's init process, `runc init`, with pid
// createPid.
func (f *fakeRunc) Create(_ context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	if f.createErr != nil {
		return nil, f.createErr
	}
	f.set(r.ID, "", f.createPid, apitask.Status_CREATED)
	return &taskAPI.CreateTaskResponse{Pid: f.createPid}, nil
}

func (f *fakeRunc) Exec(_ context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	if f.execErr != nil {
		return nil, f.execErr
	}
	f.set(r.ID, r.ExecID, 0, apitask.Status_CREATED)
	return &emptypb.Empty{}, nil
}

func (f *fakeRunc) Delete(_ context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.states, [2]string{r.ID, r.ExecID})
	return &taskAPI.DeleteResponse{}, nil
}

func (f *fakeRunc) Pids(_ context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runcPids++
	return &taskAPI.PidsResponse{Processes: []*apitask.ProcessInfo{{Pid: 1}}}, nil
}

func (f *fakeRunc) Kill(_ context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runcKills = append(f.runcKills, r)
	return &emptypb.Empty{}, nil
}

func newFake() *fakeRunc { return &fakeRunc{states: map[[2]string]*taskAPI.StateResponse{}} }

// fakeCgroups is a host's cgroups: the cgroups that exist, and the one
// each process is in now, which a test changes to move a process.
type fakeCgroups struct {
	mu sync.Mutex
	// dirs are the cgroups that exist.
	dirs map[string]bool
	// in is the cgroup each process is in.
	in map[int]string
	// ofErr and procsErr, if set, are Of's and Procs's errors.
	ofErr, procsErr error
	// ofs are the pids Of was asked for.
	ofs []int
}

var _ Cgroups = (*fakeCgroups)(nil)

func newCgroups() *fakeCgroups {
	return &fakeCgroups{dirs: map[string]bool{"/": true}, in: map[int]string{}}
}

// put puts the processes pids in cgroup dir, making it.
func (c *fakeCgroups) put(dir string, pids ...int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dirs[dir] = true
	for _, pid := range pids {
		c.in[pid] = dir
	}
}

// exit ends the processes pids.
func (c *fakeCgroups) exit(pids ...int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, pid := range pids {
		delete(c.in, pid)
	}
}

func (c *fakeCgroups) Of(pid int) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ofs = append(c.ofs, pid)
	if c.ofErr != nil {
		return "", c.ofErr
	}
	dir, ok := c.in[pid]
	if !ok {
		return "", fs.ErrNotExist
	}
	return dir, nil
}

func (c *fakeCgroups) Procs(dir string) ([]uint32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procsErr != nil {
		return nil, c.procsErr
	}
	if !c.dirs[dir] {
		return nil, fmt.Errorf("processes of cgroup %s: %w", dir, fs.ErrNotExist)
	}
	var pids []uint32
	for pid, in := range c.in {
		if in == dir || strings.HasPrefix(in, strings.TrimSuffix(dir, "/")+"/") {
			pids = append(pids, uint32(pid))
		}
	}
	slices.Sort(pids)
	return pids, nil
}

// create creates container id, whose init has pid, in cgroup as
// `runc create` does, and starts it.
func create(t *testing.T, s *Service, runc *fakeRunc, cgroups *fakeCgroups, id string, pid uint32, cgroup string) {
	t.Helper()
	cgroups.put(cgroup, int(pid))
	runc.createPid = pid
	if _, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	runc.set(id, "", pid, apitask.Status_RUNNING)
}

func pidsOf(t *testing.T, s *Service, id string) map[uint32]string {
	t.Helper()
	resp, err := s.Pids(context.Background(), &taskAPI.PidsRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]string{}
	for _, p := range resp.Processes {
		out[p.Pid] = ""
		if p.Info != nil {
			v, err := typeurl.UnmarshalAny(p.Info)
			if err != nil {
				t.Fatal(err)
			}
			out[p.Pid] = v.(*options.ProcessDetails).ExecID
		}
	}
	return out
}

// runcs is runc's answer to Pids: fakeRunc's.
var runcs = map[uint32]string{1: ""}

func TestPidsFromCgroup(t *testing.T) {
	ctx := context.Background()
	runc, cgroups := newFake(), newCgroups()
	s := New(runc, cgroups)
	create(t, s, runc, cgroups, "c", 100, "/pod/c")
	cgroups.put("/pod/c", 101)
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	cgroups.put("/pod/c", 102)
	runc.set("c", "e1", 102, apitask.Status_RUNNING)
	// The pod's other processes are not the container's.
	cgroups.put("/pod", 50)
	cgroups.put("/pod/other", 60)

	got := pidsOf(t, s, "c")
	want := map[uint32]string{100: "", 101: "", 102: "e1"}
	if !maps.Equal(got, want) {
		t.Errorf("Pids = %v, want %v", got, want)
	}
	if runc.runcPids != 0 {
		t.Errorf("runc listed pids %d times, want 0", runc.runcPids)
	}
	if !slices.Equal(cgroups.ofs, []int{100}) {
		t.Errorf("cgroups looked up for pids %v, want only the init's at Create", cgroups.ofs)
	}

	// An exec the runc shim deleted behind the wrapper's back (a race
	// with Delete) is skipped, not an error.
	runc.mu.Lock()
	delete(runc.states, [2]string{"c", "e1"})
	runc.mu.Unlock()
	if got := pidsOf(t, s, "c"); got[102] != "" || len(got) != 3 {
		t.Errorf("with the exec's state gone, Pids = %v, want 100-102 unmarked", got)
	}
	runc.set("c", "e1", 102, apitask.Status_RUNNING)

	// A deleted exec is no longer marked.
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if got := pidsOf(t, s, "c"); got[102] != "" {
		t.Errorf("after the exec's delete, Pids = %v, want 102 unmarked", got)
	}
}

// TestExecAfterDelete: an exec whose answer comes after its container's
// delete leaves no record of the container behind.
func TestExecAfterDelete(t *testing.T) {
	ctx := context.Background()
	runc, cgroups := newFake(), newCgroups()
	s := New(runc, cgroups)
	create(t, s, runc, cgroups, "c", 100, "/pod/c")
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.containers["c"]; ok {
		t.Errorf("deleted container recorded again: %+v", c)
	}
}

// TestPidsAfterInitMoves lists the cgroup the container was created in,
// not the one its init has moved itself to since.
func TestPidsAfterInitMoves(t *testing.T) {
	runc, cgroups := newFake(), newCgroups()
	s := New(runc, cgroups)
	create(t, s, runc, cgroups, "c", 100, "/pod/c")
	cgroups.put("/pod/c", 101)
	cgroups.put("/pod", 50)

	// systemd as init, or docker-in-docker, moves itself into a child
	// cgroup, to enable controllers for its other children.
	cgroups.put("/pod/c/init.scope", 100)
	cgroups.put("/pod/c/payload", 102)
	if got, want := pidsOf(t, s, "c"), map[uint32]string{100: "", 101: "", 102: ""}; !maps.Equal(got, want) {
		t.Errorf("with the init in a child cgroup, Pids = %v, want the container cgroup's %v", got, want)
	}
	if runc.runcPids != 0 {
		t.Errorf("runc listed pids %d times, want 0", runc.runcPids)
	}

	// A privileged init moves itself up, into its pod's cgroup: what the
	// shim would list there is not the container's, and the init is not
	// in the container's. runc answers.
	cgroups.put("/pod", 100)
	if got := pidsOf(t, s, "c"); !maps.Equal(got, runcs) {
		t.Errorf("with the init in its parent cgroup, Pids = %v, want runc's %v", got, runcs)
	}
	if runc.runcPids != 1 {
		t.Errorf("runc listed pids %d times, want 1", runc.runcPids)
	}
}

func TestPidsFallsBackToRunc(t *testing.T) {
	for _, tc := range []struct {
		name string
		// notCreated skips the wrapper's Create: the container is
		// not recorded.
		notCreated bool
		// checkpoint creates the container from a checkpoint.
		checkpoint bool
		// ofErr is the error of the lookup of the init's cgroup.
		ofErr error
		// setup changes what Create made.
		setup func(*fakeRunc, *fakeCgroups)
	}{
		{name: "created", setup: func(f *fakeRunc, _ *fakeCgroups) { f.set("c", "", 100, apitask.Status_CREATED) }},
		{name: "stopped", setup: func(f *fakeRunc, _ *fakeCgroups) { f.set("c", "", 100, apitask.Status_STOPPED) }},
		{name: "no pid", setup: func(f *fakeRunc, _ *fakeCgroups) { f.set("c", "", 0, apitask.Status_RUNNING) }},
		{name: "cgroup unreadable", setup: func(_ *fakeRunc, c *fakeCgroups) { c.procsErr = errors.New("unreadable") }},
		{name: "cgroup gone", setup: func(_ *fakeRunc, c *fakeCgroups) { delete(c.dirs, "/pod/c") }},
		// The init process exited after State.
		{name: "init not in its cgroup", setup: func(_ *fakeRunc, c *fakeCgroups) { c.exit(100) }},
		{name: "cgroup not found at create", ofErr: errors.New("no /proc")},
		{name: "restored from a checkpoint", checkpoint: true},
		{name: "container not recorded", notCreated: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runc, cgroups := newFake(), newCgroups()
			s := New(runc, cgroups)
			cgroups.put("/pod/c", 100, 101)
			cgroups.ofErr = tc.ofErr
			if !tc.notCreated {
				runc.createPid = 100
				r := &taskAPI.CreateTaskRequest{ID: "c"}
				if tc.checkpoint {
					r.Checkpoint = "/checkpoint"
				}
				if _, err := s.Create(context.Background(), r); err != nil {
					t.Fatal(err)
				}
			}
			runc.set("c", "", 100, apitask.Status_RUNNING)
			if tc.setup != nil {
				tc.setup(runc, cgroups)
			}
			if got := pidsOf(t, s, "c"); !maps.Equal(got, runcs) {
				t.Errorf("Pids = %v, want runc's", got)
			}
			if runc.runcPids != 1 {
				t.Errorf("runc listed pids %d times, want 1", runc.runcPids)
			}
		})
	}
}

// TestCreate records the cgroup of a created container only, and keeps
// the runc shim's answer.
func TestCreate(t *testing.T) {
	ctx := context.Background()
	runc, cgroups := newFake(), newCgroups()
	s := New(runc, cgroups)

	runc.createErr = errors.New("runc create failed")
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "bad"}); !errors.Is(err, runc.createErr) {
		t.Fatalf("Create = %v, want the runc shim's error", err)
	}
	if _, ok := s.containers["bad"]; ok || len(cgroups.ofs) != 0 {
		t.Errorf("a failed create recorded %v, looked up %v", s.containers, cgroups.ofs)
	}
	runc.createErr = nil

	// A cgroup not found is not an error: runc answers for the container.
	cgroups.ofErr = errors.New("no /proc")
	runc.createPid = 100
	resp, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Pid != 100 {
		t.Errorf("Create's pid = %d, want the runc shim's 100", resp.Pid)
	}
	if c, ok := s.containers["c"]; !ok || c.cgroup != "" {
		t.Errorf("container with no cgroup found recorded as %+v, %v", c, ok)
	}

	// Nor is a cgroup found that does not list the init: a path read
	// wrong. Kill --all, with the cgroup unknown, goes to runc.
	cgroups.ofErr = nil
	cgroups.mu.Lock()
	cgroups.in[101] = "/misread"
	cgroups.mu.Unlock()
	runc.createPid = 101
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "d"}); err != nil {
		t.Fatal(err)
	}
	if c, ok := s.containers["d"]; !ok || c.cgroup != "" {
		t.Errorf("container whose cgroup does not list its init recorded as %+v, %v", c, ok)
	}
}

func TestPidsUnknownContainer(t *testing.T) {
	s := New(newFake(), newCgroups())
	if _, err := s.Pids(context.Background(), &taskAPI.PidsRequest{ID: "nope"}); err == nil {
		t.Fatal("Pids of an unknown container succeeded")
	}
}

func TestContainerForgotten(t *testing.T) {
	ctx := context.Background()
	runc, cgroups := newFake(), newCgroups()
	s := New(runc, cgroups)
	create(t, s, runc, cgroups, "c", 100, "/c")

	// A failed exec is not recorded.
	runc.execErr = errors.New("exec failed")
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c", ExecID: "bad"}); err == nil {
		t.Fatal("Exec succeeded despite the runc shim's error")
	}
	runc.execErr = nil
	for _, e := range []string{"e1", "e2"} {
		if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c", ExecID: e}); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.containers["c"]; !slices.Equal(got.execs, []string{"e1", "e2"}) || got.cgroup != "/c" {
		t.Fatalf("container = %+v, want execs [e1 e2] in /c", got)
	}
	// Deleting an exec keeps the container's cgroup.
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if got := s.containers["c"]; !slices.Equal(got.execs, []string{"e2"}) || got.cgroup != "/c" {
		t.Fatalf("after e1's delete, container = %+v, want execs [e2] in /c", got)
	}
	// Deleting the init process forgets the container.
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	if len(s.containers) != 0 {
		t.Errorf("after the container's delete, containers = %v, want none", s.containers)
	}
}

// bundleWith writes a bundle whose spec has the namespaces nss, with a
// path for the joined ones.
func bundleWith(t *testing.T, nss ...specs.LinuxNamespace) string {
	t.Helper()
	dir := t.TempDir()
	data, err := json.Marshal(&specs.Spec{Linux: &specs.Linux{Namespaces: nss}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestKillAllOfStopped answers the kill of every process of a stopped
// container whose cgroup has none left without runc, and sends every
// other kill to runc, whatever the container's PID namespace: runc 1.1
// kills what is left in the cgroup of a container with a PID namespace
// of its own too.
func TestKillAllOfStopped(t *testing.T) {
	private := bundleWith(t, specs.LinuxNamespace{Type: specs.PIDNamespace})
	shared := bundleWith(t, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"})
	all := &taskAPI.KillRequest{ID: "c", Signal: 9, All: true}
	for _, tc := range []struct {
		name   string
		status apitask.Status
		// bundle is the container's; "" is private's.
		bundle string
		// setup changes the cgroups once the container and its exec
		// are made.
		setup    func(*Service, *fakeCgroups)
		req      *taskAPI.KillRequest
		wantRunc bool
	}{
		{"stopped, cgroup empty", apitask.Status_STOPPED, "", nil, all, false},
		{"stopped, cgroup empty, shared PID namespace", apitask.Status_STOPPED, shared, nil, all, false},
		{"stopped, cgroup gone", apitask.Status_STOPPED, "", func(_ *Service, c *fakeCgroups) { delete(c.dirs, "/pod/c") }, all, false},
		// A process left in the container's cgroup or below, by an
		// init that shared a PID namespace (its pod's, the host's), or
		// put there from outside the container's: runc kills it.
		{"stopped, process left", apitask.Status_STOPPED, "", func(_ *Service, c *fakeCgroups) { c.put("/pod/c", 102) }, all, true},
		{"stopped, process left, shared PID namespace", apitask.Status_STOPPED, shared, func(_ *Service, c *fakeCgroups) { c.put("/pod/c", 102) }, all, true},
		{"stopped, process left in a child cgroup", apitask.Status_STOPPED, "", func(_ *Service, c *fakeCgroups) { c.put("/pod/c/child", 102) }, all, true},
		{"stopped, cgroup unreadable", apitask.Status_STOPPED, "", func(_ *Service, c *fakeCgroups) { c.procsErr = errors.New("unreadable") }, all, true},
		{"stopped, no cgroup recorded", apitask.Status_STOPPED, "", func(s *Service, _ *fakeCgroups) { s.containers["c"] = container{} }, all, true},
		{"stopped, container not recorded", apitask.Status_STOPPED, "", func(s *Service, _ *fakeCgroups) { delete(s.containers, "c") }, all, true},
		{"running", apitask.Status_RUNNING, "", func(_ *Service, c *fakeCgroups) { c.put("/pod/c", 100) }, all, true},
		{"running, cgroup empty", apitask.Status_RUNNING, "", nil, all, true},
		{"stopped, init only", apitask.Status_STOPPED, "", nil, &taskAPI.KillRequest{ID: "c", Signal: 9}, true},
		{"exec", apitask.Status_STOPPED, "", nil, &taskAPI.KillRequest{ID: "c", ExecID: "e", Signal: 9, All: true}, true},
		{"unknown container", apitask.Status_STOPPED, "", nil, &taskAPI.KillRequest{ID: "other", Signal: 9, All: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runc, cgroups := newFake(), newCgroups()
			s := New(runc, cgroups)
			create(t, s, runc, cgroups, "c", 100, "/pod/c")
			// The init and its exec have exited, or not.
			cgroups.exit(100)
			runc.set("c", "", 100, tc.status)
			runc.states[[2]string{"c", ""}].Bundle = cmp.Or(tc.bundle, private)
			runc.set("c", "e", 101, tc.status)
			cgroups.put("/pod", 50)
			if tc.setup != nil {
				tc.setup(s, cgroups)
			}
			if _, err := s.Kill(context.Background(), tc.req); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			if ran := len(runc.runcKills) == 1 && runc.runcKills[0] == tc.req; ran != tc.wantRunc || len(runc.runcKills) > 1 {
				t.Errorf("runc shim's kills %v, want the request sent to it: %v", runc.runcKills, tc.wantRunc)
			}
		})
	}
}
