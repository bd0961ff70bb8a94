package setup

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// LockRoot takes berth's root directory for the caller alone, a berthd or
// containerd with berth built in, until unlock or its exit: two berths
// managing one root would delete each other's sandboxes (a node moving
// between the two, or a berthd started beside berth's containerd build).
// The lock is a raw descriptor, not an os.File, whose finalizer would let
// it go once the caller drops unlock; close-on-exec, so that no shim holds
// it after berth's exit.
func LockRoot(root string) (unlock func(), err error) {
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	// The name predates the in-process lock: a berthd of before holds the
	// same file.
	path := filepath.Join(root, "berthd.lock")
	fd, err := unix.Open(path, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("berth's root %s is held by another berth, a berthd or containerd with berth built in (lock %s): %w: %w", root, path, errdefs.ErrFailedPrecondition, err)
	}
	return func() { unix.Close(fd) }, nil
}
