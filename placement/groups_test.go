package placement

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestShimGroups(t *testing.T) {
	g := NewGroups(func(handler string) int {
		if handler == "solo" {
			return 1
		}
		return 3
	})
	if id := g.Join(Scope{Handler: "solo"}); id != "" {
		t.Errorf("a pod of a handler with one pod per shim joined group %q", id)
	}
	a := []string{g.Join(Scope{Handler: "h"}), g.Join(Scope{Handler: "h"}), g.Join(Scope{Handler: "h"})}
	if a[0] == "" || a[1] != a[0] || a[2] != a[0] {
		t.Fatalf("three pods joined %v, want one group", a)
	}
	b := g.Join(Scope{Handler: "h"})
	if b == a[0] {
		t.Fatalf("a fourth pod joined the full group %s", b)
	}
	if other := g.Join(Scope{Handler: "other"}); other == a[0] || other == b {
		t.Errorf("a pod of another handler joined group %s", other)
	}
	// Room again once a pod's pause exits.
	g.Leave(a[0])
	if id := g.Join(Scope{Handler: "h"}); id != a[0] {
		t.Errorf("joined %s, want the group with room, %s", id, a[0])
	}
	// A group left empty is retired, never joined again.
	if !g.Has(b) {
		t.Errorf("group %s with a pod is not open", b)
	}
	g.Leave(b)
	if g.Has(b) {
		t.Errorf("group %s no pod is in is in use", b)
	}
	if id := g.Join(Scope{Handler: "h"}); id == b {
		t.Errorf("joined the emptied group %s", id)
	}
	// A group whose shim refused a task is retired: joined no more, though
	// pods are still in it.
	mustMake(t, g, a[0], "made")(Made)
	mustMake(t, g, a[0], "refused")(Refused)
	if !g.Has(a[0]) {
		t.Errorf("retired group %s, with pods in it, is not in use", a[0])
	}
	for range 3 {
		if id := g.Join(Scope{Handler: "h"}); id == a[0] {
			t.Fatalf("joined the retired group %s", id)
		}
	}
	for range 3 {
		g.Leave(a[0])
	}
	if g.Has(a[0]) {
		t.Errorf("retired group %s is in use after its three pods left", a[0])
	}
	// A recovered pod counts again in its group.
	g.Rejoin(Scope{Handler: "r"}, "berth-r-1", "sb1")
	g.Rejoin(Scope{Handler: "r"}, "berth-r-1", "sb2")
	g.Rejoin(Scope{Handler: "r"}, "berth-r-1", "sb3")
	if id := g.Join(Scope{Handler: "r"}); id == "berth-r-1" {
		t.Errorf("joined recovered group %s, full with its 3 pods", id)
	}
}

// mustMake begins making sb's task in group id, and returns its end.
func mustMake(t *testing.T, g *Groups, id, sb string) func(Outcome) {
	t.Helper()
	making, err := g.MakeTask(context.Background(), id, sb)
	if err != nil {
		t.Fatalf("makeTask %s: %v", sb, err)
	}
	return making.End
}

// mustDelete deletes sb's task in group id, saying whether it was deleted.
func mustDelete(t *testing.T, g *Groups, id, sb string, deleted bool) {
	t.Helper()
	done, err := g.DeleteTask(context.Background(), id, sb)
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
	g := NewGroups(func(string) int { return 3 })
	id := g.Join(Scope{Handler: "h"})
	mustMake(t, g, id, "a")(Made)
	// b is being made as a's deletion begins; c joined but has not begun.
	g.Join(Scope{Handler: "h"})
	madeB := mustMake(t, g, id, "b")
	g.Join(Scope{Handler: "h"})
	g.Leave(id) // a's pause exits
	done := blocked(t, "deleting the last task while another is being made",
		func() (func(bool), error) { return g.DeleteTask(ctx, id, "a") },
		func() {
			// No task is made in the group from then on: c is made
			// elsewhere, and no pod joins.
			if _, err := g.MakeTask(ctx, id, "c"); !errors.Is(err, ErrShimEnding) {
				t.Errorf("making a task in an ending group: %v, want ErrShimEnding", err)
			}
			if got := g.Join(Scope{Handler: "h"}); got == id {
				t.Error("a pod joined an ending group")
			}
			madeB(Made)
		})
	done(true)
	// b's task, made meanwhile, kept the shim; nothing is being made when
	// it is deleted.
	mustDelete(t, g, id, "b", true)
}

