package integration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostproc"
)

// TestPodLifecycle runs, inspects, stops and removes a berth pod.
func TestPodLifecycle(t *testing.T) {
	start := time.Now()
	id := runPod(t, podConfig(t), handlerBerth)

	ctx := ctxT(t)
	pause, err := daemon.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatalf("pause container %s: %v", id, err)
	}
	labels, err := pause.Labels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if labels["io.berth.kind"] != "sandbox" || labels["io.cri-containerd.kind"] != "" {
		t.Errorf("pause container labels %v: want berth's own kind label and not CRI's", labels)
	}

	st := podStatus(t, id)
	if got := st.GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("state %v, want READY", got)
	}
	// The leak checks count the runc containers of this containerd only:
	// its pause must be one.
	if ids := runcContainersOfTests(); !slices.Contains(ids, id) {
		t.Errorf("runc containers of the tests %v, want the pause's %s among them", ids, id)
	}
	_, subnet, _ := net.ParseCIDR(*testSubnet)
	if ip := net.ParseIP(st.GetStatus().GetNetwork().GetIp()); ip == nil || !subnet.Contains(ip) {
		t.Errorf("pod IP %q is not on the bridge subnet %s", st.GetStatus().GetNetwork().GetIp(), *testSubnet)
	}
	info := verboseInfo(t, st.GetInfo())
	if info["processStatus"] != "running" || info["runtimeSpec"] == nil {
		t.Errorf("verbose info %v: want running with a runtime spec", info)
	}
	// What crictl inspectp shows of the pod's network, as for the built-in's.
	md, _ := info["sandboxMetadata"].(map[string]any)
	if md, _ := md["Metadata"].(map[string]any); md == nil || md["IP"] != st.GetStatus().GetNetwork().GetIp() || info["cniResult"] == nil {
		t.Errorf("verbose info: sandboxMetadata %v, cniResult %v; want CRI's, with the pod IP", info["sandboxMetadata"], info["cniResult"])
	}

	if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if got := podStatus(t, id).GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("state after stop %v, want NOTREADY", got)
	}
	// Stop returns at the pause's exit; the task and its shim are deleted
	// right after, while CRI tears down the pod network.
	eventually(t, 5*time.Second, "shim gone after stop", func() bool { return len(shimsOf(id)) == 0 })
	// The shim of a group leaves its sockets, which berth removes.
	eventually(t, 5*time.Second, "shim sockets removed", func() bool { return len(hostproc.DeadShimSockets(start)) == 0 })
	// A second stop is harmless.
	if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Errorf("second StopPodSandbox: %v", err)
	}
}

// TestControllerIdempotent calls berth's Stop and Shutdown through
// containerd's sandbox controller API for a sandbox berth does not know,
// and twice for one it removed.
func TestControllerIdempotent(t *testing.T) {
	ctx := ctxT(t)
	ctrl := daemon.client.SandboxController(sandboxerBerth)
	for _, call := range []struct {
		name string
		fn   func() error
	}{
		{"Stop", func() error { return ctrl.Stop(ctx, "no-such-sandbox") }},
		{"Shutdown", func() error { return ctrl.Shutdown(ctx, "no-such-sandbox") }},
	} {
		if err := call.fn(); err != nil {
			t.Errorf("%s of an unknown sandbox: %v", call.name, err)
		}
	}
	if _, err := ctrl.Status(ctx, "no-such-sandbox", false); !errdefs.IsNotFound(err) {
		t.Errorf("Status of an unknown sandbox: %v, want NotFound", err)
	}

	id := runPod(t, podConfig(t), handlerBerth)
	removePod(t, id)
	if err := ctrl.Stop(ctx, id); err != nil {
		t.Errorf("Stop after removal: %v", err)
	}
	if err := ctrl.Shutdown(ctx, id); err != nil {
		t.Errorf("Shutdown after removal: %v", err)
	}
}

