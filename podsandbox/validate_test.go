package podsandbox

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/berth-dev/berth/podcgroup"
)

// kubeletDNS is the DNS config kubelet sends a ClusterFirst pod, with the
// node's own search domains and options merged in.
func kubeletDNS() *runtimeapi.DNSConfig {
	return &runtimeapi.DNSConfig{
		Servers:  []string{"10.96.0.10"},
		Searches: []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local", "us-west-2.compute.internal"},
		Options:  []string{"ndots:5", "edns0", "trust-ad"},
	}
}

// TestValidateFileInputs checks that every string that reaches a file, a
// path, a mount or a command line is refused, with InvalidArgument naming
// the field, when it could add a line or name a path it should not.
func TestValidateFileInputs(t *testing.T) {
	dns := func(f func(*runtimeapi.DNSConfig)) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) {
			c.DnsConfig = kubeletDNS()
			f(c.DnsConfig)
		}
	}
	server := func(s string) func(*runtimeapi.PodSandboxConfig) {
		return dns(func(d *runtimeapi.DNSConfig) { d.Servers = []string{"10.96.0.10", s} })
	}
	search := func(s string) func(*runtimeapi.PodSandboxConfig) {
		return dns(func(d *runtimeapi.DNSConfig) { d.Searches = []string{"svc.cluster.local", s} })
	}
	option := func(o string) func(*runtimeapi.PodSandboxConfig) {
		return dns(func(d *runtimeapi.DNSConfig) { d.Options = []string{o} })
	}
	port := func(pm *runtimeapi.PortMapping) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80}, pm}
		}
	}
	logDir := func(d string) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = d }
	}
	parent := func(p string) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = p }
	}
	sysctl := func(v string) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": v}
		}
	}
	selinux := func(o *runtimeapi.SELinuxOption) func(*runtimeapi.PodSandboxConfig) {
		return func(c *runtimeapi.PodSandboxConfig) { c.Linux.SecurityContext.SelinuxOptions = o }
	}
	for _, tc := range []struct {
		name   string
		modify func(*runtimeapi.PodSandboxConfig)
		// field is named first in the error.
		field string
	}{
		{"dns server not an IP", server("dns.example"), "dns_config.servers[1]"},
		{"dns server empty", server(""), "dns_config.servers[1]"},
		{"dns server with a new line", server("10.0.0.1\nnameserver 192.0.2.1"), "dns_config.servers[1]"},
		{"dns server with a trailing new line", server("10.0.0.1\n"), "dns_config.servers[1]"},
		{"dns server with a port", server("10.0.0.1:53"), "dns_config.servers[1]"},
		{"dns server with leading zeros", server("010.0.0.10"), "dns_config.servers[1]"},
		{"dns server zone with a new line", server("fe80::1%eth0\nnameserver 192.0.2.1"), "dns_config.servers[1]"},
		{"dns server zone with a blank", server("fe80::1%eth0 x"), "dns_config.servers[1]"},
		{"dns search with a new line", search("svc.cluster.local\nnameserver 192.0.2.1"), "dns_config.searches[1]"},
		{"dns search with a carriage return", search("a\rb"), "dns_config.searches[1]"},
		{"dns search with NUL", search("a\x00b"), "dns_config.searches[1]"},
		{"dns search with a blank", search("a b"), "dns_config.searches[1]"},
		{"dns search with a tab", search("a\tb"), "dns_config.searches[1]"},
		{"dns search with a unicode line separator", search("a\u2028b"), "dns_config.searches[1]"},
		{"dns search with NEL", search("a\u0085b"), "dns_config.searches[1]"},
		{"dns search not UTF-8", search("a\xffb"), "dns_config.searches[1]"},
		{"dns search empty", search(""), "dns_config.searches[1]"},
		{"dns search with an empty label", search("a..b"), "dns_config.searches[1]"},
		{"dns search with a leading dot", search(".a"), "dns_config.searches[1]"},
		{"dns search too long", search(strings.Repeat(strings.Repeat("a", 63)+".", 4) + "com"), "dns_config.searches[1]"},
		{"dns too many searches", dns(func(d *runtimeapi.DNSConfig) {
			d.Searches = nil
			for i := range maxDNSSearches + 1 {
				d.Searches = append(d.Searches, fmt.Sprintf("s%d.example", i))
			}
		}), "dns_config.searches"},
		{"dns search list too long", dns(func(d *runtimeapi.DNSConfig) {
			d.Searches = nil
			for i := range 11 {
				d.Searches = append(d.Searches, strings.Repeat(string(rune('a'+i)), 63)+"."+strings.Repeat("b", 63)+"."+strings.Repeat("c", 63)+".com")
			}
		}), "dns_config.searches"},
		{"dns option with a new line", option("ndots:5\nnameserver 192.0.2.1"), "dns_config.options[0]"},
		{"dns option with a blank", option("ndots: 5"), "dns_config.options[0]"},
		{"dns option empty", option(""), "dns_config.options[0]"},
		{"dns option without a name", option(":5"), "dns_config.options[0]"},
		{"port protocol unknown", port(&runtimeapi.PortMapping{ContainerPort: 80, Protocol: 7}), "port_mappings[1].protocol"},
		{"port container port 0", port(&runtimeapi.PortMapping{HostPort: 8080}), "port_mappings[1].container_port"},
		{"port container port too large", port(&runtimeapi.PortMapping{ContainerPort: 65536}), "port_mappings[1].container_port"},
		{"port container port negative", port(&runtimeapi.PortMapping{ContainerPort: -80}), "port_mappings[1].container_port"},
		{"port host port too large", port(&runtimeapi.PortMapping{ContainerPort: 80, HostPort: 70000}), "port_mappings[1].host_port"},
		{"port host port negative", port(&runtimeapi.PortMapping{ContainerPort: 80, HostPort: -1}), "port_mappings[1].host_port"},
		{"port host ip not an IP", port(&runtimeapi.PortMapping{ContainerPort: 80, HostPort: 80, HostIp: "localhost"}), "port_mappings[1].host_ip"},
		{"port host ip with an iptables flag", port(&runtimeapi.PortMapping{ContainerPort: 80, HostPort: 80, HostIp: "0.0.0.0 -j ACCEPT"}), "port_mappings[1].host_ip"},
		{"port host ip with a zone", port(&runtimeapi.PortMapping{ContainerPort: 80, HostPort: 80, HostIp: "fe80::1%eth0"}), "port_mappings[1].host_ip"},
		{"port host ip a CIDR", port(&runtimeapi.PortMapping{ContainerPort: 80, HostPort: 80, HostIp: "10.0.0.0/8"}), "port_mappings[1].host_ip"},
		{"log directory relative", logDir("var/log/pods/ns_name_uid"), "log_directory"},
		{"log directory escaping", logDir("/var/log/pods/../../../etc"), "log_directory"},
		{"log directory with a dot", logDir("/var/log/pods/./x"), "log_directory"},
		{"log directory with a trailing slash", logDir("/var/log/pods/x/"), "log_directory"},
		{"log directory with a new line", logDir("/var/log/pods/x\ny"), "log_directory"},
		{"log directory with NUL", logDir("/var/log/pods/x\x00"), "log_directory"},
		{"cgroup parent relative", parent("kubepods/burstable"), "linux.cgroup_parent"},
		{"cgroup parent relative name", parent("kubepods"), "linux.cgroup_parent"},
		{"cgroup parent escaping", parent("/kubepods/../system.slice"), "linux.cgroup_parent"},
		{"cgroup parent escaping the root", parent("/../../sys"), "linux.cgroup_parent"},
		{"cgroup parent with a dot", parent("/kubepods/./pod1"), "linux.cgroup_parent"},
		{"cgroup parent with a trailing slash", parent("/kubepods/pod1/"), "linux.cgroup_parent"},
		{"cgroup parent with a double slash", parent("/kubepods//pod1"), "linux.cgroup_parent"},
		{"cgroup parent with a new line", parent("/kubepods/pod1\n0::/"), "linux.cgroup_parent"},
		{"cgroup parent with a blank", parent("/kubepods/pod 1"), "linux.cgroup_parent"},
		{"cgroup parent with a colon", parent("/a:b:c"), "linux.cgroup_parent"},
		{"cgroup parent slice with a colon", parent("kubepods:x.slice"), "linux.cgroup_parent"},
		{"cgroup parent slice only the suffix", parent(".slice"), "linux.cgroup_parent"},
		{"cgroup parent root slice", parent("-.slice"), "linux.cgroup_parent"},
		{"cgroup parent slice with an empty part", parent("kubepods--pod1.slice"), "linux.cgroup_parent"},
		{"cgroup parent slice with a leading dash", parent("-kubepods.slice"), "linux.cgroup_parent"},
		{"cgroup parent slice with a trailing dash", parent("kubepods-.slice"), "linux.cgroup_parent"},
		{"cgroup parent slice with odd characters", parent("kube$pods.slice"), "linux.cgroup_parent"},
		{"cgroup parent slice name too long", parent(strings.Repeat("a", 250) + ".slice"), "linux.cgroup_parent"},
		{"cgroup parent slice path not where systemd puts it", parent("/system.slice/kubepods.slice"), "linux.cgroup_parent"},
		{"cgroup parent slice path of another slice", parent("/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod1.slice"), "linux.cgroup_parent"},
		{"cgroup parent path ending in a bad slice", parent("/a/b--c.slice"), "linux.cgroup_parent"},
		{"sysctl value with a new line", sysctl("1\n"), `linux.sysctls["kernel.shm_rmid_forced"]`},
		{"sysctl value with a carriage return", sysctl("1\r"), `linux.sysctls["kernel.shm_rmid_forced"]`},
		{"sysctl value with NUL", sysctl("1\x00"), `linux.sysctls["kernel.shm_rmid_forced"]`},
		{"sysctl value with escape", sysctl("\x1b[2J"), `linux.sysctls["kernel.shm_rmid_forced"]`},
		{"sysctl value not UTF-8", sysctl("\xff"), `linux.sysctls["kernel.shm_rmid_forced"]`},
		{"selinux user with a colon", selinux(&runtimeapi.SELinuxOption{User: "system_u:object_r"}), "linux.security_context.selinux_options.user"},
		{"selinux role with a blank", selinux(&runtimeapi.SELinuxOption{Role: "system_r x"}), "linux.security_context.selinux_options.role"},
		{"selinux type with a new line", selinux(&runtimeapi.SELinuxOption{Type: "container_t\n"}), "linux.security_context.selinux_options.type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := specTestConfig()
			tc.modify(cfg)
			err := Validate(cfg, RuntimeSettings{}, Node{SeccompEnabled: true})
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Validate = %v, want invalid argument", err)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("Validate = %q: want it to name %s first", err, tc.field)
			}
			// The value is quoted: the message itself adds no line to a log.
			if strings.ContainsAny(err.Error(), "\n\r\x00") {
				t.Errorf("Validate = %q: the message holds a line break or NUL", err)
			}
		})
	}
}

