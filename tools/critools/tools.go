//go:build tools

// Package tools records the cri-tools version (crictl and critest) that
// `make build` and `make critest` build.
package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
	_ "sigs.k8s.io/cri-tools/cmd/critest"
)
