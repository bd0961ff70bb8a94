package controller

import (
	"context"
	"runtime"
	"testing"
	"weak"
)

// callValueKey keys callValue in a context.
type callValueKey struct{}

// callValue stands for what a CRI call's context carries (its gRPC
// metadata, peer and logger fields), which work that outlives the call
// must not hold.
type callValue struct{ _ [4 << 10]byte }

// collected reports whether p's value is garbage once the collector has
// run a few times.
func collected[T any](p weak.Pointer[T]) bool {
	for range 5 {
		runtime.GC()
		if p.Value() == nil {
			return true
		}
	}
	return false
}

// TestNothingHeldOfThePod checks what berth keeps of a pod in memory: the
// RunPodSandbox call's contexts (Create's and Start's) are released when
// the calls return, and the sandbox, with its pod config and spec, when
// Shutdown returns. Before, a 2-minute timer armed by Create held the
// sandbox and Create's context after the pod was gone, and the pause
// task's exit watch held Start's context for the pod's whole life.
func TestNothingHeldOfThePod(t *testing.T) {
	client := newFakeClient()
	c := testController(t, client)

	createValue, startValue := new(callValue), new(callValue)
	createHeld, startHeld := weak.Make(createValue), weak.Make(startValue)
	createCtx := context.WithValue(testContext(), callValueKey{}, createValue)
	if err := createWith(t, c, client, createCtx, "sb1", testPodConfig("sb1")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := c.Start(context.WithValue(testContext(), callValueKey{}, startValue), "sb1"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	createValue, startValue, createCtx = nil, nil, nil
	sb, err := c.store.Get("sb1")
	if err != nil {
		t.Fatal(err)
	}
	sbHeld := weak.Make(sb)
	sb = nil

	if !collected(createHeld) {
		t.Error("Create's context is held after Create returned")
	}
	if !collected(startHeld) {
		t.Error("Start's context is held while the pod runs")
	}
	if err := c.Stop(testContext(), "sb1"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Shutdown(testContext(), "sb1"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !collected(sbHeld) {
		t.Error("the sandbox is held after Shutdown returned")
	}
}