// TestValidateFileInputsAccepts checks that what kubelet and critest send,
// and what a node's resolv.conf may add, still passes.
func TestValidateFileInputsAccepts(t *testing.T) {
	uid := "0f3c6a2e_8b1d_4c5e_9a7f_2d4b6c8e0a1b" // kubelet's, dashes escaped for systemd
	for _, tc := range []struct {
		name   string
		modify func(*runtimeapi.PodSandboxConfig)
	}{
		{"kubelet cluster first DNS", func(c *runtimeapi.PodSandboxConfig) { c.DnsConfig = kubeletDNS() }},
		{"critest DNS", func(c *runtimeapi.PodSandboxConfig) {
			c.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"10.10.10.10"}, Searches: []string{"google.com"}, Options: []string{"ndots:8"}}
		}},
		{"empty DNS config", func(c *runtimeapi.PodSandboxConfig) { c.DnsConfig = &runtimeapi.DNSConfig{} }},
		{"IPv6 DNS servers", func(c *runtimeapi.PodSandboxConfig) {
			c.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"fd00:10:96::a", "fe80::1%eth0", "::ffff:10.0.0.1"}}
		}},
		{"DNS searches Kubernetes allows", func(c *runtimeapi.PodSandboxConfig) {
			// A trailing dot, the root, underscores (RelaxedDNSSearchValidation).
			c.DnsConfig = &runtimeapi.DNSConfig{Searches: []string{"ns1.svc.cluster-domain.example.", ".", "_sip._tcp.example.com", "Example.COM"}}
		}},
		{"DNS searches at kubelet's limits", func(c *runtimeapi.PodSandboxConfig) {
			var s []string
			for i := range maxDNSSearches {
				x := 53 // 31 of 63 bytes, one of 64, 31 blanks: 2048
				if i == 0 {
					x++
				}
				s = append(s, fmt.Sprintf("%02d%s.example", i, strings.Repeat("x", x)))
			}
			c.DnsConfig = &runtimeapi.DNSConfig{Searches: s}
			if n := len(strings.Join(s, " ")); n != maxDNSSearchListChars {
				t.Fatalf("test list is %d bytes", n)
			}
		}},
		{"DNS search of 253 bytes", func(c *runtimeapi.PodSandboxConfig) {
			c.DnsConfig = &runtimeapi.DNSConfig{Searches: []string{strings.Repeat(strings.Repeat("a", 62)+".", 4) + "b."}}
		}},
		{"DNS search with a label over 63 bytes", func(c *runtimeapi.PodSandboxConfig) {
			c.DnsConfig = &runtimeapi.DNSConfig{Searches: []string{strings.Repeat("a", 64) + ".example"}}
		}},
		{"node DNS options", func(c *runtimeapi.PodSandboxConfig) {
			c.DnsConfig = &runtimeapi.DNSConfig{Options: []string{"ndots:5", "timeout:2", "attempts:3", "rotate", "single-request-reopen", "use-vc", "no-aaaa", "ndots:"}}
		}},
		{"kubelet port mappings", func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{
				{ContainerPort: 80},
				{Protocol: runtimeapi.Protocol_UDP, ContainerPort: 53, HostPort: 53, HostIp: "10.0.0.5"},
				{Protocol: runtimeapi.Protocol_SCTP, ContainerPort: 65535, HostPort: 65535, HostIp: "::"},
				{ContainerPort: 8080, HostPort: 12000, HostIp: "0.0.0.0"},
				// No host port: CRI hands CNI no mapping, nor its host IP,
				// which the API server does not check.
				{ContainerPort: 81, HostIp: "localhost"},
			}
		}},
		{"kubelet log directory", func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "/var/log/pods/default_web-0_" + uid }},
		{"critest log directory", func(c *runtimeapi.PodSandboxConfig) {
			c.LogDirectory = "/tmp/podLogTest3141592/PodSandbox-with-log-directory-5d2f"
		}},
		{"log directory with a space", func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "/var/log/my pods/x" }},
		{"no log directory", func(c *runtimeapi.PodSandboxConfig) { c.LogDirectory = "" }},
		{"kubelet cgroupfs parent", func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = "/kubepods/burstable/pod" + uid }},
		{"kubelet cgroupfs parent guaranteed", func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = "/kubepods/pod" + uid }},
		{"cgroupfs parent with a slice in the middle", func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = "/kubelet.slice/kubepods/pod1" }},
		{"cgroupfs root", func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = "/" }},
		{"kubelet systemd parent", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.CgroupParent = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uid + ".slice"
		}},
		{"kubelet systemd parent guaranteed", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.CgroupParent = "/kubepods.slice/kubepods-pod" + uid + ".slice"
		}},
		{"systemd slice name", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.CgroupParent = "kubepods-burstable-pod" + uid + ".slice"
		}},
		{"critest systemd parent", func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = "/test.slice" }},
		{"systemd escaped slice", func(c *runtimeapi.PodSandboxConfig) { c.Linux.CgroupParent = `a\x2db.slice` }},
		{"vector sysctls", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{
				"net.ipv4.ip_local_port_range": "32768\t60999", "net.ipv4.ping_group_range": "0 2147483647",
				"kernel.sem": "250 32000 100 128", "kernel.domainname": "",
			}
		}},
		{"selinux options", func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext.SelinuxOptions = &runtimeapi.SELinuxOption{User: "system_u", Role: "system_r", Type: "container_t", Level: "s0:c1,c2"}
		}},
		{"annotations only in JSON", func(c *runtimeapi.PodSandboxConfig) {
			c.Annotations = map[string]string{"io.example/multi-line": "a\nb", "io.example/nul\x00": "\x00"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := specTestConfig()
			tc.modify(cfg)
			if err := Validate(cfg, RuntimeSettings{}, Node{SeccompEnabled: true}); err != nil {
				t.Fatalf("Validate = %v, want nil", err)
			}
		})
	}
}

