# berth: a pod sandbox controller for containerd.
#
#   make build   containerd (with berth), shims, ctr, runc, images -> bin/
#   make up      run that containerd in the foreground under _output/
#   make install berthd, berth's shim and pause -> $(PREFIX)/bin, berthd's unit
#   make uninstall  what make install installed, removed
#   make install-containerd  containerd with berth built in, berth's shim and pause
#   make test    unit tests, then integration tests (root, real containerd)
#   make soak    1000 pod lifecycles, built-in then berth: leaks, heap, RSS
#   make chaos   1000 pod lifecycles under SIGKILLs, then a leak check
#   make bench   berth vs the built-in controller: latency, CPU, calls, memory
#   make bench-restart  containerd restart with 300 live pods, berth vs built-in
#   make critest critest (CRI conformance) on runc, berth, berth-builtin, default
#   make lint    gofmt, go vet, staticcheck
#   make kube    kubelet, kube-apiserver and etcd (tools/kube) -> bin/
#   make e2e     a one-node Kubernetes around berth's containerd (root)

GO          ?= go
BIN         := $(CURDIR)/bin
OUT         := $(CURDIR)/_output
# The containerd release berth is built against, from go.mod: stamped into
# the version berthd checks a running containerd's against.
# uninstall needs no Go: a node installed from another host's build
# (README) has none.
ifneq ($(MAKECMDGOALS),uninstall)
CONTAINERD_VERSION := $(shell $(GO) list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
ifeq ($(CONTAINERD_VERSION),)
$(error cannot read go.mod's containerd version with $(GO) list)
endif
endif
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKG_VERSION := github.com/containerd/containerd/v2/version
LDFLAGS     := -X $(PKG_VERSION).Version=$(CONTAINERD_VERSION)+berth.$(VERSION) -X $(PKG_VERSION).Package=github.com/berth-dev/berth
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The stock containerd berthd is tested beside: containerd's own release
# build of the version tools/containerd pins, nothing of berth's in it.
STOCK_CONTAINERD_VERSION = $(shell cd tools/containerd && $(GO) list -m -f '{{.Version}}' github.com/containerd/containerd/v2)

PAUSE_IMAGE   := localhost/berth/pause:1
BUSYBOX_IMAGE := localhost/berth/busybox:1
BUSYBOX       ?= /bin/busybox

.PHONY: build binaries node-binaries berth-containerd images kube install install-containerd uninstall up test unit integration e2e soak chaos bench bench-restart critest critest-berthd critest-binaries lint clean

build: binaries images

# What berth puts on a node beside its own containerd: berthd and berth's
# shim, static (a build host's glibc may be newer than the node's), and the
# built-in pause.
node-binaries:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/berthd ./cmd/berthd
	CGO_ENABLED=0 $(GO) build -tags "urfave_cli_no_docs no_grpc" -ldflags "$(LDFLAGS) -extldflags -static" \
		-o $(BIN)/containerd-shim-berth-v2 ./cmd/containerd-shim-berth-v2
	$(CC) -Os -static -s -Wall -Werror -o $(BIN)/berth-pause cmd/berth-pause/pause.c

# containerd with berth built in.
berth-containerd:
	$(GO) build -tags "urfave_cli_no_docs no_btrfs" -ldflags "$(LDFLAGS)" -o $(BIN)/containerd ./cmd/containerd

binaries: node-binaries berth-containerd
	$(GO) build -tags "urfave_cli_no_docs no_btrfs berth_failpoint" -ldflags "$(LDFLAGS)" -o $(BIN)/containerd-failpoint ./cmd/containerd
	CGO_ENABLED=0 $(GO) build -tags berth_failpoint -ldflags "$(LDFLAGS)" -o $(BIN)/berthd-failpoint ./cmd/berthd
	cd tools/containerd && $(GO) build -trimpath -tags "urfave_cli_no_docs no_btrfs" \
		-ldflags "-X $(PKG_VERSION).Version=$(STOCK_CONTAINERD_VERSION)" \
		-o $(BIN)/containerd-stock github.com/containerd/containerd/v2/cmd/containerd
	CGO_ENABLED=0 $(GO) build -tags "urfave_cli_no_docs no_grpc" -ldflags "$(LDFLAGS) -extldflags -static" \
		-o $(BIN)/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
	$(GO) build -tags urfave_cli_no_docs -ldflags "$(LDFLAGS)" -o $(BIN)/ctr github.com/containerd/containerd/v2/cmd/ctr
	cd tools/runc && CGO_ENABLED=1 $(GO) build -trimpath -tags "seccomp urfave_cli_no_docs" -o $(BIN)/runc github.com/opencontainers/runc
	$(GO) build -o $(BIN)/berth-image ./cmd/berth-image
	cd tools/critools && $(GO) build -trimpath -o $(BIN)/crictl sigs.k8s.io/cri-tools/cmd/crictl

# The Kubernetes make e2e runs: kubelet and kube-apiserver of KUBE_VERSION
# and etcd, from the module tools/kube. The version strings are the ones
# Kubernetes' own build stamps (hack/lib/version.sh); the API server derives
# its emulation version from them. Static, as upstream ships them; the Go
# build cache keeps a second build to the link steps.
KUBE_VERSION := v1.37.2
KUBE_VERSION_PKGS := k8s.io/component-base/version k8s.io/client-go/pkg/version
KUBE_LDFLAGS := $(foreach p,$(KUBE_VERSION_PKGS),-X $(p).gitVersion=$(KUBE_VERSION) \
	-X $(p).gitMajor=1 -X $(p).gitMinor=37 -X $(p).gitTreeState=clean)
kube:
	cd tools/kube && CGO_ENABLED=0 $(GO) build -ldflags "$(KUBE_LDFLAGS)" -o $(BIN)/ \
		k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-apiserver
	cd tools/kube && CGO_ENABLED=0 $(GO) build -o $(BIN)/etcd go.etcd.io/etcd/server/v3

# The pause image holds only berth-pause, run as nobody. The test image is
# Debian's static busybox (package busybox-static).
images: binaries
	mkdir -p $(BIN)/images
	$(BIN)/berth-image -o $(BIN)/images/pause.tar -name $(PAUSE_IMAGE) \
		-entrypoint /pause -user 65535:65535 $(BIN)/berth-pause=/pause
	$(BIN)/berth-image -o $(BIN)/images/busybox.tar -name $(BUSYBOX_IMAGE) \
		-entrypoint "/bin/sh" \
		$(foreach c,sh sleep cat ls hostname id readlink echo true ps wc grep top head,-link /bin/$(c)=busybox) \
		$(BUSYBOX)=/bin/busybox

# Installs berth beside the node's own containerd (README, "Using berth on
# a node that already runs containerd 2.4"): berthd and its systemd unit,
# berth's shim (containerd-shim-berth-v2) and the built-in pause. Nothing
# of containerd's: a containerd, runc shim, runc or ctr of berth's build in
# $(PREFIX)/bin would shadow the node's own (or be the node's own, where it
# runs /usr/local/bin/containerd). The unit goes where systemd looks for an
# administrator's units whatever the PREFIX. berth's part of containerd's
# config, config/conf.d/berth.toml, goes to $(PREFIX)/share/berth with the
# paths of the PREFIX, for the operator to put among containerd's imports.
PREFIX ?= /usr/local
UNITDIR ?= /usr/local/lib/systemd/system
NODE_BINARIES := $(BIN)/containerd-shim-berth-v2 $(BIN)/berth-pause
INSTALLED := $(PREFIX)/bin/berthd $(PREFIX)/bin/containerd-shim-berth-v2 $(PREFIX)/bin/berth-pause \
	$(PREFIX)/share/berth/berth.toml $(UNITDIR)/berthd.service
install: node-binaries
	install -D -m 0755 -t $(DESTDIR)$(PREFIX)/bin $(BIN)/berthd $(NODE_BINARIES)
	sed 's#/usr/local/bin/#$(PREFIX)/bin/#' config/conf.d/berth.toml | \
		install -D -m 0644 /dev/stdin $(DESTDIR)$(PREFIX)/share/berth/berth.toml
	sed 's#/usr/local/bin/berthd#$(PREFIX)/bin/berthd#' config/systemd/berthd.service | \
		install -D -m 0644 /dev/stdin $(DESTDIR)$(UNITDIR)/berthd.service

# Removes what install installed, for a node berth has left (README,
# "Removing berth").
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	[ ! -d $(DESTDIR)$(PREFIX)/share/berth ] || rmdir --ignore-fail-on-non-empty $(DESTDIR)$(PREFIX)/share/berth

# Installs containerd with berth built in, for a node that runs it in place
# of its own (README, "Using berth built into containerd"), with berth's
# shim and the built-in pause; the node's runc shim, runc and ctr stay.
install-containerd: node-binaries berth-containerd
	install -D -m 0755 -t $(DESTDIR)$(PREFIX)/bin $(BIN)/containerd $(NODE_BINARIES)

up: build
	hack/up.sh $(OUT) $(BIN)

test: unit integration

unit:
	$(GO) test -race -count=1 ./store/... ./events/... ./keeper/... ./placement/... ./reaper/... ./rollback/... ./podsandbox/... ./controller/... ./plugin/... ./setup/... ./containerdconfig/... ./containerstore/... ./sandboxapi/... ./podcgroup/... ./shimtask/... ./shimmanager/... ./shimproc/... ./integration/hostcgroup/... ./cmd/berth-image/... ./cmd/berthd/... ./critest/...

# The suite runs on the release build, with berth's pods on the pause
# image (with a 100-lifecycle soak and a 200-lifecycle chaos run), on the
# built-in pause, and on a handler with no options table; the tests a
# handler's config affects run again with a snapshotter of the handler's
# own and with berth as CRI's default runtime. Then the failpoint tests run
# on the build with berth's test-only failpoints, and a small make bench,
# so the benchmark keeps working. make soak and make chaos run the long
# versions.
SOAK  ?= 100
CHAOS ?= 200
CONFIG_TESTS := TestPodLifecycle|TestContainerJoinsPod|TestPauseKilled|TestPreciseErrors|TestRestartRecovery|TestRestartLostShim|TestUpdatePodResources
# With -berthd, berth runs as berthd beside containerd-stock (containerd's
# own build): the config-sensitive tests, berthd's and containerd's
# restarts under it, a chaos run whose restarts take berthd, containerd
# and both in turn, and the failpoints.
BERTHD_CHAOS ?= 400
BERTHD_TESTS := $(CONFIG_TESTS)|TestRestartAfterReboot|TestPodMetrics|TestPrometheusSeries|TestSharedShim|TestWarmShim|TestBerthd|TestContainerdKilledUnderBerthd|TestCallsRightAfterContainerdRestart
INTEGRATION := $(GO) test -count=1 -timeout 30m -v ./integration
integration: build
	$(INTEGRATION) -args -bin $(BIN) -soak $(SOAK) -chaos $(CHAOS)
	$(INTEGRATION) -args -bin $(BIN) -handler berth-builtin
	$(INTEGRATION) -args -bin $(BIN) -handler berth-noopts
	$(INTEGRATION) -run '$(CONFIG_TESTS)' -args -bin $(BIN) -handler berth-native
	$(INTEGRATION) -run '$(CONFIG_TESTS)' -args -bin $(BIN) -default-runtime berth -handler=
	$(INTEGRATION) -run Failpoint -args -bin $(BIN) -failpoints
	$(INTEGRATION) -run '$(BERTHD_TESTS)|TestChaos' -args -bin $(BIN) -berthd -chaos $(BERTHD_CHAOS)
	$(INTEGRATION) -run Failpoint -args -bin $(BIN) -berthd -failpoints
	$(GO) test -count=1 -timeout 10m -v -run '^$$' -bench Compare -benchtime 1x ./integration \
		-args -bin $(BIN) -bench-out $(OUT)/bench-smoke -bench-serial 2 -bench-parallel 8 -bench-count 1 \
		-bench-live 8 -bench-handlers runc,berth -bench-shim-kills 1

# A one-node Kubernetes (etcd, kube-apiserver, kubelet) on this machine around
# this containerd; the tests drive it through the API server with
# client-go. A package of its own (integration/kube) with flags of its own,
# which is why the runs above name ./integration alone. E2E_RUN picks tests
# (go test -run); E2E_ARGS takes the package's flags (-keep, ports, bridge;
# see integration/kube/main_test.go).
E2E_RUN  ?= .
E2E_ARGS ?=
e2e: build kube
	$(GO) test -count=1 -timeout 30m -v -run '$(E2E_RUN)' ./integration/kube -args -bin $(BIN) $(E2E_ARGS)

# Every handler of the comparison in one containerd, in alternating blocks;
# writes bench.json, bench.md and bench.png to BENCH_OUT. BENCH_ARGS takes
# the benchmark's flags (-bench-handlers, -bench-serial, ...; see
# integration/bench_test.go).
BENCH_OUT  ?= $(OUT)/bench
BENCH_ARGS ?=
bench: build
	$(GO) test -count=1 -timeout 60m -v -run '^$$' -bench Compare -benchtime 1x ./integration \
		-args -bin $(BIN) -bench-out $(BENCH_OUT) $(BENCH_ARGS)

# Restart with RESTART_PODS live pods, berth's and then the built-in's.
RESTART_PODS ?= 300
bench-restart: build
	$(GO) test -count=1 -timeout 60m -v -run '^$$' -bench Restart -benchtime 1x ./integration -args -bin $(BIN) -restart-pods $(RESTART_PODS)

# 1000 lifecycles with an app container each on the built-in, then on
# berth, each in a fresh containerd; containerd's heap and RSS compared,
# the heap also after 2m10s idle (longer than any timer berth arms for a
# pod), with the heap profiles of every sample in SOAK_PROFILES.
SOAK_PROFILES ?= $(OUT)/soak
soak: build
	mkdir -p $(SOAK_PROFILES)
	$(GO) test -count=1 -timeout 60m -v -run Soak ./integration -args -bin $(BIN) -soak 1000 -soak-idle 2m10s -soak-profiles $(SOAK_PROFILES)

# 1000 pod lifecycles under SIGKILLs of pause processes, shims and
# containerd; CHAOS_SEED replays a run's kills; CHAOS_ARGS=-berthd runs it
# on berthd, whose restarts take berthd, containerd and both in turn.
CHAOS_SEED ?= 0
CHAOS_ARGS ?=
chaos: build
	$(GO) test -count=1 -timeout 90m -v -run Chaos ./integration -args -bin $(BIN) -chaos 1000 -chaos-seed $(CHAOS_SEED) $(CHAOS_ARGS)

# critest (tools/critools pins cri-tools), its report, and the programs of
# the images critest pulls (critest/images; hack/critest-images.sh).
critest-binaries: binaries
	cd tools/critools && $(GO) test -c -trimpath -o $(BIN)/critest sigs.k8s.io/cri-tools/cmd/critest
	$(GO) build -o $(BIN)/critest-report ./critest/report
	for p in webserver nnp pgrep ipcs; do \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/critest-images/$$p ./critest/images/$$p || exit 1; \
	done

# critest once per runtime handler (runc, berth, berth-builtin, and default:
# no handler, berth as CRI's default runtime) and a small critest -benchmark
# each, against the tests' containerd config, with critest's images from a
# loopback registry; reports in CRITEST_OUT. Fails when a berth entry fails
# a test runc passes. The CNI bridge, its
# subnet, the metrics and registry addresses are CRITEST_BRIDGE,
# CRITEST_SUBNET, CRITEST_METRICS and CRITEST_REGISTRY (see hack/critest.sh).
CRITEST_OUT ?= $(OUT)/critest
critest: build critest-binaries
	GOARCH=$$($(GO) env GOARCH) hack/critest.sh $(BIN) $(CRITEST_OUT)

# critest on berthd beside containerd-stock (containerd v2.4.2's own build):
# berth must pass every test the built-in passes on the same containerd.
critest-berthd: build critest-binaries
	GOARCH=$$($(GO) env GOARCH) CRITEST_BERTHD=1 CRITEST_HANDLERS="runc berth" \
		hack/critest.sh $(BIN) $(CRITEST_OUT)-berthd

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf $(BIN) $(OUT)
