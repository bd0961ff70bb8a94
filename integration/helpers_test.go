package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostproc"
)

// podOpt changes a pod config.
type podOpt func(*runtimeapi.PodSandboxConfig)

// podConfig is a minimal pod config, as kubelet would send it, with a name
// unique to the test.
func podConfig(t *testing.T, opts ...podOpt) *runtimeapi.PodSandboxConfig {
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name:      name,
			Namespace: "berth-it",
			Uid:       fmt.Sprintf("%s-%d", name, time.Now().UnixNano()),
		},
		Labels:      map[string]string{"test": name},
		Annotations: map[string]string{},
		Linux:       &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{}}},
	}
	for _, o := range opts {
		o(cfg)
	}
	return cfg
}

// kubeletContainerSecurity is the security context kubelet gives an app
// container of a pod without shareProcessNamespace: a PID namespace of
// its own.
func kubeletContainerSecurity() *runtimeapi.LinuxContainerSecurityContext {
	return &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
	}
}

func withHostname(h string) podOpt {
	return func(c *runtimeapi.PodSandboxConfig) { c.Hostname = h }
}

func withDNS(dns *runtimeapi.DNSConfig) podOpt {
	return func(c *runtimeapi.PodSandboxConfig) { c.DnsConfig = dns }
}

func withHostNetwork() podOpt {
	return func(c *runtimeapi.PodSandboxConfig) {
		c.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
	}
}

func withSysctls(s map[string]string) podOpt {
	return func(c *runtimeapi.PodSandboxConfig) { c.Linux.Sysctls = s }
}

func withCgroupParent(p string) podOpt {
	return func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = p }
}

// ctxT is a context for one CRI call of a test. It is not t.Context(),
// which ends before the test's cleanups run.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// runPod runs a pod with the handler and registers its stop, removal and a
// leak check for the end of the test.
func runPod(t *testing.T, cfg *runtimeapi.PodSandboxConfig, handler string) string {
	t.Helper()
	resp, err := daemon.runtime.RunPodSandbox(ctxT(t), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		t.Fatalf("RunPodSandbox(%s): %v", handler, err)
	}
	id := resp.GetPodSandboxId()
	t.Cleanup(func() { removePod(t, id) })
	return id
}

// removePod stops and removes a pod, then checks that nothing of it is left.
func removePod(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := daemon.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Errorf("StopPodSandbox: %v", err)
	}
	if _, err := daemon.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Errorf("RemovePodSandbox: %v", err)
	}
	assertNoLeaks(t, id)
}

func podStatus(t *testing.T, id string) *runtimeapi.PodSandboxStatusResponse {
	t.Helper()
	resp, err := daemon.runtime.PodSandboxStatus(ctxT(t), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	return resp
}

// verboseInfo decodes the JSON CRI returns as Info["info"].
func verboseInfo(t *testing.T, info map[string]string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(info["info"]), &v); err != nil {
		t.Fatalf("verbose info is not JSON: %v: %q", err, info["info"])
	}
	return v
}

// podPid is the pause process's pid, from verbose status.
func podPid(t *testing.T, id string) int {
	t.Helper()
	pid, _ := verboseInfo(t, podStatus(t, id).GetInfo())["pid"].(float64)
	if pid <= 0 {
		t.Fatalf("pod %s has no pid in its verbose status", id)
	}
	return int(pid)
}

// startContainer creates and starts a busybox container named app running
// cmd in the pod, and registers its removal.
func startContainer(t *testing.T, podID string, pod *runtimeapi.PodSandboxConfig, cmd ...string) string {
	t.Helper()
	return startNamedContainer(t, "app", podID, pod, cmd...)
}

// startNamedContainer is startContainer with a container name of its own.
func startNamedContainer(t *testing.T, name, podID string, pod *runtimeapi.PodSandboxConfig, cmd ...string) string {
	t.Helper()
	return startContainerWith(t, podID, pod, func(c *runtimeapi.ContainerConfig) { c.Metadata.Name = name }, cmd...)
}

// startContainerWith is startContainer with the container's config changed
// by change.
func startContainerWith(t *testing.T, podID string, pod *runtimeapi.PodSandboxConfig, change func(*runtimeapi.ContainerConfig), cmd ...string) string {
	t.Helper()
	ctx := ctxT(t)
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
		Image:    &runtimeapi.ImageSpec{Image: busyboxImage},
		Command:  cmd,
		Linux:    &runtimeapi.LinuxContainerConfig{},
	}
	change(cfg)
	resp, err := daemon.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  podID,
		Config:        cfg,
		SandboxConfig: pod,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	id := resp.GetContainerId()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if _, err := daemon.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Errorf("RemoveContainer: %v", err)
		}
	})
	if _, err := daemon.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	return id
}

