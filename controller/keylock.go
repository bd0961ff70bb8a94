package controller

import (
	"context"
	"sync"
)

// keyLock serialises lifecycle calls per sandbox ID, so that Start, Stop
// and Shutdown of one sandbox never interleave while different sandboxes
// never wait on each other. Locking honours the caller's context.
type keyLock struct {
	mu    sync.Mutex // guards locks
	locks map[string]*keyEntry
}

type keyEntry struct {
	// sem holds a token while the key is locked.
	sem chan struct{}
	// refs counts holders and waiters; the entry is dropped at zero.
	refs int
}

func newKeyLock() *keyLock {
	return &keyLock{locks: make(map[string]*keyEntry)}
}

// lock locks key, or returns ctx's error if ctx ends first. On success the
// caller must call the returned unlock exactly once.
func (k *keyLock) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	e, ok := k.locks[key]
	if !ok {
		e = &keyEntry{sem: make(chan struct{}, 1)}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()

	select {
	case e.sem <- struct{}{}:
		return func() {
			<-e.sem
			k.release(key, e)
		}, nil
	case <-ctx.Done():
		k.release(key, e)
		return nil, ctx.Err()
	}
}

func (k *keyLock) release(key string, e *keyEntry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(k.locks, key)
	}
}
