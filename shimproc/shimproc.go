// Package shimproc is a runc shim process as berth reaches it, apart from
// containerd: where it listens, its task API there, and its process. The
// controller places a pod in a shared shim at the shim's address, watches a
// shared shim's process, and ends a shim containerd lost track of or that a
// crash left serving nothing; each goes through this package, which
// decides nothing of when.
//
// The runc shim listens on a socket derived from containerd's address, the
// namespace and the shim's group (a shared shim's group, or the sandbox ID
// of a pod with a shim of its own), so berth finds it there even when
// containerd has forgotten it.
package shimproc

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// TaskAPIVersion is the runc shim's task API version (task/v3), which
// containerd needs with a shim's address.
const TaskAPIVersion = 3

// Sockets is where runc shims listen: a socket under Dir named after
// containerd's address, the namespace and the shim's group. The zero
// ContainerdAddress means berth does not know where shims listen: no shim
// is dialled, and containerd's shim start command finds a shim's address.
type Sockets struct {
	// ContainerdAddress is containerd's gRPC address.
	ContainerdAddress string
	// Dir is the shim manager's socket_dir.
	Dir string
	// Bundles is where containerd keeps task bundles, one directory per
	// task under its namespace (<state>/io.containerd.runtime.v2.task).
	Bundles string
	// Namespace is the containerd namespace of the shims' tasks: it names
	// their sockets and holds their bundles.
	Namespace string
}

// address is the address of a socket the runc shim of group listens on:
// its plain one, which serves the task API, or with debug its debug one,
// which the shim has with debug logging.
func (s Sockets) address(ctx context.Context, group string, debug bool) (string, error) {
	addr, err := shim.CreateSocketAddress(namespaces.WithNamespace(ctx, s.Namespace), s.Dir, s.ContainerdAddress, group, debug)
	if err != nil {
		return "", fmt.Errorf("socket address of shim group %s: %w", group, err)
	}
	return addr, nil
}

// TaskAddress is the task API address of the runc shim of group, as
// containerd takes it for a new task (with TaskAPIVersion): "" when berth
// does not know where shims listen, and the shim's start command must find
// it.
func (s Sockets) TaskAddress(ctx context.Context, group string) (string, error) {
	if s.ContainerdAddress == "" {
		return "", nil
	}
	addr, err := s.address(ctx, group, false)
	if err != nil {
		return "", err
	}
	return "ttrpc+" + addr, nil
}

// Dial connects to the shim of group. A nil Shim, with no error, means no
// shim listens there, or that berth does not know where shims listen.
// Close the Shim when done.
func (s Sockets) Dial(ctx context.Context, group string) (*Shim, error) {
	if s.ContainerdAddress == "" {
		return nil, nil
	}
	addr, err := s.address(ctx, group, false)
	if err != nil {
		return nil, err
	}
	conn, err := shim.AnonDialer(addr, time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil
		}
		return nil, fmt.Errorf("dial shim: %w", err)
	}
	client := ttrpc.NewClient(conn)
	return &Shim{svc: taskapi.NewTTRPCTaskClient(client), client: client, sockets: s, group: group}, nil
}

// RemoveDeadSockets removes the sockets of group's shim, its task API's and
// its debug one, where no shim listens any more. A runc shim removes its
// sockets as it exits, but it finds them by its first task's ID: a shim
// of a group (placement) leaves both, and any shim killed (SIGKILL, the
// OOM killer) leaves its own. Groups are never named again, so nothing
// else would remove them until the node reboots.
func (s Sockets) RemoveDeadSockets(ctx context.Context, group string) error {
	if s.ContainerdAddress == "" {
		return nil
	}
	var errs []error
	for _, debug := range []bool{false, true} {
		addr, err := s.address(ctx, group, debug)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// Only a refused connection says no shim listens: one that times
		// out may be a live shim's full backlog.
		conn, err := shim.AnonDialer(addr, 100*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			continue
		}
		if err := shim.RemoveSocket(addr); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove socket of shim group %s: %w", group, err))
		}
	}
	return errors.Join(errs...)
}

