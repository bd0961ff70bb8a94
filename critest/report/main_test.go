package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A ginkgo JSON report as critest writes it, cut to three specs and a
// failed BeforeSuite.
const reportJSON = `[{"SpecReports": [
 {"ContainerHierarchyTexts": ["[k8s.io] PodSandbox", "runtime should support"], "LeafNodeType": "It",
  "LeafNodeText": "running PodSandbox", "State": "%s",
  "Failure": {"Message": "boom", "Location": {"FileName": "/m/sigs.k8s.io/cri-tools@v1.37.0/pkg/validate/pod.go", "LineNumber": 7}}},
 {"ContainerHierarchyTexts": ["[k8s.io] Image"], "LeafNodeType": "It", "LeafNodeText": "pull", "State": "passed"},
 {"ContainerHierarchyTexts": ["[k8s.io] NRI"], "LeafNodeType": "It", "LeafNodeText": "plugin", "State": "skipped",
  "Failure": {"Message": "no NRI socket"}},
 {"LeafNodeType": "BeforeSuite", "State": "passed"}
]}]`

func writeReport(t *testing.T, state string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(p, []byte(strings.Replace(reportJSON, "%s", state, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func readRun(t *testing.T, handler, state string) run {
	t.Helper()
	results, err := readReport(writeReport(t, state))
	if err != nil {
		t.Fatal(err)
	}
	return run{handler: handler, results: results}
}

func TestReadReport(t *testing.T) {
	r := readRun(t, "runc", "failed")
	if len(r.results) != 3 {
		t.Fatalf("results %v: want the three It nodes, not the passed BeforeSuite", r.results)
	}
	got := r.results["[k8s.io] PodSandbox runtime should support running PodSandbox"]
	if got.state != "failed" || got.message != "boom (pkg/validate/pod.go:7)" {
		t.Errorf("failed spec: %+v", got)
	}
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name               string
		ref, other         string
		regressions        int
		printsDifference   bool
		differenceContains string
	}{
		{name: "same", ref: "passed", other: "passed"},
		{name: "regression", ref: "passed", other: "failed", regressions: 1, printsDifference: true, differenceContains: "(FAIL)"},
		{name: "timeout is a failure", ref: "passed", other: "timedout", regressions: 1, printsDifference: true, differenceContains: "timedout: boom"},
		{name: "fixed elsewhere", ref: "failed", other: "passed", printsDifference: true, differenceContains: "runc: failed: boom"},
		{name: "both fail", ref: "failed", other: "failed"},
		{name: "skipped elsewhere", ref: "passed", other: "skipped", regressions: 1, printsDifference: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			n := compare(&out, []run{readRun(t, "runc", tc.ref), readRun(t, "berth", tc.other)})
			if n != tc.regressions {
				t.Errorf("regressions %d, want %d:\n%s", n, tc.regressions, out.String())
			}
			differs := strings.Contains(out.String(), "berth differs from runc")
			if differs != tc.printsDifference || !strings.Contains(out.String(), tc.differenceContains) {
				t.Errorf("output:\n%s", out.String())
			}
		})
	}
}

func TestCompareNotRun(t *testing.T) {
	ref := readRun(t, "runc", "passed")
	other := run{handler: "berth", results: map[string]result{}}
	var out strings.Builder
	if n := compare(&out, []run{ref, other}); n != 2 {
		t.Errorf("regressions %d, want the two tests runc passes and berth did not run:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "berth: not run") {
		t.Errorf("output:\n%s", out.String())
	}
}

// The NRI Synchronize race skips a test for whichever handler containerd
// loses a container on: a difference, never a regression.
func TestCompareContainerdDiscrepancy(t *testing.T) {
	const name = "[k8s.io] NRI should receive a callback for container created during the Synchronize call"
	ref := run{handler: "runc", results: map[string]result{name: {state: "passed"}}}
	for _, tc := range []struct {
		message     string
		regressions int
		mark        string
	}{
		{message: "spec discrepancy: containerd loses containers created while a late-joining plugin's Synchronize is in progress", mark: "(not counted"},
		{message: "no NRI socket", regressions: 1, mark: "(FAIL)"},
	} {
		other := run{handler: "berth", results: map[string]result{name: {state: "skipped", message: tc.message}}}
		var out strings.Builder
		if n := compare(&out, []run{ref, other}); n != tc.regressions {
			t.Errorf("skip %q: regressions %d, want %d:\n%s", tc.message, n, tc.regressions, out.String())
		}
		if !strings.Contains(out.String(), tc.mark) {
			t.Errorf("skip %q: output lacks %q:\n%s", tc.message, tc.mark, out.String())
		}
	}
}

// A test that passed only on its second try passes, and is printed with
// its handler and tries, on the reference as elsewhere.
func TestCompareRetried(t *testing.T) {
	const name = "[k8s.io] Image Identifier Consistency should return the same image identifier across all APIs [Conformance]"
	for _, tc := range []struct{ ref, other result }{
		{ref: result{state: "passed", attempts: 1}, other: result{state: "passed", attempts: 2}},
		{ref: result{state: "passed", attempts: 2}, other: result{state: "passed", attempts: 1}},
	} {
		ref := run{handler: "runc", results: map[string]result{name: tc.ref}}
		other := run{handler: "berth", results: map[string]result{name: tc.other}}
		var out strings.Builder
		if n := compare(&out, []run{ref, other}); n != 0 {
			t.Errorf("regressions %d, want none:\n%s", n, out.String())
		}
		retried := "berth"
		if tc.ref.attempts > 1 {
			retried = "runc"
		}
		if !strings.Contains(out.String(), retried+" passed on try 2 (not counted: by timing):\n  "+name) {
			t.Errorf("output lacks %s's retry:\n%s", retried, out.String())
		}
	}
	r, err := readReport(writeReport(t, `passed", "NumAttempts": 2, "X": "`))
	if err != nil {
		t.Fatal(err)
	}
	if got := r["[k8s.io] PodSandbox runtime should support running PodSandbox"]; got.attempts != 2 {
		t.Errorf("read %+v, want 2 attempts", got)
	}
}

func TestWithoutDumps(t *testing.T) {
	msg := "failed to create PodSandbox\nUnexpected error:\n    <*status.Error | 0x1>: \n    rpc error: code = Unknown desc = boom\n    {\n        s: {\n            Code: 2,\n        },\n    }\noccurred"
	want := "failed to create PodSandbox\nUnexpected error:\n    <*status.Error | 0x1>: \n    rpc error: code = Unknown desc = boom\noccurred"
	if got := withoutDumps(msg); got != want {
		t.Errorf("withoutDumps:\n%s\nwant:\n%s", got, want)
	}
}