// TestShimGroupDeleteTaskCancelled checks that a deletion that stops
// waiting leaves the task counted, and that one that fails does too.
func TestShimGroupDeleteTaskCancelled(t *testing.T) {
	g := NewGroups(func(string) int { return 3 })
	id := g.Join(Scope{Handler: "h"})
	mustMake(t, g, id, "a")(Made)
	g.Join(Scope{Handler: "h"})
	madeB := mustMake(t, g, id, "b")
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := g.DeleteTask(short, id, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deleteTask with a task being made until the deadline: %v", err)
	}
	madeB(Failed)
	// a is still counted: its deletion is the last, and ends the group.
	mustDelete(t, g, id, "a", false)
	if _, err := g.MakeTask(context.Background(), id, "c"); !errors.Is(err, ErrShimEnding) {
		t.Errorf("making a task in a group whose last deletion failed: %v, want ErrShimEnding", err)
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
	g := NewGroups(func(string) int { return 3 })
	id := g.Join(Scope{Handler: "h"})
	madeA := mustMake(t, g, id, "a")
	g.Join(Scope{Handler: "h"})
	b := blocked(t, "making a second task while the group's first is being made",
		func() (Making, error) { return g.MakeTask(ctx, id, "b") },
		func() { madeA(Made) })
	if !b.ShimUp {
		t.Error("a task made after the group's first does not join its shim")
	}
	// With a task made, tasks are made side by side, all joining the shim.
	g.Join(Scope{Handler: "h"})
	c, err := g.MakeTask(ctx, id, "c")
	if err != nil || !c.ShimUp {
		t.Fatalf("making a task beside another in a group with a task: %+v, %v", c, err)
	}
	b.End(Made)
	c.End(Made)

	// A first making abandoned before the shim was asked lets the next
	// making be the first, in the same group.
	abandoned := g.Join(Scope{Handler: "h"})
	first, err := g.MakeTask(ctx, abandoned, "f")
	if err != nil || first.ShimUp {
		t.Fatalf("the first making of a group: %+v, %v; want a shim not up", first, err)
	}
	g.Join(Scope{Handler: "h"})
	next := blocked(t, "making a task while the group's first is being made",
		func() (Making, error) { return g.MakeTask(ctx, abandoned, "g") },
		func() { first.End(Abandoned) })
	if next.ShimUp {
		t.Error("the making after an abandoned first joins a shim never started")
	}
	first.End(Made) // too late: it ended
	next.End(Made)
	if got := g.Join(Scope{Handler: "h"}); got != abandoned {
		t.Errorf("joined %s, want %s, whose first making was abandoned", got, abandoned)
	}

	other := g.Join(Scope{Handler: "h"})
	failed := mustMake(t, g, other, "d")
	g.Join(Scope{Handler: "h"})
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := g.MakeTask(short, other, "e"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("making a second task until the deadline: %v", err)
	}
	if g.Ending(other) {
		t.Error("a group whose first task is being made is ending")
	}
	failed(Failed)
	if !g.Ending(other) {
		t.Error("a group whose first task failed is not ending")
	}
	if _, err := g.MakeTask(ctx, other, "e"); !errors.Is(err, ErrShimEnding) {
		t.Errorf("making a task in a group whose first failed: %v, want ErrShimEnding", err)
	}
	if got := g.Join(Scope{Handler: "h"}); got == other {
		t.Error("a pod joined a group whose first task failed")
	}
}

// TestShimGroupShimDied: a group whose shim died takes no pod and makes
// no task again, a making waiting for its first task included; its pods
// leave it as their exits are handled.
func TestShimGroupShimDied(t *testing.T) {
	ctx := context.Background()
	g := NewGroups(func(string) int { return 4 })
	scope := Scope{Handler: "h"}
	id := g.Join(scope)
	first := mustMake(t, g, id, "a")
	g.Join(scope)
	waiting := make(chan error, 1)
	go func() {
		_, err := g.MakeTask(ctx, id, "b")
		waiting <- err
	}()
	select {
	case err := <-waiting:
		t.Fatalf("making a second task while the first is made did not wait: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.ShimDied(id)
	select {
	case err := <-waiting:
		if !errors.Is(err, ErrShimEnding) {
			t.Errorf("making waiting in a group whose shim died: %v, want ErrShimEnding", err)
		}
	case <-time.After(time.Second):
		t.Fatal("making waiting in a group whose shim died still waits")
	}
	if _, err := g.MakeTask(ctx, id, "c"); !errors.Is(err, ErrShimEnding) {
		t.Errorf("making a task in a group whose shim died: %v, want ErrShimEnding", err)
	}
	if got := g.Join(scope); got == id {
		t.Error("a pod joined a group whose shim died")
	}
	first(Refused)
	g.Leave(id)
	g.Leave(id)
	if g.Has(id) {
		t.Error("the dead shim's group is in use after its pods left")
	}
}

// TestShimGroupShimAnswers checks that the makings waiting for a group's
// first task go ahead, joining its shim, once that shim answers, with the
// first still being made; that a group whose shim may be exiting is not
// reopened by it; and that a making that fails while no task is made ends
// the group, whichever it is: containerd shuts the shim down after any
// failed create, and it exits if it serves no task yet.
func TestShimGroupShimAnswers(t *testing.T) {
	ctx := context.Background()
	g := NewGroups(func(string) int { return 4 })
	id := g.Join(Scope{Handler: "h"})
	first := mustMake(t, g, id, "a")
	g.Join(Scope{Handler: "h"})
	b := blocked(t, "making a second task while the group's first is being made",
		func() (Making, error) { return g.MakeTask(ctx, id, "b") },
		func() { g.ShimAnswers(id) })
	if !b.ShimUp {
		t.Error("a making that went ahead once the shim answered does not join the shim")
	}
	g.Join(Scope{Handler: "h"})
	c, err := g.MakeTask(ctx, id, "c")
	if err != nil || !c.ShimUp {
		t.Fatalf("making a task in a group whose shim answers: %+v, %v; want it to join the shim", c, err)
	}
	b.End(Made)
	first(Made)
	c.End(Made)
	if got := g.TasksOf(id); len(got) != 3 {
		t.Errorf("tasks of the group: %v, want a, b and c", got)
	}

	// A joiner's failure with no task made ends the group: the shim the
	// first making started may exit under it.
	g = NewGroups(func(string) int { return 4 })
	other := g.Join(Scope{Handler: "h"})
	firstOther := mustMake(t, g, other, "d")
	g.ShimAnswers(other)
	g.Join(Scope{Handler: "h"})
	joiner, err := g.MakeTask(ctx, other, "e")
	if err != nil || !joiner.ShimUp {
		t.Fatalf("making a task in a group whose shim answers: %+v, %v", joiner, err)
	}
	joiner.End(Failed)
	firstOther(Refused)
	g.ShimAnswers(other)
	if _, err := g.MakeTask(ctx, other, "f"); !errors.Is(err, ErrShimEnding) {
		t.Errorf("making a task in a group whose joiner failed before any task was made: %v, want ErrShimEnding", err)
	}
	if got := g.Join(Scope{Handler: "h"}); got == other {
		t.Error("a pod joined a group whose shim may be exiting")
	}
}

// TestShimGroupAwaited checks that a group's first making is told when
// another making waits for it, and only then: a pod that starts alone has
// no one to announce its shim to.
func TestShimGroupAwaited(t *testing.T) {
	ctx := context.Background()
	g := NewGroups(func(string) int { return 4 })
	id := g.Join(Scope{Handler: "h"})
	first, err := g.MakeTask(ctx, id, "a")
	if err != nil || first.ShimUp || first.Awaited == nil {
		t.Fatalf("the first making of a group: %+v, %v; want its shim not up, and Awaited", first, err)
	}
	if isClosed(first.Awaited) {
		t.Fatal("the first making is awaited with no other making")
	}
	g.Join(Scope{Handler: "h"})
	waiting := make(chan Making, 1)
	go func() {
		m, err := g.MakeTask(ctx, id, "b")
		if err != nil {
			t.Errorf("making a second task: %v", err)
		}
		waiting <- m
	}()
	select {
	case <-first.Awaited:
	case <-time.After(time.Second):
		t.Fatal("the first making is not awaited while a second waits for it")
	}
	g.ShimAnswers(id)
	second := <-waiting
	if !second.ShimUp || second.Awaited != nil {
		t.Errorf("a making joining an answering shim: %+v; want its shim up and no Awaited", second)
	}
	second.End(Made)
	first.End(Made)

	// A first making abandoned unawaited leaves nothing awaited for the
	// next first.
	other := NewGroups(func(string) int { return 4 })
	gid := other.Join(Scope{Handler: "h"})
	alone, err := other.MakeTask(ctx, gid, "c")
	if err != nil {
		t.Fatal(err)
	}
	alone.End(Abandoned)
	again, err := other.MakeTask(ctx, gid, "d")
	if err != nil || again.ShimUp {
		t.Fatalf("the making after an abandoned first: %+v, %v; want the first again", again, err)
	}
	if isClosed(again.Awaited) || isClosed(alone.Awaited) {
		t.Error("a first making is awaited with no other making")
	}
	again.End(Made)
}

// isClosed says whether ch is closed, without waiting.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestShimGroupKeeper checks that a group with a shim keeper outlives its
// pods, and is retired once the keeper and its pods are gone; that a
// keeper is made only in a fresh group; and that a recovered keeper
// counts in its group again.
func TestShimGroupKeeper(t *testing.T) {
	g := NewGroups(func(string) int { return 2 })
	id := g.Join(Scope{Handler: "h"})
	if !g.Fresh(id) {
		t.Fatalf("new group %s is not fresh", id)
	}
	if !g.Keep(id, "k") {
		t.Fatal("keep: refused in a group with no keeper")
	}
	if g.Keep(id, "k2") {
		t.Error("keep: a second keeper was put in the group")
	}
	mustMake(t, g, id, "k")(Made)
	if g.Fresh(id) {
		t.Errorf("group %s with a keeper task is fresh", id)
	}
	g.Leave(id)
	if !g.Has(id) || !g.IsOpen(Scope{Handler: "h"}, id) {
		t.Fatalf("group %s with a keeper and no pod is retired", id)
	}
	if got := g.Join(Scope{Handler: "h"}); got != id {
		t.Fatalf("a pod joined %s, want the keeper's group %s", got, id)
	}
	if got := g.Join(Scope{Handler: "h"}); got != id {
		t.Fatalf("a second pod joined %s, want the keeper's group %s: a keeper takes no pod's room", got, id)
	}
	third := g.Join(Scope{Handler: "h"})
	if third == id {
		t.Fatalf("a third pod joined the full group %s", id)
	}
	g.Leave(third)
	// The keeper goes first: the group lives on with its pods.
	mustDelete(t, g, id, "k", true)
	g.Unkeep(id, "other")
	g.Unkeep(id, "k")
	if !g.Has(id) {
		t.Fatalf("group %s with pods is not in use after its keeper went", id)
	}
	g.Leave(id)
	g.Leave(id)
	if g.Has(id) {
		t.Errorf("group %s is in use with no keeper and no pod", id)
	}
	// A keeper whose task was never made leaves no group behind.
	id = g.Join(Scope{Handler: "h"})
	if !g.Keep(id, "k3") {
		t.Fatal("keep: refused")
	}
	g.Leave(id)
	g.Unkeep(id, "k3")
	if g.Has(id) || g.IsOpen(Scope{Handler: "h"}, id) {
		t.Errorf("group %s is kept after its unmade keeper went", id)
	}
	// Recovered: the keeper rejoins its group, with or before its pods.
	g.Rekeep(Scope{Handler: "r"}, "berth-r-1", "k4")
	g.Rejoin(Scope{Handler: "r"}, "berth-r-1", "sb1")
	if got := g.Join(Scope{Handler: "r"}); got != "berth-r-1" {
		t.Errorf("joined %s, want the recovered keeper's group with room", got)
	}
	g.Leave("berth-r-1")
	g.Leave("berth-r-1")
	if !g.Has("berth-r-1") {
		t.Error("recovered keeper's group retired with its pods")
	}
}

// TestShimGroupRetireIdle: a kept group is retired once no pod of its
// scope, in it or in another group, has run for the idle time; a pod of
// the scope, or one that left lately, keeps it.
func TestShimGroupRetireIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := NewGroups(func(string) int { return 2 })
		scope := Scope{Handler: "h"}
		id := g.Join(scope)
		g.Keep(id, "k")
		mustMake(t, g, id, "k")(Made)
		time.Sleep(time.Hour)
		if g.RetireIdle(id, time.Minute) {
			t.Error("retired a group a pod is in")
		}
		// The keeper's group full, a pod of the scope runs in another.
		g.Join(scope)
		other := g.Join(scope)
		g.Leave(id)
		g.Leave(id)
		time.Sleep(time.Hour)
		if g.RetireIdle(id, time.Minute) {
			t.Error("retired the keeper's group while a pod of its scope runs in another")
		}
		g.Leave(other)
		time.Sleep(30 * time.Second)
		if g.RetireIdle(id, time.Minute) {
			t.Error("retired a group idle for 30s of a minute")
		}
		// A pod that comes and goes starts the idle time again.
		g.Leave(g.Join(scope))
		time.Sleep(59 * time.Second)
		if g.RetireIdle(id, time.Minute) {
			t.Error("retired a group a pod left 59s ago")
		}
		time.Sleep(time.Second)
		if !g.RetireIdle(id, time.Minute) {
			t.Fatal("kept a group idle for a minute")
		}
		if g.IsOpen(scope, id) {
			t.Error("an idle group retired is open")
		}
		if got := g.Join(scope); got == id {
			t.Error("a pod joined the retired idle group")
		}
		// A keeper taken up after a restart, with no pod: idle since then.
		ns2 := Scope{Handler: "h", Namespace: "ns2"}
		g.Rekeep(ns2, "berth-r-1", "k2")
		time.Sleep(time.Minute)
		if !g.RetireIdle("berth-r-1", time.Minute) {
			t.Error("kept a recovered keeper's group idle for a minute since the restart")
		}
	})
}

