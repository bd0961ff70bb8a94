package setup

import (
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
)

func TestDecodeCRI(t *testing.T) {
	cri, err := DecodeCRI([]byte(`{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{"runtimeType":"io.containerd.runc.v2","runtimePath":"/opt/runc-shim","PodAnnotations":["io.x/*"],"snapshotter":"native"},"berth":{"sandboxer":"berth","disablePauseImagePull":true}}},"restrictOOMScoreAdj":true}`),
		[]byte(`{"snapshotter":"overlayfs"}`), "/var/lib/containerd", "/run/containerd")
	if err != nil {
		t.Fatal(err)
	}
	rt := cri.Config.Runtimes["runc"]
	if cri.Config.DefaultRuntimeName != "runc" || rt.Type != "io.containerd.runc.v2" || rt.Path != "/opt/runc-shim" ||
		rt.Snapshotter != "native" || len(rt.PodAnnotations) != 1 || !cri.Config.RestrictOOMScoreAdj {
		t.Errorf("config %+v", cri.Config)
	}
	// A handler with no sandboxer is CRI's built-in's, as CRI's config
	// validation makes it.
	want := map[string]Handler{"runc": {Sandboxer: "podsandbox", PullsPause: true}, "berth": {Sandboxer: "berth"}}
	if !reflect.DeepEqual(cri.Handlers, want) {
		t.Errorf("handlers %+v, want %+v", cri.Handlers, want)
	}
	// No pinned sandbox image: CRI's default. No CRI directories: CRI's
	// plugin's, under containerd's.
	if cri.Config.SandboxImage != "registry.k8s.io/pause:3.10.2" || cri.Config.Snapshotter != "overlayfs" {
		t.Errorf("images %q, %q", cri.Config.SandboxImage, cri.Config.Snapshotter)
	}
	if cri.Root != "/var/lib/containerd/io.containerd.grpc.v1.cri" || cri.State != "/run/containerd/io.containerd.grpc.v1.cri" {
		t.Errorf("CRI dirs %q, %q", cri.Root, cri.State)
	}
	for _, bad := range [][2]string{{`[]`, `{}`}, {`{}`, `"x"`}} {
		if _, err := DecodeCRI([]byte(bad[0]), []byte(bad[1]), "/r", "/s"); !errdefs.IsInvalidArgument(err) {
			t.Errorf("DecodeCRI(%s, %s) = %v, want InvalidArgument", bad[0], bad[1], err)
		}
	}
}
