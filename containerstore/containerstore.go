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
}

type key struct{ namespace, id string }

var _ containers.Store = (*Store)(nil)

// New returns a store in front of the one inner returns, for a client whose
// default namespace is namespace.
func New(inner func() containers.Store, namespace string) *Store {
	return &Store{inner: inner, namespace: namespace, written: map[key]containers.Container{}}
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
	created, err := s.inner().Create(ctx, c)
	if err != nil {
		return created, err
	}
	s.remember(ctx, created)
	return created, nil
}

func (s *Store) Update(ctx context.Context, c containers.Container, fieldpaths ...string) (containers.Container, error) {
	k := s.key(ctx, c.ID)
	updated, err := s.inner().Update(ctx, c, fieldpaths...)
	if err != nil {
		// Written or not, the record is containerd's to say.
		s.forget(k)
		return updated, err
	}
	s.remember(ctx, updated)
	return updated, nil
}

func (s *Store) Delete(ctx context.Context, id string) error {
	// Deleted or not, the record is containerd's to say from now on.
	s.forget(s.key(ctx, id))
	return s.inner().Delete(ctx, id)
}

func (s *Store) remember(ctx context.Context, c containers.Container) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.written[s.key(ctx, c.ID)] = clone(c)
}

func (s *Store) forget(k key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.written, k)
}

// clone copies c's maps, which callers change: containerd's client updates
// a container by changing the record it got and writing it back.
func clone(c containers.Container) containers.Container {
	c.Labels = maps.Clone(c.Labels)
	c.Extensions = maps.Clone(c.Extensions)
	return c
}