// TestKeepersDropIf: a keeper is dropped only while it is its scope's and
// the condition holds.
func TestKeepersDropIf(t *testing.T) {
	k := NewKeepers[int]()
	scope := Scope{Handler: "h"}
	kp := &Keeper[int]{ID: "k", Scope: scope}
	k.Set(scope, kp)
	if k.DropIf(kp, func() bool { return false }) || len(k.List()) != 1 {
		t.Error("dropped a keeper the condition kept")
	}
	if !k.DropIf(kp, func() bool { return true }) || k.Claimed(scope) {
		t.Error("kept a keeper the condition dropped")
	}
	if k.DropIf(kp, func() bool { t.Error("condition asked of a keeper no longer its scope's"); return true }) {
		t.Error("dropped a keeper twice")
	}
}

func TestKeepersClaim(t *testing.T) {
	k := NewKeepers[struct{}]()
	open := map[string]bool{"g1": true}
	isOpen := func(g string) bool { return open[g] }
	if ok, stale := k.Claim(Scope{Handler: "h"}, isOpen); !ok || stale != nil {
		t.Fatalf("claim of a handler without a keeper = %v, %v", ok, stale)
	}
	if ok, _ := k.Claim(Scope{Handler: "h"}, isOpen); ok {
		t.Fatal("claimed a keeper being made")
	}
	k.Set(Scope{Handler: "h"}, nil)
	if ok, _ := k.Claim(Scope{Handler: "h"}, isOpen); !ok {
		t.Fatal("released claim not claimable")
	}
	kp := &Keeper[struct{}]{ID: "k1", Scope: Scope{Handler: "h"}, Group: "g1"}
	k.Set(Scope{Handler: "h"}, kp)
	if ok, _ := k.Claim(Scope{Handler: "h"}, isOpen); ok {
		t.Fatal("claimed a handler whose keeper's group is open")
	}
	open["g1"] = false
	ok, stale := k.Claim(Scope{Handler: "h"}, isOpen)
	if !ok || stale != kp {
		t.Fatalf("claim with the keeper's group retired = %v, %v, want the stale keeper", ok, stale)
	}
	// A stale keeper dropped after the claim leaves the claim be.
	k.Drop(kp)
	if ok, _ := k.Claim(Scope{Handler: "h"}, isOpen); ok {
		t.Error("a dropped stale keeper released another's claim")
	}
}

