//go:build berth_failpoint

package failpoint

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"

	"github.com/berth-dev/berth/store"
)

// failpoints counts the calls of each sandbox's failpoints, keyed by
// "<sandbox id>/<point>".
var failpoints sync.Map

// Inject fails the first N calls of point for a sandbox whose pod has the
// annotation AnnotationPrefix+point = "N" (never for a nil
// sandbox, a container no sandbox owns), with an Unavailable
// error, as a shim that did not answer would. Only test builds (build tag
// berth_failpoint) have it; tests use it to prove retries and rollbacks.
func Inject(sb *store.Sandbox, point string) error {
	return inject(sb, point, errdefs.ErrUnavailable)
}

// InjectTimeout is Inject with a DeadlineExceeded error, as a call to a
// shim that did not answer in time fails: berth's recovery waits out an
// Unavailable one, as containerd away.
func InjectTimeout(sb *store.Sandbox, point string) error {
	return inject(sb, point, context.DeadlineExceeded)
}

// inject fails the first N calls of point for sb with kind.
func inject(sb *store.Sandbox, point string, kind error) error {
	if sb == nil {
		return nil
	}
	v, ok := sb.Config.GetAnnotations()[AnnotationPrefix+point]
	if !ok {
		return nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("failpoint %s: bad count %q: %w", point, v, errdefs.ErrInvalidArgument)
	}
	c, _ := failpoints.LoadOrStore(sb.ID+"/"+point, new(atomic.Int64))
	if k := c.(*atomic.Int64).Add(1); k <= int64(n) {
		return fmt.Errorf("failpoint %s: injected failure %d of %d: %w", point, k, n, kind)
	}
	return nil
}

// Hold pauses a sandbox's step at point for as long as its pod's
// annotation AnnotationPrefix+point says ("2s"; none, or one that
// does not parse, is no pause), for tests that make another step overlap
// it.
func Hold(sb *store.Sandbox, point string) {
	if sb == nil {
		return
	}
	d, _ := time.ParseDuration(sb.Config.GetAnnotations()[AnnotationPrefix+point])
	time.Sleep(d)
}

// Clear forgets a removed sandbox's counters.
func Clear(id string) {
	failpoints.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), id+"/") {
			failpoints.Delete(k)
		}
		return true
	})
}