// TestContainerJoinsPod checks that an app container shares the pause
// container's net, ipc and uts namespaces and sees the pod's hostname and
// DNS config.
func TestContainerJoinsPod(t *testing.T) {
	dns := &runtimeapi.DNSConfig{
		Servers:  []string{"192.0.2.53", "192.0.2.54"},
		Searches: []string{"berth-it.svc.cluster.local", "svc.cluster.local"},
		Options:  []string{"ndots:5"},
	}
	cfg := podConfig(t, withHostname("berth-pod"), withDNS(dns))
	pod := runPod(t, cfg, handlerBerth)
	ctr := startContainer(t, pod, cfg, "sleep", "3600")

	pausePid, appPid := podPid(t, pod), containerPid(t, ctr)
	for _, ns := range []string{"net", "ipc", "uts"} {
		if p, a := nsOf(t, pausePid, ns), nsOf(t, appPid, ns); p != a {
			t.Errorf("%s namespace: pause %s, container %s", ns, p, a)
		}
	}
	if self := nsOf(t, os.Getpid(), "net"); self == nsOf(t, pausePid, "net") {
		t.Errorf("pod shares the host network namespace")
	}
	if got := strings.TrimSpace(execSync(t, ctr, "hostname")); got != "berth-pod" {
		t.Errorf("hostname %q, want berth-pod", got)
	}
	if got := strings.TrimSpace(execSync(t, ctr, "cat", "/etc/hostname")); got != "berth-pod" {
		t.Errorf("/etc/hostname %q, want berth-pod", got)
	}
	want := "search berth-it.svc.cluster.local svc.cluster.local\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions ndots:5\n"
	if got := execSync(t, ctr, "cat", "/etc/resolv.conf"); got != want {
		t.Errorf("resolv.conf:\n%s\nwant:\n%s", got, want)
	}
	// /dev/shm is the pod's tmpfs, shared with the pause container.
	if got := execSync(t, ctr, "grep", " /dev/shm ", "/proc/self/mounts"); !strings.Contains(got, "tmpfs") {
		t.Errorf("/dev/shm is not the pod's tmpfs: %q", got)
	}
}

// TestHostNetworkPod runs a pod in the host's network namespace.
func TestHostNetworkPod(t *testing.T) {
	id := runPod(t, podConfig(t, withHostNetwork()), handlerBerth)
	st := podStatus(t, id)
	if got := st.GetStatus().GetState(); got != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("state %v, want READY", got)
	}
	if ip := st.GetStatus().GetNetwork().GetIp(); ip != "" {
		t.Errorf("host-network pod got IP %q", ip)
	}
	pid := podPid(t, id)
	for _, ns := range []string{"net", "uts"} {
		if self, pod := nsOf(t, os.Getpid(), ns), nsOf(t, pid, ns); self != pod {
			t.Errorf("%s namespace %s, want the host's %s", ns, pod, self)
		}
	}
	if self, pod := nsOf(t, os.Getpid(), "pid"), nsOf(t, pid, "pid"); self == pod {
		t.Errorf("host-network pod shares the host pid namespace")
	}
}

// TestCgroupParent puts the pod under a cgroup parent.
func TestCgroupParent(t *testing.T) {
	parent := "/berth-it-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() { removeCgroup(t, parent) })
	id := runPod(t, podConfig(t, withCgroupParent(parent)), handlerBerth)
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(podPid(t, id)), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	want := parent + "/" + id
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		// v1 "N:controller:/path" or v2 "0::/path".
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && parts[2] == want {
			found = true
		}
	}
	if !found {
		t.Errorf("pause process cgroups:\n%s\nwant a cgroup %s", b, want)
	}
}

// removeCgroup removes a test's cgroup parent from every hierarchy, v1 and
// v2, once the pods in it are gone.
func removeCgroup(t *testing.T, parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", parent))
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			t.Errorf("remove cgroup %s: %v", d, err)
		}
	}
}

// TestSafeSysctls sets namespaced sysctls on a pod; its containers see them.
func TestSafeSysctls(t *testing.T) {
	cfg := podConfig(t, withSysctls(map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "1024",
		"kernel.shm_rmid_forced":              "1",
	}))
	pod := runPod(t, cfg, handlerBerth)
	ctr := startContainer(t, pod, cfg, "sleep", "3600")
	for path, want := range map[string]string{
		"/proc/sys/net/ipv4/ip_unprivileged_port_start": "1024",
		"/proc/sys/kernel/shm_rmid_forced":              "1",
	} {
		if got := strings.TrimSpace(execSync(t, ctr, "cat", path)); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
}

