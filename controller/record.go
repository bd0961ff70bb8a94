package controller

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/podsandbox"
	"github.com/berth-dev/berth/rollback"
	"github.com/berth-dev/berth/store"
)

// What berth records on a pause container, to rebuild the sandbox after a
// restart, lives in two container extensions. Only berth writes a
// container's extensions: pods and images set labels, which berth writes
// for people (ctr containers ls) and never reads back. A container with
// extensionRecord is a berth pause container; CRI's sandbox record of the
// same ID, with berth as its sandboxer, says the sandbox still exists.
const (
	// extensionConfig holds the PodSandboxConfig, as protobuf.
	extensionConfig = "io.berth.sandbox.config"
	// extensionRecord holds a record, as JSON.
	extensionRecord = "io.berth.sandbox.record"
	recordTypeURL   = "io.berth.sandbox.Record.v1"
)

// Labels berth puts on what it makes, for people: nothing reads them back.
// They are berth's own on purpose: with CRI's io.cri-containerd.kind=sandbox
// label, CRI would hand the pause container to its built-in controller
// after a restart.
const (
	LabelKind        = "io.berth.kind"
	LabelKindSandbox = "sandbox"
	LabelKindKeeper  = "shim-keeper"
	// LabelKindStartLease marks the lease a pause snapshot is made under.
	LabelKindStartLease = "start-lease"

	// criLabelKind is the label CRI lists its sandbox and app containers
	// by (crilabels.ContainerKindLabel, internal to containerd).
	criLabelKind = "io.cri-containerd.kind"
)

// record is what the pause container does not hold by itself and recovery
// needs: what Create was given, what Start chose, what Update applied.
type record struct {
	// Sandboxer is the berth that made the container (Config.Sandboxer):
	// two berths can serve one containerd (berthd beside the build with
	// berth, as make bench runs them), and each recovers only its own. ""
	// is a container of a berth from before the name was recorded.
	Sandboxer      string `json:"sandboxer,omitempty"`
	RuntimeHandler string `json:"runtimeHandler,omitempty"`
	NetNSPath      string `json:"netnsPath,omitempty"`
	ProcessLabel   string `json:"processLabel,omitempty"`
	// ShimGroup is the pause task's shim group, "" for a shim of its own.
	ShimGroup string `json:"shimGroup,omitempty"`
	// ShimRuntime identifies what the shim runs (placement.Scope.Runtime).
	ShimRuntime string `json:"shimRuntime,omitempty"`
	// Resources and Overhead are the pod resources Update last applied.
	Resources *runtimeapi.LinuxContainerResources `json:"resources,omitempty"`
	Overhead  *runtimeapi.LinuxContainerResources `json:"overhead,omitempty"`
}

func (c *Controller) recordOf(sb *store.Sandbox) record {
	s := sb.Status()
	r := record{Sandboxer: c.config.Sandboxer, RuntimeHandler: sb.RuntimeHandler, NetNSPath: sb.NetNSPath, Resources: s.Resources, Overhead: s.Overhead}
	if s.Instance != nil {
		r.ProcessLabel, r.ShimGroup, r.ShimRuntime = s.Instance.ProcessLabel, s.Instance.ShimGroup, s.Instance.ShimRuntime
	}
	return r
}

// withRecord puts r and the pod config on the container being made or
// updated; it is both a NewContainerOpts and an UpdateContainerOpts.
func withRecord(r record, cfg *runtimeapi.PodSandboxConfig) func(context.Context, *containerd.Client, *containers.Container) error {
	return func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		rec, err := jsonExtension(recordTypeURL, r)
		if err != nil {
			return fmt.Errorf("encode sandbox record: %w", err)
		}
		config, err := typeurl.MarshalAnyToProto(cfg)
		if err != nil {
			return fmt.Errorf("encode pod config: %w", err)
		}
		setExtensions(c, map[string]typeurl.Any{extensionRecord: rec, extensionConfig: config})
		return nil
	}
}

