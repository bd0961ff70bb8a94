package controller

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestShimGroups(t *testing.T) {
	g := newShimGroups(func(handler string) int {
		if handler == "solo" {
			return 1
		}
		return 3
	})
	if id := g.join(shimScope{handler: "solo"}); id != "" {
		t.Errorf("a pod of a handler with one pod per shim joined group %q", id)
	}
	a := []string{g.join(shimScope{handler: "h"}), g.join(shimScope{handler: "h"}), g.join(shimScope{handler: "h"})}
	if a[0] == "" || a[1] != a[0] || a[2] != a[0] {
		t.Fatalf("three pods joined %v, want one group", a)
	}
	b := g.join(shimScope{handler: "h"})
	if b == a[0] {
		t.Fatalf("a fourth pod joined the full group %s", b)
	}
	if other := g.join(shimScope{handler: "other"}); other == a[0] || other == b {
		t.Errorf("a pod of another handler joined group %s", other)
	}
	// Room again once a pod's pause exits.
	g.leave(a[0])
	if id := g.join(shimScope{handler: "h"}); id != a[0] {
		t.Errorf("joined %s, want the group with room, %s", id, a[0])
	}
	// A group left empty is retired, never joined again.
	if !g.has(b) {
		t.Errorf("group %s with a pod is not open", b)
	}
	g.leave(b)
	if g.has(b) {
		t.Errorf("group %s no pod is in is in use", b)
	}
	if id := g.join(shimScope{handler: "h"}); id == b {
		t.Errorf("joined the emptied group %s", id)
	}
	// A group whose shim refused a task is retired: joined no more, though
	// pods are still in it.
	mustMake(t, g, a[0], "made")(makeDone)
	mustMake(t, g, a[0], "refused")(makeRefused)
	if !g.has(a[0]) {
		t.Errorf("retired group %s, with pods in it, is not in use", a[0])
	}
	for range 3 {
		if id := g.join(shimScope{handler: "h"}); id == a[0] {
			t.Fatalf("joined the retired group %s", id)
		}
	}
	for range 3 {
		g.leave(a[0])
	}
	if g.has(a[0]) {
		t.Errorf("retired group %s is in use after its three pods left", a[0])
	}
	// A recovered pod counts again in its group.
	g.rejoin(shimScope{handler: "r"}, "berth-r-1", "sb1")
	g.rejoin(shimScope{handler: "r"}, "berth-r-1", "sb2")
	g.rejoin(shimScope{handler: "r"}, "berth-r-1", "sb3")
	if id := g.join(shimScope{handler: "r"}); id == "berth-r-1" {
		t.Errorf("joined recovered group %s, full with its 3 pods", id)
	}
}

// mustMake begins making sb's task in group id, and returns its end.
func mustMake(t *testing.T, g *shimGroups, id, sb string) func(makeOutcome) {
	t.Helper()
	making, err := g.makeTask(context.Background(), id, sb)
	if err != nil {
		t.Fatalf("makeTask %s: %v", sb, err)
	}
	return making.end
}

// mustDelete deletes sb's task in group id, saying whether it was deleted.
func mustDelete(t *testing.T, g *shimGroups, id, sb string, deleted bool) {
	t.Helper()
	done, err := g.deleteTask(context.Background(), id, sb)
	if err != nil {
		t.Fatalf("deleteTask %s: %v", sb, err)
	}
	done(deleted)
}

// blocked runs call, which must block until unblock runs: it checks that
// call has not returned 50 ms on, runs unblock, and returns what call
// returned.
func blocked[T any](t *testing.T, what string, call func() (T, error), unblock func()) T {
	t.Helper()
	returned := make(chan T, 1)
	go func() {
		done, err := call()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
		returned <- done
	}()
	select {
	case <-returned:
		t.Fatalf("%s did not wait", what)
	case <-time.After(50 * time.Millisecond):
	}
	unblock()
	select {
	case done := <-returned:
		return done
	case <-time.After(time.Second):
		t.Fatalf("%s still waits", what)
		var zero T
		return zero
	}
}

