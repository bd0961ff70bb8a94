package placement

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Groups shares runc shims between pods: up to perShim pods of a
// scope have their pause tasks, and so their app containers, served by
// one shim. A pod is in its group from Start until its pause exits; a group
// no pod is in is retired, never used again: its shim exits as soon as it
// serves no task, and a pod joining it then could land in a shim that is
// shutting down. The reaper ends the shim of such a group if it does not
// exit. A group a shim keeper is in (Keep) is not
// retired when its last pod leaves: the keeper's task keeps its shim up for
// the next pod.
//
// The runc shim exits when containerd deletes its last task (containerd
// asks it to shut down after every delete, and it counts only the tasks
// already made), and when its first task fails to be made. So a group's
// last pause task is deleted only once no task is being made in the group,
// and none is made there after it (DeleteTask); until a group's first task
// is made, or the shim its making started answers (ShimAnswers), one task
// at a time is made there (MakeTask). Only the first runs the shim's start
// command; the others join the shim at its socket. The start command is
// what splits a group: given a live shim that does not
// answer within 100 ms (an exiting one, or one starved of CPU), it binds a
// socket of its own, which the other shim may then remove; containerd can
// then reach a shim other than the one started for it, which is left
// running, unreachable, for good.
type Groups struct {
	// perShim is the pods per shim of each handler; 1 or less, or no entry,
	// means a shim of its own per pod.
	perShim func(handler string) int
	// waited, if set, is told how long each wait on other pods' tasks took,
	// and at which step: "first task" (MakeTask) or "last task"
	// (DeleteTask).
	waited func(step string, d time.Duration)

	mu sync.Mutex // guards open, inUse and their groups
	// open are the groups pods may join, by scope.
	open map[Scope][]*group
	// inUse are the groups pods are in, open or retired, by ID.
	inUse map[string]*group
	// scopePods counts the pods in groups, by scope; a scope with none has
	// no entry.
	scopePods map[Scope]int
}

type group struct {
	id string
	// scope is the scope whose pods the group serves.
	scope Scope
	// pods in the group, that is, started and not yet exited.
	pods int
	// tasks are the sandboxes whose pause task is made in the group's shim
	// and not yet deleted: while one is, the shim does not exit.
	tasks map[string]bool
	// making counts the pause tasks being made in the group.
	making int
	// answering says the shim that the group's first making started
	// answers at its socket (ShimAnswers): tasks join it there, beside that
	// making, though no task is made yet.
	answering bool
	// awaited is the first making's Making.Awaited while no other making
	// has waited for it; nil otherwise.
	awaited chan struct{}
	// ending says the group's last pause task is being deleted, or is: its
	// shim may exit, and no task may be made in it.
	ending bool
	// changed is closed, and replaced, when a making ends.
	changed chan struct{}
	// keeper is the ID of the shim keeper in the group, "" if none.
	keeper string
	// watched says the group's shim process is watched (Watch).
	watched bool
	// idleSince is, for a group a keeper keeps, when the last pod of its
	// scope, in any group, left; zero if none has since it was kept.
	idleSince time.Time
}

// Option configures Groups.
type Option func(*Groups)

// WithWaitObserver has observe told how long each wait on other pods'
// tasks took, and at which step: "first task" (MakeTask) or "last task"
// (DeleteTask).
func WithWaitObserver(observe func(step string, d time.Duration)) Option {
	return func(g *Groups) { g.waited = observe }
}

// NewGroups returns groups of up to perShim(handler) pods per shim.
func NewGroups(perShim func(handler string) int, opts ...Option) *Groups {
	g := &Groups{perShim: perShim, open: map[Scope][]*group{}, inUse: map[string]*group{}, scopePods: map[Scope]int{}}
	for _, o := range opts {
		o(g)
	}
	return g
}

func newGroup(id string, scope Scope) *group {
	return &group{id: id, scope: scope, pods: 1, tasks: map[string]bool{}, changed: make(chan struct{})}
}

