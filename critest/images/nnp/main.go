// Command nnp stands in for registry.k8s.io/e2e-test-images/nonewprivs:
// installed setuid root, it prints its effective uid, which is 0 unless the
// container runs with no_new_privs (critest's NoNewPrivs tests run it as
// uid 1000 and compare).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
