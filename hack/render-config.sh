#!/usr/bin/env bash
# render-config.sh OUT BIN [BRIDGE SUBNET METRICS]: writes OUT/config.toml and
# the CNI config for a containerd whose files all live under OUT, serving
# Prometheus metrics on METRICS (host:port).
set -euo pipefail
out=$(realpath -m "$1"); bin=$(realpath -m "$2")
bridge=${3:-berth0}; subnet=${4:-10.88.0.0/16}; metrics=${5:-127.0.0.1:1338}
here=$(dirname "$(realpath "$0")")/..
mkdir -p "$out/cni/net.d"
sed -e "s#@OUT@#$out#g" -e "s#@BIN@#$bin#g" -e "s#@METRICS@#$metrics#g" \
  "$here/config/containerd.toml.in" >"$out/config.toml"
sed -e "s#@OUT@#$out#g" -e "s#@BRIDGE@#$bridge#g" -e "s#@SUBNET@#$subnet#g" \
  "$here/config/cni/10-berth.conflist.in" >"$out/cni/net.d/10-berth.conflist"
