package events

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/log"
)

// Backoff is the retry queue's backoff. Every field must be positive and
// InitialDelay at most MaxDelay; the caller validates it (berth's plugin
// config does).
type Backoff struct {
	// InitialDelay is the wait before a key's first retry.
	InitialDelay time.Duration
	// Factor multiplies the delay after each failed retry (>= 1).
	Factor float64
	// MaxDelay caps the delay.
	MaxDelay time.Duration
	// AttemptTimeout bounds every run of a step.
	AttemptTimeout time.Duration
}

// next returns the delay that follows d. It compares in float64 so that a
// large factor cannot overflow the duration.
func (c Backoff) next(d time.Duration) time.Duration {
	if f := float64(d) * c.Factor; f < float64(c.MaxDelay) {
		return time.Duration(f)
	}
	return c.MaxDelay
}

// Step is one try at something that failed before; nil means done.
type Step func(ctx context.Context) error

// entry is a queued step.
type entry struct {
	name string
	fn   Step
	// ctx carries the values of Add's context (containerd namespace,
	// logger), but not its cancellation: a retry outlives its caller.
	ctx context.Context
	// log is the caller's logger, so that retries log like the first try.
	log *log.Entry
	// tries counts runs, including the failed one before Add. Only the
	// goroutine holding the entry touches it.
	tries int
}

// queue is the state of one key. While the key's batch runs, steps holds
// those queued after it; otherwise it holds the steps waiting for due.
type queue struct {
	steps   []*entry
	delay   time.Duration
	due     time.Time
	running bool
	// now records a Now that came while the batch ran: the steps the
	// batch leaves are due at once, not after the delay. A launch, which
	// runs every waiting step, answers it.
	now bool
}

type addReq struct {
	key string
	e   *entry
}

// result is what a batch reports back: on failure, the failed step and
// those after it.
type result struct {
	key  string
	rest []*entry
	err  error
}

// Queue retries failed steps, with a backoff per key. Steps of a key run one
// at a time and in order; keys never wait on each other.
//
// One goroutine owns the queues; Add and finished batches talk to it over
// channels, so the queues need no lock.
type Queue struct {
	cfg Backoff

	// ctx is the base of every run's context; Stop cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	adds    chan addReq
	nows    chan string
	results chan result

	stopOnce sync.Once
	// done is closed when the owner goroutine has returned, after every
	// batch it started.
	done chan struct{}

	// Owned by the run goroutine.
	queues  map[string]*queue
	running int
}

// New starts a queue with cfg, which must be valid (see Backoff).
func NewQueue(cfg Backoff) *Queue {
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{
		cfg:     cfg,
		ctx:     ctx,
		cancel:  cancel,
		adds:    make(chan addReq),
		nows:    make(chan string),
		results: make(chan result),
		done:    make(chan struct{}),
		queues:  make(map[string]*queue),
	}
	go q.run()
	return q
}

// Stop drops every queued step, cancels the context of running ones and
// waits for them to return. It is safe to call more than once.
func (q *Queue) Stop() {
	q.stopOnce.Do(q.cancel)
	<-q.done
}

// Add queues step fn, named name in logs, for key. fn already failed once;
// it runs after the key's current delay, and after the steps queued for key
// before it, on a context with ctx's namespace and logger (Detached). After
// Stop, Add only logs that fn is dropped.
func (q *Queue) Add(ctx context.Context, key, name string, fn Step) {
	ctx = log.WithLogger(Detached(ctx), log.G(ctx).WithFields(log.Fields{"sandbox_id": key, "step": name}))
	// The logger from the detached ctx, not the caller's: a logger holds
	// the context it was taken from, the call's values and all, and the
	// step may wait for minutes, forever on a wedged shim.
	e := &entry{name: name, fn: fn, ctx: ctx, log: log.G(ctx), tries: 1}
	select {
	case q.adds <- addReq{key: key, e: e}:
	case <-q.ctx.Done():
		e.log.Warn("retry queue stopped, dropping step")
	}
}

