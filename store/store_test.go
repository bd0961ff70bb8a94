package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/containerd/errdefs"
)

func newSandbox(id string) *Sandbox {
	return NewSandbox(Metadata{ID: id})
}

func ids(sbs []*Sandbox) []string {
	out := make([]string, 0, len(sbs))
	for _, sb := range sbs {
		out = append(out, sb.ID)
	}
	slices.Sort(out)
	return out
}

func TestStore(t *testing.T) {
	s := New()
	if got := s.List(); len(got) != 0 {
		t.Fatalf("List of an empty store = %v, want none", ids(got))
	}
	if _, err := s.Get("a"); !errdefs.IsNotFound(err) {
		t.Fatalf("Get of a missing sandbox: err = %v, want not found", err)
	}
	if sb := s.Remove("a"); sb != nil {
		t.Fatalf("Remove of a missing sandbox = %v, want nil", sb)
	}

	a, b := newSandbox("a"), newSandbox("b")
	for _, sb := range []*Sandbox{a, b} {
		if err := s.Add(sb); err != nil {
			t.Fatalf("Add(%s): %v", sb.ID, err)
		}
	}
	// A second sandbox with a taken ID must not replace the first.
	if err := s.Add(newSandbox("a")); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Add of a taken ID: err = %v, want already exists", err)
	}
	if got, err := s.Get("a"); err != nil || got != a {
		t.Fatalf("Get(a) = %p, %v; want %p, nil", got, err, a)
	}
	if got := ids(s.List()); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("List = %v, want [a b]", got)
	}

	if got := s.Remove("a"); got != a {
		t.Fatalf("Remove(a) = %p, want %p", got, a)
	}
	if _, err := s.Get("a"); !errdefs.IsNotFound(err) {
		t.Fatalf("Get after Remove: err = %v, want not found", err)
	}
	if got := s.Remove("a"); got != nil {
		t.Fatalf("second Remove(a) = %p, want nil", got)
	}
	if got := ids(s.List()); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("List after Remove = %v, want [b]", got)
	}
	// The ID is free again once removed.
	if err := s.Add(newSandbox("a")); err != nil {
		t.Fatalf("Add after Remove: %v", err)
	}
}

func TestNewSandbox(t *testing.T) {
	sb := newSandbox("a")
	if st := sb.Status(); st.State != StateCreated || st.Instance != nil {
		t.Fatalf("new sandbox status = %+v, want created without instance", st)
	}
	select {
	case <-sb.Exited():
		t.Fatal("Exited closed before Exit")
	default:
	}
}

func TestSandboxUpdate(t *testing.T) {
	sb := newSandbox("a")
	created := time.Unix(100, 0)
	err := sb.Update(func(st Status) (Status, error) {
		st.State, st.Pid, st.CreatedAt = StateReady, 42, created
		return st, nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	want := Status{State: StateReady, Pid: 42, CreatedAt: created}
	if got := sb.Status(); got != want {
		t.Fatalf("status after Update = %+v, want %+v", got, want)
	}

	errBoom := errors.New("boom")
	err = sb.Update(func(st Status) (Status, error) {
		// A half-built status must not leak out of a failed update.
		st.State, st.Pid = StateNotReady, 0
		return st, errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("failed Update: err = %v, want %v", err, errBoom)
	}
	if got := sb.Status(); got != want {
		t.Fatalf("status after failed Update = %+v, want %+v", got, want)
	}
}

func TestSandboxExitOnce(t *testing.T) {
	sb := newSandbox("a")
	if err := sb.Update(func(st Status) (Status, error) {
		st.State, st.Pid = StateReady, 42
		return st, nil
	}); err != nil {
		t.Fatal(err)
	}

	const callers = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range callers {
		wg.Go(func() {
			<-start
			sb.Exit(uint32(i+1), time.Unix(int64(i+1), 0))
		})
	}
	close(start)
	wg.Wait()

	select {
	case <-sb.Exited():
	default:
		t.Fatal("Exited not closed after Exit")
	}
	// The status holds one caller's exit whole, not a mix of callers'.
	got := sb.Status()
	if got.ExitStatus < 1 || got.ExitStatus > callers {
		t.Fatalf("status after Exit = %+v, want one caller's exit", got)
	}
	want := Status{
		State:      StateNotReady,
		ExitStatus: got.ExitStatus,
		ExitedAt:   time.Unix(int64(got.ExitStatus), 0),
	}
	if got != want {
		t.Fatalf("status after Exit = %+v, want %+v", got, want)
	}
	sb.Exit(99, time.Now())
	if again := sb.Status(); again != want {
		t.Fatalf("a later Exit changed the status to %+v", again)
	}
}

func TestSandboxWait(t *testing.T) {
	t.Run("exit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			sb := newSandbox("a")
			exitedAt := time.Now().Add(time.Minute)
			var (
				got Status
				err error
			)
			done := make(chan struct{})
			go func() {
				defer close(done)
				got, err = sb.Wait(t.Context())
			}()
			synctest.Wait()
			select {
			case <-done:
				t.Fatal("Wait returned before Exit")
			default:
			}

			sb.Exit(3, exitedAt)
			<-done
			if err != nil {
				t.Fatalf("Wait: %v", err)
			}
			want := Status{State: StateNotReady, ExitStatus: 3, ExitedAt: exitedAt}
			if got != want {
				t.Fatalf("Wait = %+v, want %+v", got, want)
			}
			// Waiting on an exited sandbox returns at once.
			if got, err := sb.Wait(t.Context()); err != nil || got != want {
				t.Fatalf("Wait after exit = %+v, %v; want %+v, nil", got, err, want)
			}
		})
	})

	t.Run("cancelled", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			sb := newSandbox("a")
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			start := time.Now()
			_, err := sb.Wait(ctx)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Wait: err = %v, want %v", err, context.DeadlineExceeded)
			}
			if waited := time.Since(start); waited != time.Minute {
				t.Fatalf("Wait returned after %v, want %v", waited, time.Minute)
			}

			ctx, cancel = context.WithCancel(t.Context())
			cancel()
			if _, err := sb.Wait(ctx); !errors.Is(err, context.Canceled) {
				t.Fatalf("Wait with a cancelled ctx: err = %v, want %v", err, context.Canceled)
			}
		})
	})
}

