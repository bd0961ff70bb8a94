package main

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/containerd/containerd/v2/pkg/dialer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// readyWait bounds how long a call of berthd's waits for its connection to
// containerd to be ready before it goes out: long enough for the
// connection to come back once containerd serves again (an attempt at
// least every second), short enough that a containerd that stays down
// fails calls soon, as before, and holds no stop or rollback for long.
const readyWait = 3 * time.Second

// containerdConnOptions are the options of berthd's connection to
// containerd that carry it across a containerd restart. containerd's CRI
// calls berthd as soon as it serves again, and those calls need
// containerd, while berthd's connection is still backing off from the
// restart: containerd's client waits up to 10 s between attempts, and gRPC
// fails every call in the gap at once with "connection refused". Here each
// attempt follows the last within a second, on a local socket where an
// attempt costs nothing, and a call first waits for the connection, for
// at most readyWait and within its own deadline (awaitReady).
//
// A containerd away is Unavailable to berth, which waits for it, and
// never a call that ran out of time, which berth takes for a shim that
// does not answer. So containerd's dialer, which waits for a missing
// socket (from a clean stop to the next start) until the attempt's
// deadline, waits at most readyWait: gRPC holds a call that finds the
// connection attempting (it was ready a moment before) until the attempt
// fails. And a call that ran out of time while the connection was not
// ready fails Unavailable.
func containerdConnOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 10 * time.Second,
		}),
		grpc.WithContextDialer(func(ctx context.Context, address string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, readyWait)
			defer cancel()
			return dialer.ContextDialer(ctx, address)
		}),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if err := awaitReady(ctx, cc); err != nil {
				return err
			}
			return unavailableIfAway(cc, invoker(ctx, method, req, reply, cc, opts...))
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			if err := awaitReady(ctx, cc); err != nil {
				return nil, err
			}
			s, err := streamer(ctx, desc, cc, method, opts...)
			return s, unavailableIfAway(cc, err)
		}),
	}
}

// awaitReady waits until cc is ready, for at most readyWait and while ctx
// lives. A connection still not ready then fails the call Unavailable, as
// gRPC fails one while the connection backs off, whichever of the two
// ended the wait; a call cancelled, or on a closed connection, fails
// Canceled.
func awaitReady(ctx context.Context, cc *grpc.ClientConn) error {
	s := cc.GetState()
	if s == connectivity.Ready {
		return nil
	}
	wait, cancel := context.WithTimeout(ctx, readyWait)
	defer cancel()
	for ; s != connectivity.Ready; s = cc.GetState() {
		switch s {
		case connectivity.Shutdown:
			return status.Error(codes.Canceled, "connection to containerd closed")
		case connectivity.Idle:
			cc.Connect()
		}
		if cc.WaitForStateChange(wait, s) {
			continue
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "connection to containerd not ready (%s)", s)
	}
	return nil
}

// unavailableIfAway is a call's err, but Unavailable for a call that ran
// out of time while the connection to containerd was not ready.
func unavailableIfAway(cc *grpc.ClientConn, err error) error {
	if status.Code(err) != codes.DeadlineExceeded {
		return err
	}
	if s := cc.GetState(); s != connectivity.Ready {
		return status.Errorf(codes.Unavailable, "connection to containerd not ready (%s): %v", s, err)
	}
	return err
}
