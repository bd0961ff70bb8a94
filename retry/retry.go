// Package events handles the events of the sandboxes berth owns.
package events

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Config of the retry backoff. Zero fields take the defaults.
type Config struct {
	InitialDelay   time.Duration // default 1s: delay before the first retry
	Factor         float64       // default 2: delay multiplier after each failed retry
	MaxDelay       time.Duration // default 5m: cap of the delay
	AttemptTimeout time.Duration // default 10s: context timeout of one attempt
}

// DefaultConfig returns the configuration zero fields stand for.
func DefaultConfig() Config {
	return Config{
		InitialDelay:   time.Second,
		Factor:         2,
		MaxDelay:       5 * time.Minute,
		AttemptTimeout: 10 * time.Second,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.InitialDelay == 0 {
		c.InitialDelay = d.InitialDelay
	}
	if c.Factor == 0 {
		c.Factor = d.Factor
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = d.MaxDelay
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = d.AttemptTimeout
	}
	return c
}

// Validate reports a configuration New would run with but that makes no
// sense. Defaults are applied first, so InitialDelay is checked against the
// MaxDelay actually used.
func (c Config) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"initial delay", c.InitialDelay},
		{"max delay", c.MaxDelay},
		{"attempt timeout", c.AttemptTimeout},
	} {
		if f.d < 0 {
			return fmt.Errorf("%s %v is negative: %w", f.name, f.d, errdefs.ErrInvalidArgument)
		}
	}
	// Written as !(>= 1) so that NaN is rejected too.
	if c.Factor != 0 && !(c.Factor >= 1) {
		return fmt.Errorf("factor %v is below 1: %w", c.Factor, errdefs.ErrInvalidArgument)
	}
	if d := c.withDefaults(); d.InitialDelay > d.MaxDelay {
		return fmt.Errorf("initial delay %v exceeds max delay %v: %w", d.InitialDelay, d.MaxDelay, errdefs.ErrInvalidArgument)
	}
	return nil
}

// next returns the delay that follows d. It compares in float64 so that a
// large factor cannot overflow the duration.
func (c Config) next(d time.Duration) time.Duration {
	if f := float64(d) * c.Factor; f < float64(c.MaxDelay) {
		return time.Duration(f)
	}
	return c.MaxDelay
}

// Attempt is one try at handling an event; returning nil means handled.
type Attempt func(ctx context.Context) error

// entry is a queued attempt.
type entry struct {
	fn Attempt
	// ctx carries the values of Retry's context (containerd namespace,
	// logger), but not its cancellation: a retry outlives its caller.
	ctx context.Context
	// log is the caller's logger, so that retries log like the first try.
	log *log.Entry
	// tries counts runs, including the failed one before Retry. Only the
	// goroutine holding the entry touches it.
	tries int
}

// queue is the state of one key. While the key's batch runs, attempts holds
// those queued after it; otherwise it holds the attempts waiting for due.
type queue struct {
	attempts []*entry
	delay    time.Duration
	due      time.Time
	running  bool
}

type retryReq struct {
	key string
	e   *entry
}

type pendingReq struct {
	key   string
	reply chan bool
}

// result is what a batch reports back: on failure, the failed attempt and
// those after it.
type result struct {
	key  string
	rest []*entry
	err  error
}

// Monitor retries the handling of events that failed, with a backoff per key.
// Attempts of a key run one at a time and in order; keys never wait on each
// other.
//
// One goroutine owns the queues; Retry, Pending and finished batches talk to
// it over channels, so the queues need no lock.
type Monitor struct {
	cfg Config

	// ctx is the base of every attempt's context; Stop cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	retries chan retryReq
	pending chan pendingReq
	results chan result

	start sync.Once
	// done is closed when the owner goroutine has returned, after every
	// batch it started.
	done chan struct{}

	// Owned by the run goroutine.
	queues  map[string]*queue
	running int
}

// New returns a monitor using cfg, with defaults for its zero fields. It does
// not validate cfg; see Config.Validate.
func New(cfg Config) *Monitor {
	ctx, cancel := context.WithCancel(context.Background())
	return &Monitor{
		cfg:     cfg.withDefaults(),
		ctx:     ctx,
		cancel:  cancel,
		retries: make(chan retryReq),
		pending: make(chan pendingReq),
		results: make(chan result),
		done:    make(chan struct{}),
		queues:  make(map[string]*queue),
	}
}

// Start starts the goroutine that runs the retries. Retry and Pending block
// until Start (or Stop) is called.
func (m *Monitor) Start() {
	m.start.Do(func() { go m.run() })
}

