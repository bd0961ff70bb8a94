// Package shimtask is the task service of berth's shim,
// containerd-shim-berth-v2: the runc shim's own, unchanged but for Pids,
// which it answers from the container's cgroup instead of running
// `runc ps`, and the kill of every process of a stopped container whose
// cgroup has none left, which it answers without running runc.
//
// containerd, when it starts, loads every task of every live shim and asks
// each for its Pids before CRI or any sandbox controller runs
// (core/runtime/v2/shim_load.go), two tasks at a time on a 2-core node. The
// runc shim answers each with an exec of runc, which loads runc's state and
// reads the same cgroup; at 300 pods that exec is most of containerd's
// restart. Reading cgroup.procs in the shim gives the same answer without
// it.
//
// The cgroup is the one the container's task was created in, found once
// when the runc shim has created it: `runc create` has then put `runc
// init` in the container's cgroup, and none of the container's code has
// run. That is the cgroup runc's state names, which `runc ps` and `runc
// kill --all` list. The cgroup the init is in later is not: an init may
// move itself into a child cgroup (systemd, docker-in-docker, which must,
// to enable controllers), or, privileged, out of the container's.
package shimtask

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	apitask "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Cgroups finds and lists containers' cgroups. A cgroup is named by the
// directory whose cgroup.procs, with its descendants', list its
// processes. HostCgroups is the host's.
type Cgroups interface {
	// Of returns the cgroup process pid is in now.
	Of(pid int) (string, error)
	// Procs lists the processes in cgroup dir and its descendants, as
	// `runc ps` lists a container's. An error that is fs.ErrNotExist
	// means the cgroup is gone.
	Procs(dir string) ([]uint32, error)
}

// Service wraps the runc shim's task service.
type Service struct {
	taskAPI.TTRPCTaskService
	cgroups Cgroups

	mu sync.Mutex
	// containers holds, by container ID, what the wrapper knows of each
	// container its shim created, until the runc shim deletes its init.
	containers map[string]container
}

// container is what the wrapper knows of one container.
type container struct {
	// cgroup is the container's cgroup, found at Create; "" if it could
	// not be, and Pids and Kill then leave the container to runc.
	cgroup string
	// execs are the exec IDs of the container's exec processes that exist
	// in the shim: Pids marks their pids, as the runc shim's does.
	execs []string
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// New wraps inner, answering Pids, and the kill of a stopped container's
// processes, from the containers' cgroups.
func New(inner taskAPI.TTRPCTaskService, cgroups Cgroups) *Service {
	return &Service{TTRPCTaskService: inner, cgroups: cgroups, containers: map[string]container{}}
}

// RegisterTTRPC serves s as the shim's task service.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// Create records the container's cgroup once the runc shim has created
// it, from its init process, which `runc create` has put there and which
// has run none of the container's code yet. A container restored from a
// checkpoint has run it: its processes are back in the cgroups they were
// in, below the container's or not, and the container is left to runc.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	resp, err := s.TTRPCTaskService.Create(ctx, r)
	if err != nil {
		return nil, err
	}
	var cgroup string
	if r.Checkpoint == "" && resp.Pid != 0 {
		cgroup, err = s.cgroups.Of(int(resp.Pid))
		if err == nil {
			err = s.listsInit(cgroup, resp.Pid)
		}
		if err != nil {
			log.G(ctx).WithError(err).WithField("pid", resp.Pid).Warn("container cgroup unknown, its pids are listed with runc")
			cgroup = ""
		}
	}
	s.mu.Lock()
	s.containers[r.ID] = container{cgroup: cgroup}
	s.mu.Unlock()
	return resp, nil
}

// listsInit checks that cgroup, found from /proc, lists the container's
// init, pid, which `runc create` put there: a path read wrong (a cgroup
// mount of a subtree the shim does not see as such) would read as a
// cgroup gone, and Kill would answer for runc.
func (s *Service) listsInit(cgroup string, pid uint32) error {
	pids, err := s.cgroups.Procs(cgroup)
	if err != nil {
		return err
	}
	if !slices.Contains(pids, pid) {
		return fmt.Errorf("cgroup %s does not list the container's init %d", cgroup, pid)
	}
	return nil
}