// TestKeepersBackoff: a scope whose keeper could not be made is not
// claimed until its backoff passes, which doubles with each failure up to
// its bound; a keeper made ends it.
func TestKeepersBackoff(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	k := newKeepers[struct{}](clk)
	scope := Scope{Handler: "h", Namespace: "a"}
	isOpen := func(string) bool { return true }
	claim := func() bool { ok, _ := k.Claim(scope, isOpen); return ok }
	for _, want := range []time.Duration{firstBackoff, 2 * firstBackoff, 4 * firstBackoff} {
		if !claim() {
			t.Fatal("scope not claimable after its backoff")
		}
		if got := k.Failed(scope); got != want {
			t.Fatalf("backoff %v, want %v", got, want)
		}
		if k.Claimed(scope) {
			t.Error("a failed keeper's claim held")
		}
		clk.Step(want - time.Nanosecond)
		if claim() {
			t.Fatalf("claimed %v into a backoff of %v", want-time.Nanosecond, want)
		}
		other := Scope{Handler: "h", Namespace: "b"}
		if ok, _ := k.Claim(other, isOpen); !ok {
			t.Fatal("another scope backed off")
		}
		k.Set(other, nil)
		clk.Step(time.Nanosecond)
	}
	for range 10 {
		clk.Step(maxBackoff)
		claim()
		if got := k.Failed(scope); got > maxBackoff {
			t.Fatalf("backoff %v, over its bound %v", got, maxBackoff)
		}
	}
	clk.Step(maxBackoff)
	claim()
	k.Set(scope, &Keeper[struct{}]{ID: "k", Scope: scope, Group: "g"})
	k.Drop(k.List()[0])
	if got := k.Failed(scope); got != firstBackoff {
		t.Errorf("backoff after a keeper was made %v, want %v", got, firstBackoff)
	}
	// A backoff long past is forgotten, its scope's as another's: scopes
	// of namespaces that are gone leave nothing.
	gone := Scope{Handler: "h", Namespace: "gone"}
	k.Claim(gone, isOpen)
	k.Failed(gone)
	clk.Step(2*maxBackoff + time.Nanosecond)
	claim()
	if got := k.Failed(scope); got != firstBackoff {
		t.Errorf("backoff after one long past %v, want %v", got, firstBackoff)
	}
	if got := k.backoffs.Get(backoffKey(gone)); got != 0 {
		t.Errorf("a scope gone for %v still backed off %v", 2*maxBackoff, got)
	}
}

