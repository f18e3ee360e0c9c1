#!/usr/bin/env bash
# Builds the bench's client-go peer (main.go: leaderelection with a LeaseLock, client-go pinned in
# go.mod) with the machine's Go, cached under ${XDG_CACHE_HOME:-~/.cache}/leader-election-testenv
# by the hash of its sources and the Go version; a warm run takes a second. Prints the binary's
# path as stdout's last line.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/leader-election-testenv"
log() { printf '[peer] %s\n' "$*" >&2; }
die() { printf '[peer] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "Go is not installed (install Go >= 1.25; the machine image provides it)"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "${go_minor:-0}" -ge 25 ] 2>/dev/null || die "Go $(go env GOVERSION) is too old: client-go v0.35 needs Go >= 1.25"

stamp=$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/main.go" <(go env GOVERSION) | sha256sum | cut -c1-16)
out="$CACHE_ROOT/bench-peer-$stamp/peer"
if [ -x "$out" ]; then
  log "using the cached client-go peer $out"
  echo "$out"
  exit 0
fi
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
mkdir -p "$(dirname "$out")"
log "building the client-go peer ($(grep -E '^\s*k8s.io/client-go ' "$HERE/go.mod" | xargs))"
(cd "$HERE" && go build -trimpath -ldflags "-s -w" -o "$out.partial" .) || die "go build of the peer failed; see above"
mv "$out.partial" "$out"
echo "$out"
