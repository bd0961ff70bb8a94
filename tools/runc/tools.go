//go:build tools

// Package tools records the runc version built by `make runc`.
package tools

import _ "github.com/opencontainers/runc"
