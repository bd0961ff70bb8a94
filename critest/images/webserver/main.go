// Command webserver stands in for the nginx and httpd images critest runs
// (registry.k8s.io/e2e-test-images/nginx, .../httpd and cri-tools'
// hostnet-nginx): an HTTP server answering 200 on every path, with what the
// tests look for in a real nginx. Installed as /usr/sbin/nginx or
// /usr/sbin/httpd, it takes its name from that path, so `pidof nginx`
// finds it; it writes its pid to /var/run/NAME.pid (the HostPID test reads
// it), logs a line with its name (the multi-container test looks for
// "httpd" in the log) and titles itself "NAME: master process ..." (the
// PID namespace tests grep /proc/1/cmdline for "master process").
//
//	nginx [-port 80] [-pidfile /var/run/nginx.pid]
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// titleMark ends the name in the title; a process started with it as
// argv[0] is the re-executed server.
const titleMark = ": master process "

func main() {
	exe, err := os.Executable()
	if err != nil {
		fail(fmt.Errorf("find own executable: %w", err))
	}
	name := filepath.Base(exe)
	if !strings.HasPrefix(os.Args[0], name+titleMark) {
		// nginx rewrites its argv in place; Go cannot, so it re-executes
		// itself (same pid) with the title as argv[0]. The kernel names the
		// process after exe's file name, which stays name.
		title := name + titleMark + os.Args[0]
		fail(syscall.Exec(exe, append([]string{title}, os.Args[1:]...), os.Environ()))
	}
	port := flag.Int("port", 80, "TCP port to serve on, on every address")
	pidFile := flag.String("pidfile", "/var/run/"+name+".pid", "where to write the pid")
	flag.Parse()
	if err := serve(name, *port, *pidFile); err != nil {
		fail(err)
	}
}

func serve(name string, port int, pidFile string) error {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(pidFile), 0o755); err != nil {
		return fmt.Errorf("pid file directory: %w", err)
	}
	// Written once listening, so a reader of the pid file can connect.
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	// As PID 1 of a container, a signal without a handler is ignored:
	// exit on SIGTERM as nginx does, so StopContainer does not wait for
	// its timeout.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	go func() {
		<-sigs
		os.Exit(0)
	}()
	fmt.Fprintf(os.Stderr, "%s: serving on %s\n", name, l.Addr())
	return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "<html><body>%s test page</body></html>\n", name)
	}))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "webserver:", err)
	os.Exit(1)
}
