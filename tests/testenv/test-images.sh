#!/usr/bin/env bash
# Builds the two images the test cluster needs besides the project's own (no registry can be
# reached here, so every image a pod runs is built on this machine):
#   pause    the sandbox image containerd gives every pod (tests/testenv/pause/pause.c, static)
#   busybox  the example app: Debian's busybox-static, one static binary in a FROM-scratch image
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

# image REF BINARY PATH_IN_IMAGE ENTRYPOINT_JSON ARCHIVE
image() {
  local ref=$1 binary=$2 path=$3 entrypoint=$4 archive=$5 ctr
  ctr=$(bah from scratch)
  bah copy --quiet --chmod 0755 "$ctr" "$binary" "$path" >/dev/null
  bah config --os linux --arch amd64 --entrypoint "$entrypoint" --cmd '' "$ctr"
  bah commit --quiet --rm --format oci --timestamp "$epoch" "$ctr" "$ref" >/dev/null
  rm -f "$archive"
  bah push --quiet "$ref" "oci-archive:$archive:$ref"
  bah rmi "$ref" >/dev/null
  log "$ref -> $archive ($(stat -c %s "$archive") bytes)"
  echo "$archive"
}

image "$PAUSE_REF" "$work/pause" /pause '["/pause"]' "$OUT_DIR/pause.oci.tar"
image "$BUSYBOX_REF" /bin/busybox /bin/busybox '["/bin/busybox"]' "$OUT_DIR/busybox.oci.tar"