// Join puts a pod of scope into a group with room, or a new one, and
// returns the group's ID; "" means a shim of the pod's own.
func (s *Groups) Join(scope Scope) string {
	n := s.perShim(scope.Handler)
	if n <= 1 {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.open[scope] {
		if g.pods < n {
			g.pods++
			s.scopePods[scope]++
			return g.id
		}
	}
	s.scopePods[scope]++
	g := newGroup(newGroupID(scope.Handler), scope)
	s.open[scope] = append(s.open[scope], g)
	s.inUse[g.id] = g
	return g.id
}

// Rejoin counts recovered sandbox sb, whose pause task runs, into its
// group id, of scope, again.
func (s *Groups) Rejoin(scope Scope, id, sb string) {
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.recoveredLocked(scope, id)
	g.pods++
	s.scopePods[g.scope]++
	g.tasks[sb] = true
}

// recoveredLocked returns group id, of scope, that a recovered task runs
// in, with s.mu held: open with no pod in it if no task found it before.
// A group that serves recovered tasks of two scopes is retired: its shim
// was shared under a policy that no longer lets pods of those scopes share
// (a handler taken out of cross_namespace_shim_handlers, or a berth from
// before the namespace boundary), and no new pod may join it.
func (s *Groups) recoveredLocked(scope Scope, id string) *group {
	g, ok := s.inUse[id]
	if !ok {
		g = newGroup(id, scope)
		g.pods = 0
		s.open[scope] = append(s.open[scope], g)
		s.inUse[id] = g
	} else if g.scope != scope {
		s.retireLocked(g)
	}
	return g
}

// Leave takes a pod whose pause exited (or never started) out of group
// id, and retires the group if that left it empty.
func (s *Groups) Leave(id string) {
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok {
		return
	}
	g.pods--
	if s.scopePods[g.scope]--; s.scopePods[g.scope] <= 0 {
		delete(s.scopePods, g.scope)
		// The scope's keeper, in this group or another, idles from now.
		now := time.Now()
		for _, o := range s.inUse {
			if o.scope == g.scope && o.keeper != "" {
				o.idleSince = now
			}
		}
	}
	if g.pods > 0 || g.keeper != "" {
		return
	}
	delete(s.inUse, id)
	s.retireLocked(g)
}

// Keep puts shim keeper keeper into group id, which a pod is in: the group
// then outlives its pods. It fails if the group has a keeper already.
func (s *Groups) Keep(id, keeper string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok || g.keeper != "" {
		return false
	}
	g.keeper = keeper
	return true
}

// Rekeep counts recovered shim keeper keeper, whose task runs, into its
// group id, of scope, again.
func (s *Groups) Rekeep(scope Scope, id, keeper string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.recoveredLocked(scope, id)
	g.keeper = keeper
	g.tasks[keeper] = true
	if s.scopePods[scope] == 0 && g.idleSince.IsZero() {
		// Idle since the restart, for all berth knows.
		g.idleSince = time.Now()
	}
}

// RetireIdle retires group id, which a shim keeper keeps, if no pod of
// its scope, in any group, has run for idle, and says whether the keeper
// is idle so: no pod joins the group after, and the keeper is the
// caller's to remove. A group retired before (its keeper serving no pod
// since) is idle as well.
func (s *Groups) RetireIdle(id string, idle time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok || g.keeper == "" || s.scopePods[g.scope] > 0 || g.idleSince.IsZero() || time.Since(g.idleSince) < idle {
		return false
	}
	s.retireLocked(g)
	return true
}

// Unkeep takes shim keeper keeper, whose task is deleted or was never
// made, out of group id, and retires the group if no pod is in it.
func (s *Groups) Unkeep(id, keeper string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok || g.keeper != keeper {
		return
	}
	g.keeper = ""
	if g.pods > 0 {
		return
	}
	delete(s.inUse, id)
	s.retireLocked(g)
}

// Fresh reports whether no task is made, or being made, in group id: its
// shim is not up.
func (s *Groups) Fresh(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	return ok && len(g.tasks) == 0 && g.making == 0
}

// Ending reports whether group id ended (its shim may exit, and no task is
// made in it) while pods are still in it.
func (s *Groups) Ending(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	return ok && g.ending
}

// IsOpen reports whether pods of scope may join group id.
func (s *Groups) IsOpen(scope Scope, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.open[scope], func(g *group) bool { return g.id == id })
}

