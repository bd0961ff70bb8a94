package main

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/dialer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestContainerdConnAcrossRestart stops the server berthd's connection
// options dial long enough for the connection to back off, starts it
// again, and calls at once: the call waits for the connection and
// succeeds. While the server is down, its socket gone, a call fails
// Unavailable after readyWait, not at once nor when its deadline or the
// dialer's attempt ends.
func TestContainerdConnAcrossRestart(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "containerd.sock")
	serve := func() *grpc.Server {
		l, err := net.Listen("unix", socket)
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		healthpb.RegisterHealthServer(g, health.NewServer())
		go func() { _ = g.Serve(l) }()
		return g
	}
	g := serve()
	conn := containerdConn(t, socket)
	hc := healthpb.NewHealthClient(conn)
	check := func(ctx context.Context) error {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := check(ctx); err != nil {
		t.Fatalf("call before the restart: %v", err)
	}

	g.Stop()
	// Long enough for several failed attempts: containerd's client would
	// wait seconds before its next one.
	time.Sleep(3 * time.Second)
	start := time.Now()
	long, cancelLong := context.WithTimeout(t.Context(), time.Minute)
	defer cancelLong()
	if err := check(long); status.Code(err) != codes.Unavailable || time.Since(start) < readyWait || time.Since(start) > readyWait+time.Second {
		t.Errorf("call while the server is down: %v after %s, want Unavailable after %s", err, time.Since(start), readyWait)
	}

	g = serve()
	defer g.Stop()
	start = time.Now()
	if err := check(context.Background()); err != nil {
		t.Fatalf("call right after the restart: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("call right after the restart took %s, want the connection back within a second or so", took)
	}
}

// TestContainerdConnAttemptBounded: an attempt to connect to a containerd
// whose socket is missing, which containerd's dialer waits for, fails
// within readyWait, so that a call gRPC holds for the attempt fails
// Unavailable rather than at its own deadline.
func TestContainerdConnAttemptBounded(t *testing.T) {
	conn := containerdConn(t, filepath.Join(t.TempDir(), "containerd.sock"))
	start := time.Now()
	conn.Connect()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for s := conn.GetState(); s != connectivity.TransientFailure; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("connection still %s after %s, want the attempt failed within %s", s, time.Since(start), readyWait)
		}
	}
	if took := time.Since(start); took > readyWait+time.Second {
		t.Errorf("attempt failed after %s, want within %s", took, readyWait)
	}
}

// TestContainerdAwayIsUnavailable: while containerd's socket is missing, a
// call fails Unavailable even when its own deadline ends first, never
// DeadlineExceeded, which berth takes for a shim that does not answer; a
// call on a closed connection fails Canceled at once.
func TestContainerdAwayIsUnavailable(t *testing.T) {
	conn := containerdConn(t, filepath.Join(t.TempDir(), "containerd.sock"))
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("call with a 1 s deadline: %v, want Unavailable", err)
	}
	conn.Close()
	start := time.Now()
	if _, err := hc.Check(t.Context(), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Canceled || time.Since(start) > time.Second {
		t.Errorf("call on a closed connection: %v after %s, want Canceled at once", err, time.Since(start))
	}
}

// containerdConn is a connection to socket made as berthd makes it:
// containerd's client's options (its dialer, which waits for a missing
// socket until the attempt's deadline), then berthd's.
func containerdConn(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(dialer.DialAddress(socket), append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer.ContextDialer),
	}, containerdConnOptions()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