// jsonExtension encodes v as JSON in a container extension of type typeURL.
func jsonExtension(typeURL string, v any) (*anypb.Any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: typeURL, Value: b}, nil
}

// setExtensions puts exts on container c.
func setExtensions(c *containers.Container, exts map[string]typeurl.Any) {
	if c.Extensions == nil {
		c.Extensions = map[string]typeurl.Any{}
	}
	maps.Copy(c.Extensions, exts)
}

// hasExtension says whether info carries extension key of type typeURL,
// which only berth writes.
func hasExtension(info containers.Container, key, typeURL string) bool {
	ext, ok := info.Extensions[key]
	return ok && ext.GetTypeUrl() == typeURL
}

// isBerthContainer says whether berth made the container.
func isBerthContainer(info containers.Container) bool {
	return hasExtension(info, extensionRecord, recordTypeURL)
}

// ownedBy says whether the record is of a container sandboxer made.
func (r record) ownedBy(sandboxer string) bool {
	return r.Sandboxer == "" || r.Sandboxer == sandboxer
}

// recordOn returns the record on a berth pause container.
func recordOn(info containers.Container) (record, error) {
	var r record
	if err := json.Unmarshal(info.Extensions[extensionRecord].GetValue(), &r); err != nil {
		return record{}, fmt.Errorf("decode sandbox record: %w", err)
	}
	return r, nil
}

// loadSandbox rebuilds a sandbox from what Start recorded on its pause
// container, whose record info is, and from cri, CRI's record of it.
func loadSandbox(container containerd.Container, info containers.Container, cri sandbox.Sandbox) (*store.Sandbox, error) {
	r, err := recordOn(info)
	if err != nil {
		return nil, err
	}
	ext, ok := info.Extensions[extensionConfig]
	if !ok {
		return nil, fmt.Errorf("no %s extension: %w", extensionConfig, errdefs.ErrNotFound)
	}
	var cfg runtimeapi.PodSandboxConfig
	if err := typeurl.UnmarshalTo(ext, &cfg); err != nil {
		return nil, fmt.Errorf("decode pod config: %w", err)
	}
	spec, cgroupsPath, err := specRecord(info.Spec)
	if err != nil {
		return nil, err
	}
	md := store.Metadata{ID: info.ID, NetNSPath: r.NetNSPath, Config: &cfg, Runtime: runtimeOf(info)}
	// Only for verbose status: berth's record is what recovery goes by.
	if err := withCRIMetadata(&md, cri); err != nil {
		return nil, err
	}
	md.RuntimeHandler = r.RuntimeHandler
	sb := store.NewSandbox(md)
	inst := &store.Instance{
		Container:   container,
		Spec:        spec,
		CgroupsPath: cgroupsPath,
		// The built-in pause's container has no image.
		Image:        cmp.Or(info.Image, podsandbox.BuiltinPauseName),
		Snapshotter:  info.Snapshotter,
		SnapshotKey:  info.SnapshotKey,
		RuntimeType:  info.Runtime.Name,
		ProcessLabel: r.ProcessLabel,
		ShimGroup:    r.ShimGroup,
		ShimRuntime:  r.ShimRuntime,
	}
	err = sb.Update(func(s store.Status) (store.Status, error) {
		s.CreatedAt, s.Instance, s.Resources, s.Overhead = info.CreatedAt, inst, r.Resources, r.Overhead
		return s, nil
	})
	return sb, err
}

// runtimeOf is the runtime a container runs on.
func runtimeOf(info containers.Container) sandbox.RuntimeOpts {
	return sandbox.RuntimeOpts{Name: info.Runtime.Name, Options: present(info.Runtime.Options)}
}

// present returns o, or nil for an Any that holds nothing: one with no
// type, which nothing can decode. A handler without an options table
// reaches berth so, and containerd's stores hand an unset field (a
// record's spec) back as a nil *anypb.Any, which is no nil typeurl.Any.
func present(o typeurl.Any) typeurl.Any {
	if o == nil || o.GetTypeUrl() == "" {
		return nil
	}
	return o
}

