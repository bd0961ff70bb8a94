package setup

import (
	"reflect"
	"testing"
)

// TestMisnamedHandlers: each per-handler setting that names a handler CRI
// does not have, or one whose pods another sandbox controller runs, is
// reported, a typo in any of the four alike; so is a built-in pause handler
// whose pause image CRI pulls.
func TestMisnamedHandlers(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BuiltinPauseHandlers = []string{"berth", "berth-builtn", "runc", "berth-pull"}
	cfg.WarmShimHandlers = []string{"berth-wram", "berth-pull"}
	cfg.CrossNamespaceShimHandlers = []string{"berth", "berth-shraed"}
	cfg.HandlerPodsPerShim = map[string]int{"berth-solo": 1, "berth-slo": 1, "berth": 4, "runc": 2}
	handlers := map[string]Handler{
		"berth":      {Sandboxer: "berth"},
		"berth-solo": {Sandboxer: "berth", PullsPause: true},
		"berth-pull": {Sandboxer: "berth", PullsPause: true},
		"runc":       {Sandboxer: "podsandbox"},
	}
	want := []misnamedHandler{
		{"builtin_pause_handlers", "berth-builtn", unknownHandler},
		{"builtin_pause_handlers", "runc", otherSandboxer},
		{"builtin_pause_handlers", "berth-pull", pausePulled},
		{"warm_shim_handlers", "berth-wram", unknownHandler},
		{"cross_namespace_shim_handlers", "berth-shraed", unknownHandler},
		{"handler_pods_per_shim", "berth-slo", unknownHandler},
		{"handler_pods_per_shim", "runc", otherSandboxer},
	}
	if got := misnamedHandlers(cfg, "berth", handlers); !reflect.DeepEqual(got, want) {
		t.Errorf("misnamedHandlers = %v, want %v", got, want)
	}
	if got := misnamedHandlers(DefaultConfig(), "berth", handlers); len(got) != 0 {
		t.Errorf("misnamedHandlers of the defaults = %v, want none", got)
	}
	// berthd under another name: no handler runs its pods, and each entry
	// of each setting is reported.
	if got := misnamedHandlers(cfg, "sandboxd", handlers); len(got) != 12 {
		t.Errorf("misnamedHandlers for sandboxer sandboxd = %v, want all 12 entries", got)
	}
}
