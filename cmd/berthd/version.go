package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/version"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// versionLine is what --version prints: the package and version make
// stamps into containerd's version package, as containerd --version
// prints them (github.com/berth-dev/berth v2.4.2+berth.<commit>: the
// containerd release berth is built against, and berth's commit).
func versionLine() string {
	return fmt.Sprintf("berthd %s %s", version.Package, version.Version)
}

// releasePattern reads a containerd version's release, major and minor:
// "v2.4.2", "2.4.2+unknown", and distributions' "2.1.4~ds1".
var releasePattern = regexp.MustCompile(`^v?(\d+)\.(\d+)`)

// checkContainerdVersion checks the version of the containerd berthd
// serves. A containerd before 2 loads no proxy sandbox controller the way
// berth needs: an error. One of another 2.x release than berth is built
// against (version.Version, which make stamps with go.mod's containerd) is
// served with a warning: CRI's use of sandbox controllers changed between
// releases (in 2.4 its pod stats go through Metrics), and berth is tested
// only on its own. A version that cannot be had or read is warned of too.
func checkContainerdVersion(ctx context.Context, cc *client.Client) error {
	v, err := cc.Version(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("read containerd's version; berthd goes on without checking it")
		return nil
	}
	warning, err := compareRelease(v.Version, version.Version)
	if err != nil {
		return err
	}
	if warning != "" {
		log.G(ctx).WithField("containerd_version", v.Version).Warn(warning)
	}
	return nil
}

// compareRelease compares the release of a running containerd with the
// one berth is built against: an error for one before containerd 2, a
// warning for any other release, or for a version it cannot read.
func compareRelease(running, built string) (warning string, _ error) {
	major, minor, ok := release(running)
	if !ok {
		return fmt.Sprintf("cannot read containerd's version %q; berth is built and tested against containerd %s", running, built), nil
	}
	if major < 2 {
		return "", fmt.Errorf("containerd %s is older than 2.0, whose sandbox API berthd serves; berth is built against containerd %s: %w", running, built, errdefs.ErrFailedPrecondition)
	}
	if bmajor, bminor, ok := release(built); !ok || major != bmajor || minor != bminor {
		return fmt.Sprintf("containerd %s is another release than the one berth is built and tested against, %s: CRI may drive sandbox controllers differently", running, built), nil
	}
	return "", nil
}

// release reads the major and minor release of containerd version v.
func release(v string) (major, minor int, ok bool) {
	m := releasePattern.FindStringSubmatch(v)
	if m == nil {
		return 0, 0, false
	}
	major, errMajor := strconv.Atoi(m[1])
	minor, errMinor := strconv.Atoi(m[2])
	return major, minor, errMajor == nil && errMinor == nil
}
