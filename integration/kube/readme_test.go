package kube

import (
	"os"
	"strings"
	"testing"
)

// readmeFiles are the objects README.md shows in "Running berth under
// Kubernetes"; the tests run these very files.
var readmeFiles = []string{
	"testdata/runtimeclass.yaml",
	"testdata/pod.yaml",
	"testdata/runtimeclass-overhead.yaml",
	"testdata/resize-pod.yaml",
	"testdata/resize-patch.json",
}

// TestREADME checks that the README shows the tests' own YAML, verbatim.
func TestREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range readmeFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(readme), string(b)) {
			t.Errorf("README.md does not show %s as it is:\n%s", f, b)
		}
	}
}
