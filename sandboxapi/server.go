// Package sandboxapi serves a sandbox.Controller over gRPC as containerd's
// containerd.services.sandbox.v1.Controller service, so that an unmodified
// containerd loads berth as a proxy plugin:
//
//	[proxy_plugins.berth]
//	  type = "sandbox"
//	  address = "/run/berthd.sock"
//
// containerd's client side is core/sandbox/proxy. Its own server side
// (plugins/services/sandbox) is unexported and drops fields (Start's Spec,
// Address and Version), always stops with a zero timeout, and rejects the
// empty Sandboxer that the proxy's Update sends; hence this adapter.
package sandboxapi

import (
	"context"
	"fmt"
	"sync"
	"time"

	api "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Server adapts a sandbox.Controller to the gRPC service. Its own methods
// are the daemon's controls; the RPCs live on an unexported type, because the
// service's Shutdown RPC would clash with Server.Shutdown.
type Server struct {
	c    sandbox.Controller
	name string

	ready     chan struct{}
	readyOnce sync.Once
	down      chan struct{}
	downOnce  sync.Once
}

// NewServer returns a server of the sandboxer called name (the
// proxy_plugins key in containerd's config and the runtime handlers'
// sandboxer) whose calls wait until Serve gives it its controller.
func NewServer(name string) *Server {
	return &Server{name: name, ready: make(chan struct{}), down: make(chan struct{})}
}

// Register adds the service to g.
func (s *Server) Register(g *grpc.Server) {
	api.RegisterControllerServer(g, &service{s: s})
}

// Serve lets calls through to c. Until then they wait, so that the daemon
// can listen before containerd answers it, and containerd's CRI recovery,
// which asks Status of every pod it stored, is not answered from an empty
// store (NotFound would mark the pods NOTREADY). Call it once c has listed
// its sandboxes; only the first call counts.
func (s *Server) Serve(c sandbox.Controller) {
	s.readyOnce.Do(func() {
		s.c = c
		close(s.ready)
	})
}

// Shutdown makes Waits in flight, and every new call, fail Unavailable.
// containerd's proxy retries a Wait on Unavailable until berth is back; any
// other answer, Canceled included, would be taken as the sandbox's exit.
func (s *Server) Shutdown() { s.downOnce.Do(func() { close(s.down) }) }

func (s *Server) isDown() bool { return closed(s.down) }

// served says whether Serve has given the server its controller.
func (s *Server) served() bool { return closed(s.ready) }

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (s *Server) errDown() error {
	return fmt.Errorf("sandboxer %q is shutting down: %w", s.name, errdefs.ErrUnavailable)
}

// enter admits a call and returns the ctx to call the controller with.
func (s *Server) enter(ctx context.Context, sandboxer string) (context.Context, error) {
	if sandboxer != "" && sandboxer != s.name {
		return ctx, fmt.Errorf("sandboxer %q (this is %q): %w", sandboxer, s.name, errdefs.ErrNotFound)
	}
	if s.isDown() {
		return ctx, s.errDown()
	}
	select {
	case <-s.ready:
	case <-s.down:
		return ctx, s.errDown()
	case <-ctx.Done():
		// The ctx's own error, so the caller sees DeadlineExceeded or
		// Canceled and not a verdict on the sandbox.
		return ctx, fmt.Errorf("waiting for sandboxer %q to recover: %w", s.name, ctx.Err())
	}
	// containerd's client takes the namespace and the lease from the
	// *incoming* gRPC metadata as well as from ctx values
	// (namespaces.Namespace, leases.FromContext). Left in place, containerd's
	// headers would make berth's own calls to containerd go out with no
	// namespace header (the client thinks it has one already) and inside
	// containerd's lease rather than berth's. So keep only the namespace,
	// as a ctx value and an outgoing header.
	ns, ok := namespaces.Namespace(ctx)
	ctx = metadata.NewIncomingContext(ctx, metadata.MD{})
	if ok {
		ctx = namespaces.WithNamespace(ctx, ns)
	}
	return ctx, nil
}

// serve runs f for one RPC: admission, logging and the mapping of errors to
// gRPC codes, with errgrpc so that their errdefs class survives the proxy.
func serve[R any](ctx context.Context, s *Server, method, sandboxer, id string, f func(context.Context) (*R, error)) (*R, error) {
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"method": method, "sandbox_id": id}))
	ctx, err := s.enter(ctx, sandboxer)
	if err == nil {
		var r *R
		if r, err = f(ctx); err == nil {
			return r, nil
		}
	}
	log.G(ctx).WithError(err).Debug("sandbox api call failed")
	return nil, errgrpc.ToGRPC(err)
}