// AwaitAnswer returns once the runc shim of group answers a call at its
// socket, polling for the socket while nothing listens there: a shim whose
// start command is still running. It fails when ctx ends first, and at
// once with sockets berth does not know.
func (s Sockets) AwaitAnswer(ctx context.Context, group string) error {
	if s.ContainerdAddress == "" {
		return fmt.Errorf("shim sockets are not known: %w", errdefs.ErrNotImplemented)
	}
	for wait := time.Millisecond; ; wait = min(2*wait, 8*time.Millisecond) {
		shim, err := s.Dial(ctx, group)
		if err != nil {
			return err
		}
		if shim != nil {
			err = shim.answer(ctx)
			shim.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// answer asks the shim about a task no shim has: any answer from its task
// API, NotFound included, says it serves. The start command binds the
// socket before the shim serves it, so the call waits until it does.
func (s *Shim) answer(ctx context.Context) error {
	_, err := s.svc.State(ctx, &taskapi.StateRequest{ID: ""})
	if err == nil || errdefs.IsNotFound(errgrpc.ToNative(err)) {
		return nil
	}
	return err
}

// Shim is a connection to a runc shim's task API.
type Shim struct {
	svc taskapi.TTRPCTaskService
	// client is the connection svc goes through.
	client *ttrpc.Client
	// sockets is where the shim was dialled, for its tasks' bundles, and
	// group the shim's group there.
	sockets Sockets
	group   string
}

// Close closes the connection; the shim runs on.
func (s *Shim) Close() error {
	if s.client == nil {
		return nil
	}
	return s.client.Close()
}

// Serving returns those of ids, container IDs, whose task the shim serves.
// An error that IsExiting says the shim exited under the calls.
func (s *Shim) Serving(ctx context.Context, ids []string) ([]string, error) {
	var tasks []string
	for _, id := range ids {
		_, err := s.svc.State(ctx, &taskapi.StateRequest{ID: id})
		switch {
		case err == nil:
			tasks = append(tasks, id)
		case IsExiting(err):
			// Not through errgrpc, which would lose ttrpc's error.
			return nil, fmt.Errorf("state of task %s in shim: %w", id, err)
		case !errdefs.IsNotFound(errgrpc.ToNative(err)):
			return nil, fmt.Errorf("state of task %s in shim: %w", id, errgrpc.ToNative(err))
		}
	}
	return tasks, nil
}

// DeleteTask deletes the task of container id in the shim; a task the shim
// does not have is deleted already. The caller has just had runc kill its
// process, and the shim deletes only a task whose exit it has reaped: the
// delete is tried again for up to two seconds. The shim's runc logs to the
// task's bundle, which containerd deleted when it lost the task; without
// it the shim could never delete the task, nor exit. An empty bundle
// stands in for it meanwhile, and goes with what runc logged there
// (log.json); a bundle that is there is left as it is.
func (s *Shim) DeleteTask(ctx context.Context, id string) error {
	if s.sockets.Bundles != "" {
		bundle := filepath.Join(s.sockets.Bundles, s.sockets.Namespace, id)
		if err := os.Mkdir(bundle, 0o700); err == nil {
			defer func() {
				if err := os.RemoveAll(bundle); err != nil {
					log.G(ctx).WithError(err).WithField("path", bundle).Warn("remove stand-in bundle")
				}
			}()
		} else if !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("stand-in bundle: %w", err)
		}
	}
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := s.svc.Delete(ctx, &taskapi.DeleteRequest{ID: id})
		if err = errgrpc.ToNative(err); errdefs.IsNotFound(err) {
			err = nil
		}
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

// RemoveHalfDeletedBundles removes the task bundles containerd was
// deleting when it died. containerd deletes a bundle by unmounting and
// removing its rootfs, renaming it to .<id>, then removing that; one
// killed in between leaves the hidden directory for good, as it skips
// hidden directories when it loads tasks. A containerd deleting one at the
// same time removes it alike; a directory with a rootfs, which containerd
// never renames, is left alone.
func (s Sockets) RemoveHalfDeletedBundles(ctx context.Context) {
	if s.Bundles == "" {
		return
	}
	dir := filepath.Join(s.Bundles, s.Namespace)
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.G(ctx).WithError(err).Warn("list task bundles")
		}
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		logger := log.G(ctx).WithField("path", path)
		if _, err := os.Lstat(filepath.Join(path, "rootfs")); !errors.Is(err, fs.ErrNotExist) {
			logger.WithError(err).Warn("hidden task bundle with a rootfs; leaving it")
			continue
		}
		if err := os.RemoveAll(path); err != nil {
			logger.WithError(err).Warn("remove half-deleted task bundle")
			continue
		}
		logger.Info("removed a task bundle containerd was deleting when it died")
	}
}

// IsExiting reports whether err is a shim's connection closing under a
// call: the shim is exiting.
func IsExiting(err error) bool {
	return errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// RuntimePrefix starts the runtime types of the runc shim.
const RuntimePrefix = "io.containerd.runc."

// IsRunc says whether runtimeType is the runc shim's.
func IsRunc(runtimeType string) bool { return strings.HasPrefix(runtimeType, RuntimePrefix) }

// IsGone reports whether err, from containerd's task API, says the shim's
// connection is closed: the shim died. ttrpc's error crosses containerd's
// API as an Unknown status with its text, so the text is all there is to
// match.
func IsGone(err error) bool {
	return errdefs.IsUnknown(err) && strings.HasSuffix(err.Error(), ttrpc.ErrClosed.Error())
}
