package setup

import (
	"runtime"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// TestLockRoot checks that a root's lock holds against a second (a lock is
// per open file: one in this process conflicts as another process's
// would) even once its holder dropped unlock and the collector ran, as the
// plugin drops it, and that unlock lets it go.
func TestLockRoot(t *testing.T) {
	root := t.TempDir()
	if _, err := LockRoot(root); err != nil {
		t.Fatal(err)
	}
	// Finalizers run in their own goroutine, after the collection that
	// found the file unreachable: give them the chance.
	for range 10 {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if _, err := LockRoot(root); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("second lock of a held root: %v, want FailedPrecondition", err)
	}

	root = t.TempDir()
	unlock, err := LockRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	again, err := LockRoot(root)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	again()
}
