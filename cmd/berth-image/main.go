// Command berth-image writes a single-layer OCI image archive from files on
// this machine, for `ctr images import`. berth's tests and `make up` build
// their pause and test images with it, and `make critest` the images critest
// pulls, since nodes without a registry (and this project's CI) cannot pull
// any.
//
//	berth-image -o pause.tar -name localhost/berth/pause:1 -entrypoint /pause \
//	    -user 65535:65535 bin/berth-pause=/pause
//
// Each FILE argument is HOST=IMAGE (a file copied in, mode kept unless -mode
// IMAGE=MODE gives one); -link IMAGE=TARGET adds a symlink, -hardlink
// IMAGE=FILE a hard link to a FILE's IMAGE path and -dir IMAGE=MODE an empty
// directory.
package main

import (
	"archive/tar"
	"bytes"
	_ "crypto/sha256" // registers the digest algorithm go-digest uses
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// imageSpec is the image's name, its config and its layer.
type imageSpec struct {
	name            string
	entrypoint, cmd []string
	user            string
	layer           layerSpec
}

func main() {
	var (
		out        = flag.String("o", "", "output archive path")
		name       = flag.String("name", "", "image reference, e.g. localhost/berth/pause:1")
		entrypoint = flag.String("entrypoint", "", "entrypoint, space separated")
		cmd        = flag.String("cmd", "", "CMD, space separated")
		user       = flag.String("user", "", "USER of the image")
		layer      layerSpec
	)
	flag.Var((*listFlag)(&layer.links), "link", "IMAGE=TARGET symlink, repeatable")
	flag.Var((*listFlag)(&layer.hardlinks), "hardlink", "IMAGE=FILE hard link to a FILE's IMAGE path, repeatable")
	flag.Var((*listFlag)(&layer.dirs), "dir", "IMAGE=MODE empty directory with octal mode, repeatable")
	flag.Var((*listFlag)(&layer.modes), "mode", "IMAGE=MODE octal mode of a FILE, repeatable")
	flag.Parse()
	if *out == "" || *name == "" {
		fmt.Fprintln(os.Stderr, "berth-image: -o and -name are required")
		os.Exit(2)
	}
	layer.files = flag.Args()
	spec := imageSpec{name: *name, entrypoint: strings.Fields(*entrypoint), cmd: strings.Fields(*cmd), user: *user, layer: layer}
	if err := build(*out, spec); err != nil {
		fmt.Fprintln(os.Stderr, "berth-image:", err)
		os.Exit(1)
	}
}

func build(out string, spec imageSpec) error {
	layer, err := layerTar(spec.layer)
	if err != nil {
		return err
	}
	config := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config: ocispec.ImageConfig{
			Entrypoint: spec.entrypoint,
			Cmd:        spec.cmd,
			User:       spec.user,
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(layer)}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return err
	}
	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    descriptor(ocispec.MediaTypeImageConfig, configJSON),
		Layers:    []ocispec.Descriptor{descriptor(ocispec.MediaTypeImageLayer, layer)},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	md := descriptor(ocispec.MediaTypeImageManifest, manifestJSON)
	md.Annotations = map[string]string{
		// containerd's importer names the image after this annotation.
		"io.containerd.image.name": spec.name,
		ocispec.AnnotationRefName:  spec.name,
	}
	md.Platform = &config.Platform
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{md},
	})
	if err != nil {
		return err
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}

	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	entries := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, layout},
		{ocispec.ImageIndexFile, index},
		{blobPath(configJSON), configJSON},
		{blobPath(layer), layer},
		{blobPath(manifestJSON), manifestJSON},
	}
	for _, e := range entries {
		if err := writeFile(tw, e.name, e.data, 0o644); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, archive.Bytes(), 0o644)
}

// epoch is every entry's mtime, so the same inputs give the same digests.
var epoch = time.Unix(0, 0)

func writeFile(tw *tar.Writer, name string, data []byte, mode int64) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

func descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

func blobPath(data []byte) string {
	d := digest.FromBytes(data)
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}