// TestPauseKilled kills the pause process from outside: the pod is NOTREADY
// within a second.
func TestPauseKilled(t *testing.T) {
	id := runPod(t, podConfig(t), handlerBerth)
	pid := podPid(t, id)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill pause %d: %v", pid, err)
	}
	took := eventually(t, time.Second, "pod NOTREADY after its pause process was killed", func() bool {
		return podStatus(t, id).GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	})
	t.Logf("NOTREADY %s after SIGKILL", took)
}

// TestPreciseErrors runs pod configs that can never run: each is refused
// before anything is made, with the gRPC code of the README's table and a
// message naming the field, and leaves nothing behind. (The built-in
// controller returns Unknown for all of these but the handler.)
func TestPreciseErrors(t *testing.T) {
	sc := func(f func(*runtimeapi.LinuxSandboxSecurityContext)) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) { f(c.Linux.SecurityContext) }
	}
	sysctl := func(name string) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) { c.Linux.Sysctls = map[string]string{name: "1"} }
	}
	mapping := []*runtimeapi.IDMapping{{HostId: 65536, Length: 65536}}
	for _, tc := range []struct {
		name    string
		cfg     func(*runtimeapi.PodSandboxConfig)
		handler string
		code    codes.Code
		msg     string
	}{
		{name: "invalid sysctl name", cfg: sysctl("net.ipv4..ip_forward"), code: codes.InvalidArgument, msg: `linux.sysctls["net.ipv4..ip_forward"]`},
		{name: "sysctl of no pod namespace", cfg: sysctl("kernel.panic"), code: codes.InvalidArgument, msg: `linux.sysctls["kernel.panic"]`},
		{name: "net sysctl with host network", cfg: func(c *runtimeapi.PodSandboxConfig) {
			withHostNetwork()(c)
			sysctl("net.ipv4.ip_forward")(c)
		}, code: codes.InvalidArgument, msg: "host network"},
		{name: "hostname longer than 64 bytes", cfg: withHostname(strings.Repeat("h", 40) + "." + strings.Repeat("h", 40)), code: codes.InvalidArgument, msg: "hostname"},
		{name: "hostname not a name", cfg: withHostname("no_such host"), code: codes.InvalidArgument, msg: "hostname"},
		// Strings that would add a line to a file or name a path
		// elsewhere: resolv.conf, /proc/sys, the pod cgroup, CNI's.
		{name: "DNS server not an IP", cfg: withDNS(&runtimeapi.DNSConfig{Servers: []string{"192.0.2.53\nnameserver 192.0.2.1"}}), code: codes.InvalidArgument, msg: "dns_config.servers[0]"},
		{name: "DNS search with a new line", cfg: withDNS(&runtimeapi.DNSConfig{Searches: []string{"svc.cluster.local\nnameserver 192.0.2.1"}}), code: codes.InvalidArgument, msg: "dns_config.searches[0]"},
		{name: "DNS option with a blank", cfg: withDNS(&runtimeapi.DNSConfig{Options: []string{"ndots:5 rotate"}}), code: codes.InvalidArgument, msg: "dns_config.options[0]"},
		{name: "port mapping host IP not an IP", cfg: func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 18080, HostIp: "0.0.0.0 -j ACCEPT"}}
		}, code: codes.InvalidArgument, msg: "port_mappings[0].host_ip"},
		{name: "relative log directory", cfg: func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "var/log/pods/x" }, code: codes.InvalidArgument, msg: "log_directory"},
		{name: "cgroup parent escaping", cfg: withCgroupParent("/berth-it/../system.slice"), code: codes.InvalidArgument, msg: "linux.cgroup_parent"},
		{name: "cgroup parent slice path elsewhere", cfg: withCgroupParent("/system.slice/berth_it.slice"), code: codes.InvalidArgument, msg: "linux.cgroup_parent"},
		{name: "sysctl value with a new line", cfg: func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"kernel.shm_rmid_forced": "1\n"}
		}, code: codes.InvalidArgument, msg: `linux.sysctls["kernel.shm_rmid_forced"]`},
		{name: "SELinux type with a colon", cfg: sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.SelinuxOptions = &runtimeapi.SELinuxOption{Type: "container_t:s0"}
		}), code: codes.InvalidArgument, msg: "linux.security_context.selinux_options.type"},
		{name: "negative run_as_user", cfg: sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.RunAsUser = &runtimeapi.Int64Value{Value: -1}
		}), code: codes.InvalidArgument, msg: "run_as_user"},
		{name: "negative run_as_group", cfg: sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.RunAsUser, s.RunAsGroup = &runtimeapi.Int64Value{Value: 1000}, &runtimeapi.Int64Value{Value: -1}
		}), code: codes.InvalidArgument, msg: "run_as_group"},
		{name: "no metadata name", cfg: func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Name = "" }, code: codes.InvalidArgument, msg: "metadata.name"},
		{name: "no metadata namespace", cfg: func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Namespace = "" }, code: codes.InvalidArgument, msg: "metadata.namespace"},
		{name: "no metadata uid", cfg: func(c *runtimeapi.PodSandboxConfig) { c.Metadata.Uid = "" }, code: codes.InvalidArgument, msg: "metadata.uid"},
		// With a pod network, CRI checks the mappings itself when it makes
		// the netns (Unknown); a host-network pod reaches berth.
		{name: "user namespace without GID mapping", cfg: func(c *runtimeapi.PodSandboxConfig) {
			withHostNetwork()(c)
			c.Linux.SecurityContext.NamespaceOptions.UsernsOptions = &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: mapping}
		}, code: codes.InvalidArgument, msg: "userns_options"},
		{name: "user namespace mapping of length 0", cfg: func(c *runtimeapi.PodSandboxConfig) {
			withHostNetwork()(c)
			c.Linux.SecurityContext.NamespaceOptions.UsernsOptions = &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD,
				Uids: []*runtimeapi.IDMapping{{HostId: 65536}}, Gids: mapping}
		}, code: codes.InvalidArgument, msg: "userns_options.uids"},
		{name: "missing localhost seccomp profile", cfg: sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/no/such/profile.json"}
		}), code: codes.NotFound, msg: "linux.security_context.seccomp"},
		{name: "missing localhost AppArmor profile", cfg: sc(func(s *runtimeapi.LinuxSandboxSecurityContext) {
			s.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "berth-no-such-profile"}
		}), code: codes.NotFound, msg: "linux.security_context.apparmor"},
		// CRI's own check, before any controller is asked.
		{name: "unknown runtime handler", handler: "no-such-handler", code: codes.Unknown, msg: "no-such-handler"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := podConfig(t)
			if tc.cfg != nil {
				tc.cfg(cfg)
			}
			handler := tc.handler
			if handler == "" {
				handler = handlerBerth
			}
			before := livePods(t)
			resp, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
			if err == nil {
				removePod(t, resp.GetPodSandboxId())
				t.Fatalf("RunPodSandbox succeeded")
			}
			s, _ := status.FromError(err)
			if s.Code() != tc.code || !strings.Contains(s.Message(), tc.msg) {
				t.Errorf("error %v (%s), want code %s mentioning %q", err, s.Code(), tc.code, tc.msg)
			}
			if after := livePods(t); after != before {
				t.Errorf("%d pods listed after the failure, %d before", after, before)
			}
			assertNothingLeft(t)
		})
	}
}

