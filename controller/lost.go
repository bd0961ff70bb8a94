package controller

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	apitasks "github.com/containerd/containerd/api/services/tasks/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/podcgroup"
	"github.com/berth-dev/berth/store"
)

// ShimSockets is where the runc shim listens: a socket under Dir named after
// containerd's address and the shim's group (a shared shim's group, or the
// sandbox ID of a pod with a shim of its own).
type ShimSockets struct {
	// ContainerdAddress is containerd's gRPC address.
	ContainerdAddress string
	// Dir is the shim manager's socket_dir.
	Dir string
	// Bundles is where containerd keeps task bundles, one directory per
	// task under its namespace (<state>/io.containerd.runtime.v2.task).
	Bundles string
}

// lostTask is a pause task containerd does not know: what its container
// says of it.
type lostTask struct {
	id      string
	runtime sandbox.RuntimeOpts
	// cgroupsPath is the spec's linux.cgroupsPath.
	cgroupsPath string
	// group is its shim group, "" for a shim of its own.
	group string
	// sb is the sandbox of the task, nil for a container no sandbox owns.
	sb *store.Sandbox
}

// cleanupLost cleans up after a pause task containerd does not know, when a
// Start was cut short by containerd's death: NewTask can have left a shim
// registered in the task service, a runc container the shim lost (its init
// waiting forever) with its cgroup, and a shim containerd forgot. Each is
// ended; a shim only if it serves no other task.
func (r *reaper) cleanupLost(ctx context.Context, t lostTask) error {
	if err := r.deleteFromTaskService(ctx, t.id); err != nil {
		return err
	}
	// runc first: it kills the pause process a lost shim may still run.
	if err := deleteRuncContainer(ctx, t.id, t.runtime); err != nil {
		return err
	}
	// runc leaves the cgroup of a container it made only part of. A
	// systemd-driver path ("slice:prefix:name") is systemd's to remove.
	if t.cgroupsPath != "" && !strings.Contains(t.cgroupsPath, ":") {
		if err := podcgroup.Remove(t.cgroupsPath); err != nil {
			return err
		}
	}
	return r.endLostShim(ctx, t)
}

// deleteFromTaskService asks containerd's task service to delete the task
// of container id and shut its shim down. It also reaps a shim whose task
// was never created: containerd keeps such a shim registered after a
// restart that cut a NewTask short, and only this call ends it.
func (r *reaper) deleteFromTaskService(ctx context.Context, id string) error {
	_, err := r.client.TaskService().Delete(ctx, &apitasks.DeleteTaskRequest{ContainerID: id})
	if err := ignoreNotFound(errgrpc.ToNative(err)); err != nil {
		return fmt.Errorf("delete pause task from the task service: %w", err)
	}
	return nil
}

// runcRoot is the runc shim's default state root; it adds the namespace.
const runcRoot = "/run/containerd/runc"

// runcRuntimePrefix starts the runtime types of the runc shim.
const runcRuntimePrefix = "io.containerd.runc."

// deleteRuncContainer removes a pause container that runc made but the runc
// shim lost track of. When containerd dies while the shim creates the
// container, runc has made it (its init process waits to be started) but
// the shim never recorded it; deleting the task through containerd then
// ends the shim and leaves runc's container and its init process behind
// for good. runc still knows the container, so berth asks runc, as the shim
// would, to delete it. Other runtimes are left alone.
func deleteRuncContainer(ctx context.Context, id string, runtime sandbox.RuntimeOpts) error {
	if !strings.HasPrefix(runtime.Name, runcRuntimePrefix) {
		return nil
	}
	binary, root := "runc", runcRoot
	if runtime.Options != nil {
		var opts runcoptions.Options
		if err := typeurl.UnmarshalTo(runtime.Options, &opts); err != nil {
			return fmt.Errorf("decode runc options: %w", err)
		}
		if opts.BinaryName != "" {
			binary = opts.BinaryName
		}
		if opts.Root != "" {
			root = opts.Root
		}
	}
	out, err := exec.CommandContext(ctx, binary, "--root", filepath.Join(root, Namespace), "delete", "--force", id).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("does not exist")) {
		return fmt.Errorf("runc delete %s: %w: %s", id, err, bytes.TrimSpace(out))
	}
	return nil
}