// containerPid is an app container's pid, from verbose status.
func containerPid(t *testing.T, id string) int {
	t.Helper()
	resp, err := daemon.runtime.ContainerStatus(ctxT(t), &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatalf("ContainerStatus: %v", err)
	}
	pid, _ := verboseInfo(t, resp.GetInfo())["pid"].(float64)
	if pid <= 0 {
		t.Fatalf("container %s has no pid", id)
	}
	return int(pid)
}

// execSync runs cmd in a container and returns its stdout.
func execSync(t *testing.T, id string, cmd ...string) string {
	t.Helper()
	resp, err := daemon.runtime.ExecSync(ctxT(t), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync %v: %v", cmd, err)
	}
	if resp.GetExitCode() != 0 {
		t.Fatalf("ExecSync %v: exit %d: %s", cmd, resp.GetExitCode(), resp.GetStderr())
	}
	return string(resp.GetStdout())
}

// nsOf is the namespace inode link of a process, e.g. "net:[4026531840]".
func nsOf(t *testing.T, pid int, ns string) string {
	t.Helper()
	l, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", ns))
	if err != nil {
		t.Fatalf("read %s namespace of %d: %v", ns, pid, err)
	}
	return l
}

// eventually polls cond every 10ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	if !within(timeout, cond) {
		t.Fatalf("%s: not within %s", what, timeout)
	}
	return time.Since(start)
}

// within polls cond every 10 ms for up to timeout, and reports whether it
// held.
func within(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// assertNoLeaks checks that nothing of pod id is left: no containerd
// container, snapshot or lease, no runc container, no shim, no mount, no
// sandbox dir or link, no netns.
func assertNoLeaks(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := daemon.client.ContainerService().Get(ctx, id); !errdefs.IsNotFound(err) {
		t.Errorf("leak: containerd container %s: %v", id, err)
	}
	for _, sn := range snapshotters {
		if _, err := daemon.client.SnapshotService(sn).Stat(ctx, id); !errdefs.IsNotFound(err) {
			t.Errorf("leak: %s snapshot %s: %v", sn, id, err)
		}
	}
	// CRI's lease of the sandbox, and berth's start leases, one per attempt.
	all, err := daemon.client.LeasesService().List(ctx)
	if err != nil {
		t.Errorf("list leases: %v", err)
	}
	for _, l := range all {
		if l.ID == id || strings.HasPrefix(l.ID, "io.berth.start."+id+".") {
			t.Errorf("leak: lease %s", l.ID)
		}
	}
	for _, dir := range []string{daemon.criRoot(), daemon.criState(), daemon.berthRoot(), daemon.berthState()} {
		if p := filepath.Join(dir, "sandboxes", id); !isNotExist(p) {
			t.Errorf("leak: %s", p)
		}
	}
	// The pause's runc state, which the shim's delete command removes if
	// the running shim did not.
	if p := filepath.Join(runcNamespaceDir, id); !isNotExist(p) {
		t.Errorf("leak: runc container %s", p)
	}
	for _, m := range mountsUnder(daemon.dir) {
		if strings.Contains(m, id) {
			t.Errorf("leak: mount %s", m)
		}
	}
	// A shared shim started for this pod may serve other pods still.
	if pids := hostproc.IdleShims(daemon.socket(), id); len(pids) > 0 {
		t.Errorf("leak: shim processes %v for %s, serving no process", pids, id)
	}
	if pids := cgroupProcs(id); len(pids) > 0 {
		t.Errorf("leak: processes %v still in the pause container's cgroup", pids)
	}
	if dirs := cgroupDirs(id); len(dirs) > 0 {
		t.Errorf("leak: the pause container's cgroups %v", dirs)
	}
	netnsDir := filepath.Join(daemon.criState(), "netns")
	entries, _ := os.ReadDir(netnsDir)
	if n := len(entries); n > livePods(t) {
		t.Errorf("leak: %d netns files in %s for %d live pods", n, netnsDir, livePods(t))
	}
}

// runcNamespaceDir holds runc's state of each container of CRI's
// namespace, at the root the handlers' runc has: the runc shim's default.
var runcNamespaceDir = filepath.Join(process.RuncRoot, "k8s.io")

// runcContainersOfTests lists the containers that runc keeps state of in
// runcNamespaceDir for this containerd: those whose bundle is under its
// directory. The root is the host's, shared with any other containerd on
// it (a CI runner may be a Kubernetes node) and with earlier runs, whose
// containers are not the tests' to count. A container whose state runc
// has not written yet, or that cannot be read, counts as the tests'.
func runcContainersOfTests() []string {
	// runc records the bundle as the kernel names its working directory.
	dir, err := filepath.EvalSymlinks(daemon.dir)
	if err != nil {
		dir = daemon.dir
	}
	entries, _ := os.ReadDir(runcNamespaceDir)
	var ids []string
	for _, e := range entries {
		var state struct {
			Config struct{ Labels []string } `json:"config"`
		}
		b, err := os.ReadFile(filepath.Join(runcNamespaceDir, e.Name(), "state.json"))
		if err == nil && json.Unmarshal(b, &state) == nil {
			if i := slices.IndexFunc(state.Config.Labels, func(l string) bool { return strings.HasPrefix(l, "bundle=") }); i >= 0 &&
				!strings.HasPrefix(strings.TrimPrefix(state.Config.Labels[i], "bundle="), dir+"/") {
				continue
			}
		}
		ids = append(ids, e.Name())
	}
	return ids
}

// taskBundle is the bundle directory of task id in the tests' containerd,
// as its task service (and berth's stand-in for a lost task's) makes it.
func taskBundle(id string) string {
	return filepath.Join(daemon.dir, "state", "io.containerd.runtime.v2.task", "k8s.io", id)
}

// isNotExist reports whether nothing is at path p, not even a dangling
// link.
func isNotExist(p string) bool {
	_, err := os.Lstat(p)
	return errors.Is(err, fs.ErrNotExist)
}

func leaseIDs(ls []leases.Lease) []string {
	var ids []string
	for _, l := range ls {
		ids = append(ids, l.ID)
	}
	return ids
}

// livePods counts the pods CRI still lists.
func livePods(t *testing.T) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := daemon.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("ListPodSandbox: %v", err)
		return 0
	}
	return len(resp.GetItems())
}