// Now runs the steps waiting for key at once, without waiting out its
// delay: for a caller that waits on them, as CRI's removal of a pod waits on
// its task's deletion, and would otherwise wait up to MaxDelay after their
// cause is gone. Steps running already are left to finish, and those of
// them that fail run again at once. A failure backs the key off further, as
// a retry at its time would.
func (q *Queue) Now(key string) {
	select {
	case q.nows <- key:
	case <-q.ctx.Done():
	}
}

func (q *Queue) run() {
	defer close(q.done)
	// A single timer, pointed at the earliest waiting key.
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var wake <-chan time.Time
	for {
		select {
		case r := <-q.adds:
			q.add(r)
		case key := <-q.nows:
			k, ok := q.queues[key]
			switch {
			case ok && k.running:
				k.now = true
			case ok:
				q.launch(key, k)
			}
		case res := <-q.results:
			q.finish(res)
		case <-wake:
			now := time.Now()
			for key, k := range q.queues {
				if !k.running && !k.due.After(now) {
					q.launch(key, k)
				}
			}
		case <-q.ctx.Done():
			// Running batches see the cancelled context; wait for them.
			for ; q.running > 0; q.running-- {
				<-q.results
			}
			return
		}
		wake = q.arm(timer)
	}
}

func (q *Queue) add(r addReq) {
	k, ok := q.queues[r.key]
	if !ok {
		k = &queue{delay: q.cfg.InitialDelay, due: time.Now().Add(q.cfg.InitialDelay)}
		q.queues[r.key] = k
	}
	k.steps = append(k.steps, r.e)
}

// launch hands the key's waiting steps to a goroutine of their own, so that
// a slow step holds up only its own key.
func (q *Queue) launch(key string, k *queue) {
	batch := k.steps
	k.steps = nil
	k.running = true
	k.now = false
	q.running++
	go q.runBatch(key, batch)
}

func (q *Queue) finish(res result) {
	q.running--
	k := q.queues[res.key]
	k.running = false
	if res.err == nil {
		if len(k.steps) == 0 {
			delete(q.queues, res.key)
			return
		}
		// Steps queued while the batch ran have waited out the key's delay
		// already.
		q.launch(res.key, k)
		return
	}
	k.delay = q.cfg.next(k.delay)
	wait := k.delay
	if k.now {
		// The caller of Now waits on these steps; the batch it found
		// running was no try of its own.
		wait = 0
	}
	k.due = time.Now().Add(wait)
	k.steps = append(res.rest, k.steps...)
	if q.ctx.Err() == nil {
		e := res.rest[0]
		e.log.WithError(res.err).WithFields(log.Fields{
			"attempt": e.tries,
			"delay":   wait,
		}).Warn("retried step failed, will retry")
	}
}

// arm points timer at the earliest waiting key and returns its channel, or
// nil if no key waits. It scans every key: only failed steps are here.
func (q *Queue) arm(timer *time.Timer) <-chan time.Time {
	var next time.Time
	for _, k := range q.queues {
		if !k.running && (next.IsZero() || k.due.Before(next)) {
			next = k.due
		}
	}
	if next.IsZero() {
		timer.Stop()
		return nil
	}
	timer.Reset(time.Until(next))
	return timer.C
}

// runBatch runs steps in order until one fails, and reports to run.
func (q *Queue) runBatch(key string, batch []*entry) {
	res := result{key: key}
	for i, e := range batch {
		if res.err = q.try(e); res.err != nil {
			res.rest = batch[i:]
			break
		}
	}
	q.results <- res
}

func (q *Queue) try(e *entry) error {
	// Once stopped, run nothing more, even a step that ignores ctx.
	if err := q.ctx.Err(); err != nil {
		return err
	}
	e.tries++
	ctx, cancel := context.WithTimeout(e.ctx, q.cfg.AttemptTimeout)
	defer cancel()
	// Stop cancels running steps.
	defer context.AfterFunc(q.ctx, cancel)()
	return e.fn(ctx)
}
