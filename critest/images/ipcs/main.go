// Command ipcs lists the System V shared memory segments of its IPC
// namespace, as util-linux's `ipcs -m` does. Debian's static busybox has no
// ipcs, and critest's HostIpc tests look for a segment the host made in the
// output of `ipcs -m` in their busybox image.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] != "-m" {
		fmt.Fprintln(os.Stderr, "usage: ipcs -m")
		os.Exit(2)
	}
	if err := list(); err != nil {
		fmt.Fprintln(os.Stderr, "ipcs:", err)
		os.Exit(1)
	}
}

// list prints /proc/sysvipc/shm, whose columns are key, shmid, perms, size,
// cpid, lpid, nattch, uid, ...
func list() error {
	f, err := os.Open("/proc/sysvipc/shm")
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "\n------ Shared Memory Segments --------\n")
	fmt.Fprintf(w, "%-10s %-10s %-10s %-10s %-10s %-10s\n", "key", "shmid", "owner", "perms", "bytes", "nattch")
	s := bufio.NewScanner(f)
	s.Scan() // the header
	for s.Scan() {
		c := strings.Fields(s.Text())
		if len(c) < 8 {
			return fmt.Errorf("unexpected line %q", s.Text())
		}
		key, err := strconv.ParseInt(c[0], 10, 64)
		if err != nil {
			return fmt.Errorf("key %q: %w", c[0], err)
		}
		// perms is octal already, as ipcs prints it.
		fmt.Fprintf(w, "0x%08x %-10s %-10s %-10s %-10s %-10s\n", uint32(key), c[1], c[7], c[2], c[3], c[6])
	}
	if err := s.Err(); err != nil {
		return err
	}
	return w.Flush()
}