// TestShimGroupLastTask checks that a group's last pause task is deleted
// only once no task is being made in the group, and that none is made in
// it after that: the deletion ends the group's shim.
func TestShimGroupLastTask(t *testing.T) {
	ctx := context.Background()
	g := newShimGroups(func(string) int { return 3 })
	id := g.join(shimScope{handler: "h"})
	mustMake(t, g, id, "a")(makeDone)
	// b is being made as a's deletion begins; c joined but has not begun.
	g.join(shimScope{handler: "h"})
	madeB := mustMake(t, g, id, "b")
	g.join(shimScope{handler: "h"})
	g.leave(id) // a's pause exits
	done := blocked(t, "deleting the last task while another is being made",
		func() (func(bool), error) { return g.deleteTask(ctx, id, "a") },
		func() {
			// No task is made in the group from then on: c is made
			// elsewhere, and no pod joins.
			if _, err := g.makeTask(ctx, id, "c"); !errors.Is(err, errShimEnding) {
				t.Errorf("making a task in an ending group: %v, want errShimEnding", err)
			}
			if got := g.join(shimScope{handler: "h"}); got == id {
				t.Error("a pod joined an ending group")
			}
			madeB(makeDone)
		})
	done(true)
	// b's task, made meanwhile, kept the shim; nothing is being made when
	// it is deleted.
	mustDelete(t, g, id, "b", true)
}

// TestShimGroupDeleteTaskCancelled checks that a deletion that stops
// waiting leaves the task counted, and that one that fails does too.
func TestShimGroupDeleteTaskCancelled(t *testing.T) {
	g := newShimGroups(func(string) int { return 3 })
	id := g.join(shimScope{handler: "h"})
	mustMake(t, g, id, "a")(makeDone)
	g.join(shimScope{handler: "h"})
	madeB := mustMake(t, g, id, "b")
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := g.deleteTask(short, id, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deleteTask with a task being made until the deadline: %v", err)
	}
	madeB(makeFailed)
	// a is still counted: its deletion is the last, and ends the group.
	mustDelete(t, g, id, "a", false)
	if _, err := g.makeTask(context.Background(), id, "c"); !errors.Is(err, errShimEnding) {
		t.Errorf("making a task in a group whose last deletion failed: %v, want errShimEnding", err)
	}
	mustDelete(t, g, id, "a", true)
	// A task never counted in the group (recovery found it exited), or of
	// a pod with a shim of its own, is deleted at once.
	mustDelete(t, g, id, "uncounted", true)
	mustDelete(t, g, "", "uncounted", true)
}

// TestShimGroupFirstTask checks that until a group's first task is made,
// one task at a time is made in it, and that a group whose first task
// fails ends: containerd shuts its shim down.
func TestShimGroupFirstTask(t *testing.T) {
	ctx := context.Background()
	g := newShimGroups(func(string) int { return 3 })
	id := g.join(shimScope{handler: "h"})
	madeA := mustMake(t, g, id, "a")
	g.join(shimScope{handler: "h"})
	b := blocked(t, "making a second task while the group's first is being made",
		func() (taskMaking, error) { return g.makeTask(ctx, id, "b") },
		func() { madeA(makeDone) })
	if !b.shimUp {
		t.Error("a task made after the group's first does not join its shim")
	}
	// With a task made, tasks are made side by side, all joining the shim.
	g.join(shimScope{handler: "h"})
	c, err := g.makeTask(ctx, id, "c")
	if err != nil || !c.shimUp {
		t.Fatalf("making a task beside another in a group with a task: %+v, %v", c, err)
	}
	b.end(makeDone)
	c.end(makeDone)

	// A first making abandoned before the shim was asked lets the next
	// making be the first, in the same group.
	abandoned := g.join(shimScope{handler: "h"})
	first, err := g.makeTask(ctx, abandoned, "f")
	if err != nil || first.shimUp {
		t.Fatalf("the first making of a group: %+v, %v; want a shim not up", first, err)
	}
	g.join(shimScope{handler: "h"})
	next := blocked(t, "making a task while the group's first is being made",
		func() (taskMaking, error) { return g.makeTask(ctx, abandoned, "g") },
		func() { first.end(makeAbandoned) })
	if next.shimUp {
		t.Error("the making after an abandoned first joins a shim never started")
	}
	first.end(makeDone) // too late: it ended
	next.end(makeDone)
	if got := g.join(shimScope{handler: "h"}); got != abandoned {
		t.Errorf("joined %s, want %s, whose first making was abandoned", got, abandoned)
	}

	other := g.join(shimScope{handler: "h"})
	failed := mustMake(t, g, other, "d")
	g.join(shimScope{handler: "h"})
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := g.makeTask(short, other, "e"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("making a second task until the deadline: %v", err)
	}
	failed(makeFailed)
	if _, err := g.makeTask(ctx, other, "e"); !errors.Is(err, errShimEnding) {
		t.Errorf("making a task in a group whose first failed: %v, want errShimEnding", err)
	}
	if got := g.join(shimScope{handler: "h"}); got == other {
		t.Error("a pod joined a group whose first task failed")
	}
}

