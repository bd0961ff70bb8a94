package placement

import "testing"

func TestPolicy(t *testing.T) {
	p := Policy{
		PodsPerShim:    16,
		PerHandler:     map[string]int{"solo": 1, "eight": 8},
		WarmHandlers:   []string{"runc", "solo", "kata"},
		CrossNamespace: []string{"shared"},
		Groupable:      func(h string) bool { return h != "kata" },
	}
	for _, c := range []struct {
		handler string
		perShim int
		warm    bool
	}{
		{"runc", 16, true},
		{"eight", 8, false},
		// A shim of its own per pod: nothing to keep warm.
		{"solo", 1, false},
		// Not a runc shim: it would ignore the group.
		{"kata", 1, false},
	} {
		if got := p.PerShim(c.handler); got != c.perShim {
			t.Errorf("PerShim(%s) = %d, want %d", c.handler, got, c.perShim)
		}
		if got := p.KeepsWarm(c.handler); got != c.warm {
			t.Errorf("KeepsWarm(%s) = %v, want %v", c.handler, got, c.warm)
		}
	}
	if got := p.Scope("runc", "ns", "r1"); got != (Scope{Handler: "runc", Namespace: "ns", Runtime: "r1"}) {
		t.Errorf("Scope(runc, ns, r1) = %+v, want the namespace's", got)
	}
	if got := p.Scope("shared", "ns", "r1"); got != (Scope{Handler: "shared", Runtime: "r1"}) {
		t.Errorf("Scope(shared, ns, r1) = %+v, want the handler's across namespaces", got)
	}
	if got := (Policy{PodsPerShim: 4}).PerShim("runc"); got != 1 {
		t.Errorf("PerShim with no Groupable = %d, want 1", got)
	}
}
