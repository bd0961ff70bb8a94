package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/berth-dev/berth/integration/hostproc"
)

// namespace is where the tests' pods run. It has a default service account
// that mounts no token: no controller manager publishes the root CA a token
// volume needs.
const namespace = "berth-e2e"

// cluster is the one-node Kubernetes the tests run against, everything of
// it under dir.
type cluster struct {
	dir        string
	bin        string
	pki        *pki
	containerd *containerdDaemon
	etcd       *process
	apiserver  *apiServer
	kubelet    *process
	cs         *kubernetes.Clientset
	// sysctls holds the host's values of the settings kubelet changes.
	sysctls map[string]string
	// ownLogLinks is set if kubelet made /var/log/containers for this run:
	// it is not the node's and goes with the cluster.
	ownLogLinks bool
}

// logLinks is where kubelet links container logs; the path is fixed in
// kubelet (ContainerLogsDir), whatever its root directory.
const logLinks = "/var/log/containers"

func startCluster() (*cluster, error) {
	bin, err := filepath.Abs(*binDir)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "berth-kube-")
	if err != nil {
		return nil, err
	}
	// Searchable by all, as /var/lib/containerd is: a pod's user namespace
	// must reach its bundle and rootfs under it.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, bin: bin}
	if c.sysctls, err = saveSysctls(); err != nil {
		return c, err
	}
	c.ownLogLinks = !exists(logLinks)
	// A run that was killed leaves its cgroup root behind; kubelet would
	// find its pods' cgroups there.
	removeCgroupRoot()
	if c.pki, err = newPKI(filepath.Join(dir, "pki")); err != nil {
		return c, err
	}
	if c.containerd, err = startContainerd(filepath.Join(dir, "containerd"), bin); err != nil {
		return c, err
	}
	if c.etcd, err = startEtcd(dir, bin); err != nil {
		return c, err
	}
	if c.apiserver, err = startAPIServer(dir, bin, c.pki); err != nil {
		return c, err
	}
	if c.cs, err = c.apiserver.clientset(); err != nil {
		return c, err
	}
	if err := c.setUp(); err != nil {
		return c, err
	}
	c.kubelet, err = startKubelet(filepath.Join(dir, "kubelet"), bin, c.containerd.endpoint(), c.pki, c.apiserver, c.cs)
	return c, err
}

// setUp makes the namespace, its service account and the RuntimeClasses.
func (c *cluster) setUp() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}
	sa := &corev1.ServiceAccount{
		ObjectMeta:                   metav1.ObjectMeta{Name: "default", Namespace: namespace},
		AutomountServiceAccountToken: new(false),
	}
	if _, err := c.cs.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service account: %w", err)
	}
	for _, file := range runtimeClassFiles {
		rc, err := decodeRuntimeClass(file)
		if err != nil {
			return err
		}
		if _, err := c.cs.NodeV1().RuntimeClasses().Create(ctx, rc, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create RuntimeClass %s: %w", rc.Name, err)
		}
	}
	return nil
}

// stop deletes the tests' pods through the API server, waits for kubelet
// to tear them down, stops every daemon and removes the cluster's
// directory. It returns what was left on the node: a leak fails the run.
func (c *cluster) stop() error {
	var errs []error
	if c.kubelet != nil && c.kubelet.running() {
		errs = append(errs, c.deletePods()...)
	}
	if c.kubelet != nil {
		c.kubelet.stop()
	}
	if c.containerd != nil {
		if c.containerd.conn != nil {
			for _, sb := range c.containerd.removeAllPods() {
				errs = append(errs, fmt.Errorf("leak: sandbox %s still ready after its pod was deleted", sb))
			}
		}
		c.containerd.close()
		c.containerd.stopAll()
		if shims := hostproc.Shims(c.containerd.socket(), ""); len(shims) > 0 {
			errs = append(errs, fmt.Errorf("leak: shims %v outlive containerd", shims))
			for _, pid := range shims {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if c.apiserver != nil {
		c.apiserver.stop()
	}
	if c.etcd != nil {
		c.etcd.stop()
	}
	for _, busy := range removeCgroupRoot() {
		errs = append(errs, fmt.Errorf("leak: cgroup %s", busy))
	}
	if c.sysctls != nil {
		errs = append(errs, restoreSysctls(c.sysctls))
	}
	removeLogLinks(c.dir)
	if c.ownLogLinks {
		// Remove, not RemoveAll: a link left in it is a leak to report.
		if err := os.Remove(logLinks); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("leak: %w", err))
		}
	}
	deleteBridge()
	if *keep {
		fmt.Println("cluster directory kept:", c.dir)
		return errors.Join(errs...)
	}
	for _, m := range hostproc.Mounts(c.dir) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	errs = append(errs, os.RemoveAll(c.dir))
	return errors.Join(errs...)
}

// deletePods deletes every pod of the tests' namespace at once and waits
// until kubelet has removed them and their pod cgroups; it returns what
// did not go.
func (c *cluster) deletePods() []error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := c.cs.CoreV1().Pods(namespace).DeleteCollection(ctx, *metav1.NewDeleteOptions(1), metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return []error{fmt.Errorf("delete pods: %w", err)}
	}
	for {
		pods, err := c.cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err == nil && len(pods.Items) == 0 && len(podCgroups()) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			var errs []error
			if err == nil {
				for _, p := range pods.Items {
					errs = append(errs, fmt.Errorf("leak: pod %s was not removed", p.Name))
				}
			}
			for _, cg := range podCgroups() {
				errs = append(errs, fmt.Errorf("leak: pod cgroup %s", cg))
			}
			return errs
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// removeLogLinks removes the links in logLinks to container logs under
// dir. kubelet removes a container's link when its garbage collection
// removes the container, once a minute; the containers of the pods deleted
// last went with containerd's pods after kubelet stopped.
func removeLogLinks(dir string) {
	links, _ := filepath.Glob(filepath.Join(logLinks, "*.log"))
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, dir+"/") {
			_ = os.Remove(l)
		}
	}
}
