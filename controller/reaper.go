package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/store"
)

// reaper owns what happens to a pause task once it exists: waiting for its
// exit, killing it, deleting it with its shim, and cleaning up what a crash
// left of it (lost.go). Steps that fail go to the retry queue.
//
// A task handed to watch is deleted by its watcher and by nothing else, so
// no task is deleted twice. A task is handed to watch as the last step of
// Start or of its recovery; before that, Start's rollback deletes it, and
// recovery deletes the tasks of sandboxes that no longer exist.
type reaper struct {
	client containerdClient
	// events tells the reaper of its tasks' exits, and runs its failed
	// steps again.
	events *events.Monitor
	// exitTimeout bounds the first attempt at deleting an exited task.
	exitTimeout time.Duration
	shims       shimproc.Sockets
	// groups are the shared shims; a pod leaves its group when its pause
	// task exits.
	groups *placement.Groups
	// shimDied records the exits of the tasks a dead shared shim served
	// (watchShim).
	shimDied func(ids []string)

	mu sync.Mutex // guards killing
	// killing holds the sandboxes whose kill is queued for a retry.
	killing map[string]bool
}

func newReaper(client containerdClient, monitor *events.Monitor, cfg Config, groups *placement.Groups, shimDied func(ids []string)) *reaper {
	return &reaper{
		shimDied:    shimDied,
		client:      client,
		events:      monitor,
		exitTimeout: cfg.ExitTimeout,
		shims:       cfg.Shims,
		groups:      groups,
		killing:     map[string]bool{},
	}
}

// watch hands the sandbox's pause task to a goroutine of its own, which
// records the exit the moment it comes, so that Status and Wait report it
// without delay, then deletes the task.
func (r *reaper) watch(sb *store.Sandbox, task containerd.Task, w *events.Wait) {
	w.Handle(func(ctx context.Context, e events.Exit) {
		logger := log.G(ctx).WithField("sandbox_id", sb.ID)
		if e.Lost != nil {
			// The wait itself failed, e.g. the shim died: the task is gone
			// all the same, with its exit code.
			logger.WithError(e.Lost).Warn("pause task exit status lost")
		}
		sb.Exit(e.Code, e.At)
		r.groups.Leave(sb.Status().Instance.ShimGroup)
		logger.WithField("exit_status", e.Code).Debug("pause task exited")
		r.deleteExitedOrRetry(log.WithLogger(ctx, logger), sb, task)
	})
}

// deleteExitedOrRetry deletes the exited pause task of sb within the exit
// timeout, and hands the deletion to the retry queue if that fails.
func (r *reaper) deleteExitedOrRetry(ctx context.Context, sb *store.Sandbox, task containerd.Task) {
	attemptCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.exitTimeout)
	defer cancel()
	if err := r.deleteExited(attemptCtx, sb, task); err != nil {
		log.G(ctx).WithError(err).Warn("delete exited pause task; retrying")
		r.events.Retry(ctx, sb.ID, "delete exited task", func(ctx context.Context) error { return r.deleteExited(ctx, sb, task) })
	}
}

// deleteExited deletes the exited pause task of sb and its shim, then marks
// the sandbox deleted, which releases Shutdown.
func (r *reaper) deleteExited(ctx context.Context, sb *store.Sandbox, task containerd.Task) error {
	if err := failpoint.Inject(sb, failpoint.TaskDelete); err != nil {
		return err
	}
	if err := r.deleteGroupTask(ctx, sb.Status().Instance.ShimGroup, sb.ID, task); err != nil {
		return err
	}
	r.endIdleShim(ctx, sb.Status().Instance.ShimGroup, sb.ID)
	sb.SetDeleted()
	return nil
}

// deleteTask deletes a pause task and its shim. A task the shim no longer
// knows can still have a live shim connection in containerd's task service
// (containerd#7496: a delete cancelled while the shim was unmounting), and a
// dead shim answers nothing at all ("ttrpc: closed"), so in both cases the
// task service is asked to delete the task as well: it cleans up after a
// dead shim itself.
func (r *reaper) deleteTask(ctx context.Context, task containerd.Task) error {
	// What is left in the pause's cgroup is killed first, exited pause or
	// not, as containerd's client and the built-in do: runc 1.1, or a
	// runtime BinaryName names, signals the cgroup's processes, which a
	// pause sharing a PID namespace (the host's) can leave there. berth's
	// shim answers it without runc when the cgroup is empty (shimtask).
	_, err := task.Delete(ctx, containerd.WithProcessKill)
	if err == nil {
		return nil
	}
	if !errdefs.IsNotFound(err) && !isShimGone(err) {
		return fmt.Errorf("delete pause task: %w", err)
	}
	return r.deleteFromTaskService(ctx, task.ID())
}

// deleteGroupTask deletes the pause task of sandbox id, of shim group
// group, in turn with the tasks being made in the group: the group's last
// task ends its shim (placement.Groups.DeleteTask).
func (r *reaper) deleteGroupTask(ctx context.Context, group, id string, task containerd.Task) error {
	done, err := r.groups.DeleteTask(ctx, group, id)
	if err != nil {
		return fmt.Errorf("wait for the pause tasks being made in shim group %s: %w", group, err)
	}
	err = r.deleteTask(ctx, task)
	done(err == nil)
	return err
}

// isShimGone reports whether err says the shim's connection is closed: the
// shim died. ttrpc's error crosses containerd's API as an Unknown status
// with its text, so the text is all there is to match.
func isShimGone(err error) bool {
	return errdefs.IsUnknown(err) && strings.HasSuffix(err.Error(), ttrpc.ErrClosed.Error())
}

// kill sends SIGKILL to the pause task of a ready sandbox. If the shim does
// not answer, the kill is retried in the background until the pause exits,
// so that the pod dies as soon as the shim answers again; however many
// Stops fail meanwhile, one kill is queued.
func (r *reaper) kill(ctx context.Context, sb *store.Sandbox, task containerd.Task) error {
	err := ignoreNotFound(task.Kill(ctx, syscall.SIGKILL))
	if err == nil {
		return nil
	}
	r.mu.Lock()
	queued := r.killing[sb.ID]
	r.killing[sb.ID] = true
	r.mu.Unlock()
	if !queued {
		r.events.Retry(ctx, sb.ID, "kill", func(ctx context.Context) error {
			select {
			case <-sb.Exited():
				// Nothing left to kill; the task's deletion, queued behind
				// this step, can run.
			default:
				if err := ignoreNotFound(task.Kill(ctx, syscall.SIGKILL)); err != nil {
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

// reattach takes up the pause task of a recovered sandbox: a running one is
// watched again and the sandbox is READY; one that exited while containerd
// was down, or that a crash left created but never started, is deleted and
// the sandbox reports its exit. A running task rejoins its shim group,
// among scope's.
func (r *reaper) reattach(ctx context.Context, sb *store.Sandbox, scope placement.Scope) error {
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
		w, err := r.events.WaitFor(ctx, t)
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
		r.groups.Rejoin(scope, sb.Status().Instance.ShimGroup, sb.ID)
		r.watchShim(ctx, sb.Status().Instance.ShimGroup, sb.ID)
		r.watch(sb, t, w)
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

// deleteUnloaded deletes the pause task of a sandbox whose recovery could
// not load it in time, once its shim answers.
func (r *reaper) deleteUnloaded(ctx context.Context, sb *store.Sandbox) error {
	t, err := r.loadTask(ctx, sb)
	if err != nil || t == nil {
		return err
	}
	return r.deleteExited(ctx, sb, t)
}
