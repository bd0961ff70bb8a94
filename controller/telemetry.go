package controller

import (
	"context"
	"time"

	"github.com/docker/go-metrics"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-dev/berth/events"
	"github.com/berth-dev/berth/store"
)

// telemetry is berth's series on containerd's Prometheus endpoint, named
// like containerd's own (namespace "berth", subsystem "sandbox").
type telemetry struct {
	ns *metrics.Namespace
	// operations times Start, Stop and Shutdown.
	operations metrics.LabeledTimer
	// exitRetries counts exit-handling steps queued for a retry, and
	// exitFailures the retried attempts that failed again.
	exitRetries  metrics.Counter
	exitFailures metrics.Counter
	// recovery is how long the last recovery took.
	recovery metrics.Gauge
}

func newTelemetry(s *store.Store) *telemetry {
	ns := metrics.NewNamespace("berth", "sandbox", nil)
	t := &telemetry{
		ns:           ns,
		operations:   ns.NewLabeledTimer("operation", "Time taken by sandbox operations", "operation"),
		exitRetries:  ns.NewCounter("exit_retries", "Exit-handling steps that failed and were queued for a retry"),
		exitFailures: ns.NewCounter("exit_retry_failures", "Retried exit-handling attempts that failed again"),
		recovery:     ns.NewGauge("recovery_duration", "Time the last reload of sandboxes after a containerd start took", metrics.Seconds),
	}
	ns.Add(&stateCollector{
		store: s,
		desc:  ns.NewDesc("sandboxes", "Sandboxes berth owns, by state", "", "state"),
	})
	return t
}

// MetricsNamespace is berth's Prometheus namespace, for the plugin to
// register with containerd's metrics endpoint.
func (c *Controller) MetricsNamespace() *metrics.Namespace {
	return c.telemetry.ns
}

// timeOperation starts timing op; call the result when it ends.
func (t *telemetry) timeOperation(op string) func() {
	start := time.Now()
	return func() { t.operations.WithValues(op).UpdateSince(start) }
}

// retry queues a for key on monitor, counting it and its failures.
func (c *Controller) retry(ctx context.Context, key string, a events.Attempt) {
	c.telemetry.exitRetries.Inc()
	c.monitor.Retry(ctx, key, func(ctx context.Context) error {
		err := a(ctx)
		if err != nil {
			c.telemetry.exitFailures.Inc()
		}
		return err
	})
}

// stateCollector counts the store's sandboxes by state at each scrape, so
// the gauge can never drift from the store.
type stateCollector struct {
	store *store.Store
	desc  *prometheus.Desc
}

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- s.desc }

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[store.State]int{store.StateCreated: 0, store.StateReady: 0, store.StateNotReady: 0}
	for _, sb := range s.store.List() {
		counts[sb.Status().State]++
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(s.desc, prometheus.GaugeValue, float64(n), state.String())
	}
}
