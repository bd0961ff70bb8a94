package main

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// containerdConnOptions are the options of berthd's connection to
// containerd that carry it across a containerd restart. containerd's CRI
// calls berthd as soon as it serves again, and those calls need
// containerd, while berthd's connection is still backing off from the
// restart (containerd's client waits up to 10 s between attempts, failing
// every call in the gap with "connection refused"). Each attempt here
// follows the last within a second, on a local socket where an attempt
// costs nothing; and a call with a deadline, as CRI's and the retry
// queue's all have, waits for the connection, up to its deadline, instead
// of failing at once. A call without one (a wait on a pause task) fails
// at once as before, so that nothing waits for good on a containerd that
// stays down.
func containerdConnOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 10 * time.Second,
		}),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(ctx, method, req, reply, cc, waitForReady(ctx, opts)...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(ctx, desc, cc, method, waitForReady(ctx, opts)...)
		}),
	}
}

// waitForReady adds WaitForReady to the options of a call whose ctx has a
// deadline.
func waitForReady(ctx context.Context, opts []grpc.CallOption) []grpc.CallOption {
	if _, ok := ctx.Deadline(); ok {
		return append(opts, grpc.WaitForReady(true))
	}
	return opts
}
