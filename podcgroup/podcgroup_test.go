package podcgroup

import "testing"

func TestPath(t *testing.T) {
	for _, tc := range []struct{ parent, want string }{
		{"/kubepods/burstable/pod1", "/kubepods/burstable/pod1"},
		{"kubepods/pod1", "/kubepods/pod1"},
		{"kubepods.slice", "/kubepods.slice"},
		{"kubepods-burstable-pod1.slice", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"},
		// A path that happens to end in .slice is a cgroupfs path.
		{"/system.slice/foo.slice", "/system.slice/foo.slice"},
	} {
		if got := Path(tc.parent); got != tc.want {
			t.Errorf("Path(%q) = %q, want %q", tc.parent, got, tc.want)
		}
	}
}