// TestPauseImageMissing removes the pause image: RunPodSandbox fails with
// a clear error naming it and leaves nothing behind, both when CRI tries to
// pull it first and when the handler leaves that to berth.
func TestPauseImageMissing(t *testing.T) {
	ctx := ctxT(t)
	withoutPauseImage(t)
	for handler, code := range map[string]codes.Code{
		"berth":        codes.Unknown, // CRI's pull fails: no registry here
		"berth-nopull": codes.NotFound,
	} {
		t.Run(handler, func(t *testing.T) {
			_, err := daemon.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig(t), RuntimeHandler: handler})
			if s, _ := status.FromError(err); err == nil || s.Code() != code || !strings.Contains(err.Error(), pauseImage) {
				t.Fatalf("RunPodSandbox without the pause image: %v, want code %s naming %s", err, code, pauseImage)
			}
			t.Logf("error: %v", err)
			assertNothingLeft(t)
		})
	}
}

// TestPauseSnapshotGone removes the pause image's snapshot behind berth's
// back between two pods: berth, which remembers the image as unpacked,
// unpacks it again, and the second pod runs. The pods are on the handler
// with the native snapshotter, where no other test's pod keeps a child of
// that snapshot.
func TestPauseSnapshotGone(t *testing.T) {
	const handler, snapshotter = "berth-native", "native"
	ctx := ctxT(t)
	removePod(t, runPod(t, podConfig(t), handler))
	chainID := pauseChainID(t)
	if err := daemon.client.SnapshotService(snapshotter).Remove(ctx, chainID); err != nil {
		t.Fatalf("remove the pause image's snapshot %s: %v", chainID, err)
	}
	id := runPod(t, podConfig(t), handler)
	if _, err := daemon.client.SnapshotService(snapshotter).Stat(ctx, chainID); err != nil {
		t.Errorf("the pause image's snapshot after the second pod: %v, want it unpacked again", err)
	}
	removePod(t, id)
	assertNoLeaks(t, id)
}

