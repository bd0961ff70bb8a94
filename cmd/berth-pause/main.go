// Command berth-pause is a pod's pause process: PID 1 of the pod's PID
// namespace, holding the namespaces open while doing nothing but reap the
// zombies that are reparented to it. It exits 0 on SIGINT or SIGTERM.
//
// It is built static (CGO_ENABLED=0) so that an image holding only this
// binary runs.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// Buffered and registered once: the loop below allocates nothing.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child without blocking.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
