package kube

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostcgroup"
)

// The resize tests go from 200m/64Mi to 300m/96Mi (requests = limits) on
// RuntimeClasses with an overhead of 100m/32Mi: kubelet's pod cgroup holds
// resources + overhead, 300m/96Mi before and 400m/128Mi after.
const (
	overheadMilliCPU = 100
	overheadMemory   = 32 << 20
)

// kubeletLimits are what kubelet leaves in a pod cgroup whose CPU request
// and limit are both milliCPU and whose memory limit is memory, in the
// files of the host's cgroup version (hostcgroup): a quota of milliCPU in
// kubelet's 100ms period, kubelet's shares for milliCPU
// (cm.MilliCPUToShares: milliCPU * 1024 / 1000) and the memory limit.
//
// On cgroup v2 the shares are held as cpu.weight converted as kubelet
// converts them (hostcgroup.KubeletWeight, 409 shares are 16): on a resize
// kubelet calls UpdatePodSandboxResources, where berth writes the weight
// as kubelet would, and then writes the resized resource itself
// (kuberuntime_manager.go, doPodResizeAction), and only that one.
func kubeletLimits(milliCPU, memory int64) hostcgroup.Limits {
	return hostcgroup.Limits{
		Quota:     milliCPU * 100,
		Period:    100000,
		CPUWeight: hostcgroup.CPUWeight(uint64(milliCPU * 1024 / 1000)),
		Memory:    memory,
	}
}

// TestResizeContainer resizes the README's pod in place (container
// resources) on berth and on the built-in, both with an overhead.
func TestResizeContainer(t *testing.T) {
	patch, err := os.ReadFile("testdata/resize-patch.json")
	if err != nil {
		t.Fatal(err)
	}
	testResize(t, func(t *testing.T, rc string) *corev1.Pod {
		return podFrom(t, resizePodFile, rc)
	}, patch)
}

// TestResizePodLevel resizes pod-level resources in place
// (InPlacePodLevelResourcesVerticalScaling): the pod has resources, its
// container none.
func TestResizePodLevel(t *testing.T) {
	testResize(t, func(t *testing.T, rc string) *corev1.Pod {
		pod := podFrom(t, resizePodFile, rc)
		ctr := &pod.Spec.Containers[0]
		pod.Spec.Resources = &corev1.ResourceRequirements{Requests: ctr.Resources.Requests, Limits: ctr.Resources.Limits}
		ctr.Resources = corev1.ResourceRequirements{}
		return pod
	}, []byte(`{"spec": {"resources": {"requests": {"cpu": "300m", "memory": "96Mi"}, "limits": {"cpu": "300m", "memory": "96Mi"}}}}`))
}

// testResize runs the pod newPod makes on berth and on the built-in, both
// with the same overhead, resizes both with patch, and checks that the
// resize completes, that berth's verbose status has the new resources, and
// that berth's pod cgroup holds what kubelet set: what the built-in's
// holds, resources + overhead, at no moment less.
func testResize(t *testing.T, newPod func(*testing.T, string) *corev1.Pod, patch []byte) {
	before := kubeletLimits(200+overheadMilliCPU, 64<<20+overheadMemory)
	want := kubeletLimits(300+overheadMilliCPU, 96<<20+overheadMemory)
	pods := map[string]*corev1.Pod{}
	sandboxes := map[string]string{}
	samplers := map[string]*cgroupSampler{}
	for _, rc := range []string{"berth-overhead", "runc-overhead"} {
		pods[rc] = runPod(t, newPod(t, rc))
		if err := hostcgroup.Check(podCgroupPath(pods[rc]), before); err != nil {
			t.Fatalf("%s: pod cgroup before the resize does not hold resources + overhead: %v", rc, err)
		}
		sandboxes[rc] = sandboxOf(t, pods[rc]).GetId()
		samplers[rc] = sampleCgroup(t, pods[rc])
	}
	for rc, pod := range pods {
		_, err := c.cs.CoreV1().Pods(namespace).Patch(ctxT(t), pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "resize")
		if err != nil {
			t.Fatalf("%s: resize: %v", rc, err)
		}
	}
	for rc, pod := range pods {
		pods[rc] = waitResized(t, pod)
	}
	// kubelet syncs the pod again after a resize; what it left must stay.
	time.Sleep(15 * time.Second)
	for rc, pod := range pods {
		if err := hostcgroup.Check(podCgroupPath(pod), want); err != nil {
			t.Errorf("%s: pod cgroup after the resize does not hold resources + overhead: %v", rc, err)
		}
		if low := samplers[rc].stop().below(before); low != nil {
			t.Errorf("%s: pod cgroup held %+v during the resize, less than resources + overhead before and after it", rc, *low)
		}
		if id := sandboxOf(t, pod).GetId(); id != sandboxes[rc] {
			t.Errorf("%s: the resize replaced the sandbox %s with %s", rc, sandboxes[rc], id)
		}
		if n := pod.Status.ContainerStatuses[0].RestartCount; n != 0 {
			t.Errorf("%s: the resize restarted the container %d times", rc, n)
		}
	}
	res := berthResources(t, pods["berth-overhead"])
	if res.GetCpuQuota() != 30000 || res.GetMemoryLimitInBytes() != 96<<20 {
		t.Errorf("berth's verbose status has pod resources %v, want the resized ones (quota 30000, memory 96Mi, without overhead)", res)
	}
}

