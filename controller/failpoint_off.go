//go:build !berth_failpoint

package controller

import "github.com/berth-dev/berth/store"

// failpoint injects faults in test builds only (build tag berth_failpoint,
// see failpoint.go); in every other build it is a no-op the compiler drops.
func failpoint(*store.Sandbox, string) error { return nil }

func hold(*store.Sandbox, string) {}

func clearFailpoints(string) {}