// endLostShim asks a shim containerd lost track of to delete the pause task
// and exit, and ends it if it cannot, unless it serves other tasks.
// containerd loses a live shim when it dies while the shim starts: after
// the restart it finds the shim's bundle incomplete, deletes the bundle and
// forgets the shim, which then runs forever. The runc shim listens on a
// socket derived from containerd's address and its group (group, or the
// sandbox ID), so berth can still reach it there. A shim that is not there
// is fine.
func (r *reaper) endLostShim(ctx context.Context, t lostTask) error {
	svc, closeShim, err := r.dialShim(ctx, cmp.Or(t.group, t.id))
	if err != nil || svc == nil {
		return err
	}
	defer closeShim()
	// Delete first: the runc shim only exits once it serves no task, and a
	// shared shim must not keep this one: the shim would outlive its last
	// pod, serving nothing. A delete that fails is retried with the rest of
	// the cleanup.
	err = failpoint(t.sb, FailpointLostShimDelete)
	if err == nil {
		err = r.deleteInShim(ctx, svc, t.id)
	}
	if err != nil {
		return fmt.Errorf("delete pause task in lost shim: %w", err)
	}
	if t.group != "" && r.groups.has(t.group) {
		// The group's shim, serving its pods or about to: it ends with
		// them (endIdleShim).
		return nil
	}
	return r.shutdownUnlessServing(ctx, svc, t.id)
}

// endIdleShim ends the shim of group, whose task id was just deleted, once
// no pod or shim keeper is in the group and the shim serves no task
// containerd knows of. The shim exits by itself when containerd deletes its
// last task, unless a crash left it a task containerd does not know, which
// keeps it running, serving nothing, for good; containerd does not ask a
// shim to exit after deleting a task that joined it at its socket. Failing
// here never fails the deletion: it is logged.
func (r *reaper) endIdleShim(ctx context.Context, group, id string) {
	if group == "" || r.groups.has(group) {
		return
	}
	logger := log.G(ctx).WithField("shim_group", group)
	svc, closeShim, err := r.dialShim(ctx, group)
	if err == nil && svc != nil {
		defer closeShim()
		err = r.shutdownUnlessServing(log.WithLogger(ctx, logger), svc, id)
	}
	if err != nil && !isShimExiting(err) {
		logger.WithError(err).Warn("end the shim of a group no pod is in")
	}
}

// shutdownUnlessServing shuts the shim down, and ends it if it does not
// exit, unless it serves a task of a container containerd knows besides
// sandbox id's pause.
func (r *reaper) shutdownUnlessServing(ctx context.Context, svc taskapi.TTRPCTaskService, id string) error {
	info, err := svc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil {
		return fmt.Errorf("connect to shim: %w", err)
	}
	others, err := r.otherTasks(ctx, svc, id)
	if err != nil {
		return err
	}
	if len(others) > 0 {
		// kubelet, not berth, decides when the pod's containers stop; the
		// shim exits once containerd deletes the last of them.
		log.G(ctx).WithField("tasks", others).Info("shim serves other tasks; leaving it")
		return nil
	}
	if _, err := svc.Shutdown(ctx, &taskapi.ShutdownRequest{ID: id, Now: true}); err != nil && !isShimExiting(err) {
		return fmt.Errorf("shut down shim: %w", err)
	}
	// A shim whose bundle containerd deleted cannot delete its task, and
	// one that holds a task containerd forgot refuses to shut down: neither
	// exits by itself.
	return r.killShim(ctx, svc, id, int(info.GetShimPid()))
}