// ErrShimEnding says a group's shim may be exiting: its last pause task is
// being deleted.
var ErrShimEnding = errors.New("the group's last pause task is deleted; its shim may be exiting")

// Outcome is how the making of a pause task ended.
type Outcome int

const (
	// Abandoned: the shim was never asked for the task.
	Abandoned Outcome = iota
	// Failed: the shim was asked for the task, and it was not made
	// (a hook failed, runc refused the spec): the shim serves the group's
	// other tasks as before.
	Failed
	// Refused: the shim did not take the task because it is exiting,
	// or gone (its connection closed or refused): no task may be made in
	// it again.
	Refused
	// Made: the task is made.
	Made
)

// Making is a pause task being made in a shim group (MakeTask).
type Making struct {
	// shimUp says the group's shim serves a task made in it, and serves it
	// until the making ends: the task joins that shim at its socket rather
	// than through the shim's start command.
	ShimUp bool
	// Awaited, for a making whose shim is not up, is closed once another
	// making waits for it: only then is there a making to tell that the
	// shim answers (ShimAnswers). Nil for one whose shim is up, or that has
	// a shim of its own.
	Awaited <-chan struct{}
	// end ends the making; only its first call counts.
	End func(Outcome)
}

// MakeTask begins making the pause task of sandbox sb in group id, and
// fails with ErrShimEnding if the group's shim may be exiting. Until a task
// is made in the group, its shim may not be up, and the first making runs
// alone until the shim it starts answers at its socket (ShimAnswers) or
// the task is made: the runc shim's start command is not safe to run twice
// at once for a group with no shim (it can find the socket the other binds
// not answering yet, and bind its own), so the others join the shim at its
// socket, without that command. Once one is made, the shim stays up until
// the making ends (DeleteTask). A group whose first task is not made ends:
// containerd shuts down the shim it started for that task, and a task
// joining it meanwhile is refused. A refusal by the shim retires the
// group; any other failure leaves it as it was, so that a pod whose pause
// can never be made does not cost its group's pods their shim.
func (s *Groups) MakeTask(ctx context.Context, id, sb string) (Making, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok {
		// A shim of the pod's own.
		return Making{End: func(Outcome) {}}, nil
	}
	w := wait{step: "first task"}
	defer s.observe(&w)
	for !g.ending && !g.shimUp() && g.making > 0 {
		if g.awaited != nil {
			close(g.awaited)
			g.awaited = nil
		}
		if err := s.waitLocked(ctx, g, &w); err != nil {
			return Making{}, err
		}
	}
	if g.ending {
		return Making{}, ErrShimEnding
	}
	g.making++
	up := g.shimUp()
	var awaited chan struct{}
	if !up {
		awaited = make(chan struct{})
		g.awaited = awaited
	}
	ended := false
	return Making{ShimUp: up, Awaited: awaited, End: func(o Outcome) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if ended {
			return
		}
		ended = true
		g.making--
		if awaited != nil && g.awaited == awaited {
			g.awaited = nil
		}
		switch {
		case o == Abandoned:
		case o == Made:
			g.tasks[sb] = true
		case len(g.tasks) == 0:
			s.endLocked(g)
		case o == Refused:
			s.retireLocked(g)
		}
		g.changedLocked()
	}}, nil
}

// shimUp says a task made in g joins its shim at its socket.
func (g *group) shimUp() bool { return len(g.tasks) > 0 || g.answering }

// changedLocked wakes those waiting on g, with the Groups' lock held.
func (g *group) changedLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// ShimAnswers says the shim that group id's first making started answers
// at its socket: the makings waiting for the first go ahead beside it,
// joining the shim there, rather than wait for the first task to be made
// (on a node with cores to spare, most of a group's start). Said of a group
// whose shim may be exiting, it changes nothing.
func (s *Groups) ShimAnswers(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok || g.ending || g.answering {
		return
	}
	g.answering = true
	g.changedLocked()
}

