// Package controller implements containerd's sandbox.Controller for pods
// whose sandbox is a pause container: it makes the pause container and task,
// watches the task's exit, and answers CRI's Status, Wait and Platform from
// memory.
package controller

import (
	"context"
	"fmt"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/store"
)

// Namespace is the containerd namespace CRI keeps pods in.
const Namespace = "k8s.io"

// Labels and extensions berth puts on the pause container. They are berth's
// own on purpose: with CRI's io.cri-containerd.kind=sandbox label, CRI would
// hand the container to its built-in controller after a restart.
const (
	LabelKind        = "io.berth.kind"
	LabelKindSandbox = "sandbox"
	// LabelKindStartLease marks the lease a pause snapshot is made under.
	LabelKindStartLease = "start-lease"
	// LabelRuntimeHandler and LabelNetNS record what Create was given, and
	// LabelSELinux the process label Start chose, for recovery.
	LabelRuntimeHandler = "io.berth.sandbox.runtime-handler"
	LabelNetNS          = "io.berth.sandbox.netns"
	LabelSELinux        = "io.berth.sandbox.selinux-label"
	// LabelResources holds the pod resources last applied by Update, JSON.
	LabelResources = "io.berth.sandbox.resources"
	// ExtensionConfig holds the PodSandboxConfig.
	ExtensionConfig = "io.berth.sandbox.config"
)

// Failpoints, in test builds only (build tag berth_failpoint): a pod
// annotation FailpointAnnotationPrefix+<point> = "N" fails that sandbox's
// first N passes through the point.
const (
	FailpointAnnotationPrefix = "io.berth.failpoint."
	// FailpointTaskDelete fails the deletion of an exited pause task.
	FailpointTaskDelete = "task-delete"
)

// Labels of ControllerInstance that CRI reads.
const (
	instanceLabelSELinux     = "selinux_label"
	instanceLabelRuntimeType = "oci_runtime_type"
)

// unknownExitCode is the exit code recorded when the real one is lost, as in
// containerd.
const unknownExitCode = 255

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
	// BuiltinPause runs the handler's pods on berth's built-in pause (the
	// shared rootfs at Config.BuiltinPauseRootfs) instead of the pause
	// image. A berth setting, not CRI's.
	BuiltinPause bool
}

// CRIConfig is the part of CRI's runtime and image config berth follows, so
// that a handler behaves the same under berth as under the built-in.
type CRIConfig struct {
	// SandboxImage is the pause image CRI pins (pinned_images.sandbox) and
	// pulls before Start.
	SandboxImage string
	// Snapshotter is CRI's default snapshotter.
	Snapshotter             string
	DefaultRuntimeName      string
	Runtimes                map[string]Runtime
	RestrictOOMScoreAdj     bool
	EnableUnprivilegedPorts bool
	EnableUnprivilegedICMP  bool
	// UnsetSeccompProfile is the seccomp profile of pods that name none.
	UnsetSeccompProfile string
}

// Config is everything the controller is built from.
type Config struct {
	CRI CRIConfig
	// Dirs are where sandbox files live.
	Dirs podsandbox.Dirs
	// StopTimeout bounds how long Stop waits for the pause task's exit to be
	// handled.
	StopTimeout time.Duration
	// ExitTimeout bounds the first attempt at handling an exit; failures go
	// to the retry monitor.
	ExitTimeout time.Duration
	// SeccompEnabled says whether the kernel supports seccomp.
	SeccompEnabled bool
	// HostFiles are the node files a pod's hosts and resolv.conf start from.
	HostFiles podsandbox.HostFiles
	// BuiltinPauseRootfs is the shared rootfs of the built-in pause, ""
	// when no handler uses it.
	BuiltinPauseRootfs string
	// ContainerdAddress is containerd's gRPC address; shims derive their
	// socket from it.
	ContainerdAddress string
}

// Controller is berth's sandbox controller.
type Controller struct {
	config    Config
	client    *containerd.Client
	store     *store.Store
	monitor   *events.Monitor
	locks     *keyLock
	telemetry *telemetry
}

var _ sandbox.Controller = (*Controller)(nil)

// New returns a controller. monitor retries exit handling that failed; the
// controller stops it on Close.
func New(cfg Config, client *containerd.Client, monitor *events.Monitor) *Controller {
	s := store.New()
	return &Controller{
		config:    cfg,
		client:    client,
		store:     s,
		monitor:   monitor,
		locks:     newKeyLock(),
		telemetry: newTelemetry(s),
	}
}

// Close stops the retry monitor. containerd calls it when it shuts down.
func (c *Controller) Close() error {
	c.monitor.Stop()
	return nil
}

// Platform answers from memory: pause containers run on the node's platform.
func (c *Controller) Platform(_ context.Context, id string) (imagespec.Platform, error) {
	if _, err := c.store.Get(id); err != nil {
		return imagespec.Platform{}, err
	}
	return platforms.DefaultSpec(), nil
}

// runtime resolves the CRI runtime handler of a sandbox the way CRI does.
func (c *Controller) runtime(md store.Metadata) (Runtime, error) {
	handler := md.RuntimeHandler
	if md.Config.GetAnnotations()[annotationUntrustedWorkload] == "true" {
		handler = runtimeUntrusted
	}
	if handler == "" {
		handler = c.config.CRI.DefaultRuntimeName
	}
	r, ok := c.config.CRI.Runtimes[handler]
	if !ok {
		return Runtime{}, fmt.Errorf("runtime handler %q is not configured: %w", handler, errdefs.ErrNotFound)
	}
	if r.Type == "" {
		// Without a runtime_type the sandbox record's runtime name applies.
		r.Type = md.Runtime.Name
	}
	return r, nil
}

// CRI's untrusted-workload rule: such pods run on the "untrusted" handler.
const (
	annotationUntrustedWorkload = "io.kubernetes.cri.untrusted-workload"
	runtimeUntrusted            = "untrusted"
)
