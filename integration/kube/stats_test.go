package kube

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestStats reads kubelet's /stats/summary and /metrics/resource through
// the API server for a berth pod and a built-in one doing the same work:
// every field the built-in's pod fills (pod CPU, memory, network, the
// container's) berth's fills too. kubelet takes them from cadvisor by
// default, and from CRI (ListPodSandboxStats, which asks the sandbox
// controller for the pod's metrics) with PodAndContainerStatsFromCRI.
func TestStats(t *testing.T) {
	t.Run("cadvisor", testStats)
	t.Run("cri", func(t *testing.T) {
		if err := restartKubelet(map[string]bool{"PodAndContainerStatsFromCRI": true}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := restartKubelet(nil); err != nil {
				t.Errorf("restart kubelet without the gate: %v", err)
			}
		})
		testStats(t)
	})
}

func testStats(t *testing.T) {
	// Some memory and a little CPU, so that no counter is legitimately 0.
	cmd := []string{"sh", "-c", "head -c 8388608 /dev/zero > /dev/shm/fill; while :; do sleep 1; done"}
	berth := runPod(t, busyboxPod(t, "berth", cmd...))
	builtin := runPod(t, busyboxPod(t, "", cmd...))

	var missing []string
	// kubelet's stats come from cadvisor's housekeeping, every 10-15s; a
	// field may appear for one pod a round before the other.
	deadline := time.Now().Add(90 * time.Second)
	for {
		summary := statsSummary(t)
		want, got := filledFields(summary[builtin.Name]), filledFields(summary[berth.Name])
		missing = missingFrom(got, want)
		if len(want) > 0 && hasPodStats(want) && len(missing) == 0 {
			t.Logf("summary fields both pods fill: %v", want)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("/stats/summary: berth's pod lacks %v, which the built-in's has (built-in %d fields, berth %d)",
				missing, len(want), len(got))
			break
		}
		time.Sleep(3 * time.Second)
	}

	series := resourceMetrics(t)
	if m := missingFrom(series[berth.Name], series[builtin.Name]); len(series[builtin.Name]) == 0 || len(m) > 0 {
		t.Errorf("/metrics/resource: berth's pod lacks %v, which the built-in's has (%v)", m, series[builtin.Name])
	}
}

// hasPodStats reports whether the fields include the pod's own CPU and
// memory, which the test is about; until they are there kubelet has not
// collected the pod yet.
func hasPodStats(fields []string) bool {
	return slices.Contains(fields, "cpu.usageNanoCores") && slices.Contains(fields, "memory.workingSetBytes")
}

// statsSummary is kubelet's /stats/summary, pods by name, as the API
// server's node proxy returns it.
func statsSummary(t *testing.T) map[string]map[string]any {
	t.Helper()
	b, err := c.cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", nodeName, "proxy", "stats", "summary").DoRaw(ctxT(t))
	if err != nil {
		t.Fatalf("/stats/summary: %v", err)
	}
	var summary struct {
		Pods []map[string]any `json:"pods"`
	}
	if err := json.Unmarshal(b, &summary); err != nil {
		t.Fatalf("/stats/summary: %v", err)
	}
	out := map[string]map[string]any{}
	for _, p := range summary.Pods {
		ref, _ := p["podRef"].(map[string]any)
		if name, _ := ref["name"].(string); ref["namespace"] == namespace {
			out[name] = p
		}
	}
	return out
}

// mayBeZero holds the counters that a pod doing the tests' work may
// rightly leave at 0 while the other pod's is not: a major page fault
// reads a page from disk, so how many a pod takes depends on what the
// page cache held when it started (the other pod's run, CI's earlier
// suites), and a pod's memory is swapped out only on a host with swap
// under pressure; neither depends on its runtime. They count as filled
// when present at all.
var mayBeZero = []string{"majorPageFaults", "swapUsageBytes"}

// filledFields lists the dotted paths of a pod's stats that hold a value
// (not null, not zero unless mayBeZero, not empty). Lists of named things
// (containers, interfaces, volumes) are keyed by name, since both pods
// name theirs alike; timestamps and the pod reference say nothing about
// the runtime.
func filledFields(stats map[string]any) []string {
	var out []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if k == "time" || k == "startTime" || k == "podRef" || k == "name" {
					continue
				}
				walk(join(prefix, k), e)
			}
		case []any:
			for i, e := range v {
				key := fmt.Sprint(i)
				if m, ok := e.(map[string]any); ok && m["name"] != nil {
					key = fmt.Sprint(m["name"])
				}
				walk(join(prefix, key), e)
			}
		case float64:
			if v != 0 || slices.Contains(mayBeZero, prefix[strings.LastIndex(prefix, ".")+1:]) {
				out = append(out, prefix)
			}
		case string:
			if v != "" {
				out = append(out, prefix)
			}
		case bool:
			out = append(out, prefix)
		}
	}
	walk("", stats)
	slices.Sort(out)
	return out
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// missingFrom lists what is in want and not in got.
func missingFrom(got, want []string) []string {
	var out []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			out = append(out, w)
		}
	}
	return out
}

// resourceMetrics is kubelet's /metrics/resource: for each pod of the
// tests' namespace, the series names (with the container label, if any)
// that have a sample for it.
func resourceMetrics(t *testing.T) map[string][]string {
	t.Helper()
	b, err := c.cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", nodeName, "proxy", "metrics", "resource").DoRaw(ctxT(t))
	if err != nil {
		t.Fatalf("/metrics/resource: %v", err)
	}
	out := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		labels := parseLabels(rest[:strings.LastIndex(rest, "}")])
		if labels["namespace"] != namespace {
			continue
		}
		series := name
		if ctr := labels["container"]; ctr != "" {
			series += "{container=" + ctr + "}"
		}
		out[labels["pod"]] = append(out[labels["pod"]], series)
	}
	for _, s := range out {
		slices.Sort(s)
	}
	return out
}

// parseLabels parses Prometheus text labels: a="x",b="y".
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}
