#!/usr/bin/env bash
# critest-images.sh BIN DIR: builds, with bin/berth-image, the images critest
# pulls, under the names critest asks for, from Debian's static busybox
# (BUSYBOX, default /bin/busybox), berth-pause and the stand-ins in
# critest/images/ (built into BIN/critest-images by make critest). Writes
# DIR/NAME.tar for each and DIR/images.txt, one image a line: its archive,
# then every reference it is pushed as (the first is the archive's own).
#
# What critest needs of each (pkg/validate and pkg/framework of cri-tools):
# - busybox: the test image of most tests, with busybox's applets in /bin
#   (hard links)
#   (plus pgrep and ipcs, which Debian's busybox lacks) and the users and
#   groups of the busybox image (/etc/passwd: nobody for RunAsUserName).
# - nginx, httpd, hostnet-nginx: a web server on port 80 (12003 on the host
#   network) answering 200, named so `pidof nginx` finds it, its pid in
#   /var/run/nginx.pid; a busybox beside it, for the tests' execs.
# - nonewprivs: a setuid-root program printing its effective uid.
# - test-image-user-*: USER set as uid, name, uid:gid and name:gid.
# - test-image-predefined-group: USER 1000, a member of group 50000 in
#   /etc/group (SupplementalGroupsPolicy; image volume subPath etc/).
# - test-image-*: distinct images (a file named after the image, as
#   cri-tools' images/image-test), test-image-tags:1..3 one image.
# - pause:3.9, from registry.k8s.io and k8s.gcr.io: one image, that runs.
set -euo pipefail
bin=$(realpath "$1"); dir=$(realpath -m "$2")
busybox=${BUSYBOX:-/bin/busybox}
here=$(dirname "$(realpath "$0")")/..
etc=$here/critest/images/etc
stand=$bin/critest-images
mkdir -p "$dir/markers"
: >"$dir/images.txt"

# image NAME [REF...] -- BERTH-IMAGE-ARGS: writes DIR/NAME.tar as REF (the
# first) and lists it to be pushed as every REF.
image() {
  local name=$1; shift
  local refs=()
  while [ "$1" != -- ]; do refs+=("$1"); shift; done
  shift
  # berth-image's flags (each with a value) go before its FILE arguments.
  local flags=() files=()
  while [ $# -gt 0 ]; do
    case $1 in
      -*) flags+=("$1" "$2"); shift 2 ;;
      *) files+=("$1"); shift ;;
    esac
  done
  "$bin/berth-image" -o "$dir/$name.tar" -name "${refs[0]}" "${flags[@]}" "${files[@]}"
  echo "$name.tar ${refs[*]}" >>"$dir/images.txt"
}

# The busybox rootfs every test image but pause and nonewprivs starts from.
base=(-cmd sh -dir /tmp=1777 -dir /root=0700 -dir /home=0755 -dir /var/www=0755
  "$busybox=/bin/busybox" "$etc/passwd=/etc/passwd" "$etc/group=/etc/group"
  "$stand/pgrep=/usr/bin/pgrep" "$stand/ipcs=/usr/bin/ipcs")
# Hard links, as in the busybox image: a path masked by a bind mount (the
# MaskedPaths test masks /bin/ls) must not be a symlink to busybox itself.
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || base+=(-hardlink "/bin/$applet=/bin/busybox")
done
# base_with PASSWD GROUP: base with other /etc/passwd and /etc/group.
base_with() {
  local a
  for a in "${base[@]}"; do
    case $a in
      "$etc/passwd=/etc/passwd") echo "$1=/etc/passwd" ;;
      "$etc/group=/etc/group") echo "$2=/etc/group" ;;
      *) echo "$a" ;;
    esac
  done
}

e2e=registry.k8s.io/e2e-test-images
staging=gcr.io/k8s-staging-cri-tools

image busybox "$e2e/busybox:1.29-2" -- "${base[@]}"
image nginx "$e2e/nginx:1.14-2" -- "${base[@]}" -cmd /usr/sbin/nginx "$stand/webserver=/usr/sbin/nginx"
image httpd "$e2e/httpd:2.4.39-4" -- "${base[@]}" -cmd /usr/sbin/httpd "$stand/webserver=/usr/sbin/httpd"
image hostnet-nginx "$staging/hostnet-nginx-${GOARCH:-$(go env GOARCH)}:latest" -- "${base[@]}" \
  -cmd "/usr/sbin/nginx -port 12003" "$stand/webserver=/usr/sbin/nginx"
image nonewprivs "$e2e/nonewprivs:1.3" -- -entrypoint /usr/local/bin/nnp \
  -mode /usr/local/bin/nnp=4755 "$stand/nnp=/usr/local/bin/nnp"
# With a file of its own: the same files as the pinned sandbox image
# (localhost/berth/pause:1) would make it the same image, with its tags.
: >"$dir/markers/pause-3.9"
image pause "registry.k8s.io/pause:3.9" "k8s.gcr.io/pause:3.9" -- \
  -entrypoint /pause -user 65535:65535 "$bin/berth-pause=/pause" "$dir/markers/pause-3.9=/pause-3.9"

image user-uid "$staging/test-image-user-uid:latest" -- "${base[@]}" -user 1002
image user-username "$staging/test-image-user-username:latest" -- "${base[@]}" -user www-data
image user-uid-group "$staging/test-image-user-uid-group:latest" -- "${base[@]}" -user 1003:1004
image user-username-group "$staging/test-image-user-username-group:latest" -- "${base[@]}" -user www-data:1004
mapfile -t predefined < <(base_with "$etc/passwd-predefined-group" "$etc/group-predefined-group")
image predefined-group "$staging/test-image-predefined-group:latest" -- "${predefined[@]}" \
  -dir /home/default-user=0755 -user 1000

# image-test: busybox plus an empty file named after the image, so that
# each is an image of its own.
marked() {
  local name=$1; shift
  : >"$dir/markers/$name"
  image "$name" "$@" -- "${base[@]}" "$dir/markers/$name=/$name"
}
for n in 1 2 3; do marked "test-image-$n" "$staging/test-image-$n:latest"; done
marked test-image-latest "$staging/test-image-latest:latest"
marked same-image "$staging/test-image-tags:1" "$staging/test-image-tags:2" "$staging/test-image-tags:3"
marked test "$staging/test-image-tag:test"
marked all "$staging/test-image-tag:all"
