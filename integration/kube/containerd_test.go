package kube

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// containerdDaemon is the project's containerd (with berth) under the
// cluster's directory, with the config `make up` uses: runtime handlers
// runc (the built-in controller), berth and berth-builtin. With -berthd it
// is containerd's own build (containerd-stock), and berth is berthd beside
// it, started first, as its systemd unit orders it.
type containerdDaemon struct {
	*process
	dir string
	// berthd, with -berthd, serves berth beside containerd-stock.
	berthd *process
	// runtime is CRI, as kubelet sees it; client is containerd's own API,
	// for the sandbox records. Both reconnect across a restart.
	conn    *grpc.ClientConn
	runtime runtimeapi.RuntimeServiceClient
	client  *containerd.Client
}

func (d *containerdDaemon) socket() string { return filepath.Join(d.dir, "containerd.sock") }

// endpoint is the CRI endpoint kubelet is given.
func (d *containerdDaemon) endpoint() string { return "unix://" + d.socket() }

func startContainerd(dir, bin string) (*containerdDaemon, error) {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	deleteBridge()
	if err := makeBridge(); err != nil {
		return nil, err
	}
	// The script make up uses; the tests run in integration/kube.
	render := exec.Command("../../hack/render-config.sh", dir, bin, *bridge, *subnet, *metrics)
	if out, err := render.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("render containerd config: %w: %s", err, out)
	}
	config := filepath.Join(dir, "config.toml")
	binary := "containerd"
	d := &containerdDaemon{dir: dir}
	if *berthdMode {
		binary = "containerd-stock"
		socket := filepath.Join(dir, "berthd.sock")
		if err := appendProxyPlugin(config, socket); err != nil {
			return nil, err
		}
		d.berthd = newProcess(dir, "berthd", filepath.Join(bin, "berthd"),
			"--containerd-config", config, "--address", socket, "--log-level", "debug")
		d.berthd.env = []string{"PATH=" + bin + ":" + os.Getenv("PATH")}
		if err := d.berthd.start(); err != nil {
			return d, err
		}
		if err := d.berthd.waitFor(time.Minute, "its socket", func() error { return dial(socket) }); err != nil {
			return d, err
		}
	}
	d.process = newProcess(dir, "containerd", filepath.Join(bin, binary), "--config", config, "--log-level", "debug")
	d.env = []string{"PATH=" + bin + ":" + os.Getenv("PATH")}
	if err := d.start(); err != nil {
		return d, err
	}
	if err := d.connect(); err != nil {
		return d, err
	}
	for _, image := range []string{"pause.tar", "busybox.tar"} {
		out, err := exec.Command(filepath.Join(bin, "ctr"), "-a", d.socket(), "-n", "k8s.io",
			"images", "import", filepath.Join(bin, "images", image)).CombinedOutput()
		if err != nil {
			return d, fmt.Errorf("import %s: %w: %s", image, err, out)
		}
	}
	return d, nil
}

// connect waits for CRI to answer and dials containerd's API.
func (d *containerdDaemon) connect() error {
	if err := d.waitReady(); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+d.socket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial CRI: %w", err)
	}
	d.conn, d.runtime = conn, runtimeapi.NewRuntimeServiceClient(conn)
	d.client, err = containerd.New(d.socket(), containerd.WithDefaultNamespace("k8s.io"))
	if err != nil {
		return fmt.Errorf("dial containerd: %w", err)
	}
	return nil
}

// waitReady waits for containerd's socket to accept connections.
func (d *containerdDaemon) waitReady() error {
	return d.waitFor(time.Minute, "its socket", func() error { return dial(d.socket()) })
}

// dial checks that socket accepts connections.
func dial(socket string) error {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	return conn.Close()
}

// appendProxyPlugin sends containerd's calls for sandboxer berth to berthd
// at socket.
func appendProxyPlugin(config, socket string) error {
	f, err := os.OpenFile(config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "\n[proxy_plugins.berth]\n  type = 'sandbox'\n  address = '%s'\n", socket)
	return err
}

// stopAll stops containerd, then berthd.
func (d *containerdDaemon) stopAll() {
	if d.process != nil {
		d.stop()
	}
	if d.berthd != nil {
		d.berthd.stop()
	}
}

// restart starts containerd again after a kill, as a node's service
// manager does after a crash, and waits until CRI reports itself ready:
// until CRI has loaded its sandboxes it answers Unavailable.
func (d *containerdDaemon) restart() error {
	if err := d.start(); err != nil {
		return err
	}
	if err := d.waitReady(); err != nil {
		return err
	}
	return d.waitFor(time.Minute, "CRI ready", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := d.runtime.Status(ctx, &runtimeapi.StatusRequest{})
		if err != nil {
			return err
		}
		// The conditions kubelet's node readiness takes from CRI; others
		// are warnings (this host's cgroup v1 raises one).
		for _, cond := range st.GetStatus().GetConditions() {
			switch cond.GetType() {
			case runtimeapi.RuntimeReady, runtimeapi.NetworkReady:
				if !cond.GetStatus() {
					return fmt.Errorf("CRI condition %s: %s", cond.GetType(), cond.GetMessage())
				}
			}
		}
		return nil
	})
}

// removeAllPods stops and removes every pod CRI still lists, best effort,
// and returns the ones that were still ready. Stopped ones are normal:
// kubelet removes the sandboxes of deleted pods in its garbage collection,
// once a minute. A ready one is a pod kubelet did not tear down, and would
// outlive containerd.
func (d *containerdDaemon) removeAllPods() (ready []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	list, err := d.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil
	}
	for _, sb := range list.GetItems() {
		if sb.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY {
			ready = append(ready, sb.GetMetadata().GetName()+" "+sb.GetId())
		}
		_, _ = d.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.GetId()})
		_, _ = d.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.GetId()})
	}
	return ready
}

// close drops the clients; containerd itself is stopped with stop.
func (d *containerdDaemon) close() {
	if d.client != nil {
		d.client.Close()
	}
	if d.conn != nil {
		d.conn.Close()
	}
}
