package keeper

import (
	"context"
	"strings"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestRecord checks that a keeper's record is what makes it one, and
// that a label or an extension of another type does not.
func TestRecord(t *testing.T) {
	var c containers.Container
	if err := withRecord(Record{RuntimeHandler: "runc", Namespace: "ns", ShimGroup: "g"})(context.Background(), nil, &c); err != nil {
		t.Fatal(err)
	}
	if !IsContainer(c) {
		t.Fatal("a container with a keeper record is not a keeper")
	}
	if got := string(c.Extensions[Extension].GetValue()); got != `{"runtimeHandler":"runc","namespace":"ns","shimGroup":"g"}` {
		t.Errorf("record %s", got)
	}
	for _, other := range []containers.Container{
		{Labels: map[string]string{"io.berth.kind": "shim-keeper"}},
		{Extensions: map[string]typeurl.Any{Extension: &anypb.Any{TypeUrl: "io.berth.other"}}},
	} {
		if IsContainer(other) {
			t.Errorf("%+v is taken for a keeper", other)
		}
	}
}

func TestSystemdCgroup(t *testing.T) {
	opts, err := typeurl.MarshalAnyToProto(&runcoptions.Options{SystemdCgroup: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		runtime sandbox.RuntimeOpts
		want    bool
	}{
		{sandbox.RuntimeOpts{Name: "io.containerd.runc.v2", Options: opts}, true},
		{sandbox.RuntimeOpts{Name: "io.containerd.runc.v2"}, false},
		// Another shim's options are not runc's.
		{sandbox.RuntimeOpts{Name: "io.containerd.kata.v2", Options: opts}, false},
	} {
		if got, err := systemdCgroup(c.runtime); err != nil || got != c.want {
			t.Errorf("systemdCgroup(%s) = %v, %v; want %v", c.runtime.Name, got, err, c.want)
		}
	}
	if _, err := systemdCgroup(sandbox.RuntimeOpts{Name: "io.containerd.runc.v2", Options: &anypb.Any{TypeUrl: "bogus"}}); err == nil {
		t.Error("undecodable runc options accepted")
	}
}

func TestNewID(t *testing.T) {
	a, b := newID("kata/fc"), newID("kata/fc")
	if a == b || !strings.HasPrefix(a, "berth-keeper-kata-fc-") {
		t.Errorf("IDs %s, %s: want distinct, named after the handler without a slash", a, b)
	}
}
