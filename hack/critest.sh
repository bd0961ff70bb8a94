#!/usr/bin/env bash
# critest.sh BIN OUT: runs critest, the CRI conformance suite, against the
# project's containerd (the config of make up and the integration tests, in
# a temporary directory) once per runtime handler: runc (containerd's
# built-in podsandbox controller), berth, berth-builtin, and "default": no
# runtime handler at all, with berth made CRI's default runtime, as most
# nodes would run it; then a small critest -benchmark per handler.
# critest's images come from a loopback registry (Debian's docker-registry)
# that this script fills with images built here (hack/critest-images.sh),
# pulled through CRI as from registry.k8s.io and gcr.io. Two additions to
# the tests' config: CNI's portmap, and NRI on a socket of its own
# (critest's NRI tests need one). Reports and logs go to OUT. Fails when a
# berth entry fails a test the built-in passes, or a benchmark fails. Needs
# root.
#
# Environment: CRITEST_BRIDGE, CRITEST_SUBNET, CRITEST_METRICS (the
# containerd's CNI bridge, its subnet, its metrics address),
# CRITEST_REGISTRY (the registry's host:port on 127.0.0.1),
# CRITEST_HANDLERS, CRITEST_DEFAULT_RUNTIME (CRI's default_runtime_name,
# which "default" runs on; berth), CRITEST_FOCUS (a regexp: only the tests
# it matches), CRITEST_BERTHD (set: berth runs as berthd beside
# containerd-stock, containerd's own build, instead of in process).
set -euo pipefail
bin=$(realpath "$1"); out=$(realpath -m "$2")
here=$(dirname "$(realpath "$0")")/..
bridge=${CRITEST_BRIDGE:-berthcri1}
subnet=${CRITEST_SUBNET:-10.92.0.0/16}
metrics=${CRITEST_METRICS:-127.0.0.1:1342}
registry=${CRITEST_REGISTRY:-127.0.0.1:5342}
handlers=${CRITEST_HANDLERS:-runc berth berth-builtin default}
default_runtime=${CRITEST_DEFAULT_RUNTIME:-berth}
focus=${CRITEST_FOCUS:-}
berthd=${CRITEST_BERTHD:-}
# Tests that cannot be faithful here, skipped for every handler alike (the
# README lists them with the reasons):
# - the image pinned by a digest of cri-tools' own registry, which an image
#   built here cannot have;
# - MaskedPaths masks /bin/ls and expects `sh -c ls` to fail: Debian's static
#   busybox is a standalone shell, which runs its ls applet without exec'ing
#   /bin/ls.
skips=(
  'public image with digest should be pulled and removed'
  'runtime should support MaskedPaths'
)

