package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestLayerTar(t *testing.T) {
	host := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(host, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	layer, err := layerTar(layerSpec{
		files:     []string{host + "=/usr/bin/prog", host + "=/bin/suid"},
		links:     []string{"/bin/sh=prog"},
		hardlinks: []string{"/bin/ls=/usr/bin/prog"},
		dirs:      []string{"/tmp=1777", "/var/www=0750"},
		modes:     []string{"/bin/suid=4755"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		typ  byte
		mode int64
		link string
	}{
		"tmp/":         {tar.TypeDir, 0o1777, ""},
		"var/":         {tar.TypeDir, 0o755, ""},
		"var/www/":     {tar.TypeDir, 0o750, ""},
		"usr/":         {tar.TypeDir, 0o755, ""},
		"usr/bin/":     {tar.TypeDir, 0o755, ""},
		"usr/bin/prog": {tar.TypeReg, 0o755, ""},
		"bin/":         {tar.TypeDir, 0o755, ""},
		"bin/suid":     {tar.TypeReg, 0o4755, ""},
		"bin/sh":       {tar.TypeSymlink, 0o777, "prog"},
		// A hard link carries its file's mode: appliers chmod the link.
		"bin/ls": {tar.TypeLink, 0o755, "usr/bin/prog"},
	}
	tr := tar.NewReader(bytes.NewReader(layer))
	seen := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[hdr.Name]
		if !ok {
			t.Errorf("unexpected entry %s", hdr.Name)
			continue
		}
		seen++
		if hdr.Typeflag != w.typ || hdr.Mode != w.mode || hdr.Linkname != w.link || hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s: type %c mode %o link %q owner %d:%d, want type %c mode %o link %q owner 0:0",
				hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Linkname, hdr.Uid, hdr.Gid, w.typ, w.mode, w.link)
		}
	}
	if seen != len(want) {
		t.Errorf("%d of %d entries", seen, len(want))
	}
}

func TestLayerTarErrors(t *testing.T) {
	host := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(host, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, spec := range map[string]layerSpec{
		"mode of no file":     {files: []string{host + "=/f"}, modes: []string{"/g=0644"}},
		"mode not octal":      {files: []string{host + "=/f"}, modes: []string{"/f=rwx"}},
		"dir relative":        {dirs: []string{"tmp=1777"}},
		"hardlink to no file": {hardlinks: []string{"/bin/ls=/bin/busybox"}},
		"file relative":       {files: []string{host + "=f"}},
	} {
		if _, err := layerTar(spec); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