// TestShimGroupKeeper checks that a group with a shim keeper outlives its
// pods, and is retired once the keeper and its pods are gone; that a
// keeper is made only in a fresh group; and that a recovered keeper
// counts in its group again.
func TestShimGroupKeeper(t *testing.T) {
	g := newShimGroups(func(string) int { return 2 })
	id := g.join(shimScope{handler: "h"})
	if !g.fresh(id) {
		t.Fatalf("new group %s is not fresh", id)
	}
	if !g.keep(id, "k") {
		t.Fatal("keep: refused in a group with no keeper")
	}
	if g.keep(id, "k2") {
		t.Error("keep: a second keeper was put in the group")
	}
	mustMake(t, g, id, "k")(makeDone)
	if g.fresh(id) {
		t.Errorf("group %s with a keeper task is fresh", id)
	}
	g.leave(id)
	if !g.has(id) || !g.isOpen(shimScope{handler: "h"}, id) {
		t.Fatalf("group %s with a keeper and no pod is retired", id)
	}
	if got := g.join(shimScope{handler: "h"}); got != id {
		t.Fatalf("a pod joined %s, want the keeper's group %s", got, id)
	}
	if got := g.join(shimScope{handler: "h"}); got != id {
		t.Fatalf("a second pod joined %s, want the keeper's group %s: a keeper takes no pod's room", got, id)
	}
	third := g.join(shimScope{handler: "h"})
	if third == id {
		t.Fatalf("a third pod joined the full group %s", id)
	}
	g.leave(third)
	// The keeper goes first: the group lives on with its pods.
	mustDelete(t, g, id, "k", true)
	g.unkeep(id, "other")
	g.unkeep(id, "k")
	if !g.has(id) {
		t.Fatalf("group %s with pods is not in use after its keeper went", id)
	}
	g.leave(id)
	g.leave(id)
	if g.has(id) {
		t.Errorf("group %s is in use with no keeper and no pod", id)
	}
	// A keeper whose task was never made leaves no group behind.
	id = g.join(shimScope{handler: "h"})
	if !g.keep(id, "k3") {
		t.Fatal("keep: refused")
	}
	g.leave(id)
	g.unkeep(id, "k3")
	if g.has(id) || g.isOpen(shimScope{handler: "h"}, id) {
		t.Errorf("group %s is kept after its unmade keeper went", id)
	}
	// Recovered: the keeper rejoins its group, with or before its pods.
	g.rekeep(shimScope{handler: "r"}, "berth-r-1", "k4")
	g.rejoin(shimScope{handler: "r"}, "berth-r-1", "sb1")
	if got := g.join(shimScope{handler: "r"}); got != "berth-r-1" {
		t.Errorf("joined %s, want the recovered keeper's group with room", got)
	}
	g.leave("berth-r-1")
	g.leave("berth-r-1")
	if !g.has("berth-r-1") {
		t.Error("recovered keeper's group retired with its pods")
	}
}