// Exec records the exec process once the runc shim has it, unless the
// container was deleted meanwhile (its init exited, and containerd
// deleted it between the two): recorded again, it would outlive it in a
// shared shim.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	resp, err := s.TTRPCTaskService.Exec(ctx, r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if c, ok := s.containers[r.ID]; ok {
		c.execs = append(c.execs, r.ExecID)
		s.containers[r.ID] = c
	}
	s.mu.Unlock()
	return resp, nil
}

// Delete forgets the exec process, or with the init process all the
// wrapper knows of the container, once the runc shim has deleted it.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if r.ExecID == "" {
		delete(s.containers, r.ID)
	} else if c, ok := s.containers[r.ID]; ok {
		c.execs = slices.DeleteFunc(c.execs, func(id string) bool { return id == r.ExecID })
		s.containers[r.ID] = c
	}
	s.mu.Unlock()
	return resp, nil
}

// cgroup is container id's cgroup as recorded at Create, or "".
func (s *Service) cgroup(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.containers[id].cgroup
}

// Kill with All of a container whose init process has exited answers at
// once when the container's cgroup has no process left, or is gone:
// `runc kill --all` signals the processes of the container's cgroup, and
// finds none, whatever runc's version or the runtime BinaryName names
// (runc ≥ 1.2 signals only the init of a container with a PID namespace
// of its own, and succeeds for one that has exited). containerd's client
// sends it after every exit (containerd.WithProcessKill, which CRI
// deletes an app container's task with), and the runc shim would run
// runc for it. A container with a PID namespace of its own has an empty
// cgroup once its init has exited (the kernel kills the namespace's
// processes with it, and the init's exit waits for them); one that
// shares a PID namespace may have processes left, and goes to runc, which
// kills them. So does any container whose cgroup the shim does not know
// or cannot read.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if r.All && r.ExecID == "" && s.nothingToKill(ctx, r.ID) {
		return &emptypb.Empty{}, nil
	}
	return s.TTRPCTaskService.Kill(ctx, r)
}

// nothingToKill tells whether container id's init has exited and its
// cgroup is empty or gone.
func (s *Service) nothingToKill(ctx context.Context, id string) bool {
	st, err := s.State(ctx, &taskAPI.StateRequest{ID: id})
	if err != nil || st.Status != apitask.Status_STOPPED {
		return false
	}
	cgroup := s.cgroup(id)
	if cgroup == "" {
		return false
	}
	pids, err := s.cgroups.Procs(cgroup)
	return errors.Is(err, fs.ErrNotExist) || err == nil && len(pids) == 0
}

// Pids lists the container's processes from its cgroup while its init
// process runs. Otherwise (created and not started, stopped), or if the
// cgroup is not known or cannot be read, the runc shim answers as it
// always does.
//
// A list without the init is left to runc too: the init has exited
// since State, or a privileged one has moved itself out of the
// container's cgroup. The shim then never answers an empty list of its
// own for a running container, which containerd, at its start, takes a
// shim without a sandbox to have leaked for (shim_load.go,
// shouldCleanupShim).
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	st, err := s.State(ctx, &taskAPI.StateRequest{ID: r.ID})
	if err != nil {
		return nil, err
	}
	if st.Status != apitask.Status_RUNNING && st.Status != apitask.Status_PAUSED || st.Pid == 0 {
		return s.TTRPCTaskService.Pids(ctx, r)
	}
	cgroup := s.cgroup(r.ID)
	if cgroup == "" {
		return s.TTRPCTaskService.Pids(ctx, r)
	}
	pids, err := s.cgroups.Procs(cgroup)
	if err != nil || !slices.Contains(pids, st.Pid) {
		log.G(ctx).WithError(err).WithField("pid", st.Pid).Debug("init not listed in container cgroup, listing pids with runc")
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
	execs := slices.Clone(s.containers[id].execs)
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
