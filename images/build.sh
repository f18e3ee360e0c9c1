#!/usr/bin/env bash
# Builds the elector and webhook container images for linux/amd64 and linux/arm64 without a
# Docker daemon or emulation:
#   1. static release binaries per architecture (x86_64- and aarch64-unknown-linux-musl: no libc
#      needed at run time); arm64 is cross-compiled: Debian's gcc-aarch64-linux-gnu compiles
#      the C and assembly of ring and psm, rust-lld links against Rust's self-contained musl;
#   2. one FROM-scratch image per architecture (the binary only, non-root UID 65532, OCI labels),
#      made with Debian's buildah in a private vfs store (--storage-driver vfs: works in any
#      container or VM, no overlay mounts; no RUN step, so no emulator is needed);
#   3. one image index (manifest list) per image over its architectures, written as an OCI
#      archive target/images/{elector,webhook}.oci.tar, loadable with `ctr images import`
#      (the host's platform, or --all-platforms), `kind load image-archive`, `podman load` or
#      `skopeo copy --all`;
#   4. a smoke test of the arm64 binaries under qemu-aarch64 (`--version`), when Debian's
#      qemu-user-static is there or installable;
#   5. a size report per architecture, failing when a binary is over its budget (the README's
#      promise: elector <= 8 MB stripped).
#
# Usage: images/build.sh [--skip-build] [--no-install]
#   --skip-build   reuse the binaries already in $CARGO_TARGET_DIR/<rust target>/release
#   --no-install   do not apt-get/rustup install missing tools; fail instead
# Environment:
#   ARCHS            architectures, space-separated (default "amd64 arm64")
#   IMAGE_REGISTRY   image name prefix (default ghcr.io/leader-election, as in manifests/)
#   IMAGE_TAG        tag (default: the workspace version, as in manifests/)
#   OUT_DIR          where the archives go (default target/images)
#   CARGO_TARGET_DIR cargo's target directory (default target)
#   ELECTOR_BUDGET_BYTES, WEBHOOK_BUDGET_BYTES   size budgets of the stripped static binaries,
#                    per architecture (default 8 MB, as the README promises, and 20 MB)
#   SOURCE_DATE_EPOCH  image creation time (default: the last commit's time: reproducible)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

UID_GID=65532:65532 # contract::deploy::RUN_AS_USER
BINARIES=(elector webhook)
read -r -a ARCH_LIST <<<"${ARCHS:-amd64 arm64}"

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

