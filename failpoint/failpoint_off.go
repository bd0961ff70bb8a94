//go:build !berth_failpoint

package failpoint

import "github.com/berth-dev/berth/store"

// Inject fails a sandbox's pass through a point in test builds only (see
// failpoint.go).
func Inject(*store.Sandbox, string) error { return nil }

// InjectTimeout is Inject's DeadlineExceeded form, in test builds only.
func InjectTimeout(*store.Sandbox, string) error { return nil }

// Hold pauses a sandbox's step at a point in test builds only.
func Hold(*store.Sandbox, string) {}

// Clear forgets a removed sandbox's counters in test builds only.
func Clear(string) {}
