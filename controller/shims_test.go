package controller

import "testing"

func TestShimGroups(t *testing.T) {
	g := newShimGroups(func(handler string) int {
		if handler == "solo" {
			return 1
		}
		return 3
	})
	if id := g.join("solo"); id != "" {
		t.Errorf("a pod of a handler with one pod per shim joined group %q", id)
	}
	a := []string{g.join("h"), g.join("h"), g.join("h")}
	if a[0] == "" || a[1] != a[0] || a[2] != a[0] {
		t.Fatalf("three pods joined %v, want one group", a)
	}
	b := g.join("h")
	if b == a[0] {
		t.Fatalf("a fourth pod joined the full group %s", b)
	}
	if other := g.join("other"); other == a[0] || other == b {
		t.Errorf("a pod of another handler joined group %s", other)
	}
	// Room again once a pod's pause exits.
	g.leave(a[0])
	if id := g.join("h"); id != a[0] {
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
	if id := g.join("h"); id == b {
		t.Errorf("joined the emptied group %s", id)
	}
	// A retired group is joined no more, though pods are still in it.
	g.retire(a[0])
	if !g.has(a[0]) {
		t.Errorf("retired group %s, with pods in it, is not in use", a[0])
	}
	for range 3 {
		if id := g.join("h"); id == a[0] {
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
	g.rejoin("r", "berth-r-1")
	g.rejoin("r", "berth-r-1")
	g.rejoin("r", "berth-r-1")
	if id := g.join("r"); id == "berth-r-1" {
		t.Errorf("joined recovered group %s, full with its 3 pods", id)
	}
}
