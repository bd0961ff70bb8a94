package shimtask

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
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

// cgroupOf is a Procs over a fixed cgroup.
func cgroupOf(pids ...uint32) Procs {
	return func(int) ([]uint32, error) { return pids, nil }
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

func TestPidsFromCgroup(t *testing.T) {
	ctx := context.Background()
	runc := newFake()
	runc.set("c", "", 100, apitask.Status_RUNNING)
	s := New(runc, cgroupOf(100, 101, 102))
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	runc.set("c", "e1", 102, apitask.Status_RUNNING)

	got := pidsOf(t, s, "c")
	want := map[uint32]string{100: "", 101: "", 102: "e1"}
	if !maps.Equal(got, want) {
		t.Errorf("Pids = %v, want %v", got, want)
	}
	if runc.runcPids != 0 {
		t.Errorf("runc listed pids %d times, want 0", runc.runcPids)
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

func TestPidsFallsBackToRunc(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status apitask.Status
		pid    uint32
		procs  Procs
	}{
		{"created", apitask.Status_CREATED, 100, cgroupOf(100)},
		{"stopped", apitask.Status_STOPPED, 100, cgroupOf(100)},
		{"no pid", apitask.Status_RUNNING, 0, cgroupOf(100)},
		{"cgroup unreadable", apitask.Status_RUNNING, 100, func(int) ([]uint32, error) { return nil, errors.New("gone") }},
		// The init process exited after State, and its pid now names a
		// process of another cgroup.
		{"init not in its cgroup", apitask.Status_RUNNING, 100, cgroupOf(200, 201)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runc := newFake()
			runc.set("c", "", tc.pid, tc.status)
			s := New(runc, tc.procs)
			if got := pidsOf(t, s, "c"); !maps.Equal(got, map[uint32]string{1: ""}) {
				t.Errorf("Pids = %v, want runc's", got)
			}
			if runc.runcPids != 1 {
				t.Errorf("runc listed pids %d times, want 1", runc.runcPids)
			}
		})
	}
}

func TestPidsUnknownContainer(t *testing.T) {
	s := New(newFake(), cgroupOf())
	if _, err := s.Pids(context.Background(), &taskAPI.PidsRequest{ID: "nope"}); err == nil {
		t.Fatal("Pids of an unknown container succeeded")
	}
}

func TestExecsForgotten(t *testing.T) {
	ctx := context.Background()
	runc := newFake()
	s := New(runc, cgroupOf())

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
	if got := s.execs["c"]; !slices.Equal(got, []string{"e1", "e2"}) {
		t.Fatalf("execs = %v, want [e1 e2]", got)
	}
	// Deleting the init process forgets all of the container's execs.
	if _, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	if len(s.execs) != 0 {
		t.Errorf("after the container's delete, execs = %v, want none", s.execs)
	}
}

// TestCgroupProcs lists this test's own cgroup, which holds the test.
func TestCgroupProcs(t *testing.T) {
	pid := uint32(os.Getpid())
	pids, err := CgroupProcs(int(pid))
	if err != nil {
		t.Skipf("no readable cgroup here: %v", err)
	}
	if !slices.Contains(pids, pid) {
		t.Errorf("CgroupProcs(%d) = %v, want it to hold %d", pid, pids, pid)
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
// container with a PID namespace of its own without runc, and sends every
// other kill to runc.
func TestKillAllOfStopped(t *testing.T) {
	private := bundleWith(t, specs.LinuxNamespace{Type: specs.PIDNamespace})
	shared := bundleWith(t, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"})
	host := bundleWith(t)
	for _, tc := range []struct {
		name     string
		status   apitask.Status
		bundle   string
		req      *taskAPI.KillRequest
		wantRunc bool
	}{
		{"stopped, own PID namespace", apitask.Status_STOPPED, private, &taskAPI.KillRequest{ID: "c", Signal: 9, All: true}, false},
		{"running", apitask.Status_RUNNING, private, &taskAPI.KillRequest{ID: "c", Signal: 9, All: true}, true},
		{"stopped, shared PID namespace", apitask.Status_STOPPED, shared, &taskAPI.KillRequest{ID: "c", Signal: 9, All: true}, true},
		{"stopped, host PID namespace", apitask.Status_STOPPED, host, &taskAPI.KillRequest{ID: "c", Signal: 9, All: true}, true},
		{"stopped, spec unreadable", apitask.Status_STOPPED, t.TempDir(), &taskAPI.KillRequest{ID: "c", Signal: 9, All: true}, true},
		{"stopped, init only", apitask.Status_STOPPED, private, &taskAPI.KillRequest{ID: "c", Signal: 9}, true},
		{"exec", apitask.Status_STOPPED, private, &taskAPI.KillRequest{ID: "c", ExecID: "e", Signal: 9, All: true}, true},
		{"unknown container", apitask.Status_STOPPED, private, &taskAPI.KillRequest{ID: "other", Signal: 9, All: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.set("c", "", 1000, tc.status)
			f.states[[2]string{"c", ""}].Bundle = tc.bundle
			f.set("c", "e", 1001, tc.status)
			if _, err := New(f, cgroupOf()).Kill(context.Background(), tc.req); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			if ran := len(f.runcKills) == 1 && f.runcKills[0] == tc.req; ran != tc.wantRunc || len(f.runcKills) > 1 {
				t.Errorf("runc shim's kills %v, want the request sent to it: %v", f.runcKills, tc.wantRunc)
			}
		})
	}
}