// TestBackoffKey: scopes that differ in any field back off apart, however
// their fields split the same text.
func TestBackoffKey(t *testing.T) {
	scopes := []Scope{
		{Handler: "ab", Namespace: "c"},
		{Handler: "a", Namespace: "bc"},
		{Handler: "a", Namespace: "b", Runtime: "c"},
		{Handler: "a", Namespace: "", Runtime: "bc"},
		{Handler: `a"`, Namespace: `"b`},
	}
	keys := map[string]Scope{}
	for _, s := range scopes {
		if o, ok := keys[backoffKey(s)]; ok {
			t.Errorf("scopes %+v and %+v share the key %q", s, o, backoffKey(s))
		}
		keys[backoffKey(s)] = s
	}
}

// TestShimGroupTaskFails checks that a task the group's shim was asked for
// and did not make leaves a group with a task as it was: the shim serves
// that task, and the next pod joins it. Only a refusal retires the group.
func TestShimGroupTaskFails(t *testing.T) {
	g := NewGroups(func(string) int { return 4 })
	id := g.Join(Scope{Handler: "h"})
	mustMake(t, g, id, "a")(Made)
	g.Join(Scope{Handler: "h"})
	mustMake(t, g, id, "failing")(Failed)
	if g.Ending(id) {
		t.Error("a group whose shim serves a task is ending after another task failed")
	}
	if got := g.Join(Scope{Handler: "h"}); got != id {
		t.Fatalf("joined %s after a task failed in group %s, want that group", got, id)
	}
	making, err := g.MakeTask(context.Background(), id, "b")
	if err != nil || !making.ShimUp {
		t.Fatalf("making a task after another failed: %+v, %v; want it to join the shim", making, err)
	}
	making.End(Refused)
	if got := g.Join(Scope{Handler: "h"}); got == id {
		t.Errorf("joined group %s after its shim refused a task", id)
	}
}

