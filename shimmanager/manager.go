// Package shimmanager is the manager of berth's shim,
// containerd-shim-berth-v2: the runc shim's own, unchanged but for its
// delete command, which does not run runc for a container runc no longer
// has.
//
// containerd runs `<shim> delete` after every task whose shim connection
// closes, which is after every task deletion too, not only after a shim
// died (core/runtime/v2: cleanupAfterDeadShim is the connection's close
// callback). The runc shim's delete runs `runc delete --force` each time,
// but a task the running shim deleted has no runc container left: runc
// only removes the directory it looks for, and it is not there. Two of
// the thirteen runc processes of a pod's lifecycle (pause and app
// container) were that delete.
//
// containerd keeps the cleanup after a clean deletion on purpose
// (containerd#4538, #4804): a shim whose `runc create` failed can leave a
// runc init process holding the cgroup. runc made the container's
// directory before that process, so the runc shim's delete still runs
// then.
package shimmanager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	runcC "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Manager wraps the runc shim's manager.
type Manager struct {
	shim.Shim
}

// New wraps inner, the runc shim's manager.
func New(inner shim.Shim) *Manager {
	return &Manager{Shim: inner}
}

// Stop is the shim's delete command, run in the bundle's work directory
// (the bundle is its sibling named id). While runc has a state directory
// for the container the runc shim's Stop runs, `runc delete --force`
// first. Without one that runc delete would do nothing, so Stop does the
// rest of the runc shim's Stop without it: unmount the rootfs and report
// the exit the shim recorded, or a SIGKILL of the init pid. A container of
// another runtime binary always gets the runc shim's Stop.
func (m *Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	bundle := filepath.Join(filepath.Dir(cwd), id)
	if !runsRunc(bundle) {
		return m.Shim.Stop(ctx, id)
	}
	state, err := runcStateDir(ctx, bundle, id)
	if err != nil {
		return shim.StopStatus{}, err
	}
	if _, err := os.Lstat(state); !errors.Is(err, os.ErrNotExist) {
		return m.Shim.Stop(ctx, id)
	}
	log.G(ctx).WithField("id", id).Debug("no runc container left: skipping runc delete")
	return stopWithoutRunc(ctx, bundle), nil
}

// runsRunc says whether bundle's container runs on runc, whose state
// layout runcStateDir knows: the runc shim runs whatever binary the
// runtime options name (BinaryName), which it records in the bundle, and
// one may keep its state elsewhere (gVisor's runsc does). No record means
// runc, the runc shim's default, or a create that never reached it.
func runsRunc(bundle string) bool {
	binary, err := runc.ReadRuntime(bundle)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false
	}
	return binary == "" || filepath.Base(binary) == "runc"
}

// runcStateDir is where runc keeps the state of container id of bundle:
// <root>/<namespace>/<id>, root being the runtime options' Root or the
// runc shim's default, as the runc shim runs runc.
func runcStateDir(ctx context.Context, bundle, id string) (string, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	opts, err := runc.ReadOptions(bundle)
	if err != nil {
		return "", fmt.Errorf("read runtime options of %s: %w", bundle, err)
	}
	root := process.RuncRoot
	if opts != nil && opts.Root != "" {
		root = opts.Root
	}
	return filepath.Join(root, ns, id), nil
}

// stopWithoutRunc is the runc shim's Stop after its runc delete
// (cmd/containerd-shim-runc-v2/manager.Stop): errors are only logged, as
// there.
func stopWithoutRunc(ctx context.Context, bundle string) shim.StopStatus {
	exitedAt := time.Now()
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("failed to cleanup rootfs mount")
	}
	exit, err := runc.ReadExitStatus(bundle)
	if err == nil {
		return shim.StopStatus{ExitedAt: exit.Timestamp, ExitStatus: exit.Status, Pid: exit.Pid}
	}
	if !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("failed to read recorded exit status")
	}
	pid, err := runcC.ReadPidFile(filepath.Join(bundle, process.InitPidFile))
	if err != nil {
		log.G(ctx).WithError(err).Warn("failed to read init pid file")
		pid = 0
	}
	return shim.StopStatus{ExitedAt: exitedAt, ExitStatus: 128 + int(unix.SIGKILL), Pid: pid}
}