[ "$(id -u)" = 0 ] || { echo "critest.sh: needs root" >&2; exit 1; }
command -v docker-registry >/dev/null ||
  { echo "critest.sh: needs docker-registry (apt-get install docker-registry)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/berth-critest-XXXXXX)
# Searchable by all, as /var/lib/containerd is: the root of a pod's user
# namespace must reach its bundle and rootfs under it.
chmod 0711 "$tmp"
ctrd_pid="" registry_pid="" berthd_pid=""
sock=$tmp/containerd.sock
export PATH="$bin:$PATH"
# ctr without its warning, on every call, that cgroup v1 is deprecated.
ctr() { "$bin/ctr" -a "$sock" "$@" 2> >(grep -v 'support for cgroup v1 is deprecated' >&2); }

cleanup() {
  local rc=$?
  set +e
  if [ -n "$ctrd_pid" ]; then
    # Pods a failed test left behind would outlive containerd.
    timeout 300 "$bin/crictl" -r "unix://$sock" rmp -fa >/dev/null 2>&1
    kill -TERM "$ctrd_pid" 2>/dev/null
    wait "$ctrd_pid" 2>/dev/null
  fi
  if [ -n "$berthd_pid" ]; then
    kill -TERM "$berthd_pid" 2>/dev/null
    wait "$berthd_pid" 2>/dev/null
  fi
  if [ -n "$registry_pid" ]; then
    kill -TERM "$registry_pid" 2>/dev/null
    wait "$registry_pid" 2>/dev/null
  fi
  ip link delete "$bridge" 2>/dev/null
  # Deepest first.
  awk -v d="$tmp" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m"; done
  [ -e "$tmp/containerd.log" ] && cp "$tmp/containerd.log" "$out/containerd.log"
  [ -e "$tmp/berthd.log" ] && cp "$tmp/berthd.log" "$out/berthd.log"
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$out"
mkdir -p "$out"
# now: seconds since the epoch, for the timings.
now() { date +%s; }
timing() { printf '%-28s %4ds\n' "$1" "$2" | tee -a "$out/timings.txt"; }

# wait_tcp HOST:PORT: until something listens there (30s at most).
wait_tcp() {
  local i
  for i in $(seq 300); do
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

t0=$(now)
echo "== images"
"$here/hack/critest-images.sh" "$bin" "$tmp/images"

echo "== registry on $registry"
mkdir -p "$tmp/registry"
cat >"$tmp/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $tmp/registry/data
http:
  addr: $registry
EOF
docker-registry serve "$tmp/registry/config.yml" >"$out/registry.log" 2>&1 &
registry_pid=$!
wait_tcp "$registry"

echo "== containerd in $tmp"
"$here/hack/render-config.sh" "$tmp" "$bin" "$bridge" "$subnet" "$metrics"
# CNI's portmap after the bridge, as on a node: critest maps host ports
# (hostPort 12000). The tests' config has none, since their pods map none.
conflist=$tmp/cni/net.d/10-berth.conflist
sed -i 's#^  \]$#    ,{"type": "portmap", "capabilities": {"portMappings": true}}\n  ]#' "$conflist"
grep -q portmap "$conflist"
# NRI on, with a socket of this containerd's own: critest's NRI tests (pod
# and container lifecycle events, in order, as a plugin sees them) run only
# with one. The tests' config has NRI off, since its default socket is
# host-wide. Requests to plugins time out after 10 s, not NRI's 2: critest's
# Synchronize tests hold a plugin's Synchronize for 2 s by design, and on a
# loaded node the default timeout then closes the plugin first, failing the
# test for any handler by a few milliseconds.
sed -i "s#^  disable = true\$#  disable = false\n  socket_path = '$tmp/nri.sock'\n  plugin_path = '$tmp/nri/plugins'\n  plugin_config_path = '$tmp/nri/conf.d'\n  plugin_request_timeout = '10s'#" "$tmp/config.toml"
grep -q "socket_path = '$tmp/nri.sock'" "$tmp/config.toml"
# The tests' default runtime is runc; "default" runs on default_runtime.
# Every other entry names its handler, which the default does not change.
sed -i "s#^    default_runtime_name = 'runc'\$#    default_runtime_name = '$default_runtime'#" "$tmp/config.toml"
grep -q "^    default_runtime_name = '$default_runtime'\$" "$tmp/config.toml"
# CRI resolves every registry critest pulls from to the loopback registry,
# over plain http, and never to the real one.
for host in registry.k8s.io k8s.gcr.io gcr.io; do
  mkdir -p "$tmp/certs.d/$host"
  cat >"$tmp/certs.d/$host/hosts.toml" <<EOF
# make critest: $host is the loopback registry.
server = "http://$registry"
[host."http://$registry"]
  capabilities = ["pull", "resolve"]
EOF
done
ip link delete "$bridge" 2>/dev/null || true
containerd=containerd
if [ -n "$berthd" ]; then
  # berthd first, as its systemd unit orders it: containerd's CRI asks it
  # for its pods' states as it starts.
  printf "\n[proxy_plugins.berth]\n  type = 'sandbox'\n  address = '%s'\n" "$tmp/berthd.sock" >>"$tmp/config.toml"
  setsid "$bin/berthd" --containerd-config "$tmp/config.toml" --address "$tmp/berthd.sock" \
    --log-level debug >"$tmp/berthd.log" 2>&1 &
  berthd_pid=$!
  for _ in $(seq 300); do
    [ -S "$tmp/berthd.sock" ] && break
    sleep 0.1
  done
  [ -S "$tmp/berthd.sock" ]
  containerd=containerd-stock
fi
# A session of its own: a signal to this script's process group (Ctrl-C, a
# CI timeout) does not reach containerd before cleanup has removed the pods.
setsid "$bin/$containerd" --config "$tmp/config.toml" --log-level debug >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 300); do
  ctr version >/dev/null 2>&1 && break
  sleep 0.1
done
ctr version >/dev/null
# setsid forks only in a process group leader, which a job of this script
# is not: the pid is containerd's, for cleanup to stop it.
grep -qx "${containerd:0:15}" "/proc/$ctrd_pid/comm"
# The pinned pause image and busybox, as make up imports them.
for image in "$bin"/images/*.tar; do
  ctr -n k8s.io images import "$image" >/dev/null
done

echo "== push to $registry"
# Imported into a namespace of its own and pushed from there, then
# deleted: CRI's namespace (k8s.io) holds none of them, so every test pulls
# them from the registry.
while read -r archive refs; do
  set -- $refs
  ctr -n critest-push images import "$tmp/images/$archive" >/dev/null
  for ref; do
    ctr -n critest-push images push --plain-http "$registry/${ref#*/}" "$1" >/dev/null
  done
done <"$tmp/images/images.txt"
ctr -n critest-push images rm --sync $(ctr -n critest-push images ls -q) >/dev/null
ctr namespaces rm critest-push >/dev/null
timing "images, registry, push" $(($(now) - t0))

# critest's own flags; ginkgo's take the -ginkgo. prefix. A test that
# fails is run once more, on every handler: CRI races its own exit handling
# (critest-report prints each test that passed only then).
common=(-runtime-endpoint "unix://$sock" -image-endpoint "unix://$sock" -config /dev/null
  -nri-socket "$tmp/nri.sock" -ginkgo.no-color -ginkgo.flake-attempts 2)
skip_args=()
for s in "${skips[@]}"; do skip_args+=(-ginkgo.skip "$s"); done
[ -n "$focus" ] && skip_args+=(-ginkgo.focus "$focus")
# handler_flag H: the runtime handler critest asks for; none for "default".
handler_flag() { if [ "$1" = default ]; then echo ""; else echo "$1"; fi; }

failed=0
reports=()
for h in $handlers; do
  echo "== critest, runtime handler $h"
  t=$(now)
  mkdir -p "$out/$h"
  # critest exits non-zero when a test fails; the comparison decides.
  "$bin/critest" "${common[@]}" -runtime-handler "$(handler_flag "$h")" "${skip_args[@]}" \
    -ginkgo.json-report "$out/$h/report.json" >"$out/$h/critest.log" 2>&1 || true
  timing "critest $h" $(($(now) - t))
  reports+=("$h=$out/$h/report.json")
done

"$bin/critest-report" "${reports[@]}" | tee "$out/report.txt" || failed=1

for h in $handlers; do
  echo "== critest -benchmark, runtime handler $h"
  t=$(now)
  mkdir -p "$out/$h/benchmark"
  if ! "$bin/critest" "${common[@]}" -benchmark -runtime-handler "$(handler_flag "$h")" \
    -benchmarking-params-file "$here/critest/benchmark.yaml" \
    -benchmarking-output-dir "$out/$h/benchmark" >"$out/$h/benchmark.log" 2>&1; then
    echo "critest -benchmark failed for $h: see $out/$h/benchmark.log" >&2
    tail -30 "$out/$h/benchmark.log" >&2
    failed=1
  fi
  timing "critest -benchmark $h" $(($(now) - t))
done
timing "make critest in all" $(($(now) - t0))
exit "$failed"