// TestShimGroupsByScope checks that pods share a group only within their
// scope: a handler's pods of one namespace apart from another's, and a
// scope with no namespace apart from both.
func TestShimGroupsByScope(t *testing.T) {
	g := NewGroups(func(string) int { return 4 })
	a, b, all := Scope{Handler: "h", Namespace: "a"}, Scope{Handler: "h", Namespace: "b"}, Scope{Handler: "h"}
	ga := g.Join(a)
	if got := g.Join(a); got != ga {
		t.Errorf("a second pod of namespace a joined %s, want %s", got, ga)
	}
	gb := g.Join(b)
	if gb == ga {
		t.Errorf("a pod of namespace b joined namespace a's group %s", gb)
	}
	if gall := g.Join(all); gall == ga || gall == gb {
		t.Errorf("a pod of the handler-wide scope joined a namespace's group %s", gall)
	}
	if !g.IsOpen(a, ga) || g.IsOpen(b, ga) {
		t.Errorf("group %s open to a %v, to b %v; want a's only", ga, g.IsOpen(a, ga), g.IsOpen(b, ga))
	}
}

// TestShimGroupScopesForgotten: a namespace whose pods are all gone
// leaves nothing behind, whether its group ended with its last task or
// was left by its last pod.
func TestShimGroupScopesForgotten(t *testing.T) {
	g := NewGroups(func(string) int { return 4 })
	ctx := context.Background()
	for i := range 100 {
		scope := Scope{Handler: "h", Namespace: fmt.Sprint("ns-", i)}
		id := g.Join(scope)
		if i%2 == 0 {
			making, err := g.MakeTask(ctx, id, "sb")
			if err != nil {
				t.Fatal(err)
			}
			making.End(Made)
			done, err := g.DeleteTask(ctx, id, "sb")
			if err != nil {
				t.Fatal(err)
			}
			done(true)
		}
		g.Leave(id)
	}
	if len(g.open) != 0 || len(g.inUse) != 0 || len(g.scopePods) != 0 {
		t.Errorf("%d scopes open, %d groups and %d scopes with pods left, want none", len(g.open), len(g.inUse), len(g.scopePods))
	}
}