// specRecord is what berth keeps of a pause container's spec: its JSON as
// containerd stores it, and its cgroups path.
func specRecord(spec typeurl.Any) (json.RawMessage, string, error) {
	if spec == nil {
		return nil, "", fmt.Errorf("pause container has no spec: %w", errdefs.ErrNotFound)
	}
	var s struct {
		Linux struct {
			CgroupsPath string `json:"cgroupsPath"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(spec.GetValue(), &s); err != nil {
		return nil, "", fmt.Errorf("decode pause spec: %w", err)
	}
	return spec.GetValue(), s.Linux.CgroupsPath, nil
}

// A Start makes the pause snapshot under a lease of its own, named after
// the sandbox (CRI has one with the bare sandbox ID) and the attempt, and
// releases it when it ends. Each attempt has its own: a Start that a
// shared shim refused makes its pause container again, and a release of
// the first attempt's lease, retried because its answer was lost, must
// not end the second's. A start lease found at recovery means containerd
// died during that Start: recovery releases it, and the snapshot, if no
// container came to hold it, to the garbage collector, instead of the
// client's anonymous 24-hour lease holding it.
const (
	startLeasePrefix = "io.berth.start."
	// startLeaseExpiry is the longest a start lease can outlive a
	// containerd that died during Start if recovery never runs.
	startLeaseExpiry = time.Hour
)

// labelStartLeaseSandboxer names the berth whose Start a start lease is
// (Config.Sandboxer): two berths can serve one containerd, and each
// releases only its own leases. Leases, unlike containers, carry no label
// a pod gave.
const labelStartLeaseSandboxer = "io.berth.sandboxer"

func startLeaseOpts(sandboxer, id string, attempt int) []leases.Opt {
	return []leases.Opt{
		leases.WithID(startLeasePrefix + id + "." + strconv.Itoa(attempt)),
		leases.WithExpiration(startLeaseExpiry),
		leases.WithLabel(LabelKind, LabelKindStartLease),
		leases.WithLabel(labelStartLeaseSandboxer, sandboxer),
	}
}

// startLease makes the lease the attempt of sandbox id's Start makes its
// pause container, snapshot and task under; release ends it, or has the
// retry queue end it: a berthd outlives a containerd restart, whose
// recovery, unlike berth's in process, never runs to release a lease a
// Start left.
func (c *Controller) startLease(ctx context.Context, id string, attempt int) (_ context.Context, release func(), _ error) {
	ctx, done, err := c.client.WithLease(ctx, startLeaseOpts(c.config.Sandboxer, id, attempt)...)
	if err != nil {
		return nil, nil, fmt.Errorf("create start lease: %w", err)
	}
	releaseLease := func(ctx context.Context) error {
		if err := done(ctx); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("release start lease: %w", err)
		}
		return nil
	}
	return ctx, func() {
		// Past the caller's deadline, as an undo step, and bounded as one:
		// Start holds the sandbox's lock until the release returns. Detached:
		// the bound's timer, which the runtime drops only some time after
		// it is stopped, must not hold Start's context.
		ctx := events.Detached(ctx)
		first, cancel := context.WithTimeout(ctx, rollback.StepTimeout)
		defer cancel()
		if err := releaseLease(first); err != nil {
			log.G(ctx).WithError(err).Warn("release start lease; retrying")
			c.events.Retry(ctx, id, "release start lease", releaseLease)
		}
	}, nil
}

// isStartLease says whether l is the lease of a Start of sandboxer's, or
// of a berth from before the sandboxer was recorded.
func isStartLease(l leases.Lease, sandboxer string) bool {
	owner, named := l.Labels[labelStartLeaseSandboxer]
	return l.Labels[LabelKind] == LabelKindStartLease && strings.HasPrefix(l.ID, startLeasePrefix) &&
		(!named || owner == sandboxer)
}
