package controller

import (
	"time"

	"github.com/docker/go-metrics"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-dev/berth/store"
)

// telemetry is berth's series on containerd's Prometheus endpoint, named
// like containerd's own (namespace "berth", subsystem "sandbox").
type telemetry struct {
	ns *metrics.Namespace
	// operations times Start, Stop and Shutdown.
	operations metrics.LabeledTimer
	// retries counts steps queued for a retry, and retryFailures the
	// retried runs that failed again, by step: the name each Retry call
	// gives it (retrySteps).
	retries       metrics.LabeledCounter
	retryFailures metrics.LabeledCounter
	// recovery is how long the last recovery took.
	recovery metrics.Gauge
	// groupWaits times what pods wait on other pods of their shim group
	// for, by step (placement.WithWaitObserver).
	groupWaits metrics.LabeledTimer
}

// retrySteps are the steps berth queues for a retry, the name each Retry
// call gives its step (the README lists them; TestReadmeRetrySteps checks
// both). Their counters read 0 from the start rather than appear at their
// first count: Prometheus's increase() and rate() miss a series' first
// count, which for a retry is often the only one, and an alert on it
// would never fire.
var retrySteps = []string{"kill", "delete exited task", "rollback", "remove orphan", "remove shim keeper", "end idle shim", "release start lease"}

// durationBuckets reach from 5 ms to 82 s: Prometheus's defaults stop at
// 10 s, and a Stop may wait stop_timeout (1 m by default) for its pause,
// a Start or a group wait as long for a slow image or shim. Beyond the
// last bound a time is only counted, not placed.
var durationBuckets = prometheus.ExponentialBuckets(0.005, 2, 15)

func newTelemetry(s *store.Store) *telemetry {
	ns := metrics.NewNamespace("berth", "sandbox", nil)
	t := &telemetry{
		ns:            ns,
		operations:    ns.NewLabeledTimerWithBuckets("operation", "Time taken by sandbox operations", durationBuckets, "operation"),
		retries:       ns.NewLabeledCounter("retries", "Steps that failed and were queued for a retry, by step", "step"),
		retryFailures: ns.NewLabeledCounter("retry_failures", "Retried runs of a step that failed again, by step", "step"),
		recovery:      ns.NewGauge("recovery_duration", "Time the last reload of sandboxes after a containerd start took", metrics.Seconds),
		groupWaits:    ns.NewLabeledTimerWithBuckets("group_wait", "Time a pod waited on other pods of its shim group, by step: its pause task's making for the group's first, its deletion for the tasks being made, its Start for the group's keeper", durationBuckets, "step"),
	}
	for _, step := range retrySteps {
		t.retries.WithValues(step)
		t.retryFailures.WithValues(step)
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

// groupWaited records that a pod waited d on other pods of its shim group
// at step.
func (t *telemetry) groupWaited(step string, d time.Duration) {
	t.groupWaits.WithValues(step).Update(d)
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