// shimsOf lists the pids of this containerd's runc shims started for
// sandbox id, or all of its shims if id is "" (hostproc.Shims).
func shimsOf(id string) []int {
	return hostproc.Shims(daemon.socket(), id)
}

// cgroupProcs lists the processes in the cgroups named after container id
// (runc's default cgroups path under containerd is /k8s.io/<id>), in every
// v1 hierarchy and in v2.
func cgroupProcs(id string) []string {
	files, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "k8s.io", id, "cgroup.procs"))
	files = append(files, filepath.Join("/sys/fs/cgroup", "k8s.io", id, "cgroup.procs"))
	seen := map[string]bool{}
	var pids []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, pid := range strings.Fields(string(b)) {
			if !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// cgroupDirs lists the cgroups named after container id (runc's default
// cgroups path under containerd, /k8s.io/<id>), in every v1 hierarchy and
// in v2.
func cgroupDirs(id string) []string {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "k8s.io", id))
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", "k8s.io", id)); err == nil {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", "k8s.io", id))
	}
	return dirs
}

// shimOf is the pid of the shim serving sandbox id, the parent of its
// pause process.
func shimOf(t *testing.T, id string) int {
	t.Helper()
	ppid, err := hostproc.Parent(podPid(t, id))
	if err != nil {
		t.Fatal(err)
	}
	return ppid
}

// pauseChainID is the chain ID of the pause image's rootfs: the name of its
// unpacked snapshot, the parent of each pod's.
func pauseChainID(t *testing.T) string {
	t.Helper()
	ctx := ctxT(t)
	image, err := daemon.client.GetImage(ctx, pauseImage)
	if err != nil {
		t.Fatal(err)
	}
	diffIDs, err := image.RootFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return identity.ChainID(diffIDs).String()
}

// withoutPauseImage deletes the pause image for the rest of the test.
func withoutPauseImage(t *testing.T) {
	t.Helper()
	if err := daemon.client.ImageService().Delete(ctxT(t), pauseImage); err != nil {
		t.Fatalf("delete pause image: %v", err)
	}
	t.Cleanup(func() {
		if err := daemon.importImage(filepath.Join(daemon.bin, "images", "pause.tar")); err != nil {
			t.Errorf("re-import pause image: %v", err)
		}
	})
}
