package kube

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// process is a daemon of the cluster (etcd, kube-apiserver, kubelet,
// containerd) that this test binary started, logging to its own file.
type process struct {
	name    string
	path    string
	args    []string
	env     []string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

func newProcess(dir, name, path string, args ...string) *process {
	return &process{name: name, path: path, args: args, logPath: filepath.Join(dir, name+".log")}
}

// start runs the process. It gets its own process group, so that a signal
// to the test binary's group does not reach it before the tests have
// cleaned up.
func (p *process) start() error {
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	defer logFile.Close()
	p.cmd = exec.Command(p.path, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.done = make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return nil
}

// running reports whether the process has not exited.
func (p *process) running() bool {
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends sig and waits for the exit; after grace it sends SIGKILL. It
// is a no-op on a process that is not running.
func (p *process) kill(sig syscall.Signal, grace time.Duration) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stop ends the process gracefully, as a node's service manager would.
func (p *process) stop() { p.kill(syscall.SIGTERM, 30*time.Second) }

// logTail is the end of the process's log, for failure messages.
func (p *process) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitFor polls ready every 100ms until it returns nil, the process exits
// or timeout passes.
func (p *process) waitFor(timeout time.Duration, what string, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("%s exited before %s: %w; log: %s", p.name, what, err, p.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not within %s: %w; log: %s", p.name, what, timeout, err, p.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
