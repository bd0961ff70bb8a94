package kube

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The YAML the README shows: the tests run exactly these objects.
const (
	podFile       = "testdata/pod.yaml"
	resizePodFile = "testdata/resize-pod.yaml"
)

// runtimeClassFiles are the RuntimeClasses the cluster starts with: berth,
// berth-builtin, and berth and the built-in with an overhead for the
// resize tests.
var runtimeClassFiles = []string{
	"testdata/runtimeclass.yaml",
	"testdata/runtimeclass-builtin-pause.yaml",
	"testdata/runtimeclass-overhead.yaml",
	"testdata/runtimeclass-runc-overhead.yaml",
}

// callTimeout bounds every API and CRI call of a test.
const callTimeout = time.Minute

// ctxT is a context for one call of a test. It is not t.Context(), which
// ends before the test's cleanups run.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

func decode(file string) (runtime.Object, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(b, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", file, err)
	}
	return obj, nil
}

func decodeRuntimeClass(file string) (*nodev1.RuntimeClass, error) {
	obj, err := decode(file)
	if err != nil {
		return nil, err
	}
	rc, ok := obj.(*nodev1.RuntimeClass)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T, not a RuntimeClass", file, obj)
	}
	return rc, nil
}

// podFrom reads a pod from file and names it after the test and its
// runtime class, so that tests never share a pod.
func podFrom(t *testing.T, file, runtimeClass string) *corev1.Pod {
	t.Helper()
	obj, err := decode(file)
	if err != nil {
		t.Fatal(err)
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		t.Fatalf("%s holds a %T, not a Pod", file, obj)
	}
	pod.Name = podName(t, runtimeClass)
	pod.Spec.RuntimeClassName = nil
	if runtimeClass != "" {
		pod.Spec.RuntimeClassName = &runtimeClass
	}
	return pod
}

// busyboxPod is a pod of one busybox container running cmd.
func busyboxPod(t *testing.T, runtimeClass string, cmd ...string) *corev1.Pod {
	t.Helper()
	pod := podFrom(t, podFile, runtimeClass)
	pod.Spec.Containers[0].Command = cmd
	return pod
}

// podName is a DNS label unique to the test and the runtime class.
func podName(t *testing.T, runtimeClass string) string {
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if runtimeClass == "" {
		runtimeClass = "default"
	}
	name += "-" + runtimeClass
	if len(name) > 63 {
		name = name[len(name)-63:]
	}
	return strings.Trim(name, "-")
}

// createPod creates pod on the node (no scheduler runs) and registers its
// deletion for the end of the test.
func createPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	pod.Namespace = namespace
	pod.Spec.NodeName = nodeName
	created, err := c.cs.CoreV1().Pods(namespace).Create(ctxT(t), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	t.Cleanup(func() { deletePod(t, created, 1) })
	return created
}

// runPod creates pod and waits until it runs.
func runPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	return waitRunning(t, createPod(t, pod))
}

// waitRunning waits until every container of pod runs and is ready.
func waitRunning(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	return waitPod(t, pod, 2*time.Minute, "running", func(p *corev1.Pod) bool {
		if p.Status.Phase != corev1.PodRunning {
			return false
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running == nil || !cs.Ready {
				return false
			}
		}
		return len(p.Status.ContainerStatuses) == len(p.Spec.Containers)
	})
}

// waitPod polls pod until cond holds and returns it.
func waitPod(t *testing.T, pod *corev1.Pod, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p, err := c.cs.CoreV1().Pods(namespace).Get(ctxT(t), pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get pod %s: %v", pod.Name, err)
		}
		if cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not %s within %s: phase %s, conditions %+v, pod resources %+v, containers %+v",
				pod.Name, what, timeout, p.Status.Phase, p.Status.Conditions, p.Status.Resources, p.Status.ContainerStatuses)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deletePod deletes pod with the grace period (< 0: the pod's own) and
// waits until it is gone from the API server, which kubelet allows only
// once it has torn the pod down. It returns how long that took.
func deletePod(t *testing.T, pod *corev1.Pod, grace int64) time.Duration {
	t.Helper()
	start := time.Now()
	opts := metav1.DeleteOptions{GracePeriodSeconds: &grace}
	if grace < 0 {
		opts = metav1.DeleteOptions{}
	}
	err := c.cs.CoreV1().Pods(namespace).Delete(ctxT(t), pod.Name, opts)
	if apierrors.IsNotFound(err) {
		return 0
	}
	if err != nil {
		t.Errorf("delete pod %s: %v", pod.Name, err)
		return 0
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := c.cs.CoreV1().Pods(namespace).Get(ctxT(t), pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Errorf("pod %s not gone within 2m after its deletion: %v", pod.Name, err)
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sandboxOf is the pod's ready sandbox, as CRI lists it to kubelet.
func sandboxOf(t *testing.T, pod *corev1.Pod) *runtimeapi.PodSandbox {
	t.Helper()
	resp, err := c.containerd.runtime.ListPodSandbox(ctxT(t), &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(pod.UID)},
			State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		},
	})
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	if n := len(resp.GetItems()); n != 1 {
		t.Fatalf("pod %s has %d ready sandboxes, want 1", pod.Name, n)
	}
	return resp.GetItems()[0]
}

// sandboxerOf is the sandbox controller of the pod's sandbox, from
// containerd's sandbox record.
func sandboxerOf(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	sb, err := c.containerd.client.SandboxStore().Get(ctxT(t), sandboxOf(t, pod).GetId())
	if err != nil {
		t.Fatalf("sandbox record of %s: %v", pod.Name, err)
	}
	return sb.Sandboxer
}

// podCgroupPath is the pod's cgroup under a hierarchy root, as kubelet's
// cgroupfs driver names it: kubepods[/burstable|/besteffort]/pod<uid>
// under the cgroup root.
func podCgroupPath(pod *corev1.Pod) string {
	qos := ""
	switch pod.Status.QOSClass {
	case corev1.PodQOSBurstable:
		qos = "burstable"
	case corev1.PodQOSBestEffort:
		qos = "besteffort"
	}
	return filepath.Join(*cgroupRoot, "kubepods", qos, "pod"+string(pod.UID))
}

// podCgroup is the pod's cgroup in hierarchy ctrl: a v1 controller's
// directory, or "" for cgroup v2's one hierarchy.
func podCgroup(pod *corev1.Pod, ctrl string) string {
	return filepath.Join("/sys/fs/cgroup", ctrl, podCgroupPath(pod))
}

// readCgroup reads one file of the pod's cgroup in hierarchy ctrl, e.g.
// "", "memory.high" on cgroup v2. The limits and the memory usage are read
// with hostcgroup, in the files of the host's version.
func readCgroup(t *testing.T, pod *corev1.Pod, ctrl, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(podCgroup(pod, ctrl), file))
	if err != nil {
		t.Fatalf("pod cgroup of %s: %v", pod.Name, err)
	}
	return strings.TrimSpace(string(b))
}

// eventually polls cond every 100ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
