package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const handlerBuiltinPause = "berth-builtin"

// TestBuiltinPause runs a pod and a container with berth's built-in pause
// while containerd has no pause image at all: the pause runs from the
// shared read-only rootfs as nobody, no snapshot is made for it, and the
// pod removes without leaks.
func TestBuiltinPause(t *testing.T) {
	ctx := ctxT(t)
	withoutPauseImage(t)

	// Pods that name no seccomp profile get none, as from the built-in
	// controller; kubelet names one.
	cfg := podConfig(t, withHostname("builtin"), func(c *runtimeapi.PodSandboxConfig) {
		c.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	})
	pod := runPod(t, cfg, handlerBuiltinPause)
	ctr := startContainer(t, pod, cfg, "sleep", "3600")
	if got := strings.TrimSpace(execSync(t, ctr, "hostname")); got != "builtin" {
		t.Errorf("hostname %q, want builtin", got)
	}

	if _, err := daemon.client.SnapshotService("overlayfs").Stat(ctx, pod); !errdefs.IsNotFound(err) {
		t.Errorf("snapshot for the built-in pause: %v, want none", err)
	}
	info, err := daemon.client.ContainerService().Get(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	if info.SnapshotKey != "" || info.Image != "" {
		t.Errorf("pause container has snapshot %q and image %q, want neither", info.SnapshotKey, info.Image)
	}

	pid := strconv.Itoa(podPid(t, pod))
	status, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 1 && (f[0] == "Uid:" || f[0] == "Gid:") && f[1] != "65535" {
			t.Errorf("pause process %s, want 65535", line)
		}
		if f := strings.Fields(line); len(f) > 1 && f[0] == "CapEff:" && strings.Trim(f[1], "0") != "" {
			t.Errorf("pause process has capabilities: %s", line)
		}
		if f := strings.Fields(line); len(f) > 1 && f[0] == "NoNewPrivs:" && f[1] != "1" {
			t.Errorf("pause process may gain privileges: %s", line)
		}
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Seccomp:" && f[1] != "2" {
			t.Errorf("pause process is not under a seccomp filter: %s", line)
		}
	}
	mounts, err := os.ReadFile(filepath.Join("/proc", pid, "mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == "/" && !strings.HasPrefix(f[5], "ro") {
			t.Errorf("pause rootfs is writable: %s", line)
		}
	}
}

// TestBuiltinPauseUserNamespace runs a pod with a user namespace of its own
// on the built-in pause, as critest's NamespaceMode_POD test does: the
// pause runs as the pod's nobody, mapped into the pod's host ID range, and
// the pod's container shares its user namespace.
func TestBuiltinPauseUserNamespace(t *testing.T) {
	mapping := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: 1 << 20, Length: 65536}}
	cfg := podConfig(t, func(c *runtimeapi.PodSandboxConfig) {
		c.Linux.SecurityContext.NamespaceOptions.UsernsOptions = &runtimeapi.UserNamespace{
			Mode: runtimeapi.NamespaceMode_POD, Uids: mapping, Gids: mapping,
		}
	})
	pod := runPod(t, cfg, handlerBuiltinPause)
	pid := podPid(t, pod)
	uidMap, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "uid_map"))
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(uidMap)); len(f) != 3 || f[0] != "0" || f[1] != strconv.Itoa(1<<20) || f[2] != "65536" {
		t.Errorf("pause uid_map %q, want 0 %d 65536", uidMap, 1<<20)
	}
	ctr := startContainerWith(t, pod, cfg, func(c *runtimeapi.ContainerConfig) {
		c.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: cfg.Linux.SecurityContext.NamespaceOptions}
	}, "sleep", "3600")
	if p, c := nsOf(t, pid, "user"), nsOf(t, containerPid(t, ctr), "user"); p != c {
		t.Errorf("container user namespace %s, pause's %s", c, p)
	}
	if got := strings.TrimSpace(execSync(t, ctr, "cat", "/proc/self/uid_map")); !strings.HasPrefix(got, "0") {
		t.Errorf("container uid_map %q", got)
	}
}
