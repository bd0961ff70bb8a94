package controller

import "testing"

func TestPauseImagesRemembered(t *testing.T) {
	var p pauseImages
	if _, ok := p.get("overlayfs", "sha256:a"); ok {
		t.Fatal("an empty cache holds an image")
	}
	p.put("overlayfs", unpackedImage{target: "sha256:a", chainID: "sha256:c"})
	if u, ok := p.get("overlayfs", "sha256:a"); !ok || u.chainID != "sha256:c" {
		t.Errorf("get = %+v, %v; want the image put", u, ok)
	}
	// The image was pulled again with another target, or asked for another
	// snapshotter: berth reads it again.
	if _, ok := p.get("overlayfs", "sha256:b"); ok {
		t.Error("an image of another target was taken for the one remembered")
	}
	if _, ok := p.get("native", "sha256:a"); ok {
		t.Error("an image unpacked for overlayfs was taken as unpacked for native")
	}
	p.forget("overlayfs")
	if _, ok := p.get("overlayfs", "sha256:a"); ok {
		t.Error("a forgotten image is still remembered")
	}
}
