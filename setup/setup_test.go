package setup

import (
	"reflect"
	"testing"

	"github.com/berth-dev/berth/controller"
)

// TestUnknownHandlers: each per-handler setting that names a handler CRI
// does not have is reported, a typo in any of the four alike.
func TestUnknownHandlers(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BuiltinPauseHandlers = []string{"berth", "berth-builtn"}
	cfg.WarmShimHandlers = []string{"berth-wram"}
	cfg.CrossNamespaceShimHandlers = []string{"berth", "berth-shraed"}
	cfg.HandlerPodsPerShim = map[string]int{"berth-solo": 1, "berth-slo": 1, "berth": 4}
	cri := controller.CRIConfig{Runtimes: map[string]controller.Runtime{"berth": {}, "berth-solo": {}}}
	want := []unknownHandler{
		{"builtin_pause_handlers", "berth-builtn"},
		{"warm_shim_handlers", "berth-wram"},
		{"cross_namespace_shim_handlers", "berth-shraed"},
		{"handler_pods_per_shim", "berth-slo"},
	}
	if got := unknownHandlers(cfg, cri); !reflect.DeepEqual(got, want) {
		t.Errorf("unknownHandlers = %v, want %v", got, want)
	}
	if got := unknownHandlers(DefaultConfig(), cri); len(got) != 0 {
		t.Errorf("unknownHandlers of the defaults = %v, want none", got)
	}
}