// fromProto is sandbox.FromProto made safe for the wire: FromProto
// dereferences Runtime, and turns an absent Any into a typed-nil *anypb.Any,
// which is not nil as a typeurl.Any.
func fromProto(pb *types.Sandbox, id string) sandbox.Sandbox {
	if pb == nil {
		return sandbox.Sandbox{ID: id}
	}
	if pb.Runtime == nil {
		pb.Runtime = &types.Sandbox_Runtime{}
	}
	sb := sandbox.FromProto(pb)
	if pb.Runtime.Options == nil {
		sb.Runtime.Options = nil
	}
	if pb.Spec == nil {
		sb.Spec = nil
	}
	if sb.ID == "" {
		sb.ID = id
	}
	return sb
}

type service struct {
	api.UnimplementedControllerServer
	s *Server
}

func (v *service) Create(ctx context.Context, req *api.ControllerCreateRequest) (*api.ControllerCreateResponse, error) {
	return serve(ctx, v.s, "Create", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerCreateResponse, error) {
		opts := []sandbox.CreateOpt{sandbox.WithNetNSPath(req.GetNetnsPath()), sandbox.WithAnnotations(req.GetAnnotations())}
		if len(req.GetRootfs()) > 0 {
			opts = append(opts, sandbox.WithRootFS(mount.FromProto(req.GetRootfs())))
		}
		// Set as is, not through WithOptions (which would wrap the Any
		// again), and only when present: a typed-nil *anypb.Any would pass
		// the controller's Options == nil check.
		if o := req.GetOptions(); o != nil {
			opts = append(opts, func(co *sandbox.CreateOptions) error { co.Options = o; return nil })
		}
		if err := v.s.c.Create(ctx, fromProto(req.GetSandbox(), req.GetSandboxID()), opts...); err != nil {
			return nil, err
		}
		return &api.ControllerCreateResponse{SandboxID: req.GetSandboxID()}, nil
	})
}

func (v *service) Start(ctx context.Context, req *api.ControllerStartRequest) (*api.ControllerStartResponse, error) {
	return serve(ctx, v.s, "Start", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerStartResponse, error) {
		inst, err := v.s.c.Start(ctx, req.GetSandboxID())
		if err != nil {
			return nil, err
		}
		// CRI keeps Spec and Labels (the SELinux label) in its sandbox record.
		return &api.ControllerStartResponse{
			SandboxID: req.GetSandboxID(), Pid: inst.Pid, CreatedAt: protobuf.ToTimestamp(inst.CreatedAt),
			Labels: inst.Labels, Address: inst.Address, Version: inst.Version, Spec: typeurl.MarshalProto(inst.Spec),
		}, nil
	})
}

func (v *service) Platform(ctx context.Context, req *api.ControllerPlatformRequest) (*api.ControllerPlatformResponse, error) {
	return serve(ctx, v.s, "Platform", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerPlatformResponse, error) {
		p, err := v.s.c.Platform(ctx, req.GetSandboxID())
		if err != nil {
			return nil, err
		}
		return &api.ControllerPlatformResponse{Platform: &types.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}}, nil
	})
}

func (v *service) Stop(ctx context.Context, req *api.ControllerStopRequest) (*api.ControllerStopResponse, error) {
	return serve(ctx, v.s, "Stop", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerStopResponse, error) {
		// The proxy sends 0 for "no timeout"; passing WithTimeout(0) would
		// ask for an immediate kill.
		var opts []sandbox.StopOpt
		if n := req.GetTimeoutSecs(); n > 0 {
			opts = append(opts, sandbox.WithTimeout(time.Duration(n)*time.Second))
		}
		return &api.ControllerStopResponse{}, v.s.c.Stop(ctx, req.GetSandboxID(), opts...)
	})
}

