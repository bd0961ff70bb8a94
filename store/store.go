package store

import (
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
)

// Store is the set of sandboxes berth owns, keyed by sandbox ID.
type Store struct {
	mu        sync.RWMutex // guards sandboxes
	sandboxes map[string]*Sandbox
}

// New returns an empty store.
func New() *Store {
	return &Store{sandboxes: make(map[string]*Sandbox)}
}

// Add adds sb, failing with errdefs.ErrAlreadyExists if its ID is taken.
func (s *Store) Add(sb *Sandbox) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sandboxes[sb.ID]; ok {
		return fmt.Errorf("sandbox %q: %w", sb.ID, errdefs.ErrAlreadyExists)
	}
	s.sandboxes[sb.ID] = sb
	return nil
}

// Get returns the sandbox with the given ID, or errdefs.ErrNotFound.
func (s *Store) Get(id string) (*Sandbox, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sb, ok := s.sandboxes[id]
	if !ok {
		return nil, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return sb, nil
}

// Remove removes the sandbox with the given ID and returns it, or nil if there
// was none.
func (s *Store) Remove(id string) *Sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.sandboxes[id]
	delete(s.sandboxes, id)
	return sb
}

// List returns every sandbox in the store, in no particular order.
func (s *Store) List() []*Sandbox {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Sandbox, 0, len(s.sandboxes))
	for _, sb := range s.sandboxes {
		out = append(out, sb)
	}
	return out
}
