package sandboxapi

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	sandboxv1 "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/core/sandbox/proxy"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// seenCtx is what the controller could read from the ctx of a call.
type seenCtx struct {
	ns       string
	lease    bool
	incoming metadata.MD
	outgoing metadata.MD
}

// fake is a sandbox.Controller that records its last call of each kind and
// answers with the canned values below.
type fake struct {
	mu      sync.Mutex
	calls   int
	seen    seenCtx
	sb      sandbox.Sandbox
	create  sandbox.CreateOptions
	stop    sandbox.StopOptions
	verbose bool
	update  []string
	lastID  string

	err       error                      // returned by every method when set
	inst      sandbox.ControllerInstance // Start
	status    sandbox.ControllerStatus   // Status
	exit      sandbox.ExitStatus         // Wait, unless blockWait
	blockWait bool                       // Wait blocks until its ctx ends
	waiting   chan struct{}              // gets a value when Wait is called
}

func (f *fake) record(ctx context.Context, id string) error {
	var s seenCtx
	s.ns, _ = namespaces.Namespace(ctx)
	_, s.lease = leases.FromContext(ctx)
	s.incoming, _ = metadata.FromIncomingContext(ctx)
	s.outgoing, _ = metadata.FromOutgoingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.seen, f.lastID = s, id
	return f.err
}

func (f *fake) Create(ctx context.Context, sb sandbox.Sandbox, opts ...sandbox.CreateOpt) error {
	var co sandbox.CreateOptions
	for _, o := range opts {
		if err := o(&co); err != nil {
			return err
		}
	}
	f.mu.Lock()
	f.sb, f.create = sb, co
	f.mu.Unlock()
	return f.record(ctx, sb.ID)
}

func (f *fake) Start(ctx context.Context, id string) (sandbox.ControllerInstance, error) {
	return f.inst, f.record(ctx, id)
}

func (f *fake) Platform(ctx context.Context, id string) (imagespec.Platform, error) {
	return imagespec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, f.record(ctx, id)
}

func (f *fake) Stop(ctx context.Context, id string, opts ...sandbox.StopOpt) error {
	var so sandbox.StopOptions
	for _, o := range opts {
		o(&so)
	}
	f.mu.Lock()
	f.stop = so
	f.mu.Unlock()
	return f.record(ctx, id)
}

func (f *fake) Wait(ctx context.Context, id string) (sandbox.ExitStatus, error) {
	if err := f.record(ctx, id); err != nil {
		return sandbox.ExitStatus{}, err
	}
	f.waiting <- struct{}{}
	if f.blockWait {
		<-ctx.Done()
		return sandbox.ExitStatus{}, ctx.Err() // Canceled: must not reach containerd
	}
	return f.exit, nil
}

func (f *fake) Status(ctx context.Context, id string, verbose bool) (sandbox.ControllerStatus, error) {
	f.mu.Lock()
	f.verbose = verbose
	f.mu.Unlock()
	return f.status, f.record(ctx, id)
}

func (f *fake) Shutdown(ctx context.Context, id string) error { return f.record(ctx, id) }

func (f *fake) Metrics(ctx context.Context, id string) (*types.Metric, error) {
	return &types.Metric{ID: id, Data: &anypb.Any{TypeUrl: "m", Value: []byte("42")}}, f.record(ctx, id)
}

func (f *fake) Update(ctx context.Context, id string, sb sandbox.Sandbox, fields ...string) error {
	f.mu.Lock()
	f.sb, f.update = sb, fields
	f.mu.Unlock()
	return f.record(ctx, id)
}

func (f *fake) get() *fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &fake{calls: f.calls, seen: f.seen, sb: f.sb, create: f.create, stop: f.stop, verbose: f.verbose, update: f.update, lastID: f.lastID}
}

type env struct {
	srv  *Server
	f    *fake
	ctrl sandbox.Controller         // containerd's own proxy client
	raw  sandboxv1.ControllerClient // the generated client, which does not retry
	mu   sync.Mutex
	hdr  metadata.MD // the last call's headers, as they arrived
}

func newEnv(t *testing.T, ready bool) *env {
	t.Helper()
	e := &env{f: &fake{waiting: make(chan struct{}, 16)}}
	e.srv = NewServer("berth")
	if ready {
		e.srv.Serve(e.f)
	}
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		e.mu.Lock()
		e.hdr = md.Copy()
		e.mu.Unlock()
		return h(ctx, req)
	}))
	e.srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.raw = sandboxv1.NewControllerClient(conn)
	e.ctrl = proxy.NewSandboxController(e.raw, "berth")
	return e
}

// criCtx is a ctx like CRI's: namespace k8s.io; the lease stands for any
// lease containerd's side might carry.
func criCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return namespaces.WithNamespace(leases.WithLease(ctx, "containerd-lease"), "k8s.io")
}

