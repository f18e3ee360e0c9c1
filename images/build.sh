#!/usr/bin/env bash
# Builds the elector and webhook container images without a Docker daemon:
#   1. static release binaries (x86_64-unknown-linux-musl: no libc needed at run time);
#   2. one FROM-scratch image each (the binary only, non-root UID 65532, OCI labels), made with
#      Debian's buildah in a private vfs store (--storage-driver vfs: works in any container or
#      VM, no overlay mounts; --isolation chroot: no runc/user namespaces needed);
#   3. OCI archives target/images/{elector,webhook}.oci.tar, loadable with
#      `kind load image-archive`, `k3d image import`, `podman load` or `skopeo copy`;
#   4. a size report, failing when an image is over its budget (elector <= 10 MB).
#
# Usage: images/build.sh [--skip-build] [--no-install]
#   --skip-build   reuse the binaries already in target/x86_64-unknown-linux-musl/release
#   --no-install   do not apt-get/rustup install missing tools; fail instead
# Environment:
#   IMAGE_REGISTRY   image name prefix (default ghcr.io/leader-election, as in manifests/)
#   IMAGE_TAG        tag (default: the workspace version, as in manifests/)
#   OUT_DIR          where the archives go (default target/images)
#   BIN_DIR          where the static binaries are (default target/x86_64-unknown-linux-musl/release)
#   ELECTOR_BUDGET_BYTES, WEBHOOK_BUDGET_BYTES   size budgets, uncompressed (default 10 MB, 20 MB)
#   SOURCE_DATE_EPOCH  image creation time (default: the last commit's time: reproducible)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TARGET=x86_64-unknown-linux-musl
UID_GID=65532:65532 # contract::deploy::RUN_AS_USER
BINARIES=(elector webhook)

skip_build=false
install=true
for arg in "$@"; do
  case "$arg" in
    --skip-build) skip_build=true ;;
    --no-install) install=false ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "images/build.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }
die() {
  echo "images/build.sh: $*" >&2
  exit 1
}

# The workspace version ([workspace.package] version in the root Cargo.toml).
workspace_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1
}
workspace_field() {
  sed -n "/^\[workspace.package\]/,/^\[/s/^$1 *= *\"\([^\"]*\)\".*/\1/p" Cargo.toml | head -n 1
}

VERSION=$(workspace_version)
[[ -n "$VERSION" ]] || die "no version under [workspace.package] in Cargo.toml"
IMAGE_REGISTRY=${IMAGE_REGISTRY:-ghcr.io/leader-election}
IMAGE_TAG=${IMAGE_TAG:-$VERSION}
OUT_DIR=${OUT_DIR:-$ROOT/target/images}
ELECTOR_BUDGET_BYTES=${ELECTOR_BUDGET_BYTES:-10000000}
WEBHOOK_BUDGET_BYTES=${WEBHOOK_BUDGET_BYTES:-20000000}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
SOURCE_URL=$(workspace_field repository)
LICENSE=$(workspace_field license)