// waitResized waits until kubelet reports the pod's resize done: the spec
// observed, no resize pending or in progress, the containers' (or the
// pod's) actual limits the desired ones.
func waitResized(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	return waitPod(t, pod, time.Minute, "resized", func(p *corev1.Pod) bool {
		if p.Status.ObservedGeneration < p.Generation {
			return false
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodResizePending || cond.Type == corev1.PodResizeInProgress {
				return false
			}
		}
		if p.Spec.Resources != nil {
			// kubelet reports the pod's actual limits with the overhead.
			want := corev1.ResourceList{}
			for name, q := range p.Spec.Resources.Limits {
				q.Add(p.Spec.Overhead[name])
				want[name] = q
			}
			return p.Status.Resources != nil && sameResources(want, p.Status.Resources.Limits)
		}
		for i, cs := range p.Status.ContainerStatuses {
			if cs.Resources == nil || !sameResources(p.Spec.Containers[i].Resources.Limits, cs.Resources.Limits) {
				return false
			}
		}
		return true
	})
}

func sameResources(a, b corev1.ResourceList) bool {
	for name, q := range a {
		if q.Cmp(b[name]) != 0 {
			return false
		}
	}
	return len(a) == len(b)
}

// TestResizeUnified sends unified (cgroup v2) keys in a pod's resources, as
// kubelet does on cgroup v2 hosts: berth applies them, or on cgroup v1
// refuses them with InvalidArgument; it never reports them applied while
// dropping them.
func TestResizeUnified(t *testing.T) {
	pod := runPod(t, podFrom(t, resizePodFile, "berth-overhead"))
	// The pod's own resources, as kubelet would send them, and a unified
	// key.
	res := resizePodResources()
	res.Unified = map[string]string{"memory.high": strconv.Itoa(80 << 20)}
	_, err := c.containerd.runtime.UpdatePodSandboxResources(ctxT(t), &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: sandboxOf(t, pod).GetId(), Resources: res,
		// The overhead as kubelet sends it with every call.
		Overhead: &runtimeapi.LinuxContainerResources{
			CpuPeriod: 100000, CpuQuota: overheadMilliCPU * 100, CpuShares: overheadMilliCPU * 1024 / 1000,
			MemoryLimitInBytes: overheadMemory,
		},
	})
	after := berthResources(t, pod)
	if hostcgroup.Unified() {
		if err != nil {
			t.Fatalf("UpdatePodSandboxResources with memory.high on cgroup v2: %v", err)
		}
		if got := readCgroup(t, pod, "", "memory.high"); got != strconv.Itoa(80<<20) {
			t.Errorf("memory.high = %s after berth reported it applied", got)
		}
		return
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("UpdatePodSandboxResources with memory.high on cgroup v1: %v, want InvalidArgument", err)
	}
	if len(after.GetUnified()) > 0 {
		t.Errorf("berth's verbose status reports unified %v on cgroup v1, where no cgroup holds them", after.GetUnified())
	}
}

