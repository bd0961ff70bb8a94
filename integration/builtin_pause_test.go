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
	status := procStatus(t, pid)
	if uid, gid := status["Uid"], status["Gid"]; uid[0] != "65535" || gid[0] != "65535" {
		t.Errorf("pause process uid %s gid %s, want 65535", uid, gid)
	}
	if capEff := status["CapEff"][0]; strings.Trim(capEff, "0") != "" {
		t.Errorf("pause process has capabilities: %s", capEff)
	}
	if nnp := status["NoNewPrivs"][0]; nnp != "1" {
		t.Errorf("pause process may gain privileges: NoNewPrivs %s", nnp)
	}
	if sec := status["Seccomp"][0]; sec != "2" {
		t.Errorf("pause process is not under a seccomp filter: Seccomp %s", sec)
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

// TestBuiltinPauseRunAsUser runs a pod that names its user and not its
// group, as many do: with no user database in the built-in pause's rootfs,
// the pause runs with group 0, as a user the pause image's /etc/passwd
// does not name does.
func TestBuiltinPauseRunAsUser(t *testing.T) {
	cfg := podConfig(t, func(c *runtimeapi.PodSandboxConfig) {
		c.Linux.SecurityContext.RunAsUser = &runtimeapi.Int64Value{Value: 1000}
	})
	pod := runPod(t, cfg, handlerBuiltinPause)
	status := procStatus(t, strconv.Itoa(podPid(t, pod)))
	if uid, gid := status["Uid"], status["Gid"]; uid[0] != "1000" || gid[0] != "0" {
		t.Errorf("pause process uid %s gid %s, want 1000 and 0", uid, gid)
	}
}

// procStatus is /proc/PID/status, each field's values by its name. Every
// field the tests read is there on any kernel they run on.
func procStatus(t *testing.T, pid string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if name, values, ok := strings.Cut(line, ":"); ok {
			fields[name] = append(strings.Fields(values), "")
		}
	}
	return fields
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
