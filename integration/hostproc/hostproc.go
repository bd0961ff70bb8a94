// Package hostproc reads, from /proc, what the end-to-end tests' processes
// leave on this host: runc shims, mounts, process trees. Both test
// packages, integration and integration/kube, check their leaks with it.
package hostproc

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The binaries of the shims the tests run: the runc shim, which a handler
// without a runtime_path gets, and berth's, the runc shim with berth's task
// service.
const (
	RuncShim  = "containerd-shim-runc-v2"
	BerthShim = "containerd-shim-berth-v2"
)

var shimBinaries = []string{RuncShim, BerthShim}

// Shims lists the pids of the runc shims of the containerd at socket that
// were started for sandbox id (a shared shim is started for its first
// pod), or all of that containerd's shims if id is "".
func Shims(socket, id string) []int {
	var pids []int
	for _, pid := range processes() {
		args, err := Cmdline(pid)
		if err != nil {
			continue
		}
		if !slices.Contains(shimBinaries, filepath.Base(args[0])) {
			continue
		}
		flags := map[string]string{}
		for i := 1; i+1 < len(args); i++ {
			if strings.HasPrefix(args[i], "-") {
				flags[args[i]] = args[i+1]
			}
		}
		if flags["-address"] == socket && (id == "" || flags["-id"] == id) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Cmdline is the arguments process pid runs with.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

// IdleShims lists the shims Shims finds that serve no process: a shared
// shim started for a pod that is gone may still serve other pods.
func IdleShims(socket, id string) []int {
	var idle []int
	for _, pid := range Shims(socket, id) {
		if len(Children(pid)) == 0 {
			idle = append(idle, pid)
		}
	}
	return idle
}

// Mounts lists the mount points under dir, deepest first.
func Mounts(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// dir itself or below it, not a sibling whose name dir begins.
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append([]string{f[4]}, out...)
		}
	}
	return out
}

// Parent is the parent pid of process pid.
func Parent(pid int) (int, error) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command may hold spaces; fields are counted after its ')'.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return strconv.Atoi(f[1])
}

// Children lists the child processes of pid.
func Children(pid int) []int {
	var kids []int
	for _, child := range processes() {
		if ppid, err := Parent(child); err == nil && ppid == pid {
			kids = append(kids, child)
		}
	}
	return kids
}

// processes lists every pid.
func processes() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ShimSocketDir is where the tests' shims listen: containerd's default
// socket_dir, which their configs keep.
const ShimSocketDir = "/run/containerd/s"

// DeadShimSockets lists the sockets in ShimSocketDir made at since or
// after on which nothing listens: the sockets of shims that exited
// without removing them.
func DeadShimSockets(since time.Time) []string {
	entries, _ := os.ReadDir(ShimSocketDir)
	var dead []string
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || info.Mode().Type() != os.ModeSocket || info.ModTime().Before(since) {
			continue
		}
		path := filepath.Join(ShimSocketDir, e.Name())
		conn, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			conn.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			dead = append(dead, e.Name())
		}
	}
	return dead
}
