// Package reaper owns what happens to a pause task once it exists: the
// handling of its exit, its kill, its deletion with its shim (in turn with
// the tasks being made in its shim group: package placement), and the
// cleanup of what a crash left of it (lost.go); it watches a shared shim's
// process (shimwatch.go). Steps that fail go to the event monitor's retry
// queue.
//
// A task handed to Watch is deleted by its watch and by nothing else, so
// no task is deleted twice. A task is handed to Watch as the last step of
// Start or of its recovery (Reattach); before that, Start's rollback
// deletes it (DeleteGroupTask), and recovery deletes the tasks of
// sandboxes that no longer exist.
package reaper

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/store"
)

// Client is what the reaper asks of containerd's client.
type Client interface {
	// Containers lists the namespace's containers: a shim is ended only if
	// it serves none of their tasks.
	Containers(ctx context.Context, filters ...string) ([]containerd.Container, error)
	// TaskService deletes tasks whose shim is gone or never started.
	TaskService() tasks.TasksClient
}

// Config is what a Reaper is made of.
type Config struct {
	Client Client
	// Events tells the reaper of its tasks' exits, and runs its failed
	// steps again.
	Events *events.Monitor
	// Groups are the shared shims; a pod leaves its group when its pause
	// task exits.
	Groups *placement.Groups
	// Shims is where the runc shims listen.
	Shims shimproc.Sockets
	// ExitTimeout bounds the first attempt at deleting an exited task.
	ExitTimeout time.Duration
	// ShimDied records the exits of the tasks a dead shared shim served
	// (WatchShim).
	ShimDied func(ids []string)
}

// Reaper handles pause tasks from their start to their deletion.
type Reaper struct {
	cfg Config

	mu sync.Mutex // guards killing and killedAll
	// killing holds the sandboxes whose kill is queued for a retry.
	killing map[string]bool
	// killedAll holds the sandboxes whose kill is being sent, or was, to
	// every process of the pause's cgroup: the deletion of their exited
	// task kills nothing again. An entry goes with the task's deletion, or
	// with the kill's failure.
	killedAll map[string]bool
}

// New returns a reaper.
func New(cfg Config) *Reaper {
	return &Reaper{cfg: cfg, killing: map[string]bool{}, killedAll: map[string]bool{}}
}

// Watch hands the sandbox's pause task to a goroutine of its own, which
// records the exit the moment it comes, so that Status and Wait report it
// without delay, then deletes the task.
func (r *Reaper) Watch(sb *store.Sandbox, task containerd.Task, w *events.Wait) {
	w.Handle(func(ctx context.Context, e events.Exit) {
		logger := log.G(ctx).WithField("sandbox_id", sb.ID)
		if e.Lost != nil {
			// The wait itself failed, e.g. the shim died: the task is gone
			// all the same, with its exit code.
			logger.WithError(e.Lost).Warn("pause task exit status lost")
		}
		sb.Exit(e.Code, e.At)
		r.cfg.Groups.Leave(sb.Status().Instance.ShimGroup)
		logger.WithField("exit_status", e.Code).Debug("pause task exited")
		r.deleteExitedOrRetry(log.WithLogger(ctx, logger), sb, task)
	})
}

// deleteExitedOrRetry deletes the exited pause task of sb within the exit
// timeout, and hands the deletion to the retry queue if that fails.
func (r *Reaper) deleteExitedOrRetry(ctx context.Context, sb *store.Sandbox, task containerd.Task) {
	attemptCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ExitTimeout)
	defer cancel()
	if err := r.deleteExited(attemptCtx, sb, task); err != nil {
		log.G(ctx).WithError(err).Warn("delete exited pause task; retrying")
		r.cfg.Events.Retry(ctx, sb.ID, "delete exited task", func(ctx context.Context) error { return r.deleteExited(ctx, sb, task) })
	}
}

// deleteExited deletes the exited pause task of sb and its shim, then marks
// the sandbox deleted, which releases Shutdown.
func (r *Reaper) deleteExited(ctx context.Context, sb *store.Sandbox, task containerd.Task) error {
	if err := failpoint.Inject(sb, failpoint.TaskDelete); err != nil {
		return err
	}
	r.mu.Lock()
	killed := r.killedAll[sb.ID]
	r.mu.Unlock()
	if err := r.inGroupTurn(ctx, sb.Status().Instance.ShimGroup, sb.ID, func() error { return r.deleteExitedTask(ctx, task, !killed) }); err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.killedAll, sb.ID)
	r.mu.Unlock()
	r.EndIdleShim(ctx, sb.Status().Instance.ShimGroup, sb.ID)
	sb.SetDeleted()
	return nil
}

// DeleteTask deletes a pause task and its shim. A task the shim no longer
// knows can still have a live shim connection in containerd's task service
// (containerd#7496: a delete cancelled while the shim was unmounting), and a
// dead shim answers nothing at all ("ttrpc: closed"), so in both cases the
// task service is asked to delete the task as well: it cleans up after a
// dead shim itself.
func (r *Reaper) DeleteTask(ctx context.Context, task containerd.Task) error {
	// What is left in the pause's cgroup is killed first, exited pause or
	// not, as containerd's client and the built-in do: runc 1.1, or a
	// runtime BinaryName names, signals the cgroup's processes, which a
	// pause sharing a PID namespace (the host's) can leave there. berth's
	// shim answers it without runc when the cgroup is empty (shimtask).
	_, err := task.Delete(ctx, containerd.WithProcessKill)
	if err == nil {
		return nil
	}
	if !errdefs.IsNotFound(err) && !shimproc.IsGone(err) {
		return fmt.Errorf("delete pause task: %w", err)
	}
	return r.DeleteFromTaskService(ctx, task.ID())
}

