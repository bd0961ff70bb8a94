package main

import (
	"context"
	"time"

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
// at most readyWait and within its own deadline (awaitReady). An attempt
// lasts at most readyWait too: gRPC holds a call that finds the connection
// attempting (it was ready a moment before) until the attempt fails, and
// containerd's dialer stretches an attempt to its deadline while the socket
// is missing (from a clean stop to the next start); a call must not run
// out of time there, as if a shim did not answer.
func containerdConnOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: readyWait,
		}),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if err := awaitReady(ctx, cc); err != nil {
				return err
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			if err := awaitReady(ctx, cc); err != nil {
				return nil, err
			}
			return streamer(ctx, desc, cc, method, opts...)
		}),
	}
}

// awaitReady waits until cc is ready, for at most readyWait and while ctx
// lives. A connection still not ready then fails the call Unavailable, as
// gRPC fails one while the connection backs off: containerd away is always
// Unavailable to berth, which waits for it, and never a call that ran out
// of time, which berth takes for a shim that does not answer.
func awaitReady(ctx context.Context, cc *grpc.ClientConn) error {
	s := cc.GetState()
	if s == connectivity.Ready {
		return nil
	}
	wait, cancel := context.WithTimeout(ctx, readyWait)
	defer cancel()
	for ; s != connectivity.Ready; s = cc.GetState() {
		if s == connectivity.Idle {
			cc.Connect()
		}
		if cc.WaitForStateChange(wait, s) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		return status.Errorf(codes.Unavailable, "connection to containerd not ready after %s (%s)", readyWait, s)
	}
	return nil
}
