package controller

// The pause task's making: in its pod's shim group (package placement),
// joined at the group's shim's socket once that shim is up, and handed to
// the reaper once started.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/failpoint"
	"github.com/berth-dev/berth/placement"
	"github.com/berth-dev/berth/reaper"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/shimproc"
	"github.com/berth-dev/berth/store"
)

// startTask makes and starts the pause task, waiting for its exit from
// before it starts. lost is what a create that failed may have left.
func (c *Controller) startTask(ctx context.Context, sb *store.Sandbox, container containerd.Container, lost reaper.LostTask, p startPlan, making placement.Making, undo *rollback.Stack) (containerd.Task, *events.Wait, error) {
	var opts []containerd.NewTaskOpts
	if p.shim != "" {
		opts = append(opts, containerd.WithTaskAPIEndpoint(p.shim, shimproc.TaskAPIVersion))
	}
	if p.runtime.Path != "" {
		opts = append(opts, containerd.WithRuntimePath(p.runtime.Path))
	}
	if p.pause.rootfs != nil {
		opts = append(opts, containerd.WithRootFS(p.pause.rootfs))
	}
	task, err := c.newTask(ctx, sb, container, p.group, making, opts)
	if err != nil {
		// The task may be made though the answer was lost: containerd
		// died under berthd (its API unavailable), or the caller's
		// deadline passed. A task left would outlive its container
		// record, which the undo deletes next (containerd's container
		// service deletes a record whatever its task), and keep its shim
		// from ending.
		cleanup := func(ctx context.Context) error { return c.reaper.DeleteFromTaskService(ctx, sb.ID) }
		if !errors.Is(err, errSharedShimRefused) {
			// As recovery cleans up after a Start cut short: runc's
			// container, its cgroup and the shim too, should the shim
			// have lost track of them. Not after a refusal, whose undo
			// runs before the pause is made again in another group: the
			// shim may be exiting, and only answer with errors.
			cleanup = func(ctx context.Context) error { return c.reaper.CleanupLost(ctx, lost) }
		}
		undo.Push("delete the pause task a failed create may have left", c.undoable(sb, "task", cleanup))
		return nil, nil, err
	}
	undo.Push("delete pause task", c.undoable(sb, "task", func(ctx context.Context) error {
		return c.reaper.DeleteGroupTask(ctx, p.group, sb.ID, task)
	}))
	if err := failpoint.Inject(sb, failpoint.StartTask); err != nil {
		return nil, nil, err
	}
	w, err := c.events.WaitFor(ctx, task)
	if err != nil {
		return nil, nil, err
	}
	undo.Push("stop waiting for pause task", func(context.Context) error { w.Stop(); return nil })
	if err := task.Start(ctx); err != nil {
		return nil, nil, fmt.Errorf("start pause task: %w", err)
	}
	return task, w, failpoint.Inject(sb, failpoint.StartTaskStart)
}

// errSharedShimRefused says a shared shim did not take the pause task
// because it is exiting or gone, or that berth did not give it the task
// because the group's shim may be exiting (placement.Groups.MakeTask). Start is
// then made again in another group.
var errSharedShimRefused = errors.New("shared shim refused the pause task")

// beginTask begins making the pause task in its shim group, waiting for
// the group's first task if it is being made. If the group's shim is up, it
// sets the address at which the task joins it.
func (c *Controller) beginTask(ctx context.Context, sb *store.Sandbox, p *startPlan) (placement.Making, error) {
	making, err := c.groups.MakeTask(ctx, p.group, sb.ID)
	if errors.Is(err, placement.ErrShimEnding) {
		return placement.Making{}, fmt.Errorf("shim group %s: %w: %w", p.group, errSharedShimRefused, err)
	}
	if err != nil {
		return placement.Making{}, fmt.Errorf("wait for the first pause task of shim group %s: %w", p.group, err)
	}
	if making.ShimUp {
		if p.shim, err = c.config.Shims.TaskAddress(ctx, p.group); err != nil {
			making.End(placement.Abandoned)
			return placement.Making{}, err
		}
	}
	return making, nil
}

