//go:build tools

// Package tools pins the stock containerd berthd is tested beside:
// containerd's own cmd/containerd, with its builtins and nothing of berth's.
package tools

import _ "github.com/containerd/containerd/v2/cmd/containerd"