step "tools"
need_apt=()
command -v buildah >/dev/null || need_apt+=(buildah)
command -v jq >/dev/null || need_apt+=(jq)
command -v readelf >/dev/null || need_apt+=(binutils)
# ring compiles C and assembly: with musl-gcc it is built against musl's headers.
$skip_build || command -v musl-gcc >/dev/null || need_apt+=(musl-tools)
if ((${#need_apt[@]})); then
  $install || die "missing: ${need_apt[*]} (apt-get install -y ${need_apt[*]}, or run without --no-install)"
  echo "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! $skip_build && ! rustup target list --installed | grep -qx "$TARGET"; then
  $install || die "rust target $TARGET missing (rustup target add $TARGET)"
  rustup target add "$TARGET"
fi
buildah --version

BIN_DIR=${BIN_DIR:-$ROOT/target/$TARGET/release}
if $skip_build; then
  step "reusing binaries in ${BIN_DIR#"$ROOT"/}"
else
  step "static release build ($TARGET; CPU-heavy: LTO, one codegen unit)"
  # One cargo invocation per binary: built together, cargo unifies dependency features (the
  # webhook's kube "admission" and friends) into the elector too, making it larger than the one
  # the bench measures.
  for bin in "${BINARIES[@]}"; do
    cargo build --release --locked --target "$TARGET" -p "$bin" --bin "$bin"
  done
fi

for bin in "${BINARIES[@]}"; do
  f="$BIN_DIR/$bin"
  [[ -x "$f" ]] || die "$f not found: build it first (drop --skip-build)"
  # A FROM-scratch image has no dynamic loader or libc: refuse anything not fully static.
  if readelf -l "$f" | grep -q 'Requesting program interpreter' || readelf -d "$f" | grep -q '(NEEDED)'; then
    die "$f is dynamically linked; it would not start in a scratch image"
  fi
done

# A private store under target/, so the build needs no system configuration, leaves nothing in
# root's default store and can run next to other buildah users.
STORE="$ROOT/target/images/.buildah"
mkdir -p "$STORE" "$OUT_DIR"
bah() {
  buildah --storage-driver vfs --root "$STORE/root" --runroot "$STORE/run" "$@"
}
export BUILDAH_ISOLATION=chroot

# build_image NAME DESCRIPTION PORT
build_image() {
  local name=$1 description=$2 port=$3
  local ref="$IMAGE_REGISTRY/$name:$IMAGE_TAG"
  local archive="$OUT_DIR/$name.oci.tar"
  step "image $ref"
  local ctr
  ctr=$(bah from --isolation chroot scratch)
  # Owned by root, only executable by others: the non-root user runs it but cannot modify it.
  bah copy --quiet --chmod 0755 "$ctr" "$BIN_DIR/$name" "/$name" >/dev/null
  bah config \
    --os linux --arch amd64 \
    --user "$UID_GID" \
    --workingdir / \
    --created-by "images/build.sh: static $TARGET binary $name" \
    --entrypoint "[\"/$name\"]" --cmd '' \
    --port "$port/tcp" \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.description=$description" \
    --label "org.opencontainers.image.version=$IMAGE_TAG" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.created=$CREATED" \
    --label "org.opencontainers.image.source=$SOURCE_URL" \
    --label "org.opencontainers.image.url=$SOURCE_URL" \
    --label "org.opencontainers.image.licenses=$LICENSE" \
    --label "org.opencontainers.image.vendor=leader-election" \
    --label "org.opencontainers.image.base.name=scratch" \
    "$ctr"
  bah commit --quiet --rm --format oci --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "$ref" >/dev/null
  rm -f "$archive"
  # The full reference goes into the archive's index (org.opencontainers.image.ref.name), so
  # kind/k3d/containerd import it under the name the manifests use.
  bah push --quiet "$ref" "oci-archive:$archive:$ref"
  bah rmi "$ref" >/dev/null
}

build_image elector "Kubernetes Lease leader-election sidecar (leader-elector:0.4 compatible API)" 4040
build_image webhook "Mutating admission webhook injecting the leader-election sidecar" 8443

# Uncompressed image size: the sum of the layers as unpacked (what `docker images` reports),
# plus the config; and the archive's size on disk (compressed layers, what a pull transfers).
# image_sizes ARCHIVE -> "uncompressed compressed"
image_sizes() {
  local archive=$1 dir manifest config total=0 layer blob
  dir=$(mktemp -d)
  tar -xf "$archive" -C "$dir"
  manifest=$(jq -r '.manifests[0].digest' "$dir/index.json" | sed 's#:#/#')
  config=$(jq -r '.config.digest' "$dir/blobs/$manifest" | sed 's#:#/#')
  total=$(stat -c %s "$dir/blobs/$config")
  for layer in $(jq -r '.layers[].digest' "$dir/blobs/$manifest" | sed 's#:#/#'); do
    blob="$dir/blobs/$layer"
    if [[ $(head -c 2 "$blob" | od -An -tx1 | tr -d ' ') == 1f8b ]]; then
      total=$((total + $(gzip -dc "$blob" | wc -c)))
    else
      total=$((total + $(stat -c %s "$blob")))
    fi
  done
  rm -rf "$dir"
  echo "$total $(stat -c %s "$archive")"
}

mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1000000 }'; }

step "sizes (budget applies to the uncompressed image)"
over=0
printf '%-8s %-14s %-14s %-14s %-12s %s\n' image binary uncompressed archive budget archive-path
for bin in "${BINARIES[@]}"; do
  case "$bin" in
    elector) budget=$ELECTOR_BUDGET_BYTES ;;
    webhook) budget=$WEBHOOK_BUDGET_BYTES ;;
  esac
  read -r uncompressed compressed < <(image_sizes "$OUT_DIR/$bin.oci.tar")
  binary=$(stat -c %s "$BIN_DIR/$bin")
  status=ok
  if ((uncompressed > budget)); then
    status=OVER
    over=1
  fi
  printf '%-8s %-14s %-14s %-14s %-12s %s %s\n' "$bin" "$(mb "$binary")" "$(mb "$uncompressed")" \
    "$(mb "$compressed")" "$(mb "$budget")" "${OUT_DIR#"$ROOT"/}/$bin.oci.tar" "$status"
done
if ((over)); then
  die "an image is over its size budget (see OVER above)"
fi

cat <<EOF

Load into a local cluster:
  kind load image-archive ${OUT_DIR#"$ROOT"/}/elector.oci.tar && kind load image-archive ${OUT_DIR#"$ROOT"/}/webhook.oci.tar
  k3d image import ${OUT_DIR#"$ROOT"/}/elector.oci.tar ${OUT_DIR#"$ROOT"/}/webhook.oci.tar
  podman load -i ${OUT_DIR#"$ROOT"/}/elector.oci.tar
EOF
