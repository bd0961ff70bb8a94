package kube

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// serviceCIDR is the API server's service range. Nothing routes it (no
// kube-proxy runs); the API server only allocates the kubernetes
// service's address from it.
const serviceCIDR = "10.95.0.0/24"

// startEtcd runs a one-member etcd on loopback. Without fsync: its data
// lives only as long as the test run.
func startEtcd(dir, bin string) (*process, error) {
	client := "http://127.0.0.1:" + strconv.Itoa(*etcdPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(*etcdPort+1)
	p := newProcess(dir, "etcd", filepath.Join(bin, "etcd"),
		"--name", "berth-e2e",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "berth-e2e="+peer,
		"--unsafe-no-fsync")
	if err := p.start(); err != nil {
		return p, err
	}
	return p, p.waitFor(time.Minute, "its health endpoint", func() error {
		return httpOK(http.DefaultClient, client+"/health")
	})
}

// apiServer is kube-apiserver and what the tests and kubelet need to talk
// to it.
type apiServer struct {
	*process
	url string
	// admin is the tests' client (system:masters); kubelet gets a
	// certificate of its own.
	admin *rest.Config
}

// startAPIServer runs kube-apiserver on loopback, in front of etcd, with
// client certificates from p for everyone: the tests (admin), kubelet
// (system:node:...) and the API server's own calls to kubelet (logs,
// exec, attach, port-forward). Authorization is AlwaysAllow: a one-node
// test cluster has no one to keep out.
func startAPIServer(dir, bin string, p *pki) (*apiServer, error) {
	serving, servingKey, err := p.issue(certSpec{
		name: "apiserver", cn: "kube-apiserver", server: true,
		ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 95, 0, 1)},
		dns: []string{"localhost", "kubernetes", "kubernetes.default.svc"},
	})
	if err != nil {
		return nil, err
	}
	toKubelet, toKubeletKey, err := p.issue(certSpec{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}})
	if err != nil {
		return nil, err
	}
	admin, adminKey, err := p.issue(certSpec{name: "admin", cn: "berth-e2e-admin", orgs: []string{"system:masters"}})
	if err != nil {
		return nil, err
	}
	saKey, err := p.signingKey("service-account")
	if err != nil {
		return nil, err
	}
	s := &apiServer{url: "https://127.0.0.1:" + strconv.Itoa(*apiPort)}
	s.process = newProcess(dir, "kube-apiserver", filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers", "http://127.0.0.1:"+strconv.Itoa(*etcdPort),
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(*apiPort),
		"--tls-cert-file", serving, "--tls-private-key-file", servingKey,
		"--client-ca-file", p.caFile(),
		"--authorization-mode", "AlwaysAllow",
		"--service-cluster-ip-range", serviceCIDR,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--kubelet-client-certificate", toKubelet, "--kubelet-client-key", toKubeletKey,
		"--kubelet-certificate-authority", p.caFile(),
		"--kubelet-preferred-address-types", "InternalIP",
		// One API server, no peers: the kubernetes service's endpoints need
		// no reconciling.
		"--endpoint-reconciler-type", "none",
		"--profiling=false",
	)
	if err := s.start(); err != nil {
		return s, err
	}
	s.admin = &rest.Config{
		Host: s.url,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: p.caFile(), CertFile: admin, KeyFile: adminKey,
		},
		QPS: 100, Burst: 200,
	}
	client, err := rest.HTTPClientFor(s.admin)
	if err != nil {
		return s, fmt.Errorf("API server client: %w", err)
	}
	return s, s.waitFor(2*time.Minute, "/readyz", func() error {
		return httpOK(client, s.url+"/readyz")
	})
}

// clientset is client-go for the tests, as kubectl uses it.
func (s *apiServer) clientset() (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(s.admin)
}

// httpOK gets url and wants 200.
func httpOK(client *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
