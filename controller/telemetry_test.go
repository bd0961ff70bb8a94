package controller

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-dev/berth/store"
)

// TestTelemetryLongDurations places a Stop that waited most of its
// default stop_timeout, and a group wait as long, in a bucket of their
// own, not only past the last one.
func TestTelemetryLongDurations(t *testing.T) {
	tel := newTelemetry(store.New())
	reg := prometheus.NewRegistry()
	reg.MustRegister(tel.ns)
	tel.operations.WithValues("stop").Update(45 * time.Second)
	tel.groupWaited("first task", 45*time.Second)

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			h := m.GetHistogram()
			if h == nil {
				continue
			}
			seen[f.GetName()] = true
			var placed bool
			for _, b := range h.GetBucket() {
				if !math.IsInf(b.GetUpperBound(), 1) && b.GetUpperBound() <= 2*45 && b.GetCumulativeCount() == 1 {
					placed = true
				}
			}
			if !placed {
				t.Errorf("%s: 45 s not in a finite bucket within a factor 2: %v", f.GetName(), h.GetBucket())
			}
		}
	}
	for _, name := range []string{"berth_sandbox_operation_seconds", "berth_sandbox_group_wait_seconds"} {
		if !seen[name] {
			t.Errorf("no histogram %s among %d families", name, len(families))
		}
	}
}

// TestReadmeRetrySteps checks that the README's berth_sandbox_retries_total
// row and retrySteps name every step berth queues for a retry (the name
// argument of each Retry call in the module's code) and no other.
func TestReadmeRetrySteps(t *testing.T) {
	var inCode []string
	fset := token.NewFileSet()
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "tools" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 4 {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); !ok || sel.Sel.Name != "Retry" {
				return true
			}
			lit, ok := call.Args[2].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				t.Errorf("%s: a Retry step named by no string literal", fset.Position(call.Pos()))
				return true
			}
			step, _ := strconv.Unquote(lit.Value)
			inCode = append(inCode, step)
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(inCode)
	inCode = slices.Compact(inCode)

	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `berth_sandbox_retries_total\\{step\\}` \\|(.*)\\|$").FindSubmatch(readme)
	if row == nil {
		t.Fatal("no berth_sandbox_retries_total row in the README")
	}
	var inReadme []string
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllSubmatch(row[1], -1) {
		inReadme = append(inReadme, string(m[1]))
	}
	slices.Sort(inReadme)
	if !slices.Equal(inCode, inReadme) {
		t.Errorf("retry steps: code %q, README %q", inCode, inReadme)
	}
	if listed := slices.Sorted(slices.Values(retrySteps)); !slices.Equal(inCode, listed) {
		t.Errorf("retry steps: code %q, retrySteps %q", inCode, listed)
	}
}

// TestRetryCountersFromZero: each step's retry counters are exported, at
// 0, before any step is retried, so that increase() sees the first retry.
func TestRetryCountersFromZero(t *testing.T) {
	tel := newTelemetry(store.New())
	reg := prometheus.NewRegistry()
	reg.MustRegister(tel.ns)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"berth_sandbox_retries_total", "berth_sandbox_retry_failures_total"} {
		var steps []string
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
			for _, m := range f.GetMetric() {
				if v := m.GetCounter().GetValue(); v != 0 {
					t.Errorf("%s %v = %v before any retry", name, m.GetLabel(), v)
				}
				for _, l := range m.GetLabel() {
					steps = append(steps, l.GetValue())
				}
			}
		}
		slices.Sort(steps)
		if want := slices.Sorted(slices.Values(retrySteps)); !slices.Equal(steps, want) {
			t.Errorf("%s steps %q, want %q", name, steps, want)
		}
	}
}
