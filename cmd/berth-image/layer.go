package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
)

// layerSpec is what goes into the image's only layer: FILE arguments
// (HOST=/IMAGE/PATH), -link (/IMAGE/PATH=TARGET, a symlink), -hardlink
// (/IMAGE/PATH=/IMAGE/FILE, a hard link to a FILE), -dir (/IMAGE/PATH=MODE,
// an empty directory with its mode, e.g. /tmp=1777) and -mode
// (/IMAGE/PATH=MODE, the mode of a FILE in place of the host file's, e.g.
// 4755 for a setuid binary).
type layerSpec struct {
	files, links, hardlinks, dirs, modes []string
}

// layerTar makes the image's only layer, with the parent directories of
// every entry. Every entry is owned by root.
func layerTar(spec layerSpec) ([]byte, error) {
	modes, err := pathModes(spec.modes, "mode")
	if err != nil {
		return nil, err
	}
	dirModes, err := pathModes(spec.dirs, "dir")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	written := map[string]int64{} // FILE paths and modes, which hard links can name
	mkdir := func(d string, mode int64) error {
		dirs[d] = true
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: mode, ModTime: epoch}
		return tw.WriteHeader(hdr)
	}
	mkdirs := func(p string) error {
		var parents []string
		for d := path.Dir(p); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		sort.Strings(parents)
		for _, d := range parents {
			if err := mkdir(d, 0o755); err != nil {
				return err
			}
		}
		return nil
	}
	// Directories with a mode of their own come first, so that a file's
	// parents do not make them 0755.
	for _, d := range sortedKeys(dirModes) {
		if err := mkdirs(d); err != nil {
			return nil, err
		}
		if err := mkdir(d, dirModes[d]); err != nil {
			return nil, err
		}
	}
	for _, f := range spec.files {
		host, dst, ok := strings.Cut(f, "=")
		if !ok || !path.IsAbs(dst) {
			return nil, fmt.Errorf("file %q: want HOST=/IMAGE/PATH", f)
		}
		data, err := os.ReadFile(host)
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(host)
		if err != nil {
			return nil, err
		}
		mode, ok := modes[path.Clean(dst)]
		if !ok {
			mode = int64(fi.Mode().Perm())
		}
		delete(modes, path.Clean(dst))
		if err := mkdirs(dst); err != nil {
			return nil, err
		}
		if err := writeFile(tw, strings.TrimPrefix(dst, "/"), data, mode); err != nil {
			return nil, err
		}
		written[path.Clean(dst)] = mode
	}
	if len(modes) > 0 {
		return nil, fmt.Errorf("-mode for paths that are no FILE: %v", sortedKeys(modes))
	}
	for _, l := range spec.links {
		dst, target, ok := strings.Cut(l, "=")
		if !ok || !path.IsAbs(dst) {
			return nil, fmt.Errorf("link %q: want /IMAGE/PATH=TARGET", l)
		}
		if err := mkdirs(dst); err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(dst, "/"), Linkname: target, Mode: 0o777, ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	for _, l := range spec.hardlinks {
		dst, target, ok := strings.Cut(l, "=")
		if !ok || !path.IsAbs(dst) || !path.IsAbs(target) {
			return nil, fmt.Errorf("hardlink %q: want /IMAGE/PATH=/IMAGE/FILE", l)
		}
		mode, ok := written[path.Clean(target)]
		if !ok {
			return nil, fmt.Errorf("hardlink %q: %s is no FILE", l, target)
		}
		if err := mkdirs(dst); err != nil {
			return nil, err
		}
		// The file's mode: appliers chmod the link, the file's own inode,
		// to the header's mode.
		hdr := &tar.Header{Typeflag: tar.TypeLink, Name: strings.TrimPrefix(dst, "/"), Linkname: strings.TrimPrefix(path.Clean(target), "/"), Mode: mode, ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// pathModes parses /IMAGE/PATH=OCTAL arguments of flag name.
func pathModes(args []string, name string) (map[string]int64, error) {
	m := map[string]int64{}
	for _, a := range args {
		p, mode, ok := strings.Cut(a, "=")
		if !ok || !path.IsAbs(p) {
			return nil, fmt.Errorf("-%s %q: want /IMAGE/PATH=MODE", name, a)
		}
		v, err := strconv.ParseInt(mode, 8, 64)
		if err != nil || v < 0 || v > 0o7777 {
			return nil, fmt.Errorf("-%s %q: mode is not octal permission bits", name, a)
		}
		m[path.Clean(p)] = v
	}
	return m, nil
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
