package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// walkthroughStep is a command of the README's crictl walkthrough and what
// its output must show. ids are the pod's and the container's IDs.
type walkthroughStep struct {
	command *regexp.Regexp
	check   func(t *testing.T, out string, ids walkthroughIDs)
}

type walkthroughIDs struct{ pod, ctr string }

// walkthroughSteps are the README's steps, in order: a step added to,
// removed from or changed in the README fails the test until it is here.
var walkthroughSteps = []walkthroughStep{
	{regexp.MustCompile(`^export CONTAINER_RUNTIME_ENDPOINT=unix://\$PWD/_output/containerd\.sock$`), nil},
	{regexp.MustCompile(`^cat > pod\.json <<'EOF'\n`), nil},
	{regexp.MustCompile(`^cat > ctr\.json <<'EOF'\n`), nil},
	{regexp.MustCompile(`^POD=\$\(crictl runp --runtime berth pod\.json\)$`), nil},
	{regexp.MustCompile(`^crictl pods +# READY, runtime handler berth$`), checkPods},
	{regexp.MustCompile(`^crictl inspectp \$POD +# pod IP on berth0; verbose info from berth$`), checkInspectp},
	{regexp.MustCompile(`^CTR=\$\(crictl create \$POD ctr\.json pod\.json\)$`), nil},
	{regexp.MustCompile(`^crictl start \$CTR$`), func(t *testing.T, out string, ids walkthroughIDs) {
		if strings.TrimSpace(out) != ids.ctr {
			t.Errorf("crictl start printed %q, want the container ID %s", out, ids.ctr)
		}
	}},
	{regexp.MustCompile(`^crictl exec \$CTR hostname +# hello$`), func(t *testing.T, out string, _ walkthroughIDs) {
		if strings.TrimSpace(out) != "hello" {
			t.Errorf("crictl exec hostname printed %q, want hello", out)
		}
	}},
	{regexp.MustCompile(`^crictl -t 30s stopp \$POD && crictl rmp \$POD +# stopp kills the pod first$`), func(t *testing.T, out string, ids walkthroughIDs) {
		want := fmt.Sprintf("Stopped sandbox %s\nRemoved sandbox %s\n", ids.pod, ids.pod)
		if out != want {
			t.Errorf("crictl stopp && rmp printed %q, want %q", out, want)
		}
	}},
}

// TestReadmeWalkthrough runs the commands of the README's "Walkthrough with
// crictl" with the real crictl (bin/crictl) against the tests' containerd,
// as written there (its _output/containerd.sock is a link to the tests'
// socket), checks what each prints and that nothing of the pod is left.
func TestReadmeWalkthrough(t *testing.T) {
	steps, err := readmeWalkthrough("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != len(walkthroughSteps) {
		t.Fatalf("README walkthrough has %d steps, the test knows %d: %q", len(steps), len(walkthroughSteps), steps)
	}
	for i, s := range steps {
		if !walkthroughSteps[i].command.MatchString(s) {
			t.Fatalf("README walkthrough step %d is %q, the test expects %s", i+1, s, walkthroughSteps[i].command)
		}
	}

	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "_output"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(daemon.socket(), filepath.Join(dir, "_output", "containerd.sock")); err != nil {
		t.Fatal(err)
	}
	// Whatever a failed step leaves is removed, then checked for leaks.
	t.Cleanup(func() {
		for _, id := range podsNamed(t, "hello", "default") {
			removePod(t, id)
		}
	})

	// Each step's stdout and stderr go to files of their own; the IDs,
	// which the README keeps in shell variables, to a last one.
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	for i, s := range steps {
		// set -e lets the first command of an && list fail: each step's
		// status is checked.
		fmt.Fprintf(&script, "{ %s\n} >out.%d 2>err.%d || exit\n", s, i, i)
	}
	script.WriteString(`echo "$POD $CTR" >ids` + "\n")
	cmd := exec.Command("bash", "-c", script.String())
	cmd.Dir = dir
	// crictl reads /etc/crictl.yaml where the host has one (a CI runner
	// that is a node may), whose image endpoint and timeout would apply to
	// the walkthrough; it reads an empty config instead, as critest does
	// in hack/critest.sh (a missing file it refuses when named).
	cmd.Env = append(os.Environ(), "PATH="+daemon.bin+":"+os.Getenv("PATH"), "CRI_CONFIG_FILE=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		last := 0
		for i := range steps {
			if _, err := os.Stat(filepath.Join(dir, "out."+strconv.Itoa(i))); err == nil {
				last = i
			}
		}
		stderr, _ := os.ReadFile(filepath.Join(dir, "err."+strconv.Itoa(last)))
		t.Fatalf("walkthrough failed at %q: %v: %s%s", steps[last], err, out, stderr)
	}
	b, err := os.ReadFile(filepath.Join(dir, "ids"))
	if err != nil {
		t.Fatal(err)
	}
	var ids walkthroughIDs
	if _, err := fmt.Sscan(string(b), &ids.pod, &ids.ctr); err != nil {
		t.Fatalf("pod and container IDs %q: %v", b, err)
	}
	for i, s := range walkthroughSteps {
		if s.check == nil {
			continue
		}
		out, err := os.ReadFile(filepath.Join(dir, "out."+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		s.check(t, string(out), ids)
	}
	assertNoLeaks(t, ids.pod)
	if n := len(podsNamed(t, "hello", "default")); n != 0 {
		t.Errorf("%d hello pods left after crictl rmp", n)
	}
}

// checkPods wants the pod's row: READY, named hello in default, runtime
// handler berth (the last column).
func checkPods(t *testing.T, out string, ids walkthroughIDs) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(ids.pod, f[0]) {
			continue
		}
		if !slices.Contains(f, "Ready") || !slices.Contains(f, "hello") || !slices.Contains(f, "default") || f[len(f)-1] != "berth" {
			t.Errorf("crictl pods row %q: want Ready, hello, default and runtime berth", line)
		}
		return
	}
	t.Errorf("crictl pods shows no row for %s:\n%s", ids.pod, out)
}

