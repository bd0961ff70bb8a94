// Command critest-report compares critest's results for runtime handlers
// run against one containerd. The first handler is the reference (runc,
// containerd's built-in sandbox controller); every other handler must pass
// every test the reference passes.
//
// One kind of skip is not held against a handler: critest's own "spec
// discrepancy" skips, which a test takes at run time when it catches
// containerd itself (not the handler) breaking a spec. The NRI
// Synchronize race is one: containerd may lose a container created while a
// late NRI plugin synchronizes, so the same test passes or skips by timing,
// for any handler. Such a difference is printed, marked as not counted.
//
// Nor is a test that passed only when run again (critest runs with
// -ginkgo.flake-attempts): CRI races its own exit handling (RemoveContainer
// of a container that just exited can find its task deleted and its state
// not yet updated, "container is still running, to stop first"), whatever
// the handler. Each such test is printed, with the handler and its tries.
//
//	critest-report runc=runc/report.json berth=berth/report.json ...
//
// Each report is ginkgo's JSON report (-ginkgo.json-report). It prints the
// passed, failed and skipped counts per handler, then every test whose
// result differs from the reference's, with the failure message, and exits
// 1 if a handler fails (or does not run) a test the reference passes.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: critest-report REF=REPORT.json [HANDLER=REPORT.json...]")
		os.Exit(2)
	}
	var runs []run
	for _, arg := range os.Args[1:] {
		handler, path, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "critest-report: %q: want HANDLER=REPORT.json\n", arg)
			os.Exit(2)
		}
		results, err := readReport(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "critest-report: %s: %v\n", handler, err)
			os.Exit(1)
		}
		runs = append(runs, run{handler: handler, results: results})
	}
	if regressions := compare(os.Stdout, runs); regressions > 0 {
		fmt.Printf("FAIL: %d test(s) the reference %s passes fail elsewhere\n", regressions, runs[0].handler)
		os.Exit(1)
	}
	fmt.Printf("OK: every handler passes what %s passes\n", runs[0].handler)
}

// run is one handler's results by test name.
type run struct {
	handler string
	results map[string]result
}

type result struct {
	state    string // ginkgo's: passed, failed, skipped, panicked, timedout, ...
	message  string // why it failed or was skipped
	attempts int    // how many times it ran
}

// passed and skipped are the states counted as such; every other state
// (failed, panicked, interrupted, aborted, timedout) is a failure.
func (r result) passed() bool  { return r.state == "passed" }
func (r result) skipped() bool { return r.state == "skipped" || r.state == "pending" }

// containerdDiscrepancy reports whether critest skipped the test because it
// caught containerd breaking a spec, which no handler can change.
func (r result) containerdDiscrepancy() bool {
	return r.state == "skipped" && strings.HasPrefix(r.message, "spec discrepancy: containerd")
}

// compare prints the counts and differences and returns how many tests the
// reference passes and another handler does not.
func compare(w io.Writer, runs []run) int {
	for _, r := range runs {
		var pass, fail, skip int
		for _, res := range r.results {
			switch {
			case res.passed():
				pass++
			case res.skipped():
				skip++
			default:
				fail++
			}
		}
		fmt.Fprintf(w, "%-14s %3d passed, %3d failed, %3d skipped\n", r.handler+":", pass, fail, skip)
	}
	for _, r := range runs {
		for _, name := range testNames(r) {
			if res := r.results[name]; res.passed() && res.attempts > 1 {
				fmt.Fprintf(w, "\n%s passed on try %d (not counted: by timing):\n  %s\n", r.handler, res.attempts, name)
			}
		}
	}
	ref := runs[0]
	regressions := 0
	for _, other := range runs[1:] {
		for _, name := range testNames(ref, other) {
			want, inRef := ref.results[name]
			got, inOther := other.results[name]
			if inRef && inOther && want.state == got.state {
				continue
			}
			mark := ""
			switch {
			case want.passed() && got.containerdDiscrepancy():
				mark = " (not counted: containerd's own, by timing)"
			case want.passed() && !got.passed():
				regressions++
				mark = " (FAIL)"
			}
			fmt.Fprintf(w, "\n%s differs from %s%s:\n  %s\n", other.handler, ref.handler, mark, name)
			fmt.Fprintf(w, "  %s: %s\n  %s: %s\n", ref.handler, describe(want, inRef), other.handler, describe(got, inOther))
		}
	}
	return regressions
}

func describe(r result, ran bool) string {
	if !ran {
		return "not run"
	}
	if r.message == "" || r.passed() {
		return r.state
	}
	return r.state + ": " + indent(r.message)
}

func indent(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n      ")
}

func testNames(runs ...run) []string {
	seen := map[string]bool{}
	var names []string
	for _, r := range runs {
		for name := range r.results {
			if !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
	}
	sort.Strings(names)
	return names
}

// The parts of ginkgo's JSON report (types.Report) used here.
type report struct {
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
		NumAttempts             int
		Failure                 struct {
			Message  string
			Location struct {
				FileName   string
				LineNumber int
			}
		}
	}
}

// readReport reads a ginkgo JSON report: the results of its It nodes and of
// any suite node (BeforeSuite, ...) that did not pass, by full test name.
func readReport(path string) (map[string]result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var reports []report
	if err := json.Unmarshal(b, &reports); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	results := map[string]result{}
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.LeafNodeType != "It" && s.State == "passed" {
				continue
			}
			name := strings.TrimSpace(strings.Join(append(s.ContainerHierarchyTexts, s.LeafNodeText), " "))
			if s.LeafNodeType != "It" {
				name = "[" + s.LeafNodeType + "] " + name
			}
			msg := withoutDumps(s.Failure.Message)
			if loc := s.Failure.Location; loc.FileName != "" && !strings.HasPrefix(s.State, "skip") {
				msg += fmt.Sprintf(" (%s:%d)", shortPath(loc.FileName), loc.LineNumber)
			}
			results[name] = result{state: s.State, message: msg, attempts: s.NumAttempts}
		}
	}
	if len(results) == 0 {
		return nil, fmt.Errorf("%s: no test results", path)
	}
	return results, nil
}

// withoutDumps drops the Go values gomega prints after an error's text
// (an indented "{" to the "}" at its indent): a gRPC status is 20 lines of
// protobuf internals around the message already printed above it.
func withoutDumps(msg string) string {
	var kept []string
	closing := ""
	for _, line := range strings.Split(msg, "\n") {
		switch {
		case closing != "":
			if line == closing {
				closing = ""
			}
		case strings.TrimSpace(line) == "{":
			closing = strings.TrimSuffix(line, "{") + "}"
		default:
			kept = append(kept, line)
		}
	}
	return strings.Join(kept, "\n")
}

// shortPath is a source path from the package directory on.
func shortPath(p string) string {
	if i := strings.Index(p, "/pkg/"); i >= 0 {
		return p[i+1:]
	}
	return p
}
