// Command pgrep prints the pids of the processes whose name matches a
// regular expression, as procps' pgrep PATTERN does, and exits 1 if there
// are none. Debian's static busybox has no pgrep, and critest's execSync
// timeout test runs `pgrep sleep` in its busybox image.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) != 2 || strings.HasPrefix(os.Args[1], "-") {
		fmt.Fprintln(os.Stderr, "usage: pgrep PATTERN")
		os.Exit(2)
	}
	re, err := regexp.Compile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgrep:", err)
		os.Exit(2)
	}
	comms, err := filepath.Glob("/proc/[0-9]*/comm")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgrep:", err)
		os.Exit(3)
	}
	self := os.Getpid()
	found := false
	for _, comm := range comms {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(comm)))
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(comm)
		if err != nil {
			continue // the process exited
		}
		if re.MatchString(strings.TrimSuffix(string(b), "\n")) {
			fmt.Println(pid)
			found = true
		}
	}
	if !found {
		os.Exit(1)
	}
}
