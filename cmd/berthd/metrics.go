package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/docker/go-metrics"
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// hopMetrics count what running out of process costs: the calls containerd
// makes to berthd (grpc_server_*) and those berthd makes to containerd
// (grpc_client_*), by method and code, with their handling times. In
// process neither hop exists: CRI calls berth, and berth containerd's
// services, in memory.
type hopMetrics struct {
	server *grpcprom.ServerMetrics
	client *grpcprom.ClientMetrics
}

func newHopMetrics() hopMetrics {
	return hopMetrics{
		server: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram()),
		client: grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram()),
	}
}

// serverOptions count the calls berthd serves.
func (h hopMetrics) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(h.server.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(h.server.StreamServerInterceptor()),
	}
}

// clientOptions count the calls berthd makes to containerd.
func (h hopMetrics) clientOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(h.client.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(h.client.StreamClientInterceptor()),
	}
}

// listenMetrics listens on address, host:port, for serveMetrics: at start,
// so that a bad or busy address fails berthd rather than leave it serving
// without its series. An IP the node does not have yet is not bad:
// berthd starts before containerd, at boot before the network has given
// the node its addresses, so the socket binds freely (IP_FREEBIND, as
// systemd's FreeBind=) and serves once the address comes.
func listenMetrics(address string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		level, opt := unix.IPPROTO_IP, unix.IP_FREEBIND
		if network == "tcp6" {
			level, opt = unix.IPPROTO_IPV6, unix.IPV6_FREEBIND
		}
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), level, opt, 1) }); cerr != nil {
			return cerr
		}
		return err
	}}
	l, err := lc.Listen(context.Background(), "tcp", address)
	if err != nil {
		return nil, fmt.Errorf("metrics address %q: %w", address, err)
	}
	return l, nil
}

// serveMetrics serves berth's Prometheus series, ns, and collectors on l
// until ctx ends or l is closed, berthd stopping: from a registry of
// berthd's own, since containerd's packages berthd links register series
// of their own (CRI's image pulls) that berthd never updates.
func serveMetrics(ctx context.Context, l net.Listener, ns *metrics.Namespace, collectors ...prometheus.Collector) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(ns)
	reg.MustRegister(collectors...)
	mux := http.NewServeMux()
	mux.Handle("/v1/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}
