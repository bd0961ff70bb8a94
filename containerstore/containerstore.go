// Package containerstore is a containers.Store that remembers the
// container records it wrote: berthd's, in front of containerd's
// containers API.
//
// containerd's client reads a container's record back at each step of a
// task's life: three times to create its task (its mounts, its spec, its
// runtime), once more to delete the container. In process those reads are
// in memory; from berthd each is a round trip to containerd, with the pause
// spec in it. The records of berth's pause containers and keepers are
// written by berth alone (CRI writes its own containers' records, and the
// sandbox store's), so the record containerd returned when berthd wrote it
// is the record containerd holds until berthd writes it again, but for
// labels or extensions another client may add, which no read of berth's
// needs: berth updates a record by field path, never by writing back what
// it read.
package containerstore

import (
	"context"
	"maps"
	"sync"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Store answers Get from the records it wrote through it; every other call,
// and a Get of a record it did not write, goes to the store inner returns.
// A record is remembered while its container lives: about the size of the
// pause spec for each of berthd's pods.
type Store struct {
	// inner returns the store the records are in; it is asked at each
	// call, so that it may follow a reconnection.
	inner func() containers.Store
	// namespace is the namespace of a call whose context names none: the
	// client's default, which its connection adds.
	namespace string

	mu      sync.Mutex
	written map[key]containers.Container
	// writing numbers the latest write under way to each key (from seq):
	// only its answer is remembered. An answer that comes after a later
	// write began, a Delete's, is no longer the record: remembered, it
	// would bring back a deleted container for good.
	writing map[key]uint64
	seq     uint64
}

type key struct{ namespace, id string }

var _ containers.Store = (*Store)(nil)

// New returns a store in front of the one inner returns, for a client whose
// default namespace is namespace.
func New(inner func() containers.Store, namespace string) *Store {
	return &Store{inner: inner, namespace: namespace, written: map[key]containers.Container{}, writing: map[key]uint64{}}
}

func (s *Store) key(ctx context.Context, id string) key {
	ns, ok := namespaces.Namespace(ctx)
	if !ok {
		ns = s.namespace
	}
	return key{ns, id}
}

// Get returns the record of container id as it was last written through s,
// or as the inner store holds it.
func (s *Store) Get(ctx context.Context, id string) (containers.Container, error) {
	s.mu.Lock()
	c, ok := s.written[s.key(ctx, id)]
	s.mu.Unlock()
	if ok {
		return clone(c), nil
	}
	return s.inner().Get(ctx, id)
}

func (s *Store) List(ctx context.Context, filters ...string) ([]containers.Container, error) {
	return s.inner().List(ctx, filters...)
}

func (s *Store) Create(ctx context.Context, c containers.Container) (containers.Container, error) {
	k := s.key(ctx, c.ID)
	n := s.begin(k)
	created, err := s.inner().Create(ctx, c)
	s.end(k, n, created, err == nil)
	return created, err
}

func (s *Store) Update(ctx context.Context, c containers.Container, fieldpaths ...string) (containers.Container, error) {
	k := s.key(ctx, c.ID)
	n := s.begin(k)
	// Failed, the write may still have been made: the record is
	// containerd's to say.
	updated, err := s.inner().Update(ctx, c, fieldpaths...)
	s.end(k, n, updated, err == nil)
	return updated, err
}

func (s *Store) Delete(ctx context.Context, id string) error {
	// Deleted or not, the record is containerd's to say from now on.
	k := s.key(ctx, id)
	n := s.begin(k)
	err := s.inner().Delete(ctx, id)
	s.end(k, n, containers.Container{}, false)
	return err
}

// begin forgets key k's record, which a write is about to change, and
// returns the write's number.
func (s *Store) begin(k key) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.written, k)
	s.seq++
	s.writing[k] = s.seq
	return s.seq
}

// end ends write n to key k, remembering c as k's record if ok and no
// later write to k has begun.
func (s *Store) end(k key, n uint64, c containers.Container, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writing[k] != n {
		return
	}
	delete(s.writing, k)
	if ok {
		s.written[k] = clone(c)
	}
}

// clone copies c's maps, which callers change: containerd's client updates
// a container by changing the record it got and writing it back.
func clone(c containers.Container) containers.Container {
	c.Labels = maps.Clone(c.Labels)
	c.Extensions = maps.Clone(c.Extensions)
	return c
}