func mustAny(t *testing.T, v any) typeurl.Any {
	t.Helper()
	a, err := typeurl.MarshalAny(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func sameAny(t *testing.T, what string, got, want typeurl.Any) {
	t.Helper()
	if got == nil || got.GetTypeUrl() != want.GetTypeUrl() || !bytes.Equal(got.GetValue(), want.GetValue()) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

var spec = &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte(`{"hostname":"pod"}`)}

func TestCreate(t *testing.T) {
	e := newEnv(t, true)
	runtimeOpts := mustAny(t, &runcoptions.Options{SystemdCgroup: true})
	ext := &anypb.Any{TypeUrl: "cri.Metadata", Value: []byte(`{"ID":"sb1"}`)}
	cfg := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "default", Uid: "uid"}}
	sb := sandbox.Sandbox{
		ID: "sb1", Sandboxer: "berth", Labels: map[string]string{"name": "pod"}, Spec: spec,
		Runtime:    sandbox.RuntimeOpts{Name: "io.containerd.runc.v2", Options: runtimeOpts},
		Extensions: map[string]typeurl.Any{"metadata": ext},
	}
	rootfs := []mount.Mount{{Type: "bind", Source: "/a", Options: []string{"rbind"}}}
	if err := e.ctrl.Create(criCtx(t), sb, sandbox.WithOptions(cfg), sandbox.WithNetNSPath("/var/run/netns/cni-1"),
		sandbox.WithAnnotations(map[string]string{"a": "b"}), sandbox.WithRootFS(rootfs)); err != nil {
		t.Fatal(err)
	}
	got := e.f.get()
	if got.sb.ID != "sb1" || got.sb.Sandboxer != "berth" || got.sb.Labels["name"] != "pod" || got.sb.Runtime.Name != "io.containerd.runc.v2" {
		t.Errorf("sandbox = %+v", got.sb)
	}
	sameAny(t, "Runtime.Options", got.sb.Runtime.Options, runtimeOpts)
	sameAny(t, "Spec", got.sb.Spec, spec)
	sameAny(t, "Extensions[metadata]", got.sb.Extensions["metadata"], ext)
	var gotCfg runtimeapi.PodSandboxConfig
	if err := typeurl.UnmarshalTo(got.create.Options, &gotCfg); err != nil || gotCfg.GetMetadata().GetName() != "pod" {
		t.Errorf("PodSandboxConfig = %v, %v", &gotCfg, err)
	}
	if got.create.NetNSPath != "/var/run/netns/cni-1" || got.create.Annotations["a"] != "b" ||
		len(got.create.Rootfs) != 1 || got.create.Rootfs[0].Source != "/a" || got.create.Rootfs[0].Options[0] != "rbind" {
		t.Errorf("create options = %+v", got.create)
	}

	// Nothing optional: no typed-nil Any may reach the controller.
	if err := e.ctrl.Create(criCtx(t), sandbox.Sandbox{ID: "sb2"}); err != nil {
		t.Fatal(err)
	}
	got = e.f.get()
	if got.create.Options != nil || got.sb.Runtime.Options != nil || got.sb.Spec != nil || got.create.Rootfs != nil {
		t.Errorf("absent values arrived as %#v, %#v, %#v, %#v", got.create.Options, got.sb.Runtime.Options, got.sb.Spec, got.create.Rootfs)
	}

	// A request without Sandbox, or without its Runtime, must not panic.
	for _, req := range []*sandboxv1.ControllerCreateRequest{
		{SandboxID: "sb3"},
		{SandboxID: "sb4", Sandbox: &types.Sandbox{SandboxID: "sb4"}},
	} {
		if _, err := e.raw.Create(criCtx(t), req); err != nil {
			t.Fatal(err)
		}
		if got := e.f.get(); got.sb.ID != req.SandboxID {
			t.Errorf("sandbox ID = %q, want %q", got.sb.ID, req.SandboxID)
		}
	}
}

