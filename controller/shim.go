package controller

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
)

// shutdownLostShim asks a shim containerd lost track of to delete the pause
// task and exit. containerd can lose a live shim when it dies while the shim
// starts: after the restart it finds the shim's bundle incomplete, deletes
// the bundle and forgets the shim, which then runs forever. The runc shim
// listens on a socket derived from containerd's address and the sandbox ID,
// so berth can still reach it there. A shim that is not there is fine.
func (c *Controller) shutdownLostShim(ctx context.Context, id string) error {
	if c.config.ContainerdAddress == "" {
		return nil
	}
	// The task API is on the shim's plain socket; with debug logging it
	// also has a debug one, which does not serve it.
	addr, err := shim.SocketAddress(ctx, c.config.ContainerdAddress, id, false)
	if err != nil {
		return err
	}
	conn, err := shim.AnonDialer(addr, time.Second)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return fmt.Errorf("dial lost shim: %w", err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	svc := taskapi.NewTTRPCTaskClient(client)
	info, err := svc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil {
		return fmt.Errorf("connect to lost shim: %w", err)
	}
	// Delete first: the runc shim only exits once it serves no task.
	if _, err := svc.Delete(ctx, &taskapi.DeleteRequest{ID: id}); err != nil {
		log.G(ctx).WithError(err).Debug("delete pause task in lost shim")
	}
	if _, err := svc.Shutdown(ctx, &taskapi.ShutdownRequest{ID: id, Now: true}); err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		return fmt.Errorf("shut down lost shim: %w", err)
	}
	// A shim whose bundle containerd deleted cannot delete its task, and
	// so will not exit by itself. Whatever else it serves is the dead
	// pod's and lost as well.
	pid := int(info.GetShimPid())
	for deadline := time.Now().Add(time.Second); pid > 0 && syscall.Kill(pid, 0) == nil; {
		if time.Now().After(deadline) {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill lost shim %d: %w", pid, err)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	log.G(ctx).WithField("pid", pid).Info("ended a shim containerd had lost")
	return nil
}