// TestShimGroupWaitsObserved checks that a making that waits for the
// group's first task, and a last deletion that waits for a making, are
// told to waited with their step.
func TestShimGroupWaitsObserved(t *testing.T) {
	var mu sync.Mutex
	waits := map[string]int{}
	g := NewGroups(func(string) int { return 4 }, WithWaitObserver(func(step string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits[step]++
	}))
	id := g.Join(Scope{Handler: "h"})
	g.Join(Scope{Handler: "h"})
	first := mustMake(t, g, id, "a")
	second := blocked(t, "a second making", func() (Making, error) { return g.MakeTask(context.Background(), id, "b") },
		func() { first(Made) })
	// b's making goes on while a, the group's only task, is deleted.
	done := blocked(t, "the last deletion", func() (func(bool), error) {
		return g.DeleteTask(context.Background(), id, "a")
	}, func() { second.End(Made) })
	done(true)
	mu.Lock()
	defer mu.Unlock()
	if waits["first task"] != 1 || waits["last task"] != 1 {
		t.Errorf("waits %v, want one for the first task and one for the last", waits)
	}
}

// TestShimGroupWaitObservedOnce: two makings wait on a first that is
// abandoned; one goes ahead, the other waits on it: one wait of two
// wake-ups, observed once.
func TestShimGroupWaitObservedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var waits []string
		g := NewGroups(func(string) int { return 4 }, WithWaitObserver(func(step string, d time.Duration) {
			waits = append(waits, step)
		}))
		id := g.Join(Scope{Handler: "h"})
		g.Join(Scope{Handler: "h"})
		g.Join(Scope{Handler: "h"})
		first := mustMake(t, g, id, "c")
		makings := make(chan Making, 2)
		for _, sb := range []string{"d", "e"} {
			go func() {
				m, err := g.MakeTask(context.Background(), id, sb)
				if err != nil {
					t.Error(err)
				}
				makings <- m
			}()
		}
		synctest.Wait()
		first(Abandoned)
		ahead := <-makings
		// The other is waiting again, on the one ahead.
		synctest.Wait()
		ahead.End(Made)
		(<-makings).End(Made)
		if !slices.Equal(waits, []string{"first task", "first task"}) {
			t.Errorf("waits observed %v, want one for each waiting making", waits)
		}
	})
}