// wait is one wait of a caller on a group's makings, at step, told to
// s.waited once, when it ends (observe): a wait can take several wake-ups.
type wait struct {
	step  string
	start time.Time
}

// observe tells s.waited how long w waited, if it did.
func (s *Groups) observe(w *wait) {
	if s.waited != nil && !w.start.IsZero() {
		s.waited(w.step, time.Since(w.start))
	}
}

// endLocked ends group g: its shim may exit, and no task is made in it.
func (s *Groups) endLocked(g *group) {
	g.ending = true
	s.retireLocked(g)
}

// waitLocked waits, with s.mu held, until a making in group g ends. w
// times the caller's wait, of however many wake-ups.
func (s *Groups) waitLocked(ctx context.Context, g *group, w *wait) error {
	if w.start.IsZero() {
		w.start = time.Now()
	}
	changed := g.changed
	s.mu.Unlock()
	defer s.mu.Lock()
	select {
	case <-changed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// DeleteTask waits until the pause task of sandbox sb in group id may be
// deleted: if it is the group's last, the group ends, no task is made in
// it any more, and the deletion waits for the tasks being made. done ends
// the deletion, saying whether the task was deleted.
func (s *Groups) DeleteTask(ctx context.Context, id, sb string) (done func(deleted bool), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok || !g.tasks[sb] {
		// No pod is in the group, or the task was never counted in it
		// (recovery found it exited): no task is being made there.
		return func(bool) {}, nil
	}
	delete(g.tasks, sb)
	if len(g.tasks) == 0 {
		s.endLocked(g)
	}
	w := wait{step: "last task"}
	defer s.observe(&w)
	for g.ending && g.making > 0 {
		if err := s.waitLocked(ctx, g, &w); err != nil {
			g.tasks[sb] = true
			return nil, err
		}
	}
	return func(deleted bool) {
		if !deleted {
			s.mu.Lock()
			defer s.mu.Unlock()
			g.tasks[sb] = true
		}
	}, nil
}

// ShimDied ends group id, whose shim died: no pod joins it and no task is
// made in it again (a making waiting for its first task gives up with
// ErrShimEnding, as a new one does, to be made in another group rather
// than be refused by the dead shim's socket); its pods leave it as their
// exits are handled.
func (s *Groups) ShimDied(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok || g.ending {
		return
	}
	s.endLocked(g)
	g.changedLocked()
}

// Watch reports whether group id's shim is to be watched: true once for a
// group pods are in, when the first caller claims the watch.
func (s *Groups) Watch(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok || g.watched {
		return false
	}
	g.watched = true
	return true
}

// Unwatch gives up the watch of group id's shim that Watch handed out and
// its caller could not take up (the shim did not answer at its socket), so
// that the next caller claims it.
func (s *Groups) Unwatch(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.inUse[id]; ok {
		g.watched = false
	}
}

// TasksOf lists the sandboxes and keepers whose task is made in group id
// and not yet deleted.
func (s *Groups) TasksOf(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.inUse[id]
	if !ok {
		return nil
	}
	return slices.Collect(maps.Keys(g.tasks))
}

// Has reports whether pods are in group id, open or retired.
func (s *Groups) Has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.inUse[id]
	return ok
}

// retireLocked stops pods from joining group g, with s.mu held. Its pods
// need not leave it. A scope left with no open group is forgotten: scopes
// are namespaces, which come and go by the thousand on some clusters.
func (s *Groups) retireLocked(g *group) {
	open := slices.DeleteFunc(s.open[g.scope], func(o *group) bool { return o == g })
	if len(open) == 0 {
		delete(s.open, g.scope)
		return
	}
	s.open[g.scope] = open
}

// newGroupID names a new group. It is random: group IDs name shim sockets,
// and one a previous containerd used may still have its shim.
func newGroupID(handler string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "berth-" + strings.ReplaceAll(handler, "/", "-") + "-" + hex.EncodeToString(b)
}