func TestCalls(t *testing.T) {
	e := newEnv(t, true)
	ctx := criCtx(t)
	created, exited := time.Unix(1700000000, 5).UTC(), time.Unix(1700000100, 7).UTC()
	extra := &anypb.Any{TypeUrl: "extra", Value: []byte("x")}
	e.f.inst = sandbox.ControllerInstance{SandboxID: "sb1", Pid: 42, CreatedAt: created, Address: "unix:///s", Version: 2,
		Labels: map[string]string{"selinux_label": "system_u:system_r:container_t:s0:c1,c2"}, Spec: spec}
	e.f.status = sandbox.ControllerStatus{SandboxID: "sb1", Pid: 42, State: "SANDBOX_READY", Info: map[string]string{"k": "v"},
		CreatedAt: created, ExitedAt: exited, Extra: extra, Address: "unix:///s", Version: 2}
	e.f.exit = sandbox.ExitStatus{ExitStatus: 137, ExitedAt: exited}

	inst, err := e.ctrl.Start(ctx, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if inst.SandboxID != "sb1" || inst.Pid != 42 || !inst.CreatedAt.Equal(created) || inst.Address != "unix:///s" || inst.Version != 2 ||
		inst.Labels["selinux_label"] != e.f.inst.Labels["selinux_label"] {
		t.Errorf("Start = %+v", inst)
	}
	sameAny(t, "Start Spec", inst.Spec, spec)

	if p, err := e.ctrl.Platform(ctx, "sb1"); err != nil || p.OS != "linux" || p.Architecture != "arm64" || p.Variant != "v8" {
		t.Errorf("Platform = %+v, %v", p, err)
	}

	if err := e.ctrl.Stop(ctx, "sb1"); err != nil || e.f.get().stop.Timeout != nil {
		t.Errorf("Stop without timeout: %v, timeout %v", err, e.f.get().stop.Timeout)
	}
	if err := e.ctrl.Stop(ctx, "sb1", sandbox.WithTimeout(3*time.Second)); err != nil {
		t.Fatal(err)
	} else if to := e.f.get().stop.Timeout; to == nil || *to != 3*time.Second {
		t.Errorf("Stop timeout = %v, want 3s", to)
	}

	if st, err := e.ctrl.Wait(ctx, "sb1"); err != nil || st.ExitStatus != 137 || !st.ExitedAt.Equal(exited) {
		t.Errorf("Wait = %+v, %v", st, err)
	}

	st, err := e.ctrl.Status(ctx, "sb1", true)
	if err != nil {
		t.Fatal(err)
	}
	if st.SandboxID != "sb1" || st.Pid != 42 || st.State != "SANDBOX_READY" || st.Info["k"] != "v" || !st.CreatedAt.Equal(created) ||
		!st.ExitedAt.Equal(exited) || st.Address != "unix:///s" || st.Version != 2 || !e.f.get().verbose {
		t.Errorf("Status = %+v", st)
	}
	sameAny(t, "Status Extra", st.Extra, extra)

	if err := e.ctrl.Shutdown(ctx, "sb1"); err != nil || e.f.get().lastID != "sb1" {
		t.Errorf("Shutdown: %v, id %q", err, e.f.get().lastID)
	}

	if m, err := e.ctrl.Metrics(ctx, "sb1"); err != nil || m.GetID() != "sb1" || string(m.GetData().GetValue()) != "42" {
		t.Errorf("Metrics = %v, %v", m, err)
	}

	// The proxy's Update sends no Sandboxer.
	res := &anypb.Any{TypeUrl: "updated-resources", Value: []byte(`{}`)}
	if err := e.ctrl.Update(ctx, "sb1", sandbox.Sandbox{ID: "sb1", Extensions: map[string]typeurl.Any{"updated-resources": res}}, "extensions"); err != nil {
		t.Fatal(err)
	}
	got := e.f.get()
	if got.lastID != "sb1" || len(got.update) != 1 || got.update[0] != "extensions" {
		t.Errorf("Update got id %q, fields %v", got.lastID, got.update)
	}
	sameAny(t, "Update extension", got.sb.Extensions["updated-resources"], res)
}

func TestSandboxer(t *testing.T) {
	e := newEnv(t, true)
	other := proxy.NewSandboxController(e.raw, "podsandbox")
	if _, err := other.Status(criCtx(t), "sb1", false); !errdefs.IsNotFound(err) {
		t.Errorf("wrong sandboxer: %v, want NotFound", err)
	}
	if n := e.f.get().calls; n != 0 {
		t.Errorf("controller called %d times for another sandboxer", n)
	}
}

func TestErrorClasses(t *testing.T) {
	e := newEnv(t, true)
	for _, tc := range []struct {
		err error
		is  func(error) bool
	}{
		{errdefs.ErrNotFound, errdefs.IsNotFound},
		{errdefs.ErrFailedPrecondition, errdefs.IsFailedPrecondition},
		{errdefs.ErrInvalidArgument, errdefs.IsInvalidArgument},
	} {
		e.f.mu.Lock()
		e.f.err = fmt.Errorf("sandbox sb1 is odd: %w", tc.err)
		e.f.mu.Unlock()
		_, err := e.ctrl.Status(criCtx(t), "sb1", false)
		if !tc.is(err) || !strings.Contains(err.Error(), "sandbox sb1 is odd") {
			t.Errorf("%v came back as %v", tc.err, err)
		}
	}
}

func TestContext(t *testing.T) {
	e := newEnv(t, true)
	if _, err := e.ctrl.Status(criCtx(t), "sb1", false); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	hdr := e.hdr
	e.mu.Unlock()
	if len(hdr[leases.GRPCHeader]) == 0 || len(hdr[namespaces.GRPCHeader]) == 0 {
		t.Fatalf("the test's headers did not arrive: %v", hdr)
	}
	s := e.f.get().seen
	if s.ns != "k8s.io" {
		t.Errorf("namespace = %q, want k8s.io", s.ns)
	}
	if s.lease || len(s.incoming) != 0 {
		t.Errorf("controller sees incoming metadata %v (lease %v)", s.incoming, s.lease)
	}
	if ns := s.outgoing[namespaces.GRPCHeader]; len(ns) != 1 || ns[0] != "k8s.io" || len(s.outgoing[leases.GRPCHeader]) != 0 {
		t.Errorf("outgoing metadata = %v, want the namespace only", s.outgoing)
	}
}

func TestServe(t *testing.T) {
	e := newEnv(t, false)
	ctx, cancel := context.WithTimeout(criCtx(t), 200*time.Millisecond)
	defer cancel()
	_, err := e.ctrl.Status(ctx, "sb1", false)
	if !errdefs.IsDeadlineExceeded(err) || errdefs.IsNotFound(err) {
		t.Errorf("Status before Serve: %v, want DeadlineExceeded", err)
	}
	// The client ends the call itself at its deadline, so check what the
	// server answers, too.
	sctx, scancel := context.WithTimeout(criCtx(t), 50*time.Millisecond)
	defer scancel()
	_, err = (&service{s: e.srv}).Status(sctx, &sandboxv1.ControllerStatusRequest{SandboxID: "sb1"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("server answered %v before Serve, want DeadlineExceeded", err)
	}
	if n := e.f.get().calls; n != 0 {
		t.Errorf("controller called %d times before Serve", n)
	}

	e.srv.Serve(e.f)
	if _, err := e.ctrl.Status(criCtx(t), "sb1", false); err != nil {
		t.Errorf("Status after Serve: %v", err)
	}
}

// TestMetricsBeforeServe: Metrics answers Unavailable at once until Serve,
// where every other call waits, so that CRI's stats lists skip berth's
// pods rather than fail when their deadline passes.
func TestMetricsBeforeServe(t *testing.T) {
	e := newEnv(t, false)
	ctx, cancel := context.WithTimeout(criCtx(t), 5*time.Second)
	defer cancel()
	if _, err := e.ctrl.Metrics(ctx, "sb1"); !errdefs.IsUnavailable(err) || ctx.Err() != nil {
		t.Errorf("Metrics before Serve: %v (deadline: %v), want Unavailable at once", err, ctx.Err())
	}
	if _, err := e.raw.Metrics(ctx, &sandboxv1.ControllerMetricsRequest{SandboxID: "sb1", Sandboxer: "other"}); status.Code(err) != codes.NotFound {
		t.Errorf("Metrics of another sandboxer before Serve: %v, want NotFound", err)
	}
	if n := e.f.get().calls; n != 0 {
		t.Errorf("controller called %d times before Serve", n)
	}
	e.srv.Serve(e.f)
	if _, err := e.ctrl.Metrics(criCtx(t), "sb1"); err != nil {
		t.Errorf("Metrics after Serve: %v", err)
	}
}

func TestShutdown(t *testing.T) {
	e := newEnv(t, true)
	e.f.blockWait = true
	done := make(chan error, 1)
	go func() {
		_, err := e.raw.Wait(criCtx(t), &sandboxv1.ControllerWaitRequest{SandboxID: "sb1", Sandboxer: "berth"})
		done <- err
	}()
	<-e.f.waiting
	e.srv.Shutdown()
	if err := <-done; status.Code(err) != codes.Unavailable {
		t.Errorf("Wait in flight at Shutdown: %v, want Unavailable", err)
	}
	if _, err := e.raw.Wait(criCtx(t), &sandboxv1.ControllerWaitRequest{SandboxID: "sb1"}); status.Code(err) != codes.Unavailable {
		t.Errorf("Wait after Shutdown: %v, want Unavailable", err)
	}
	if _, err := e.ctrl.Status(criCtx(t), "sb1", false); !errdefs.IsUnavailable(err) {
		t.Errorf("Status after Shutdown: %v, want Unavailable", err)
	}
}

func TestShutdownBeforeServe(t *testing.T) {
	e := newEnv(t, false)
	done := make(chan error, 1)
	go func() {
		_, err := e.raw.Status(criCtx(t), &sandboxv1.ControllerStatusRequest{SandboxID: "sb1"})
		done <- err
	}()
	e.srv.Shutdown()
	if err := <-done; status.Code(err) != codes.Unavailable {
		t.Errorf("Status waiting for Serve at Shutdown: %v, want Unavailable", err)
	}
	if e.f.get().calls != 0 {
		t.Error("controller was called")
	}
}
