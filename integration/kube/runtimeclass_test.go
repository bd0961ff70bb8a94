package kube

import (
	"strings"
	"testing"
)

// TestRuntimeClass runs the README's pod with RuntimeClass berth, with
// berth-builtin (berth's built-in pause) and on the built-in controller
// (no RuntimeClass): each runs, its log is the container's, and
// containerd's sandbox record names the controller the handler selects.
func TestRuntimeClass(t *testing.T) {
	for _, tc := range []struct {
		runtimeClass, sandboxer string
	}{
		{"berth", "berth"},
		{"berth-builtin", "berth"},
		{"", "podsandbox"},
	} {
		t.Run(tc.sandboxer+"-"+tc.runtimeClass, func(t *testing.T) {
			pod := runPod(t, podFrom(t, podFile, tc.runtimeClass))
			if got := sandboxerOf(t, pod); got != tc.sandboxer {
				t.Errorf("sandbox of a pod with RuntimeClass %q has sandboxer %q, want %q", tc.runtimeClass, got, tc.sandboxer)
			}
			// Without a RuntimeClass kubelet names no handler; containerd
			// takes its default (runc).
			if got := sandboxOf(t, pod).GetRuntimeHandler(); got != tc.runtimeClass {
				t.Errorf("sandbox runtime handler %q, want %q", got, tc.runtimeClass)
			}
			if log := podLogs(t, pod, "app"); !strings.Contains(log, "hello from berth") {
				t.Errorf("log of app: %q", log)
			}
		})
	}
}
