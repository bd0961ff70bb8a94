package placement

import (
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"
)

// A scope whose keeper could not be made is not claimed again for
// firstBackoff, then twice as long after each failure, up to maxBackoff,
// until a keeper of it is made: every attempt costs the pod that makes it
// a shim started and ended, and, when its task fails, the pods that joined
// its group meanwhile one of their Start's two tries each. A scope that
// has not failed for twice maxBackoff starts again from firstBackoff.
const (
	firstBackoff = 10 * time.Second
	maxBackoff   = 5 * time.Minute
)

// Keeper is a live shim keeper: a task of berth's own, made as the first
// task of a group of its scope, that keeps the group's shim running while
// no pod of the scope runs. T is what the caller holds of it (its
// container).
type Keeper[T any] struct {
	ID, Group string
	Scope     Scope
	Handle    T
}

// Keepers are the live shim keepers, one per warm scope at most.
type Keepers[T any] struct {
	mu sync.Mutex
	// byScope holds each scope's keeper; a nil one is being made or taken
	// up.
	byScope map[Scope]*Keeper[T]
	// backoffs holds the scopes whose last keeper could not be made, by
	// backoffKey.
	backoffs *flowcontrol.Backoff
}

// NewKeepers returns an empty set of keepers.
func NewKeepers[T any]() *Keepers[T] {
	return newKeepers[T](clock.RealClock{})
}

func newKeepers[T any](c clock.Clock) *Keepers[T] {
	return &Keepers[T]{
		byScope:  map[Scope]*Keeper[T]{},
		backoffs: flowcontrol.NewFakeBackOff(firstBackoff, maxBackoff, c),
	}
}

// backoffKey is scope as a backoff's ID, each field quoted so that no two
// scopes share one.
func backoffKey(scope Scope) string {
	return strconv.Quote(scope.Handler) + strconv.Quote(scope.Namespace) + strconv.Quote(scope.Runtime)
}

// Claim reserves scope's keeper for the caller to make, if the scope has
// none and is not backed off (Failed). A keeper whose group no pod may join
// any more serves none: it is returned, for the caller to remove, and the
// claim succeeds.
func (k *Keepers[T]) Claim(scope Scope, isOpen func(group string) bool) (ok bool, stale *Keeper[T]) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.backoffs.IsInBackOffSinceUpdate(backoffKey(scope), k.backoffs.Clock.Now()) {
		return false, nil
	}
	cur, has := k.byScope[scope]
	if has && (cur == nil || isOpen(cur.Group)) {
		return false, nil
	}
	k.byScope[scope] = nil
	return true, cur
}

// Claimed says whether scope has a keeper, or one being made.
func (k *Keepers[T]) Claimed(scope Scope) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.byScope[scope]
	return ok
}

// Set makes kp the keeper of scope, which ends the scope's backoff; nil
// releases a claim.
func (k *Keepers[T]) Set(scope Scope, kp *Keeper[T]) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if kp == nil {
		delete(k.byScope, scope)
		return
	}
	k.byScope[scope] = kp
	k.backoffs.Reset(backoffKey(scope))
}

// Failed releases the claim of a scope whose keeper could not be made, and
// backs the scope off: no claim of it succeeds for the time it returns.
func (k *Keepers[T]) Failed(scope Scope) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.byScope, scope)
	// Backoffs long past are forgotten here rather than at a claim: the
	// scopes of namespaces that are gone are never claimed again.
	k.backoffs.GC()
	key := backoffKey(scope)
	k.backoffs.Next(key, k.backoffs.Clock.Now())
	return k.backoffs.Get(key)
}

// Drop forgets keeper kp if it is still its scope's, and says whether it
// did: a keeper dropped (DropIf) or claimed (Claim) before is its
// dropper's or claimer's to remove.
func (k *Keepers[T]) Drop(kp *Keeper[T]) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.byScope[kp.Scope] != kp {
		return false
	}
	delete(k.byScope, kp.Scope)
	return true
}

// List returns the live keepers, not those being made.
func (k *Keepers[T]) List() []*Keeper[T] {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.DeleteFunc(slices.Collect(maps.Values(k.byScope)), func(kp *Keeper[T]) bool { return kp == nil })
}

// DropIf forgets keeper kp, if it is still its scope's and cond holds, and
// says whether it did. cond runs with the keepers locked: no claim of the
// scope sees kp meanwhile.
func (k *Keepers[T]) DropIf(kp *Keeper[T], cond func() bool) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.byScope[kp.Scope] != kp || !cond() {
		return false
	}
	delete(k.byScope, kp.Scope)
	return true
}
