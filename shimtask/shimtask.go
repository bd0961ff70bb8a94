// Package shimtask is the task service of berth's shim,
// containerd-shim-berth-v2: the runc shim's own, unchanged but for Pids,
// which it answers from the container's cgroup instead of running
// `runc ps`, and the kill of every process of a stopped container with a
// PID namespace of its own, which has none left for runc to kill.
//
// containerd, when it starts, loads every task of every live shim and asks
// each for its Pids before CRI or any sandbox controller runs
// (core/runtime/v2/shim_load.go), two tasks at a time on a 2-core node. The
// runc shim answers each with an exec of runc, which loads runc's state and
// reads the same cgroup; at 300 pods that exec is most of containerd's
// restart. Reading cgroup.procs in the shim gives the same answer without
// it.
package shimtask

import (
	"context"
	"fmt"
	"slices"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Procs lists the processes in the cgroup of process pid and its
// descendants' cgroups, as `runc ps` lists a container's.
type Procs func(pid int) ([]uint32, error)

// Service wraps the runc shim's task service.
type Service struct {
	taskAPI.TTRPCTaskService
	procs Procs

	mu sync.Mutex
	// execs holds the exec IDs of each container's exec processes that
	// exist in the shim: Pids marks their pids, as the runc shim's does.
	execs map[string][]string
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// New wraps inner, answering Pids with procs.
func New(inner taskAPI.TTRPCTaskService, procs Procs) *Service {
	return &Service{TTRPCTaskService: inner, procs: procs, execs: map[string][]string{}}
}

// RegisterTTRPC serves s as the shim's task service.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// Exec records the exec process once the runc shim has it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	resp, err := s.TTRPCTaskService.Exec(ctx, r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.execs[r.ID] = append(s.execs[r.ID], r.ExecID)
	s.mu.Unlock()
	return resp, nil
}

// Delete forgets the exec process, or with the init process all of the
// container's, once the runc shim has deleted it.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if r.ExecID == "" {
		delete(s.execs, r.ID)
	} else if execs := slices.DeleteFunc(s.execs[r.ID], func(id string) bool { return id == r.ExecID }); len(execs) > 0 {
		s.execs[r.ID] = execs
	} else {
		delete(s.execs, r.ID)
	}
	s.mu.Unlock()
	return resp, nil
}

// Kill with All of a container whose init process has exited, in a PID
// namespace of the container's own, answers at once as runc would: the
// kernel killed the namespace's processes with its init, and `runc kill
// --all` of a container not running with a private PID namespace signals
// nothing and succeeds. containerd's client sends it after every exit
// (containerd.WithProcessKill, which CRI deletes an app container's task
// with), and the runc shim would run runc for it. A container that shares
// a PID namespace still goes to runc, which kills what is left in its
// cgroup.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if r.All && r.ExecID == "" {
		st, err := s.State(ctx, &taskAPI.StateRequest{ID: r.ID})
		if err == nil && st.Status == apitask.Status_STOPPED && !runc.ShouldKillAllOnExit(ctx, st.Bundle) {
			return &emptypb.Empty{}, nil
		}
	}
	return s.TTRPCTaskService.Kill(ctx, r)
}

// Pids lists the container's processes from its init process's cgroup
// while that process runs. Otherwise (created and not started, stopped),
// or if the cgroup cannot be read, the runc shim answers as it always
// does.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	st, err := s.State(ctx, &taskAPI.StateRequest{ID: r.ID})
	if err != nil {
		return nil, err
	}
	if st.Status != apitask.Status_RUNNING && st.Status != apitask.Status_PAUSED || st.Pid == 0 {
		return s.TTRPCTaskService.Pids(ctx, r)
	}
	pids, err := s.procs(int(st.Pid))
	// The init process is in its own cgroup until it exits: without it,
	// the pid was read after the exit (or reused) and the list is not the
	// container's.
	if err != nil || !slices.Contains(pids, st.Pid) {
		log.G(ctx).WithError(err).WithField("pid", st.Pid).Debug("container cgroup unreadable, listing pids with runc")
		return s.TTRPCTaskService.Pids(ctx, r)
	}
	execs := s.execPids(ctx, r.ID)
	processes := make([]*apitask.ProcessInfo, 0, len(pids))
	for _, pid := range pids {
		info := &apitask.ProcessInfo{Pid: pid}
		if id, ok := execs[pid]; ok {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: id})
			if err != nil {
				return nil, fmt.Errorf("marshal process %d info: %w", pid, err)
			}
			info.Info = a
		}
		processes = append(processes, info)
	}
	return &taskAPI.PidsResponse{Processes: processes}, nil
}

// execPids maps the pids of container id's exec processes to their exec
// IDs. An exec whose state the runc shim no longer has was deleted since
// the copy of execs: it is not in the cgroup either, and the runc shim's
// Pids, which reads its own list, would not have seen it.
func (s *Service) execPids(ctx context.Context, id string) map[uint32]string {
	s.mu.Lock()
	execs := slices.Clone(s.execs[id])
	s.mu.Unlock()
	pids := make(map[uint32]string, len(execs))
	for _, execID := range execs {
		st, err := s.State(ctx, &taskAPI.StateRequest{ID: id, ExecID: execID})
		if err != nil {
			continue
		}
		if st.Pid != 0 {
			pids[st.Pid] = execID
		}
	}
	return pids
}
