package integration

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestBerthShimPidsInitMoved runs a privileged container whose init
// moves itself into a child cgroup of the container's, as systemd as
// init or docker-in-docker does, after it has started a child. berth's
// shim lists the container's cgroup, the one its task was created in,
// with the child cgroup in it: both processes, as `runc ps` lists them,
// not only the init's new cgroup.
func TestBerthShimPidsInitMoved(t *testing.T) {
	cfg := podConfig(t, func(c *runtimeapi.PodSandboxConfig) { c.Linux.SecurityContext.Privileged = true })
	id := runPod(t, cfg, handlerBerthShim)
	// On cgroup v1 the container's devices cgroup, which runc lists, is
	// mounted at /sys/fs/cgroup/devices; on v2 its cgroup at
	// /sys/fs/cgroup.
	const moveInit = `sleep 3600 &
d=/sys/fs/cgroup; [ -d $d/devices ] && d=$d/devices
mkdir $d/init && echo $$ > $d/init/cgroup.procs && exec sleep 3600`
	ctr := startContainerWith(t, id, cfg, func(c *runtimeapi.ContainerConfig) {
		c.Linux.SecurityContext = kubeletContainerSecurity()
		c.Linux.SecurityContext.Privileged = true
	}, "sh", "-c", moveInit)

	initPid := containerPid(t, ctr)
	eventually(t, 10*time.Second, "container init in its child cgroup", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", initPid))
		return err == nil && strings.Contains(string(b), "/"+ctr+"/init\n")
	})

	ps, err := taskOf(t, ctr).Pids(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range ps {
		got = append(got, strconv.Itoa(int(p.Pid)))
	}
	slices.Sort(got)
	want := cgroupTreeProcs(ctr)
	if !slices.Equal(got, want) || len(want) != 2 || !slices.Contains(got, strconv.Itoa(initPid)) {
		t.Errorf("Pids %v, want the container cgroup's two processes, its init %d among them: %v", got, initPid, want)
	}
}

// cgroupTreeProcs lists, sorted, the processes in container id's cgroups
// (cgroupDirs) and their descendants.
func cgroupTreeProcs(id string) []string {
	seen := map[string]bool{}
	for _, dir := range cgroupDirs(id) {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, pid := range strings.Fields(string(b)) {
				seen[pid] = true
			}
			return nil
		})
	}
	pids := make([]string, 0, len(seen))
	for pid := range seen {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}
