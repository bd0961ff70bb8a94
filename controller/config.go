package controller

import (
	"time"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/shimproc"
)

// Runtime is the part of a CRI runtime handler's config berth uses.
type Runtime struct {
	// Type is the runtime_type, e.g. io.containerd.runc.v2.
	Type string
	// Path is the runtime_path, if any.
	Path string
	// Snapshotter overrides the CRI image snapshotter for this handler.
	Snapshotter string
	// PodAnnotations are the pod annotation patterns passed into the spec.
	PodAnnotations []string
}

// CRIConfig is the part of CRI's runtime and image config berth follows, so
// that a handler behaves the same under berth as under the built-in.
type CRIConfig struct {
	// SandboxImage is the pause image CRI pins (pinned_images.sandbox) and
	// pulls before Start.
	SandboxImage string
	// Snapshotter is CRI's default snapshotter.
	Snapshotter        string
	DefaultRuntimeName string
	Runtimes           map[string]Runtime
	podsandbox.RuntimeSettings
}

// BuiltinPause is berth's built-in pause: the handlers whose pods run it,
// and the shared rootfs they run it from.
type BuiltinPause struct {
	Handlers []string
	// Rootfs is the prepared rootfs; "" when Err is set or no handler uses
	// the built-in pause.
	Rootfs string
	// Err is why the built-in pause cannot run (a bad binary or rootfs):
	// its handlers' pods then fail with it, and every other pod runs.
	Err error
}

// Config is everything the controller is built from.
type Config struct {
	// Sandboxer is berth's name in CRI's sandbox records: its plugin ID.
	Sandboxer string
	CRI       CRIConfig
	// Dirs are where sandbox files live.
	Dirs podsandbox.Dirs
	// StopTimeout bounds how long Stop waits for the pause task's exit to be
	// handled.
	StopTimeout time.Duration
	// ExitTimeout bounds the first attempt at deleting an exited task;
	// failures go to the retry queue, which backs off as ExitRetry says.
	ExitTimeout time.Duration
	ExitRetry   events.Backoff
	// Node is what the kernel offers the pause container.
	Node podsandbox.Node
	// HostFiles are the node files a pod's hosts and resolv.conf start from.
	HostFiles    podsandbox.HostFiles
	BuiltinPause BuiltinPause
	// Shims is where the runc shims listen, in namespace Namespace: how a
	// pod joins its group's shim, and how berth reaches a shim containerd
	// lost.
	Shims shimproc.Sockets
	// PodsPerShim is how many pods of a runc-based handler share a shim,
	// HandlerPodsPerShim the same for handlers set apart; 1 gives every
	// pod a shim of its own.
	PodsPerShim        int
	HandlerPodsPerShim map[string]int
	// WarmShims are the handlers whose shared shim a shim keeper keeps
	// running while none of their pods does (package keeper).
	WarmShims []string
	// WarmShimIdleTimeout is how long a shim keeper outlives the last pod
	// of its scope; 0 keeps it for good.
	WarmShimIdleTimeout time.Duration
	// CrossNamespaceShims are the handlers whose pods share shims with
	// pods of other Kubernetes namespaces; every other handler's pods
	// share one only with pods of their own namespace.
	CrossNamespaceShims []string
	// ConfigErr is set when berth's own config is invalid: the controller
	// then runs on defaults, so that the sandboxes it has keep being
	// stopped and removed, refuses new ones with this error, and leaves
	// the shim keepers it finds as they are.
	ConfigErr error
}
