#!/usr/bin/env bash
# Provides the Kubernetes binaries the test cluster runs, built here with the machine's Go from Go
# modules (no prebuilt binary can be downloaded on these machines):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#       from k8s.io/kubernetes (tests/testenv/kubernetes/go.mod pins it and its staging modules)
#   etcd
#       from go.etcd.io/etcd/server/v3 (tests/testenv/etcd/go.mod)
# Installs the node's Debian packages too (containerd, runc, CNI plugins, iptables, ...).
# Built once per pinned version and cached under ${XDG_CACHE_HOME:-~/.cache}/leader-election-testenv;
# a warm run takes a second. Prints progress on stderr and the binary directory as stdout's last
# line. Fails loudly with the reason: the tests never silently skip.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# Keep in step with tests/src/layout.rs (KUBERNETES_VERSION, ETCD_VERSION).
K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.5
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/leader-election-testenv"
BIN_DIR="$CACHE_ROOT/kubernetes-$K8S_VERSION/bin"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

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

# The node: Debian's containerd 1.6 and runc 1.1 run this project's OCI images in this VM; the
# CNI plugins give pods a bridge network; kube-proxy programs iptables; nsenter (util-linux)
# enters the cluster's network namespace.
apt_install containerd runc containernetworking-plugins iptables conntrack iproute2 util-linux kmod
# A package's service may have started a system containerd: the cluster runs its own, with its
# own socket and state, so the system one is left alone.

command -v go >/dev/null || die "Go is not installed (the machine image provides go; install Go >= 1.25)"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 25 ] 2>/dev/null || die "Go $(go env GOVERSION) is too old: Kubernetes $K8S_VERSION needs Go >= 1.25"

# The build inputs decide the cache: a changed go.mod/go.sum or flag rebuilds.
LDFLAGS="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/') \
 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/') \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
stamp=$(cat "$HERE/kubernetes/go.mod" "$HERE/kubernetes/go.sum" "$HERE/etcd/go.mod" "$HERE/etcd/go.sum" \
          <(echo "$LDFLAGS $(go env GOVERSION)") | sha256sum | cut -c1-16)

cached=true
for b in "${K8S_BINARIES[@]}" etcd; do [ -x "$BIN_DIR/$b" ] || cached=false; done
[ "$(cat "$BIN_DIR/.stamp" 2>/dev/null)" = "$stamp" ] || cached=false
if $cached; then
  log "using cached Kubernetes $K8S_VERSION and etcd $ETCD_VERSION from $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
build_dir="$BIN_DIR.partial"
rm -rf "$build_dir"
mkdir -p "$build_dir"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start ))s"; }

log "downloading Go modules for Kubernetes $K8S_VERSION and etcd $ETCD_VERSION (first run: ~300 MB)"
(cd "$HERE/kubernetes" && go mod download) || die "go mod download failed for k8s.io/kubernetes $K8S_VERSION"
(cd "$HERE/etcd" && go mod download) || die "go mod download failed for etcd $ETCD_VERSION"

i=0
total=$(( ${#K8S_BINARIES[@]} + 1 ))
for b in "${K8S_BINARIES[@]}"; do
  i=$((i + 1))
  log "[$(elapsed)] building $b $K8S_VERSION ($i/$total; the first takes longest, later ones reuse Go's build cache)"
  (cd "$HERE/kubernetes" && go build -trimpath -ldflags "$LDFLAGS" -o "$build_dir/$b" "k8s.io/kubernetes/cmd/$b") \
    || die "go build k8s.io/kubernetes/cmd/$b failed; see the lines above"
done
log "[$(elapsed)] building etcd $ETCD_VERSION ($total/$total)"
(cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$build_dir/etcd" go.etcd.io/etcd/server/v3) \
  || die "go build go.etcd.io/etcd/server/v3 failed; see the lines above"

echo "$stamp" >"$build_dir/.stamp"
rm -rf "$BIN_DIR"
mv "$build_dir" "$BIN_DIR"
log "built in $(elapsed); cached in $BIN_DIR ($(du -sh "$BIN_DIR" | cut -f1))"
echo "$BIN_DIR"