# Per architecture: the Rust target, and the machine `readelf -h` must report.
rust_target() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    *) die "unknown architecture '$1' in ARCHS (amd64, arm64)" ;;
  esac
}
elf_machine() {
  case "$1" in
    amd64) echo "Advanced Micro Devices X86-64" ;;
    arm64) echo "AArch64" ;;
  esac
}
# Cargo's target directory, as cargo itself finds it.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
bin_dir() { echo "$TARGET_DIR/$(rust_target "$1")/release"; }
((${#ARCH_LIST[@]})) || die "ARCHS is empty (use e.g. ARCHS=\"amd64 arm64\")"
for arch in "${ARCH_LIST[@]}"; do rust_target "$arch" >/dev/null; done
has_arch() { [[ " ${ARCH_LIST[*]} " == *" $1 "* ]]; }

VERSION=$(workspace_version)
[[ -n "$VERSION" ]] || die "no version under [workspace.package] in Cargo.toml"
IMAGE_REGISTRY=${IMAGE_REGISTRY:-ghcr.io/leader-election}
IMAGE_TAG=${IMAGE_TAG:-$VERSION}
OUT_DIR=${OUT_DIR:-$ROOT/target/images}
ELECTOR_BUDGET_BYTES=${ELECTOR_BUDGET_BYTES:-8000000}
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
if ! $skip_build; then
  # ring and psm compile C and assembly: for amd64 with musl-gcc, against musl's headers; for
  # arm64 with the aarch64 cross gcc (their C uses only freestanding headers; libc comes from
  # Rust's self-contained musl at link time).
  has_arch amd64 && ! command -v musl-gcc >/dev/null && need_apt+=(musl-tools)
  has_arch arm64 && ! command -v aarch64-linux-gnu-gcc >/dev/null && need_apt+=(gcc-aarch64-linux-gnu)
fi
# Optional: runs the arm64 binaries for the smoke test (step 4).
has_arch arm64 && $install && ! command -v qemu-aarch64-static >/dev/null && need_apt+=(qemu-user-static)
if ((${#need_apt[@]})); then
  $install || die "missing: ${need_apt[*]} (apt-get install -y ${need_apt[*]}, or run without --no-install)"
  echo "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! $skip_build; then
  for arch in "${ARCH_LIST[@]}"; do
    target=$(rust_target "$arch")
    if ! rustup target list --installed | grep -qx "$target"; then
      $install || die "rust target $target missing (rustup target add $target)"
      rustup target add "$target"
    fi
  done
fi
buildah --version

# Cross-compiling for arm64: C via the cross gcc (cc-rs reads CC_/AR_<target>), linking with
# the rust-lld shipped with rustc and Rust's self-contained musl CRT and libc (no musl cross
# toolchain needed). Each can be overridden from the environment.
export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
export AR_aarch64_unknown_linux_musl=${AR_aarch64_unknown_linux_musl:-aarch64-linux-gnu-ar}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-rust-lld}

if $skip_build; then
  step "reusing the binaries in ${TARGET_DIR#"$ROOT"/}/<rust target>/release"
else
  for arch in "${ARCH_LIST[@]}"; do
    target=$(rust_target "$arch")
    step "static release build, linux/$arch ($target; CPU-heavy: LTO, one codegen unit)"
    start=$SECONDS
    # One cargo invocation per binary: built together, cargo unifies dependency features (the
    # webhook's kube "admission" and friends) into the elector too, making it larger than the
    # one the bench measures.
    for bin in "${BINARIES[@]}"; do
      cargo build --release --locked --target "$target" -p "$bin" --bin "$bin"
    done
    echo "linux/$arch binaries built in $((SECONDS - start)) s"
  done
fi

for arch in "${ARCH_LIST[@]}"; do
  for bin in "${BINARIES[@]}"; do
    f="$(bin_dir "$arch")/$bin"
    [[ -x "$f" ]] || die "$f not found: build it first (drop --skip-build)"
    # A FROM-scratch image has no dynamic loader or libc: refuse anything not fully static.
    if readelf -l "$f" | grep -q 'Requesting program interpreter' || readelf -d "$f" | grep -q '(NEEDED)'; then
      die "$f is dynamically linked; it would not start in a scratch image"
    fi
    machine=$(readelf -h "$f" | sed -n 's/^ *Machine: *//p')
    [[ "$machine" == "$(elf_machine "$arch")" ]] ||
      die "$f is built for '$machine', not linux/$arch"
  done
done

if has_arch arm64; then
  step "smoke test: the arm64 binaries under qemu-aarch64"
  qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
  if [[ -z "$qemu" ]]; then
    echo "skipped: no qemu-aarch64 (apt-get install qemu-user-static)"
  else
    for bin in "${BINARIES[@]}"; do
      out=$("$qemu" "$(bin_dir arm64)/$bin" --version) || die "$bin (arm64) --version failed under $qemu"
      [[ "$out" == "$bin $VERSION" ]] || die "$bin (arm64) --version printed '$out', not '$bin $VERSION'"
      echo "$bin (arm64): $out"
    done
  fi
fi

# A private store next to the archives, so the build needs no system configuration, leaves
# nothing in root's default store and can run next to other buildah users.
STORE="$OUT_DIR/.buildah"
mkdir -p "$STORE" "$OUT_DIR"
bah() {
  buildah --storage-driver vfs --root "$STORE/root" --runroot "$STORE/run" "$@"
}
export BUILDAH_ISOLATION=chroot

# build_image NAME DESCRIPTION PORT: one image per architecture, then their index.
build_image() {
  local name=$1 description=$2 port=$3
  local ref="$IMAGE_REGISTRY/$name:$IMAGE_TAG"
  local archive="$OUT_DIR/$name.oci.tar"
  local arch ctr variant image images=()
  step "image $ref (${ARCH_LIST[*]})"
  # Leftovers of an interrupted run would be added to (list) or shadow (images) the new ones.
  bah manifest rm "$ref" >/dev/null 2>&1 || true
  bah rmi --force "$ref" >/dev/null 2>&1 || true
  bah manifest create "$ref" >/dev/null
  for arch in "${ARCH_LIST[@]}"; do
    image="localhost/images-build/$name:$IMAGE_TAG-$arch"
    variant=()
    [[ "$arch" == arm64 ]] && variant=(--variant v8)
    ctr=$(bah from --isolation chroot scratch)
    # Owned by root, only executable by others: the non-root user runs it but cannot modify it.
    bah copy --quiet --chmod 0755 "$ctr" "$(bin_dir "$arch")/$name" "/$name" >/dev/null
    bah config \
      --os linux --arch "$arch" "${variant[@]}" \
      --user "$UID_GID" \
      --workingdir / \
      --created-by "images/build.sh: static $(rust_target "$arch") binary $name" \
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
    bah commit --quiet --rm --format oci --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "$image" >/dev/null
    # The platform (os, architecture, variant) comes from the image's config.
    bah manifest add "$ref" "containers-storage:$image" >/dev/null
    images+=("$image")
  done
  rm -f "$archive"
  # The full reference goes into the archive's index.json (org.opencontainers.image.ref.name)
  # on the image index, so containerd, kind and podman import it under the name the manifests
  # use, each picking its own platform.
  bah manifest push --quiet --all --format oci "$ref" "oci-archive:$archive:$ref"
  bah manifest rm "$ref" >/dev/null
  bah rmi "${images[@]}" >/dev/null
}

build_image elector "Kubernetes Lease leader-election sidecar (leader-elector:0.4 compatible API)" 4040
build_image webhook "Mutating admission webhook injecting the leader-election sidecar" 8443

# Per architecture: the image's uncompressed size (the layers as unpacked plus the config: what
# `docker images` reports) and its compressed size (layers, config and manifest: what a pull of
# that platform transfers). The archive holds the index, then one manifest per platform.
# image_sizes ARCHIVE ARCH -> "uncompressed compressed"
image_sizes() {
  local archive=$1 arch=$2 dir index manifest config total=0 compressed layer blob
  dir=$(mktemp -d)
  tar -xf "$archive" -C "$dir"
  index=$(jq -r '.manifests[0].digest' "$dir/index.json" | sed 's#:#/#')
  manifest=$(jq -r --arg a "$arch" \
    '.manifests[] | select(.platform.os == "linux" and .platform.architecture == $a) | .digest' \
    "$dir/blobs/$index" | sed 's#:#/#')
  [[ -n "$manifest" ]] || die "$archive has no linux/$arch image"
  config=$(jq -r '.config.digest' "$dir/blobs/$manifest" | sed 's#:#/#')
  total=$(stat -c %s "$dir/blobs/$config")
  compressed=$((total + $(stat -c %s "$dir/blobs/$manifest")))
  for layer in $(jq -r '.layers[].digest' "$dir/blobs/$manifest" | sed 's#:#/#'); do
    blob="$dir/blobs/$layer"
    compressed=$((compressed + $(stat -c %s "$blob")))
    if [[ $(head -c 2 "$blob" | od -An -tx1 | tr -d ' ') == 1f8b ]]; then
      total=$((total + $(gzip -dc "$blob" | wc -c)))
    else
      total=$((total + $(stat -c %s "$blob")))
    fi
  done
  rm -rf "$dir"
  echo "$total $compressed"
}

mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1000000 }'; }

step "sizes per architecture (the budget applies to the stripped binary, as the README says)"
over=0
printf '%-8s %-6s %-10s %-10s %-14s %-12s %s\n' image arch binary budget uncompressed compressed archive
for bin in "${BINARIES[@]}"; do
  case "$bin" in
    elector) budget=$ELECTOR_BUDGET_BYTES ;;
    webhook) budget=$WEBHOOK_BUDGET_BYTES ;;
  esac
  for arch in "${ARCH_LIST[@]}"; do
    read -r uncompressed compressed < <(image_sizes "$OUT_DIR/$bin.oci.tar" "$arch")
    binary=$(stat -c %s "$(bin_dir "$arch")/$bin")
    status=ok
    if ((binary > budget)); then
      status=OVER
      over=1
    fi
    printf '%-8s %-6s %-10s %-10s %-14s %-12s %s %s\n' "$bin" "$arch" "$(mb "$binary")" "$(mb "$budget")" \
      "$(mb "$uncompressed")" "$(mb "$compressed")" "${OUT_DIR#"$ROOT"/}/$bin.oci.tar" "$status"
  done
done
if ((over)); then
  die "a binary is over its size budget (see OVER above)"
fi

cat <<EOF

Each archive is one image index (${ARCH_LIST[*]}). Load into a local cluster:
  ctr -n k8s.io images import ${OUT_DIR#"$ROOT"/}/elector.oci.tar   (the node's platform; --all-platforms for all)
  kind load image-archive ${OUT_DIR#"$ROOT"/}/elector.oci.tar && kind load image-archive ${OUT_DIR#"$ROOT"/}/webhook.oci.tar
  k3d image import ${OUT_DIR#"$ROOT"/}/elector.oci.tar ${OUT_DIR#"$ROOT"/}/webhook.oci.tar
  podman load -i ${OUT_DIR#"$ROOT"/}/elector.oci.tar
EOF