// checkInspectp wants a ready pod with an IP of the tests' bridge, on the
// berth handler, and the verbose info berth's Status writes: the running
// pause's pid, the pod config and the pause spec (with the pod's hostname).
func checkInspectp(t *testing.T, out string, ids walkthroughIDs) {
	t.Helper()
	var v struct {
		Status struct {
			ID             string `json:"id"`
			State          string `json:"state"`
			RuntimeHandler string `json:"runtimeHandler"`
			Network        struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			Pid           int    `json:"pid"`
			ProcessStatus string `json:"processStatus"`
			RuntimeType   string `json:"runtimeType"`
			Config        struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			} `json:"config"`
			RuntimeSpec struct {
				Hostname string `json:"hostname"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("crictl inspectp output is not JSON: %v: %s", err, out)
	}
	s := v.Status
	if s.ID != ids.pod || s.State != runtimeapi.PodSandboxState_SANDBOX_READY.String() || s.RuntimeHandler != "berth" {
		t.Errorf("inspectp status: id %s, state %s, handler %s; want %s, SANDBOX_READY, berth", s.ID, s.State, s.RuntimeHandler, ids.pod)
	}
	_, subnet, err := net.ParseCIDR(*testSubnet)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(s.Network.IP); ip == nil || !subnet.Contains(ip) {
		t.Errorf("pod IP %q is not on the bridge's subnet %s", s.Network.IP, subnet)
	}
	in := v.Info
	if in.Pid <= 0 || in.ProcessStatus != "running" || in.RuntimeType != "io.containerd.runc.v2" ||
		in.Config.Metadata.Name != "hello" || in.RuntimeSpec.Hostname != "hello" {
		t.Errorf("inspectp info: pid %d, process status %q, runtime %q, pod %q, spec hostname %q; want the verbose info of a running pause of pod hello",
			in.Pid, in.ProcessStatus, in.RuntimeType, in.Config.Metadata.Name, in.RuntimeSpec.Hostname)
	}
}

// readmeWalkthrough is the README's "Walkthrough with crictl" code block as
// shell steps: a line each, or a heredoc with its lines.
func readmeWalkthrough(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	_, section, ok := strings.Cut(string(b), "\n## Walkthrough with crictl\n")
	if !ok {
		return nil, fmt.Errorf("%s: no section Walkthrough with crictl", path)
	}
	_, block, ok := strings.Cut(section, "```sh\n")
	if !ok {
		return nil, fmt.Errorf("%s: walkthrough has no sh code block", path)
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		return nil, fmt.Errorf("%s: walkthrough code block does not end", path)
	}
	heredoc := regexp.MustCompile(`<<'(\w+)'$`)
	var steps []string
	lines := strings.Split(strings.TrimSuffix(block, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		step := lines[i]
		if strings.TrimSpace(step) == "" {
			continue
		}
		if m := heredoc.FindStringSubmatch(step); m != nil {
			for i++; i < len(lines) && lines[i] != m[1]; i++ {
				step += "\n" + lines[i]
			}
			if i == len(lines) {
				return nil, fmt.Errorf("%s: heredoc %s does not end", path, m[1])
			}
			step += "\n" + m[1]
		}
		steps = append(steps, step)
	}
	return steps, nil
}

// podsNamed lists the pods CRI has with that name and namespace.
func podsNamed(t *testing.T, name, namespace string) []string {
	t.Helper()
	resp, err := daemon.runtime.ListPodSandbox(ctxT(t), &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	var ids []string
	for _, p := range resp.GetItems() {
		if p.GetMetadata().GetName() == name && p.GetMetadata().GetNamespace() == namespace {
			ids = append(ids, p.GetId())
		}
	}
	return ids
}