func TestKeepersClaim(t *testing.T) {
	k := newKeepers()
	open := map[string]bool{"g1": true}
	isOpen := func(g string) bool { return open[g] }
	if ok, stale := k.claim(shimScope{handler: "h"}, isOpen); !ok || stale != nil {
		t.Fatalf("claim of a handler without a keeper = %v, %v", ok, stale)
	}
	if ok, _ := k.claim(shimScope{handler: "h"}, isOpen); ok {
		t.Fatal("claimed a keeper being made")
	}
	k.set(shimScope{handler: "h"}, nil)
	if ok, _ := k.claim(shimScope{handler: "h"}, isOpen); !ok {
		t.Fatal("released claim not claimable")
	}
	kp := &keeper{id: "k1", scope: shimScope{handler: "h"}, group: "g1"}
	k.set(shimScope{handler: "h"}, kp)
	if ok, _ := k.claim(shimScope{handler: "h"}, isOpen); ok {
		t.Fatal("claimed a handler whose keeper's group is open")
	}
	open["g1"] = false
	ok, stale := k.claim(shimScope{handler: "h"}, isOpen)
	if !ok || stale != kp {
		t.Fatalf("claim with the keeper's group retired = %v, %v, want the stale keeper", ok, stale)
	}
	// A stale keeper dropped after the claim leaves the claim be.
	k.drop(kp)
	if ok, _ := k.claim(shimScope{handler: "h"}, isOpen); ok {
		t.Error("a dropped stale keeper released another's claim")
	}
}

// TestShimGroupTaskFails checks that a task the group's shim was asked for
// and did not make leaves a group with a task as it was: the shim serves
// that task, and the next pod joins it. Only a refusal retires the group.
func TestShimGroupTaskFails(t *testing.T) {
	g := newShimGroups(func(string) int { return 4 })
	id := g.join(shimScope{handler: "h"})
	mustMake(t, g, id, "a")(makeDone)
	g.join(shimScope{handler: "h"})
	mustMake(t, g, id, "failing")(makeFailed)
	if got := g.join(shimScope{handler: "h"}); got != id {
		t.Fatalf("joined %s after a task failed in group %s, want that group", got, id)
	}
	making, err := g.makeTask(context.Background(), id, "b")
	if err != nil || !making.shimUp {
		t.Fatalf("making a task after another failed: %+v, %v; want it to join the shim", making, err)
	}
	making.end(makeRefused)
	if got := g.join(shimScope{handler: "h"}); got == id {
		t.Errorf("joined group %s after its shim refused a task", id)
	}
}

// TestShimGroupsByScope checks that pods share a group only within their
// scope: a handler's pods of one namespace apart from another's, and a
// scope with no namespace apart from both.
func TestShimGroupsByScope(t *testing.T) {
	g := newShimGroups(func(string) int { return 4 })
	a, b, all := shimScope{"h", "a"}, shimScope{"h", "b"}, shimScope{handler: "h"}
	ga := g.join(a)
	if got := g.join(a); got != ga {
		t.Errorf("a second pod of namespace a joined %s, want %s", got, ga)
	}
	gb := g.join(b)
	if gb == ga {
		t.Errorf("a pod of namespace b joined namespace a's group %s", gb)
	}
	if gall := g.join(all); gall == ga || gall == gb {
		t.Errorf("a pod of the handler-wide scope joined a namespace's group %s", gall)
	}
	if !g.isOpen(a, ga) || g.isOpen(b, ga) {
		t.Errorf("group %s open to a %v, to b %v; want a's only", ga, g.isOpen(a, ga), g.isOpen(b, ga))
	}
}

// TestShimGroupWaitsObserved checks that a making that waits for the
// group's first task, and a last deletion that waits for a making, are
// told to waited with their step.
func TestShimGroupWaitsObserved(t *testing.T) {
	g := newShimGroups(func(string) int { return 4 })
	var mu sync.Mutex
	waits := map[string]int{}
	g.waited = func(step string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits[step]++
	}
	id := g.join(shimScope{handler: "h"})
	g.join(shimScope{handler: "h"})
	first := mustMake(t, g, id, "a")
	second := blocked(t, "a second making", func() (taskMaking, error) { return g.makeTask(context.Background(), id, "b") },
		func() { first(makeDone) })
	// b's making goes on while a, the group's only task, is deleted.
	done := blocked(t, "the last deletion", func() (func(bool), error) {
		return g.deleteTask(context.Background(), id, "a")
	}, func() { second.end(makeDone) })
	done(true)
	mu.Lock()
	defer mu.Unlock()
	if waits["first task"] != 1 || waits["last task"] != 1 {
		t.Errorf("waits %v, want one for the first task and one for the last", waits)
	}
}