// TestShimGroupRecovered checks a group rebuilt after a restart (one that
// may have cut a Start short): the recovered pods' running tasks keep its
// shim up, so a new pod's task joins it at its socket; the shim is watched
// once, and its death reports every task made in it; the last recovered
// task's deletion ends it.
func TestShimGroupRecovered(t *testing.T) {
	ctx := context.Background()
	g := NewGroups(func(string) int { return 4 })
	scope := Scope{Handler: "h", Namespace: "ns"}
	// The pod whose Start was cut short has no running task: it is not
	// rejoined, and its group counts only the others.
	g.Rejoin(scope, "berth-h-1", "sb1")
	g.Rejoin(scope, "berth-h-1", "sb2")
	if got := g.Join(scope); got != "berth-h-1" {
		t.Fatalf("joined %s, want the recovered group with room", got)
	}
	making, err := g.MakeTask(ctx, "berth-h-1", "sb3")
	if err != nil || !making.ShimUp {
		t.Fatalf("making a task in a recovered group: %+v, %v; want it to join the running shim", making, err)
	}
	making.End(Made)
	if !g.Watch("berth-h-1") || g.Watch("berth-h-1") {
		t.Error("a group's shim is to be watched exactly once")
	}
	if g.Unwatch("berth-h-1"); !g.Watch("berth-h-1") || g.Watch("berth-h-1") {
		t.Error("a watch given up is not handed out again, once")
	}
	tasks := g.TasksOf("berth-h-1")
	slices.Sort(tasks)
	if !slices.Equal(tasks, []string{"sb1", "sb2", "sb3"}) {
		t.Errorf("tasks of the recovered group %v, want sb1, sb2 and sb3", tasks)
	}
	for _, sb := range []string{"sb1", "sb2", "sb3"} {
		g.Leave("berth-h-1")
		mustDelete(t, g, "berth-h-1", sb, true)
	}
	if g.Has("berth-h-1") {
		t.Error("the recovered group is in use after its pods left")
	}
	if g.Watch("nosuch") || g.TasksOf("nosuch") != nil {
		t.Error("a group no pod is in is watched, or has tasks")
	}
}

// TestShimGroupRecoveredMixed checks a recovered group whose shim serves
// pods of two scopes, shared under an earlier policy: no new pod joins it,
// of either scope, and its pods keep it until they leave.
func TestShimGroupRecoveredMixed(t *testing.T) {
	g := NewGroups(func(string) int { return 4 })
	a, b := Scope{Handler: "h", Namespace: "a"}, Scope{Handler: "h", Namespace: "b"}
	g.Rejoin(a, "berth-h-1", "sb1")
	g.Rejoin(b, "berth-h-1", "sb2")
	for _, scope := range []Scope{a, b} {
		if got := g.Join(scope); got == "berth-h-1" {
			t.Errorf("a pod of %v joined a recovered group serving two namespaces", scope)
		}
	}
	if !g.Has("berth-h-1") {
		t.Error("the mixed group is not in use with its recovered pods in it")
	}
	// So is one whose keeper, of a scope, serves beside a pod of another.
	g.Rejoin(a, "berth-h-2", "sb3")
	g.Rekeep(b, "berth-h-2", "keeper")
	if got := g.Join(a); got == "berth-h-2" {
		t.Error("a pod joined a recovered group whose keeper serves another namespace")
	}
}