// assertNothingLeft checks, after a failed RunPodSandbox, that no sandbox
// of any kind is left: no containers, snapshots, sandbox dirs, shims or
// mounts.
func assertNothingLeft(t *testing.T) {
	t.Helper()
	ctx := ctxT(t)
	if live := livePods(t); live != 0 {
		t.Errorf("%d pods still listed", live)
	}
	cs, err := daemon.client.Containers(ctx)
	if err != nil || len(cs) != 0 {
		t.Errorf("leak: %d containerd containers: %v", len(cs), err)
	}
	// A snapshot made before the failure is containerd's garbage to collect
	// once the lease it was made under is gone; the collector runs soon
	// after, not at once.
	var snaps []string
	deadline := time.Now().Add(10 * time.Second)
	for snaps = sandboxSnapshots(t); len(snaps) > 0 && time.Now().Before(deadline); snaps = sandboxSnapshots(t) {
		time.Sleep(100 * time.Millisecond)
	}
	for _, s := range snaps {
		t.Errorf("leak: snapshot %s", s)
	}
	if pids := shimsOf(""); len(pids) > 0 {
		t.Errorf("leak: shim processes %v", pids)
	}
	for _, id := range runcContainersOfTests() {
		t.Errorf("leak: runc container %s", id)
	}
	// Task bundles, and the stand-ins berth makes for lost tasks' bundles.
	bundles, _ := os.ReadDir(taskBundle(""))
	for _, e := range bundles {
		t.Errorf("leak: task bundle %s", e.Name())
	}
	for _, dir := range []string{daemon.criRoot(), daemon.criState(), daemon.berthRoot(), daemon.berthState()} {
		entries, _ := os.ReadDir(filepath.Join(dir, "sandboxes"))
		for _, e := range entries {
			t.Errorf("leak: %s", filepath.Join(dir, "sandboxes", e.Name()))
		}
	}
	ls, err := daemon.client.LeasesService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		// A pod's lease is named after its 64-hex ID.
		if sandboxID.MatchString(l.ID) {
			t.Errorf("leak: lease %s", l.ID)
		}
	}
	for _, m := range mountsUnder(daemon.dir) {
		if strings.Contains(m, "/sandboxes/") || strings.Contains(m, "/netns/") {
			t.Errorf("leak: mount %s", m)
		}
	}
}

var sandboxID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// sandboxSnapshots lists the snapshots named like a pause container's,
// after its sandbox.
func sandboxSnapshots(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, sn := range snapshotters {
		if err := daemon.client.SnapshotService(sn).Walk(ctxT(t), func(_ context.Context, info snapshots.Info) error {
			if sandboxID.MatchString(info.Name) {
				names = append(names, sn+"/"+info.Name)
			}
			return nil
		}); err != nil {
			t.Errorf("list %s snapshots: %v", sn, err)
		}
	}
	return names
}
