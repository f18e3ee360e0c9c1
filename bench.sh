#!/usr/bin/env bash
# The bench (issue 7): measures the RELEASE elector and webhook on a real control plane (etcd +
# kube-apiserver 1.20.2 + kube-controller-manager) and prints a table of every figure against
# its target; the JSON report goes to target/bench/latest.json (--out to change).
# Installs what it needs (control-plane binaries, kubectl, Debian's hey for HTTP load), builds the
# release binaries, then runs target/release/bench with the given options (--help lists them;
# --quick is a short smoke run). A full run takes about 10-15 minutes.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=false
need() { # need <command> <debian package>
  command -v "$1" >/dev/null && return 0
  log "installing Debian package $2 (for $1)"
  if ! $apt_updated; then as_root apt-get update -qq; apt_updated=true; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$2" >/dev/null
  command -v "$1" >/dev/null || { echo "bench.sh: $2 installed but $1 is not on PATH" >&2; exit 1; }
}
need kubectl kubernetes-client
need hey hey

log "control-plane binaries (the first run builds Kubernetes 1.20.2 from Debian's sources: 5-10 minutes)"
TESTENV_BIN_DIR=$(bash tests/testenv/provision.sh | tail -n 1)
export TESTENV_BIN_DIR

log "release build of elector, webhook and bench (opt-level z, LTO: a few minutes the first time)"
cargo build --release -p elector --bin elector -p webhook --bin webhook -p testenv --bin bench

# The elector measured is the one the image ships: static, musl (no shared libc pages).
log "static musl build of the elector (as in images/build.sh)"
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
cargo build --release --target x86_64-unknown-linux-musl -p elector --bin elector

target="${CARGO_TARGET_DIR:-target}"
elector_arg=(--elector-bin "$target/x86_64-unknown-linux-musl/release/elector")
for arg in "$@"; do case "$arg" in --elector-bin*) elector_arg=() ;; esac; done
log "running the bench ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
exec "$target/release/bench" "${elector_arg[@]}" "$@"
