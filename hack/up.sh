#!/usr/bin/env bash
# up.sh OUT BIN: runs the project's containerd in the foreground with its
# config and state under OUT, and imports the images bin/ holds. Ctrl-C stops
# it.
set -euo pipefail
out=$(realpath -m "$1"); bin=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
"$here/render-config.sh" "$out" "$bin"
export PATH="$bin:$PATH"
"$bin/containerd" --config "$out/config.toml" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
for _ in $(seq 100); do
  [ -S "$out/containerd.sock" ] && "$bin/ctr" -a "$out/containerd.sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
for image in "$bin"/images/*.tar; do
  "$bin/ctr" -a "$out/containerd.sock" -n k8s.io images import "$image" >/dev/null
done
echo "containerd is up: CRI at unix://$out/containerd.sock (runtime handlers: runc, berth, berth-nopull, berth-builtin; metrics on 127.0.0.1:1338)"
wait $pid
