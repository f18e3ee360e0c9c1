#!/usr/bin/env bash
# Builds the two images the test cluster needs besides the project's own (no registry can be
# reached here, so every image a pod runs is built on this machine):
#   pause    the sandbox image containerd gives every pod (tests/testenv/pause/pause.c, static)
#   busybox  the example app: Debian's busybox-static in a FROM-scratch image, with its applets
#            linked in /bin as in the Docker Hub image (so `sh -c …` manifests run unchanged)
# Writes OCI archives to $OUT_DIR (default target/images) and prints their paths, one per line.
# Safe to re-run; installs buildah, musl-tools and busybox-static from Debian if missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/target/images}
# Names the cluster and manifests use; a fixed, non-latest tag, so the kubelet never pulls.
PAUSE_REF=leader-election.local/pause:3.10
BUSYBOX_REF=leader-election.local/busybox:1.35

log() { printf '[test-images] %s\n' "$*" >&2; }
die() { printf '[test-images] ERROR: %s\n' "$*" >&2; exit 1; }

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v musl-gcc >/dev/null || missing+=(musl-tools)
[ -x /bin/busybox ] || missing+=(busybox-static)
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
fi
# Debian's busybox package (dynamic) also installs /bin/busybox: insist on the static one.
file_is_static() { ! readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }
file_is_static /bin/busybox || die "/bin/busybox is dynamically linked: install busybox-static"

mkdir -p "$OUT_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
musl-gcc -static -Os -s -o "$work/pause" "$ROOT/tests/testenv/pause/pause.c" \
  || die "compiling pause.c with musl-gcc failed"

STORE="$OUT_DIR/.buildah"
bah() { buildah --storage-driver vfs --root "$STORE/root" --runroot "$STORE/run" "$@"; }
export BUILDAH_ISOLATION=chroot
epoch=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)

mkdir -p "$work/pause-root" "$work/busybox-root/bin"
cp "$work/pause" "$work/pause-root/pause"
cp /bin/busybox "$work/busybox-root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/busybox-root/bin/$applet"
done

# image REF ROOT_DIR ENTRYPOINT_JSON CMD_JSON ARCHIVE
image() {
  local ref=$1 root=$2 entrypoint=$3 cmd=$4 archive=$5 ctr
  ctr=$(bah from scratch)
  bah copy --quiet "$ctr" "$root" / >/dev/null
  bah config --os linux --arch amd64 --env PATH=/bin --entrypoint "$entrypoint" --cmd "$cmd" "$ctr"
  bah commit --quiet --rm --format oci --timestamp "$epoch" "$ctr" "$ref" >/dev/null
  # Written aside and renamed: a cluster starting meanwhile never imports half an archive.
  rm -f "$archive.partial"
  bah push --quiet "$ref" "oci-archive:$archive.partial:$ref"
  mv -f "$archive.partial" "$archive"
  bah rmi "$ref" >/dev/null
  log "$ref -> $archive ($(stat -c %s "$archive") bytes)"
  echo "$archive"
}

image "$PAUSE_REF" "$work/pause-root" '["/pause"]' '' "$OUT_DIR/pause.oci.tar"
image "$BUSYBOX_REF" "$work/busybox-root" '' '["sh"]' "$OUT_DIR/busybox.oci.tar"
