package kube

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// TestStreaming reads logs and runs exec, attach and port-forward through
// the API server, which reaches CRI's streaming server through kubelet,
// for a berth pod and a built-in one.
func TestStreaming(t *testing.T) {
	for _, rc := range []string{"berth", ""} {
		t.Run("runtimeclass-"+rc, func(t *testing.T) {
			// One container echoes its stdin (attach), one serves HTTP
			// (port-forward); both run exec.
			pod := busyboxPod(t, rc, "sh", "-c", "echo started; exec cat")
			pod.Spec.Containers[0].Stdin = true
			web := pod.Spec.Containers[0]
			web.Name, web.Stdin = "web", false
			web.Command = []string{"sh", "-c", "mkdir /www && echo pong > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"}
			// Ready once it serves, so that port-forward does not race
			// httpd's listen.
			web.ReadinessProbe = &corev1.Probe{
				ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
					Command: []string{"/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"},
				}},
				PeriodSeconds: 1,
			}
			pod.Spec.Containers = append(pod.Spec.Containers, web)
			pod = runPod(t, pod)

			t.Run("logs", func(t *testing.T) {
				// The container runs before its first line reaches its log.
				var log string
				eventually(t, 10*time.Second, "the app's first log line", func() bool {
					log = podLogs(t, pod, "app")
					return log != ""
				})
				if log != "started\n" {
					t.Errorf("logs = %q, want %q", log, "started\n")
				}
			})
			t.Run("exec", func(t *testing.T) {
				out, err := execIn(pod, "app", "", "hostname")
				if err != nil || strings.TrimSpace(out) != pod.Name {
					t.Errorf("exec hostname = %q, %v; want %q", out, err, pod.Name)
				}
				out, err = execIn(pod, "app", "from stdin", "cat")
				if err != nil || out != "from stdin" {
					t.Errorf("exec cat with stdin = %q, %v", out, err)
				}
				if _, err := execIn(pod, "app", "", "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit code 3") {
					t.Errorf("exec of a command that exits 3: %v, want its exit code", err)
				}
			})
			t.Run("attach", func(t *testing.T) {
				if out := attachEcho(t, pod, "app", "ping\n"); out != "ping\n" {
					t.Errorf("attach echoed %q, want %q", out, "ping\n")
				}
			})
			t.Run("port-forward", func(t *testing.T) {
				if body := portForwardGet(t, pod, 8080, "/index.html"); body != "pong\n" {
					t.Errorf("GET through port-forward = %q, want %q", body, "pong\n")
				}
			})
		})
	}
}

// podLogs is a container's log, through the API server.
func podLogs(t *testing.T, pod *corev1.Pod, container string) string {
	t.Helper()
	b, err := c.cs.CoreV1().Pods(namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: container}).DoRaw(ctxT(t))
	if err != nil {
		t.Fatalf("logs of %s/%s: %v", pod.Name, container, err)
	}
	return string(b)
}

// executor is a stream to a pod's exec or attach URL as kubectl makes it:
// WebSocket first, SPDY if the upgrade fails.
func executor(u *url.URL) (remotecommand.Executor, error) {
	spdyExec, err := remotecommand.NewSPDYExecutor(c.apiserver.admin, http.MethodPost, u)
	if err != nil {
		return nil, err
	}
	wsExec, err := remotecommand.NewWebSocketExecutor(c.apiserver.admin, http.MethodGet, u.String())
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(wsExec, spdyExec, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

// execIn runs cmd in a container with stdin and returns its stdout; a
// non-zero exit is an error that carries the exit code.
func execIn(pod *corev1.Pod, container, stdin string, cmd ...string) (string, error) {
	u := c.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod.Name).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: container, Command: cmd, Stdin: stdin != "", Stdout: true, Stderr: true,
	}, scheme.ParameterCodec).URL()
	exec, err := executor(u)
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	opts := remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}
	if stdin != "" {
		opts.Stdin = strings.NewReader(stdin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := exec.StreamWithContext(ctx, opts); err != nil {
		return stdout.String(), fmt.Errorf("exec %v in %s/%s: %w (stderr %q)", cmd, pod.Name, container, err, stderr.String())
	}
	return stdout.String(), nil
}

// attachEcho attaches to a container that echoes its stdin, writes in and
// returns what comes back on stdout.
func attachEcho(t *testing.T, pod *corev1.Pod, container, in string) string {
	t.Helper()
	u := c.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod.Name).
		SubResource("attach").VersionedParams(&corev1.PodAttachOptions{
		Container: container, Stdin: true, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec).URL()
	exec, err := executor(u)
	if err != nil {
		t.Fatal(err)
	}
	stdinR, stdinW := io.Pipe()
	stdoutR, stdoutW := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdinR, Stdout: stdoutW, Stderr: io.Discard})
		stdoutW.Close()
	}()
	if _, err := io.WriteString(stdinW, in); err != nil {
		t.Fatalf("attach: write stdin: %v", err)
	}
	got := make([]byte, len(in))
	if _, err := io.ReadFull(stdoutR, got); err != nil {
		t.Fatalf("attach: read stdout: %v (stream: %v)", err, errOf(done))
	}
	// Detach as kubectl does on ^C: the container keeps running.
	cancel()
	<-done
	return string(got)
}

// errOf is the stream's error if it has ended.
func errOf(done <-chan error) error {
	select {
	case err := <-done:
		return err
	default:
		return nil
	}
}

// portForwardGet forwards a local port to the pod's port as kubectl does
// (SPDY over WebSocket, SPDY if the upgrade fails) and GETs path through
// it.
func portForwardGet(t *testing.T, pod *corev1.Pod, port int, path string) string {
	t.Helper()
	u := c.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod.Name).
		SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(c.apiserver.admin)
	if err != nil {
		t.Fatal(err)
	}
	spdyDialer := spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	wsDialer, err := portforward.NewSPDYOverWebsocketDialerForStreaming(u, c.apiserver.admin)
	if err != nil {
		t.Fatal(err)
	}
	dialer := portforward.NewFallbackDialerForStreaming(wsDialer, spdyDialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddressesForStreaming(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		<-done
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("port-forward: %v", err)
	case <-time.After(callTimeout):
		t.Fatal("port-forward not ready")
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("forwarded ports %v: %v", ports, err)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", ports[0].Local, path))
	if err != nil {
		t.Fatalf("GET through port-forward: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
