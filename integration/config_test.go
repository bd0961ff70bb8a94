package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// reconfigure restarts containerd (SIGKILL, as a crash) on its config with
// the first match of pattern replaced by repl, and restores the config
// (another restart) when the test ends.
func reconfigure(t *testing.T, pattern, repl string) {
	t.Helper()
	path := filepath.Join(daemon.dir, "config.toml")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(pattern)
	loc := re.FindIndex(orig)
	if loc == nil {
		t.Fatalf("config has no %q", pattern)
	}
	edited := string(orig[:loc[0]]) + repl + string(orig[loc[1]:])
	restart := func(config []byte) {
		if err := daemon.kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, config, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := daemon.start(); err != nil {
			t.Fatal(err)
		}
	}
	restart([]byte(edited))
	t.Cleanup(func() { restart(orig) })
}

// runPodCode runs a pod that must fail, and returns the gRPC error.
func runPodCode(t *testing.T, handler string) *status.Status {
	t.Helper()
	resp, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: podConfig(t, withName(handler+"-new")), RuntimeHandler: handler})
	if err == nil {
		removePod(t, resp.GetPodSandboxId())
		t.Fatalf("RunPodSandbox(%s) succeeded", handler)
	}
	s, _ := status.FromError(err)
	return s
}

// TestBadBuiltinPauseSetting restarts containerd with the built-in pause's
// binary missing: the built-in pause alone is disabled. Its new pods fail
// with FailedPrecondition; berth's pods on the pause image, old and new,
// run, stop and are removed as before, and so are the built-in pause's.
func TestBadBuiltinPauseSetting(t *testing.T) {
	image := runPod(t, podConfig(t, withName("image")), "berth")
	builtin := runPod(t, podConfig(t, withName("builtin")), handlerBuiltinPause)
	reconfigure(t, `builtin_pause_binary = '[^']*'`, `builtin_pause_binary = '/no/such/berth-pause'`)

	for _, id := range []string{image, builtin} {
		if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod %s is %v after the restart, want READY", id, got)
		}
	}
	if s := runPodCode(t, handlerBuiltinPause); s.Code() != codes.FailedPrecondition || !strings.Contains(s.Message(), "built-in pause") {
		t.Errorf("new built-in pause pod: %v, want FailedPrecondition naming the built-in pause", s.Err())
	}
	removePod(t, runPod(t, podConfig(t, withName("image-new")), "berth"))
	removePod(t, image)
	removePod(t, builtin)
}

// TestInvalidConfig restarts containerd with an invalid berth setting:
// berth still recovers, stops and removes its pods, on its defaults, and
// refuses new ones with FailedPrecondition naming the setting.
func TestInvalidConfig(t *testing.T) {
	id := runPod(t, podConfig(t), handlerBerth)
	reconfigure(t, `stop_timeout = '[^']*'`, `stop_timeout = '0s'`)
	if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("pod is %v after the restart, want READY", got)
	}
	if s := runPodCode(t, handlerBerth); s.Code() != codes.FailedPrecondition || !strings.Contains(s.Message(), "stop_timeout") {
		t.Errorf("new pod: %v, want FailedPrecondition naming stop_timeout", s.Err())
	}
	removePod(t, id)
}
