package integration

import (
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/integration/hostproc"
)

// handlerBerthShim is the config's handler whose runtime_path is berth's
// shim, whatever -handler the other tests run on.
const handlerBerthShim = "berth"

// TestBerthShimPids runs a pod on berth's handler, whose runtime_path is
// berth's shim: the pause and its app container are in that shim, and its
// Pids lists what is in each container's cgroup, marking a live exec
// process with its exec ID as the runc shim does.
func TestBerthShimPids(t *testing.T) {
	cfg := podConfig(t, withKubeletNamespaces())
	id := runPod(t, cfg, handlerBerthShim)
	ctr := startContainerWith(t, id, cfg, func(c *runtimeapi.ContainerConfig) {
		c.Linux.SecurityContext = kubeletContainerSecurity()
	}, "sh", "-c", "sleep 3600 & exec sleep 3600")

	shim := shimOf(t, id)
	b, err := hostproc.Cmdline(shim)
	if err != nil {
		t.Fatal(err)
	}
	if got := filepath.Base(b[0]); got != hostproc.BerthShim {
		t.Fatalf("pod's shim is %s, want %s", got, hostproc.BerthShim)
	}

	ctx := ctxT(t)
	pids := func(id string) map[string]string {
		t.Helper()
		ps, err := taskOf(t, id).Pids(ctx)
		if err != nil {
			t.Fatalf("Pids of %s: %v", id, err)
		}
		got := map[string]string{}
		for _, p := range ps {
			got[strconv.Itoa(int(p.Pid))] = ""
			if p.Info != nil {
				v, err := typeurl.UnmarshalAny(p.Info)
				if err != nil {
					t.Fatal(err)
				}
				got[strconv.Itoa(int(p.Pid))] = v.(*options.ProcessDetails).ExecID
			}
		}
		return got
	}
	same := func(got map[string]string, want []string) bool {
		var keys []string
		for k := range got {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		slices.Sort(want)
		return slices.Equal(keys, want)
	}

	if got, want := pids(id), cgroupProcs(id); !same(got, want) || len(want) != 1 {
		t.Errorf("pause Pids %v, want its cgroup's one process %v", got, want)
	}
	if got, want := pids(ctr), cgroupProcs(ctr); !same(got, want) || len(want) != 2 {
		t.Errorf("container Pids %v, want its cgroup's two processes %v", got, want)
	}

	// A live exec process, started as CRI's exec does, is marked.
	p, err := taskOf(t, ctr).Exec(ctx, "berth-exec", &specs.Process{Args: []string{"/bin/sleep", "3600"}, Cwd: "/"}, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	exited, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	got := pids(ctr)
	if execID := got[strconv.Itoa(int(p.Pid()))]; execID != "berth-exec" || len(got) != 3 {
		t.Errorf("container Pids with an exec %v, want its pid %d marked berth-exec among 3", got, p.Pid())
	}
	if err := p.Kill(ctx, 9); err != nil {
		t.Fatal(err)
	}
	<-exited
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := pids(ctr), cgroupProcs(ctr); !same(got, want) {
		t.Errorf("container Pids after the exec %v, want %v", got, want)
	}
}

// taskOf is the task of container id, through containerd's client.
func taskOf(t *testing.T, id string) client.Task {
	t.Helper()
	c, err := daemon.client.LoadContainer(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return task
}
