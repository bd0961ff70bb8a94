package containerstore

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// fakeStore is containerd's containers store: records by namespace and ID,
// and a count of the Gets that reached it.
type fakeStore struct {
	records map[key]containers.Container
	gets    int
	fail    error
}

func (f *fakeStore) key(ctx context.Context, id string) key {
	ns, _ := namespaces.Namespace(ctx)
	return key{ns, id}
}

func (f *fakeStore) Get(ctx context.Context, id string) (containers.Container, error) {
	f.gets++
	c, ok := f.records[f.key(ctx, id)]
	if !ok {
		return containers.Container{}, errdefs.ErrNotFound
	}
	return c, nil
}

func (f *fakeStore) List(context.Context, ...string) ([]containers.Container, error) {
	return nil, nil
}

func (f *fakeStore) Create(ctx context.Context, c containers.Container) (containers.Container, error) {
	if f.fail != nil {
		return containers.Container{}, f.fail
	}
	c.Labels = map[string]string{"stored": "by containerd"}
	f.records[f.key(ctx, c.ID)] = c
	return c, nil
}

func (f *fakeStore) Update(ctx context.Context, c containers.Container, _ ...string) (containers.Container, error) {
	if f.fail != nil {
		return containers.Container{}, f.fail
	}
	f.records[f.key(ctx, c.ID)] = c
	return c, nil
}

func (f *fakeStore) Delete(ctx context.Context, id string) error {
	if f.fail != nil {
		return f.fail
	}
	delete(f.records, f.key(ctx, id))
	return nil
}

func newTestStore() (*Store, *fakeStore) {
	f := &fakeStore{records: map[key]containers.Container{}}
	return New(func() containers.Store { return f }, "k8s.io"), f
}

func ctxNS(ns string) context.Context {
	return namespaces.WithNamespace(context.Background(), ns)
}

func TestWrittenRecordsAnsweredFromMemory(t *testing.T) {
	s, f := newTestStore()
	ctx := ctxNS("k8s.io")
	if _, err := s.Create(ctx, containers.Container{ID: "sb", Image: "pause"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		c, err := s.Get(ctx, "sb")
		if err != nil || c.Image != "pause" || c.Labels["stored"] != "by containerd" {
			t.Fatalf("Get = %+v, %v; want the record containerd returned", c, err)
		}
		// Callers change what they get: the record remembered does not.
		c.Labels["changed"] = "by the caller"
	}
	if f.gets != 0 {
		t.Errorf("%d Gets reached containerd for a record written through the store", f.gets)
	}
	if c, _ := s.Get(ctx, "sb"); c.Labels["changed"] != "" {
		t.Errorf("a caller's change reached the remembered record: %v", c.Labels)
	}

	// A context without a namespace is the client's default's.
	if _, err := s.Get(context.Background(), "sb"); err != nil || f.gets != 0 {
		t.Errorf("Get in the default namespace = %v, %d Gets reached containerd", err, f.gets)
	}
	// Another namespace's record of the same ID is containerd's to say.
	if _, err := s.Get(ctxNS("other"), "sb"); !errdefs.IsNotFound(err) || f.gets != 1 {
		t.Errorf("Get in another namespace = %v after %d Gets, want NotFound from containerd", err, f.gets)
	}
	// So is a record not written through the store.
	f.records[key{"k8s.io", "cri"}] = containers.Container{ID: "cri"}
	if _, err := s.Get(ctx, "cri"); err != nil || f.gets != 2 {
		t.Errorf("Get of CRI's record = %v after %d Gets", err, f.gets)
	}

	if _, err := s.Update(ctx, containers.Container{ID: "sb", Image: "new"}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Get(ctx, "sb"); c.Image != "new" || f.gets != 2 {
		t.Errorf("Get after Update = %+v after %d Gets, want the update from memory", c, f.gets)
	}
	if err := s.Delete(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "sb"); !errdefs.IsNotFound(err) || len(s.written) != 0 {
		t.Errorf("Get after Delete = %v, %d records remembered; want NotFound and none", err, len(s.written))
	}
}

// TestFailedWritesForgotten: a write that fails leaves the record to
// containerd, whatever it did with it.
func TestFailedWritesForgotten(t *testing.T) {
	ctx := ctxNS("k8s.io")
	for _, write := range []struct {
		name string
		do   func(*Store) error
	}{
		{"update", func(s *Store) error { _, err := s.Update(ctx, containers.Container{ID: "sb"}); return err }},
		{"delete", func(s *Store) error { return s.Delete(ctx, "sb") }},
	} {
		t.Run(write.name, func(t *testing.T) {
			s, f := newTestStore()
			if _, err := s.Create(ctx, containers.Container{ID: "sb"}); err != nil {
				t.Fatal(err)
			}
			f.fail = errdefs.ErrUnavailable
			if err := write.do(s); !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("%s = %v, want containerd's error", write.name, err)
			}
			f.fail = nil
			if _, err := s.Get(ctx, "sb"); err != nil || f.gets != 1 {
				t.Errorf("Get after a failed %s = %v after %d Gets, want containerd's record", write.name, err, f.gets)
			}
		})
	}
	s, f := newTestStore()
	f.fail = errdefs.ErrAlreadyExists
	if _, err := s.Create(ctx, containers.Container{ID: "sb"}); !errdefs.IsAlreadyExists(err) || len(s.written) != 0 {
		t.Errorf("failed Create = %v, %d records remembered; want containerd's error and none", err, len(s.written))
	}
}

// heldStore is a fakeStore whose Update, once made, holds its answer until
// release is closed, as an answer on its way back does.
type heldStore struct {
	*fakeStore
	made, release chan struct{}
}

func (h *heldStore) Update(ctx context.Context, c containers.Container, fieldpaths ...string) (containers.Container, error) {
	updated, err := h.fakeStore.Update(ctx, c, fieldpaths...)
	close(h.made)
	<-h.release
	return updated, err
}

// TestLateAnswerAfterDelete: an Update whose answer comes after the
// container's Delete does not bring the deleted record back.
func TestLateAnswerAfterDelete(t *testing.T) {
	f := &heldStore{fakeStore: &fakeStore{records: map[key]containers.Container{}}, made: make(chan struct{}), release: make(chan struct{})}
	s := New(func() containers.Store { return f }, "k8s.io")
	ctx := ctxNS("k8s.io")
	if _, err := s.Create(ctx, containers.Container{ID: "sb"}); err != nil {
		t.Fatal(err)
	}
	updated := make(chan error)
	go func() {
		_, err := s.Update(ctx, containers.Container{ID: "sb", Image: "v2"}, "image")
		updated <- err
	}()
	<-f.made
	if err := s.Delete(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	close(f.release)
	if err := <-updated; err != nil {
		t.Fatal(err)
	}
	if c, err := s.Get(ctx, "sb"); !errdefs.IsNotFound(err) {
		t.Errorf("Get after Delete: %+v, %v; want NotFound", c, err)
	}
	if len(s.written) != 0 || len(s.writing) != 0 {
		t.Errorf("%d records and %d writes remembered, want none", len(s.written), len(s.writing))
	}
}
