package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

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

// TestInvalidConfig restarts containerd with an invalid berth setting, a
// zero or a duration that does not parse: containerd starts, and berth
// still recovers, stops and removes its pods, on its defaults, and refuses
// new ones with FailedPrecondition naming the setting.
func TestInvalidConfig(t *testing.T) {
	for _, value := range []string{"0s", "1 minute"} {
		t.Run(value, func(t *testing.T) {
			id := runPod(t, podConfig(t), handlerBerth)
			reconfigure(t, `stop_timeout = '[^']*'`, `stop_timeout = '`+value+`'`)
			if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
				t.Errorf("pod is %v after the restart, want READY", got)
			}
			if s := runPodCode(t, handlerBerth); s.Code() != codes.FailedPrecondition || !strings.Contains(s.Message(), "stop_timeout") {
				t.Errorf("new pod: %v, want FailedPrecondition naming stop_timeout", s.Err())
			}
			removePod(t, id)
		})
	}
}

// TestHandlerConfigs runs berth on runtime handlers configured as
// operators configure them: without an options table, with a snapshotter
// of its own, with the systemd cgroup driver. On each, verbose status
// works, an app container runs, and a pod whose pause died before a
// containerd restart is removed after it, leaving nothing.
func TestHandlerConfigs(t *testing.T) {
	type pod struct {
		handler, id string
	}
	var pods []pod
	for _, tc := range []struct {
		handler     string
		snapshotter string
		systemd     bool
	}{
		{handler: "berth-noopts", snapshotter: "overlayfs"},
		{handler: "berth-native", snapshotter: "native"},
		{handler: "berth-systemd", snapshotter: "overlayfs", systemd: true},
	} {
		// The pods live on past the restart below: no subtests, whose
		// cleanups would remove them before it.
		var opts []podOpt
		if tc.systemd {
			if _, err := os.Stat("/run/systemd/system"); err != nil {
				t.Logf("%s: skipped: this host runs no systemd, which the systemd cgroup driver needs", tc.handler)
				continue
			}
			opts = append(opts, withCgroupParent("berth_it.slice"))
		}
		cfg := podConfig(t, append(opts, withName(tc.handler))...)
		id := runPod(t, cfg, tc.handler)
		info := verboseInfo(t, podStatus(t, id).GetInfo())
		if info["processStatus"] != "running" || info["snapshotter"] != tc.snapshotter {
			t.Errorf("%s: verbose info: process %v, snapshotter %v; want running on %s", tc.handler, info["processStatus"], info["snapshotter"], tc.snapshotter)
		}
		ctr := startNamedContainer(t, tc.handler, id, cfg, "sleep", "3600")
		if out := execSync(t, ctr, "echo", "ok"); out != "ok\n" {
			t.Errorf("%s: exec: %q", tc.handler, out)
		}
		if err := syscall.Kill(podPid(t, id), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, tc.handler+" NOTREADY", func() bool {
			return podStatus(t, id).GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		})
		pods = append(pods, pod{tc.handler, id})
	}
	if err := daemon.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := daemon.start(); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		info := verboseInfo(t, podStatus(t, p.id).GetInfo())
		if info["processStatus"] != "stopped" {
			t.Errorf("%s: verbose info after the restart: process %v, want stopped", p.handler, info["processStatus"])
		}
		// Removed at once: not after a retry that cannot succeed.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Errorf("%s: StopPodSandbox after the restart: %v", p.handler, err)
		}
		if _, err := daemon.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Errorf("%s: RemovePodSandbox after the restart: %v", p.handler, err)
		}
		cancel()
		assertNoLeaks(t, p.id)
	}
}
