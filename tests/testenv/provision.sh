#!/usr/bin/env bash
# Provides the control-plane binaries the integration tests run: etcd from Debian's etcd-server
# package, kube-apiserver and kube-controller-manager built from Debian bookworm's kubernetes
# source package. Everything comes from Debian's registry; the built binaries are cached per
# version, so a second run takes seconds. Prints the directory holding the binaries on stdout's
# last line. Fails loudly with the reason: the tests never silently skip.
set -euo pipefail

K8S_VERSION=1.20.2
K8S_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/leader-election-testenv"
BIN_DIR="$CACHE_ROOT/kubernetes-$K8S_VERSION/bin"

log() { printf '[testenv] %s\n' "$*" >&2; }
die() { printf '[testenv] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=false
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  if ! $apt_updated; then as_root apt-get update -qq >&2 || die "apt-get update failed"; apt_updated=true; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

apt_install etcd-server
command -v etcd >/dev/null || die "etcd-server is installed but no etcd binary is on PATH"

if [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kube-controller-manager" ]; then
  log "using cached kube-apiserver and kube-controller-manager $K8S_VERSION from $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

apt_install rsync golang-1.19-go golang-github-modern-go-reflect2-dev make dpkg-dev

# The system's own Debian mirror, so the same registry serves the source package.
mirror=$(grep -rhoE '^(URIs:|deb) *https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
           /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | grep -i debian | head -n1 \
         | sed -E 's/^(URIs:|deb) *//' || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
log "Debian mirror: $mirror"

work="$CACHE_ROOT/build-$K8S_VERSION"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" >"$work/apt/sources.list"
apt_private=(-oDir::Etc::SourceList="$work/apt/sources.list" -oDir::Etc::SourceParts=/dev/null
             -oDir::State::Lists="$work/apt/lists" -oAPT::Sandbox::User=root)
log "fetching the kubernetes $K8S_DEB_VERSION source package index"
apt-get "${apt_private[@]}" update -qq >&2 || die "could not read bookworm's source index from $mirror"
log "downloading the kubernetes source package (~25 MB)"
(cd "$work/src" && apt-get "${apt_private[@]}" source --download-only "kubernetes=$K8S_DEB_VERSION" >&2) \
  || die "could not download source package kubernetes=$K8S_DEB_VERSION"
orig=$(ls "$work"/src/kubernetes_*.orig.tar.* 2>/dev/null | head -n1)
[ -n "$orig" ] || die "no orig tarball in $work/src"

log "unpacking $(basename "$orig")"
mkdir -p "$work/tree"
tar -xf "$orig" -C "$work/tree"
tree=$(find "$work/tree" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -f "$tree/Makefile" ] || tree="$work/tree"
[ -d "$tree/vendor" ] || die "the orig tarball has no vendor/ directory"

# The vendored reflect2 1.0.1 breaks on Go >= 1.18; Debian's packaged copy works.
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"

log "building kube-apiserver and kube-controller-manager $K8S_VERSION (4-7 minutes on 2 cores)"
start=$(date +%s)
(
  cd "$tree"
  export PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 GOFLAGS= GO111MODULE=off
  export KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" 2>&1 \
    | while IFS= read -r line; do printf '[testenv] [%4ds] %s\n' $(( $(date +%s) - start )) "$line" >&2; done
  exit "${PIPESTATUS[0]}"
) || die "the kubernetes build failed; see the lines above"

built=$(find "$tree/_output" -type f -name kube-apiserver -path '*bin*' | head -n1)
[ -n "$built" ] || die "the build produced no kube-apiserver"
mkdir -p "$BIN_DIR"
cp "$(dirname "$built")/kube-apiserver" "$(dirname "$built")/kube-controller-manager" "$BIN_DIR/"
rm -rf "$work"
log "built in $(( $(date +%s) - start ))s; cached in $BIN_DIR"
echo "$BIN_DIR"