// newTask makes the pause task, ending its making. A shared shim that
// refuses it is retired: no pod joins it again (placement.Groups.MakeTask). Any
// other failure is the pod's own, Start's error, and leaves the group as
// it was.
func (c *Controller) newTask(ctx context.Context, sb *store.Sandbox, container containerd.Container, group string, making placement.Making, opts []containerd.NewTaskOpts) (containerd.Task, error) {
	if group != "" {
		if err := failpoint.Inject(sb, failpoint.SharedShimRefuses); err != nil {
			making.End(placement.Refused)
			return nil, fmt.Errorf("create pause task in shim group %s: %w: %w", group, errSharedShimRefused, err)
		}
	}
	failpoint.Hold(sb, failpoint.HoldTaskMake)
	var announced func()
	if group != "" && !making.ShimUp {
		announced = c.announceShim(ctx, group, making.Awaited)
	}
	task, err := container.NewTask(ctx, cio.NullIO, opts...)
	if announced != nil {
		// Before the making ends: a group whose first task failed is not
		// announced after it ended.
		announced()
	}
	switch {
	case err == nil:
		making.End(placement.Made)
		c.reaper.WatchShim(ctx, group, sb.ID)
		return task, nil
	case group == "":
		making.End(placement.Failed)
		return nil, fmt.Errorf("create pause task: %w", err)
	case isShimRefusal(err):
		making.End(placement.Refused)
		return nil, fmt.Errorf("create pause task in shim group %s: %w: %w", group, errSharedShimRefused, err)
	default:
		making.End(placement.Failed)
		return nil, fmt.Errorf("create pause task in shim group %s: %w", group, err)
	}
}

// announceShim tells the pods waiting for shim group's first task that
// the shim its making started answers at its socket, so that they join it
// there while the task is made (placement.Groups.ShimAnswers). It watches
// the socket only once a pod waits (awaited is closed): a pod that starts
// alone, as most do, has no one to tell, and the watch's dials and calls
// to the new shim would cost berth and the shim CPU for nothing. stop ends
// the watch, and returns once it has ended.
func (c *Controller) announceShim(ctx context.Context, group string, awaited <-chan struct{}) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-awaited:
		case <-ctx.Done():
			return
		}
		if err := c.config.Shims.AwaitAnswer(ctx, group); err != nil {
			// Shim sockets berth does not know, or the making ended
			// first: its end is what the waiting pods go on.
			return
		}
		c.groups.ShimAnswers(group)
	}()
	return func() {
		cancel()
		<-done
	}
}

// isShimRefusal reports whether err, from a task's creation in a shared
// shim, says the shim did not take it because it is exiting or gone: its
// connection closed or reset under the call, or nothing answers at its
// socket any more (containerd could not load the sandbox's shim). Such
// errors cross containerd's API as Unknown with their text, so the text
// is all there is to match. Anything else (a hook, runc, the spec) is the
// task's own failure: the shim serves its other tasks as before.
func isShimRefusal(err error) bool {
	// Not Unavailable: no shim answers with it, and through berthd it
	// says containerd is away, with the task perhaps made in a shim that
	// is fine, whatever its text (gRPC's "connection reset by peer" of
	// containerd's own socket).
	// Nor a call that ran out of time or was given up, whose text may
	// carry the last error of a connection to containerd that was down.
	if errdefs.IsUnavailable(err) || errdefs.IsDeadlineExceeded(err) || errdefs.IsCanceled(err) {
		return false
	}
	if shimproc.IsGone(err) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"failed to load sandbox task", "connection reset by peer", "broken pipe"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// shimRuntime identifies what the shim of a pod of runtime rt, with runtime
// options opts, runs (placement.Scope.Runtime): the runtime type, the shim
// binary runtime_path names, down to the file an upgrade replaces, and the
// options. A shim started before a handler's change, or before its binary
// was replaced, then takes no new pod. A binary containerd finds on its
// PATH (no runtime_path) is named by the runtime type alone.
func shimRuntime(rt Runtime, opts typeurl.Any) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", rt.Type, rt.Path)
	if fi, err := os.Stat(rt.Path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(h, "%d:%d:%d\x00", st.Dev, st.Ino, fi.ModTime().UnixNano())
		}
	}
	if opts != nil {
		fmt.Fprintf(h, "%s\x00", opts.GetTypeUrl())
		h.Write(opts.GetValue())
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
