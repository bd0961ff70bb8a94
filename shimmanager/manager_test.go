package shimmanager

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	runcC "github.com/containerd/go-runc"
)

// fakeShim stands for the runc shim's manager: its Stop would run runc.
type fakeShim struct {
	stops []string
}

var fakeStatus = shim.StopStatus{Pid: 7, ExitStatus: 1}

func (f *fakeShim) Name() string { return "io.containerd.runc.v2" }
func (f *fakeShim) Start(context.Context, *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	return nil, nil
}
func (f *fakeShim) Info(context.Context, io.Reader) (*types.RuntimeInfo, error) { return nil, nil }
func (f *fakeShim) Stop(_ context.Context, id string) (shim.StopStatus, error) {
	f.stops = append(f.stops, id)
	return fakeStatus, nil
}

const (
	testID = "pod"
	testNS = "k8s.io"
)

// bundle makes a bundle for testID whose runtime options put runc's state
// under a root of the test's, enters it as containerd runs the delete
// command, and returns the bundle and runc's state directory for testID.
func bundle(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	bundle, root := filepath.Join(dir, testID), filepath.Join(dir, "runc")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(&options.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "options.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(bundle)
	return bundle, filepath.Join(root, testNS, testID)
}

func stop(t *testing.T, inner *fakeShim) shim.StopStatus {
	t.Helper()
	st, err := New(inner).Stop(namespaces.WithNamespace(context.Background(), testNS), testID)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestStopRunsRuncWhileItHasTheContainer(t *testing.T) {
	_, state := bundle(t)
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	inner := &fakeShim{}
	if st := stop(t, inner); st != fakeStatus {
		t.Errorf("status %+v, want the runc shim's %+v", st, fakeStatus)
	}
	if len(inner.stops) != 1 || inner.stops[0] != testID {
		t.Errorf("runc shim's Stop calls %v, want one for %s", inner.stops, testID)
	}
}

func TestStopWithoutRuncContainer(t *testing.T) {
	t.Run("recorded exit", func(t *testing.T) {
		b, _ := bundle(t)
		at := time.Date(2026, 12, 4, 1, 2, 3, 0, time.UTC)
		if err := runc.WriteExitStatus(b, runcC.Exit{Pid: 42, Status: 3, Timestamp: at}); err != nil {
			t.Fatal(err)
		}
		inner := &fakeShim{}
		st := stop(t, inner)
		if want := (shim.StopStatus{Pid: 42, ExitStatus: 3, ExitedAt: at}); !st.ExitedAt.Equal(at) || st.Pid != want.Pid || st.ExitStatus != want.ExitStatus {
			t.Errorf("status %+v, want the recorded %+v", st, want)
		}
		if len(inner.stops) != 0 {
			t.Errorf("runc shim's Stop ran for %v", inner.stops)
		}
	})
	t.Run("no recorded exit", func(t *testing.T) {
		b, _ := bundle(t)
		if err := os.WriteFile(filepath.Join(b, process.InitPidFile), []byte(strconv.Itoa(42)), 0o600); err != nil {
			t.Fatal(err)
		}
		before := time.Now()
		inner := &fakeShim{}
		st := stop(t, inner)
		if st.Pid != 42 || st.ExitStatus != 137 || st.ExitedAt.Before(before) {
			t.Errorf("status %+v, want pid 42 SIGKILLed after %v", st, before)
		}
		if len(inner.stops) != 0 {
			t.Errorf("runc shim's Stop ran for %v", inner.stops)
		}
	})
}

// TestStopOtherRuntime: a container of a runtime binary other than runc,
// whose state may be elsewhere, gets the runc shim's Stop though runc's
// state directory is not there; runc named by its path does not.
func TestStopOtherRuntime(t *testing.T) {
	for binary, wantInner := range map[string]bool{"runsc": true, "/usr/local/bin/runsc": true, "/usr/local/bin/runc": false, "runc": false} {
		b, _ := bundle(t)
		if err := runc.WriteRuntime(b, binary); err != nil {
			t.Fatal(err)
		}
		inner := &fakeShim{}
		stop(t, inner)
		if got := len(inner.stops) == 1; got != wantInner {
			t.Errorf("runtime %q: runc shim's Stop calls %v, want the runc shim's Stop: %v", binary, inner.stops, wantInner)
		}
	}
}

func TestStopNeedsNamespace(t *testing.T) {
	bundle(t)
	inner := &fakeShim{}
	if _, err := New(inner).Stop(context.Background(), testID); err == nil {
		t.Error("Stop without a namespace succeeded")
	}
	if len(inner.stops) != 0 {
		t.Errorf("runc shim's Stop ran for %v", inner.stops)
	}
}