// DeleteGroupTask deletes the pause task of sandbox id, of shim group
// group, in turn with the tasks being made in the group: the group's last
// task ends its shim (placement.Groups.DeleteTask).
func (r *Reaper) DeleteGroupTask(ctx context.Context, group, id string, task containerd.Task) error {
	return r.inGroupTurn(ctx, group, id, func() error { return r.DeleteTask(ctx, task) })
}

// inGroupTurn runs del, the deletion of the task of sandbox or keeper id,
// when group's tasks being made let it (placement.Groups.DeleteTask).
func (r *Reaper) inGroupTurn(ctx context.Context, group, id string, del func() error) error {
	done, err := r.cfg.Groups.DeleteTask(ctx, group, id)
	if err != nil {
		return fmt.Errorf("wait for the pause tasks being made in shim group %s: %w", group, err)
	}
	err = del()
	done(err == nil)
	return err
}

// deleteExitedTask deletes a pause task whose exit was handled, as
// DeleteTask does, but without first waiting for its exit and asking its
// state again, which containerd's WithProcessKill and Delete do: two round
// trips to containerd that berthd would make for every pod. killLeft kills
// what is left in the pause's cgroup first (DeleteTask), which a pause
// that Kill killed, with the rest of its cgroup, does not need: a runc
// process and, through berthd, a round trip, saved for every pod Stop ends.
func (r *Reaper) deleteExitedTask(ctx context.Context, task containerd.Task, killLeft bool) error {
	if killLeft {
		if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) && !shimproc.IsGone(err) {
			return fmt.Errorf("kill what is left of the exited pause: %w", err)
		}
	}
	return r.DeleteFromTaskService(ctx, task.ID())
}

// Kill sends SIGKILL to the pause task of a ready sandbox and to whatever
// else is in its cgroup, as the deletion of an exited pause task does
// (DeleteTask), which then need not. If the shim does not answer, the
// kill is retried in the background until the pause exits, so that the pod
// dies as soon as the shim answers again; however many Stops fail
// meanwhile, one kill is queued.
func (r *Reaper) Kill(ctx context.Context, sb *store.Sandbox, task containerd.Task) error {
	err := r.killAll(ctx, sb.ID, task)
	if err == nil {
		return nil
	}
	r.mu.Lock()
	queued := r.killing[sb.ID]
	r.killing[sb.ID] = true
	r.mu.Unlock()
	if !queued {
		r.cfg.Events.Retry(ctx, sb.ID, "kill", func(ctx context.Context) error {
			select {
			case <-sb.Exited():
				// Nothing left to kill; the task's deletion, queued behind
				// this step, can run.
			default:
				if err := r.killAll(ctx, sb.ID, task); err != nil {
					return err
				}
			}
			r.mu.Lock()
			delete(r.killing, sb.ID)
			r.mu.Unlock()
			return nil
		})
	}
	return err
}

// killAll kills every process of the cgroup of sandbox id's pause task;
// a task already gone is killed. The kill is recorded before it is sent:
// the pause's exit can be handled before the kill's answer comes. The
// record goes if the kill is not sent, or finds the task gone: its
// deletion, which would drop the record, may be over.
func (r *Reaper) killAll(ctx context.Context, id string, task containerd.Task) error {
	r.mu.Lock()
	r.killedAll[id] = true
	r.mu.Unlock()
	err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll)
	if err == nil {
		return nil
	}
	r.mu.Lock()
	delete(r.killedAll, id)
	r.mu.Unlock()
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// Reattach takes up the pause task of a recovered sandbox: a running one is
// watched again and the sandbox is READY; one that exited while containerd
// was down, or that a crash left created but never started, is deleted and
// the sandbox reports its exit. A running task rejoins its shim group,
// among scope's.
func (r *Reaper) Reattach(ctx context.Context, sb *store.Sandbox, scope placement.Scope) error {
	t, err := r.loadTask(ctx, sb)
	if err != nil || t == nil {
		return err
	}
	st, err := t.Status(ctx)
	if err != nil {
		return fmt.Errorf("pause task status: %w", err)
	}
	if err := sb.Update(func(s store.Status) (store.Status, error) {
		inst := *s.Instance
		inst.Task = t
		s.Instance = &inst
		return s, nil
	}); err != nil {
		return err
	}
	switch st.Status {
	case containerd.Running, containerd.Paused, containerd.Pausing:
		w, err := r.cfg.Events.WaitFor(ctx, t)
		if err != nil {
			return err
		}
		if err := sb.Update(func(s store.Status) (store.Status, error) {
			s.State, s.Pid = store.StateReady, t.Pid()
			return s, nil
		}); err != nil {
			w.Stop()
			return err
		}
		r.cfg.Groups.Rejoin(scope, sb.Status().Instance.ShimGroup, sb.ID)
		r.WatchShim(ctx, sb.Status().Instance.ShimGroup, sb.ID)
		r.Watch(sb, t, w)
		return nil
	case containerd.Stopped:
		sb.Exit(st.ExitStatus, st.ExitTime)
	default:
		// Created (Start was cut short) or unknown: never ready.
		sb.Exit(events.UnknownExitCode, time.Now())
	}
	r.deleteExitedOrRetry(ctx, sb, t)
	return nil
}

// DeleteUnloaded deletes the pause task of a sandbox whose recovery could
// not load it in time, once its shim answers.
func (r *Reaper) DeleteUnloaded(ctx context.Context, sb *store.Sandbox) error {
	t, err := r.loadTask(ctx, sb)
	if err != nil || t == nil {
		return err
	}
	return r.deleteExited(ctx, sb, t)
}