// Stop drops every queued attempt, cancels the context of running ones and
// waits for them to return. It is safe to call more than once, and before
// Start.
func (m *Monitor) Stop() {
	m.cancel()
	// If run never started, it never will: close done in its place.
	m.start.Do(func() { close(m.done) })
	<-m.done
}

// Retry queues a for key. a already failed once; it runs after the key's
// current delay, and after the attempts queued for key before it. After Stop,
// Retry only logs that a is dropped.
func (m *Monitor) Retry(ctx context.Context, key string, a Attempt) {
	l := log.G(ctx).WithField("sandbox_id", key)
	e := &entry{fn: a, ctx: log.WithLogger(context.WithoutCancel(ctx), l), log: l, tries: 1}
	select {
	case m.retries <- retryReq{key: key, e: e}:
	case <-m.ctx.Done():
		e.log.Warn("retry monitor stopped, dropping retry")
	}
}

// Pending reports whether key has attempts queued or running.
func (m *Monitor) Pending(key string) bool {
	req := pendingReq{key: key, reply: make(chan bool, 1)}
	select {
	case m.pending <- req:
		return <-req.reply
	case <-m.ctx.Done():
		return false
	}
}

func (m *Monitor) run() {
	defer close(m.done)
	// A single timer, pointed at the earliest waiting key.
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var wake <-chan time.Time
	for {
		select {
		case r := <-m.retries:
			m.add(r)
		case req := <-m.pending:
			_, ok := m.queues[req.key]
			req.reply <- ok
		case res := <-m.results:
			m.finish(res)
		case <-wake:
			now := time.Now()
			for key, q := range m.queues {
				if !q.running && !q.due.After(now) {
					m.launch(key, q)
				}
			}
		case <-m.ctx.Done():
			// Running batches see the cancelled context; wait for them.
			for ; m.running > 0; m.running-- {
				<-m.results
			}
			return
		}
		wake = m.arm(timer)
	}
}

func (m *Monitor) add(r retryReq) {
	q, ok := m.queues[r.key]
	if !ok {
		q = &queue{delay: m.cfg.InitialDelay, due: time.Now().Add(m.cfg.InitialDelay)}
		m.queues[r.key] = q
	}
	q.attempts = append(q.attempts, r.e)
}

// launch hands the key's waiting attempts to a goroutine of their own, so
// that a slow attempt holds up only its own key.
func (m *Monitor) launch(key string, q *queue) {
	batch := q.attempts
	q.attempts = nil
	q.running = true
	m.running++
	go m.runBatch(key, batch)
}

func (m *Monitor) finish(res result) {
	m.running--
	q := m.queues[res.key]
	q.running = false
	if res.err == nil {
		if len(q.attempts) == 0 {
			delete(m.queues, res.key)
			return
		}
		// Attempts queued while the batch ran have waited out the key's
		// delay already.
		m.launch(res.key, q)
		return
	}
	q.delay = m.cfg.next(q.delay)
	q.due = time.Now().Add(q.delay)
	q.attempts = append(res.rest, q.attempts...)
	if m.ctx.Err() == nil {
		e := res.rest[0]
		e.log.WithError(res.err).WithFields(log.Fields{
			"attempt": e.tries,
			"delay":   q.delay,
		}).Warn("sandbox exit handling failed, will retry")
	}
}

// arm points timer at the earliest waiting key and returns its channel, or nil
// if no key waits. It scans every key: berth owns few sandboxes, and only
// failed ones are here.
func (m *Monitor) arm(timer *time.Timer) <-chan time.Time {
	var next time.Time
	for _, q := range m.queues {
		if !q.running && (next.IsZero() || q.due.Before(next)) {
			next = q.due
		}
	}
	if next.IsZero() {
		timer.Stop()
		return nil
	}
	timer.Reset(time.Until(next))
	return timer.C
}

// runBatch runs attempts in order until one fails, and reports to run.
func (m *Monitor) runBatch(key string, batch []*entry) {
	res := result{key: key}
	for i, e := range batch {
		if res.err = m.try(e); res.err != nil {
			res.rest = batch[i:]
			break
		}
	}
	m.results <- res
}

func (m *Monitor) try(e *entry) error {
	// Once stopped, run nothing more, even an attempt that ignores ctx.
	if err := m.ctx.Err(); err != nil {
		return err
	}
	e.tries++
	ctx, cancel := context.WithTimeout(e.ctx, m.cfg.AttemptTimeout)
	defer cancel()
	// Stop cancels running attempts.
	defer context.AfterFunc(m.ctx, cancel)()
	return e.fn(ctx)
}