// TestValidateNoByteAddsALine puts every byte, and the Unicode line and
// blank characters, into each string that becomes part of a line of a file
// berth writes: when Validate takes the config, the file has exactly the
// lines and words it would have without that character.
func TestValidateNoByteAddsALine(t *testing.T) {
	var chars []string
	for b := range 256 {
		chars = append(chars, string([]byte{byte(b)}))
	}
	chars = append(chars, "\u0085", "\u00a0", "\u2028", "\u2029", "\u3000", "\ufeff")
	for _, field := range []struct {
		name string
		set  func(*runtimeapi.PodSandboxConfig, string)
	}{
		{"server", func(c *runtimeapi.PodSandboxConfig, ch string) { c.DnsConfig.Servers[0] = "fe80::1%eth" + ch + "0" }},
		{"search", func(c *runtimeapi.PodSandboxConfig, ch string) { c.DnsConfig.Searches[0] = "a" + ch + "b.example" }},
		{"search end", func(c *runtimeapi.PodSandboxConfig, ch string) { c.DnsConfig.Searches[0] = "a.example" + ch }},
		{"option", func(c *runtimeapi.PodSandboxConfig, ch string) { c.DnsConfig.Options[0] = "ndots:" + ch + "5" }},
		{"hostname", func(c *runtimeapi.PodSandboxConfig, ch string) { c.Hostname = "pod" + ch + "1" }},
	} {
		t.Run(field.name, func(t *testing.T) {
			for _, ch := range chars {
				cfg := specTestConfig()
				cfg.DnsConfig = &runtimeapi.DNSConfig{
					Servers: []string{"fe80::1%eth0", "10.96.0.10"}, Searches: []string{"a.example", "b.example"}, Options: []string{"ndots:5", "edns0"},
				}
				field.set(cfg, ch)
				if Validate(cfg, RuntimeSettings{}, Node{SeccompEnabled: true}) != nil {
					continue
				}
				// What Files.Create writes: one line each, words split by blanks.
				want := []int{3, 2, 2, 3} // search a b; nameserver x (twice); options x y
				lines := strings.Split(strings.TrimSuffix(renderResolvConf(cfg.GetDnsConfig()), "\n"), "\n")
				if len(lines) != len(want) {
					t.Errorf("%q in %s: resolv.conf has %d lines: %q", ch, field.name, len(lines), lines)
					continue
				}
				for i, l := range lines {
					if n := len(strings.Fields(l)); n != want[i] || strings.ContainsAny(l, "\r\x00") {
						t.Errorf("%q in %s: resolv.conf line %q has %d words, want %d", ch, field.name, l, n, want[i])
					}
				}
				if h := cfg.GetHostname(); len(strings.Fields(h)) != 1 || strings.ContainsFunc(h, func(r rune) bool { return r < ' ' || r >= 0x7f }) {
					t.Errorf("%q in %s: hostname %q", ch, field.name, h)
				}
			}
		})
	}
}

// TestSliceParent checks that a slice berth accepts by its name is also
// accepted by the path podcgroup, which writes the pod's resources, puts
// it at: the pause's cgroup and the pod's resources are in one place.
func TestSliceParent(t *testing.T) {
	for _, slice := range []string{"test.slice", "kubepods-pod1.slice", "kubepods-besteffort-pod1_2.slice"} {
		if err := validateCgroupParent(slice); err != nil {
			t.Errorf("validateCgroupParent(%q) = %v", slice, err)
		}
		path := podcgroup.Path(slice)
		if err := validateCgroupParent(path); err != nil {
			t.Errorf("validateCgroupParent(%q), the path of %s = %v", path, slice, err)
		}
		if podcgroup.Path(path) != path {
			t.Errorf("podcgroup.Path(%q) = %q", path, podcgroup.Path(path))
		}
	}
}