// TestResizeBelowUsage shrinks a pod's memory below what it uses: kubelet
// refuses the resize and so does berth when asked directly; the pod runs
// on with its cgroup and berth's record as they were.
func TestResizeBelowUsage(t *testing.T) {
	pod := podFrom(t, resizePodFile, "berth")
	// 40 MiB in the pod's /dev/shm stay charged to the pod: tmpfs pages
	// cannot be reclaimed without swap.
	pod.Spec.Containers[0].Command = []string{"sh", "-c", "head -c 41943040 /dev/zero > /dev/shm/fill && exec sleep 3600"}
	pod = runPod(t, pod)
	eventually(t, 30*time.Second, "pod memory holds the 40 MiB", func() bool {
		usage, _ := hostcgroup.MemoryUsage(podCgroupPath(pod))
		return usage >= 40<<20
	})
	before, recorded := readPodLimits(t, pod), berthResources(t, pod)

	patch := `{"spec": {"containers": [{"name": "app", "resources": {"requests": {"memory": "32Mi"}, "limits": {"memory": "32Mi"}}}]}}`
	if _, err := c.cs.CoreV1().Pods(namespace).Patch(ctxT(t), pod.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "resize"); err != nil {
		t.Fatalf("resize: %v", err)
	}
	p := waitPod(t, pod, time.Minute, "refused", func(p *corev1.Pod) bool {
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodResizeInProgress && cond.Reason == corev1.PodReasonError {
				return true
			}
		}
		return false
	})
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodResizeInProgress && !strings.Contains(cond.Message, "below current usage") {
			t.Errorf("resize refused for another reason: %s", cond.Message)
		}
	}

	// kubelet checks usage before it asks the runtime; berth must refuse a
	// caller that does not, and apply nothing of the call: not its CPU
	// quota either.
	res := resizePodResources()
	res.CpuQuota *= 2
	res.MemoryLimitInBytes = 16 << 20
	_, err := c.containerd.runtime.UpdatePodSandboxResources(ctxT(t), &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: sandboxOf(t, pod).GetId(), Resources: res,
	})
	if err == nil {
		t.Errorf("UpdatePodSandboxResources to 16 MiB with 40 MiB in use succeeded")
	}
	t.Logf("UpdatePodSandboxResources to 16 MiB: %v", err)
	if err := hostcgroup.Check(podCgroupPath(pod), before); err != nil {
		t.Errorf("pod cgroup after the refused resizes does not hold what it held before: %v", err)
	}
	if got := berthResources(t, pod); !proto.Equal(got, recorded) {
		t.Errorf("berth's verbose status after a refused resize has %v, want %v", got, recorded)
	}
	p = waitRunning(t, pod)
	if n := p.Status.ContainerStatuses[0].RestartCount; n != 0 {
		t.Errorf("container restarted %d times", n)
	}
}

// resizePodResources are the pod resources of resize-pod.yaml as kubelet
// sends them (200m, 64Mi; without overhead).
func resizePodResources() *runtimeapi.LinuxContainerResources {
	return &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 20000, CpuShares: 204, MemoryLimitInBytes: 64 << 20}
}

// readPodLimits reads the limits of the pod's cgroup, in the files of the
// host's cgroup version (hostcgroup.Read).
func readPodLimits(t *testing.T, pod *corev1.Pod) hostcgroup.Limits {
	t.Helper()
	l, err := hostcgroup.Read(podCgroupPath(pod))
	if err != nil {
		t.Fatalf("pod cgroup of %s: %v", pod.Name, err)
	}
	return l
}

// cgroupSampler reads a pod cgroup's limits every 20ms, to catch a value
// that the end state no longer shows.
type cgroupSampler struct {
	done    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []hostcgroup.Limits
}

func sampleCgroup(t *testing.T, pod *corev1.Pod) *cgroupSampler {
	s := &cgroupSampler{done: make(chan struct{})}
	path := podCgroupPath(pod)
	s.wg.Go(func() {
		for {
			if l, err := hostcgroup.Read(path); err == nil {
				s.mu.Lock()
				s.samples = append(s.samples, l)
				s.mu.Unlock()
			}
			select {
			case <-s.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	t.Cleanup(func() { s.stop() })
	return s
}

// stop ends the sampling; it may be called again.
func (s *cgroupSampler) stop() *cgroupSampler {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.wg.Wait()
	return s
}

// below is the first sample with a memory limit or CPU quota under min;
// a quota of -1 (none) is not under any.
func (s *cgroupSampler) below(min hostcgroup.Limits) *hostcgroup.Limits {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.samples {
		if l.Memory < min.Memory || (l.Quota >= 0 && l.Quota < min.Quota) {
			return &l
		}
	}
	return nil
}

// berthResources are the pod resources in berth's verbose status, from
// berth's sandbox controller itself: CRI's PodSandboxStatus (crictl
// inspectp) puts its own copy of what it was sent in their place, updated
// even when the controller refused the update.
func berthResources(t *testing.T, pod *corev1.Pod) *runtimeapi.LinuxContainerResources {
	t.Helper()
	st, err := c.containerd.client.SandboxController("berth").Status(ctxT(t), sandboxOf(t, pod).GetId(), true)
	if err != nil {
		t.Fatalf("berth's status of %s: %v", pod.Name, err)
	}
	var info struct {
		Resources *runtimeapi.ContainerResources `json:"resources"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatalf("berth's verbose info: %v", err)
	}
	return info.Resources.GetLinux()
}