func TestStateCRI(t *testing.T) {
	for _, tc := range []struct {
		state State
		want  string
	}{
		{StateCreated, "SANDBOX_NOTREADY"},
		{StateReady, "SANDBOX_READY"},
		{StateNotReady, "SANDBOX_NOTREADY"},
		{State(42), "SANDBOX_NOTREADY"},
	} {
		if got := tc.state.CRI(); got != tc.want {
			t.Errorf("%v.CRI() = %q, want %q", tc.state, got, tc.want)
		}
	}
}

// TestConcurrent drives the store and its sandboxes from many goroutines at
// once. Its value is under -race; it also checks that one Exit per sandbox
// wins, whole, and that no Update undoes an exit.
func TestConcurrent(t *testing.T) {
	const (
		sandboxes  = 8
		workers    = 32
		iterations = 200
	)
	s := New()
	sbs := make([]*Sandbox, sandboxes)
	for i := range sbs {
		sbs[i] = newSandbox(fmt.Sprintf("sb-%d", i))
	}
	var (
		wg sync.WaitGroup
		// codes holds, per sandbox, the exit codes passed to Exit.
		codesMu sync.Mutex
		codes   [sandboxes]map[uint32]bool
	)
	for i := range codes {
		codes[i] = map[uint32]bool{}
	}
	// Waiters started before any exit must all see it.
	for _, sb := range sbs {
		wg.Go(func() {
			st, err := sb.Wait(context.Background())
			if err != nil || st.State != StateNotReady {
				t.Errorf("%s: Wait = %+v, %v; want NotReady", sb.ID, st, err)
			}
		})
	}
	for w := range workers {
		wg.Go(func() {
			for n := range iterations {
				i := (w + n) % sandboxes
				sb := sbs[i]
				if err := s.Add(sb); err != nil && !errdefs.IsAlreadyExists(err) {
					t.Errorf("Add(%s): %v", sb.ID, err)
				}
				if _, err := s.Get(sb.ID); err != nil && !errdefs.IsNotFound(err) {
					t.Errorf("Get(%s): %v", sb.ID, err)
				}
				// Like Start, mark the sandbox ready unless it already exited.
				_ = sb.Update(func(st Status) (Status, error) {
					if st.State == StateNotReady {
						return st, errdefs.ErrFailedPrecondition
					}
					st.State, st.Pid = StateReady, uint32(w+1)
					return st, nil
				})
				for _, other := range s.List() {
					_ = other.Status().State.CRI()
				}
				// Each worker exits sandboxes at a few points; with more
				// workers than sandboxes, every sandbox gets many callers.
				if n%50 == 49 {
					code := uint32(w*iterations + n + 1)
					codesMu.Lock()
					codes[i][code] = true
					codesMu.Unlock()
					sb.Exit(code, time.Unix(int64(code), 0))
				}
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				if st, err := sb.Wait(ctx); err == nil && st.State != StateNotReady {
					t.Errorf("%s: Wait returned %v without error", sb.ID, st.State)
				}
				s.Remove(sb.ID)
			}
		})
	}
	wg.Wait()

	for i, sb := range sbs {
		st := sb.Status()
		if st.State != StateNotReady || st.Pid != 0 || !codes[i][st.ExitStatus] || st.ExitedAt != time.Unix(int64(st.ExitStatus), 0) {
			t.Errorf("%s: final status %+v, want NotReady, pid 0 and one Exit call's code and time", sb.ID, st)
		}
	}
}