func (v *service) Wait(ctx context.Context, req *api.ControllerWaitRequest) (*api.ControllerWaitResponse, error) {
	return serve(ctx, v.s, "Wait", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerWaitResponse, error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		type result struct {
			st  sandbox.ExitStatus
			err error
		}
		done := make(chan result, 1)
		go func() {
			st, err := v.s.c.Wait(ctx, req.GetSandboxID())
			done <- result{st, err}
		}()
		// On Shutdown, answer Unavailable at once, whatever the controller
		// does with the cancelled ctx: any other error is an exit to CRI.
		select {
		case <-v.s.down:
			return nil, v.s.errDown()
		case r := <-done:
			if r.err != nil && v.s.isDown() {
				return nil, v.s.errDown()
			}
			if r.err != nil {
				return nil, r.err
			}
			return &api.ControllerWaitResponse{ExitStatus: r.st.ExitStatus, ExitedAt: protobuf.ToTimestamp(r.st.ExitedAt)}, nil
		}
	})
}

func (v *service) Status(ctx context.Context, req *api.ControllerStatusRequest) (*api.ControllerStatusResponse, error) {
	return serve(ctx, v.s, "Status", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerStatusResponse, error) {
		st, err := v.s.c.Status(ctx, req.GetSandboxID(), req.GetVerbose())
		if err != nil {
			return nil, err
		}
		return &api.ControllerStatusResponse{
			SandboxID: req.GetSandboxID(), Pid: st.Pid, State: st.State, Info: st.Info,
			CreatedAt: protobuf.ToTimestamp(st.CreatedAt), ExitedAt: protobuf.ToTimestamp(st.ExitedAt),
			Extra: typeurl.MarshalProto(st.Extra), Address: st.Address, Version: st.Version,
		}, nil
	})
}

func (v *service) Shutdown(ctx context.Context, req *api.ControllerShutdownRequest) (*api.ControllerShutdownResponse, error) {
	return serve(ctx, v.s, "Shutdown", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerShutdownResponse, error) {
		return &api.ControllerShutdownResponse{}, v.s.c.Shutdown(ctx, req.GetSandboxID())
	})
}

// Metrics does not wait for Serve: CRI's stats lists skip a pod whose
// Metrics is Unavailable, and fail for every pod if their deadline passes
// first. The controller answers so while it reloads its sandboxes too.
func (v *service) Metrics(ctx context.Context, req *api.ControllerMetricsRequest) (*api.ControllerMetricsResponse, error) {
	if !v.s.served() && !v.s.isDown() && (req.GetSandboxer() == "" || req.GetSandboxer() == v.s.name) {
		return nil, errgrpc.ToGRPC(fmt.Errorf("sandboxer %q is recovering its sandboxes: %w", v.s.name, errdefs.ErrUnavailable))
	}
	return serve(ctx, v.s, "Metrics", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerMetricsResponse, error) {
		m, err := v.s.c.Metrics(ctx, req.GetSandboxID())
		if err != nil {
			return nil, err
		}
		return &api.ControllerMetricsResponse{Metrics: m}, nil
	})
}

// Update accepts the empty Sandboxer that containerd's proxy sends (enter
// lets "" through).
func (v *service) Update(ctx context.Context, req *api.ControllerUpdateRequest) (*api.ControllerUpdateResponse, error) {
	return serve(ctx, v.s, "Update", req.GetSandboxer(), req.GetSandboxID(), func(ctx context.Context) (*api.ControllerUpdateResponse, error) {
		if req.GetSandbox() == nil {
			return nil, fmt.Errorf("update of sandbox %q without a sandbox: %w", req.GetSandboxID(), errdefs.ErrInvalidArgument)
		}
		return &api.ControllerUpdateResponse{}, v.s.c.Update(ctx, req.GetSandboxID(), fromProto(req.GetSandbox(), req.GetSandboxID()), req.GetFields()...)
	})
}