// isShimExiting reports whether err is a shim's connection closing under a
// call: the shim is exiting.
func isShimExiting(err error) bool {
	return errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// deleteInShim deletes the task of container id in the shim. runc has just
// killed its process, and the shim deletes only a task whose exit it has
// reaped: the delete is tried again for up to two seconds. The shim's runc
// logs to the task's bundle, which containerd deleted when it lost the
// task; without it the shim could never delete the task, nor exit. An
// empty bundle stands in for it meanwhile, and goes with what runc logged
// there (log.json).
func (r *reaper) deleteInShim(ctx context.Context, svc taskapi.TTRPCTaskService, id string) error {
	if r.sockets.Bundles != "" {
		bundle := filepath.Join(r.sockets.Bundles, Namespace, id)
		if err := os.Mkdir(bundle, 0o700); err == nil {
			defer func() {
				if err := os.RemoveAll(bundle); err != nil {
					log.G(ctx).WithError(err).WithField("path", bundle).Warn("remove stand-in bundle")
				}
			}()
		} else if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("stand-in bundle: %w", err)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := svc.Delete(ctx, &taskapi.DeleteRequest{ID: id})
		if err = ignoreNotFound(errgrpc.ToNative(err)); err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

// dialShim connects to the shim of group; a nil service means no shim
// listens there, or that berth does not know where shims listen.
func (r *reaper) dialShim(ctx context.Context, group string) (taskapi.TTRPCTaskService, func(), error) {
	if r.sockets.ContainerdAddress == "" {
		return nil, nil, nil
	}
	addr, err := r.socketAddress(ctx, group)
	if err != nil {
		return nil, nil, err
	}
	conn, err := shim.AnonDialer(addr, time.Second)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("dial shim: %w", err)
	}
	client := ttrpc.NewClient(conn)
	return taskapi.NewTTRPCTaskClient(client), func() { client.Close() }, nil
}

// socketAddress is the address of the socket the runc shim of group
// listens on: its plain one, which serves the task API (with debug logging
// it also has a debug one, which does not).
func (r *reaper) socketAddress(ctx context.Context, group string) (string, error) {
	addr, err := shim.CreateSocketAddress(namespaces.WithNamespace(ctx, Namespace), r.sockets.Dir, r.sockets.ContainerdAddress, group, false)
	if err != nil {
		return "", fmt.Errorf("socket address of shim group %s: %w", group, err)
	}
	return addr, nil
}

// shimAddress is the task API address of the runc shim of group, as
// containerd takes it for a new task: "" when berth does not know where
// shims listen, and the shim's start command must find it.
func (r *reaper) shimAddress(ctx context.Context, group string) (string, error) {
	if r.sockets.ContainerdAddress == "" {
		return "", nil
	}
	addr, err := r.socketAddress(ctx, group)
	if err != nil {
		return "", err
	}
	return "ttrpc+" + addr, nil
}

// otherTasks lists the tasks besides sandbox id's pause that the shim
// serves, among those of every container containerd knows: the pod's app
// containers, and with a shared shim other pods and theirs.
func (r *reaper) otherTasks(ctx context.Context, svc taskapi.TTRPCTaskService, id string) ([]string, error) {
	containers, err := r.client.Containers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var tasks []string
	for _, c := range containers {
		if c.ID() == id {
			continue
		}
		_, err = svc.State(ctx, &taskapi.StateRequest{ID: c.ID()})
		switch {
		case err == nil:
			tasks = append(tasks, c.ID())
		case isShimExiting(err):
			// Not through errgrpc, which would lose ttrpc's error.
			return nil, fmt.Errorf("state of task %s in shim: %w", c.ID(), err)
		case !errdefs.IsNotFound(errgrpc.ToNative(err)):
			return nil, fmt.Errorf("state of task %s in shim: %w", c.ID(), errgrpc.ToNative(err))
		}
	}
	return tasks, nil
}

// killShim waits a second for the shim that served sandbox id, pid shimPid,
// to exit, then SIGKILLs it. It signals through a pidfd taken while the shim still
// answered on its socket with that pid, so that a reused pid is never hit.
func (r *reaper) killShim(ctx context.Context, svc taskapi.TTRPCTaskService, id string, shimPid int) error {
	if shimPid <= 0 {
		return nil
	}
	pidfd, err := unix.PidfdOpen(shimPid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd of shim %d: %w", shimPid, err)
	}
	defer unix.Close(pidfd)
	if exited(pidfd, time.Second) {
		log.G(ctx).WithField("pid", shimPid).Debug("shim exited")
		return nil
	}
	// The pidfd is the shim's only if the shim still answers with its pid.
	info, err := svc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil || int(info.GetShimPid()) != shimPid {
		return nil
	}
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill shim %d: %w", shimPid, err)
	}
	log.G(ctx).WithField("pid", shimPid).Info("killed a shim that would not exit")
	return nil
}

// exited waits up to timeout for the process of pidfd to exit.
func exited(pidfd int, timeout time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		ms := max(time.Until(deadline).Milliseconds(), 0)
		n, err := unix.Poll(fds, int(ms))
		if errors.Is(err, unix.EINTR) && ms > 0 {
			continue
		}
		return err == nil && n > 0
	}
}
