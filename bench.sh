#!/usr/bin/env bash
# The bench (issue 14): the RELEASE elector beside client-go's leaderelection (tests/bench/peer,
# built here), both on one real control plane (Kubernetes as tests/testenv/provision.sh builds it)
# in the same run, plus the webhook. Prints one table per topic (project, peer, ratio, target,
# pass/miss), writes every raw sample to target/bench/latest.json and the README's tables to
# target/bench/performance.md, and exits non-zero when a figure misses its target.
# Installs what it needs (Kubernetes binaries, hey, the musl target), builds, then runs
# target/release/bench with the given options (--help lists them; --quick is a short smoke run,
# a few minutes). A full run takes about 25 minutes.
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
need hey hey
need git git

log "Kubernetes binaries (the first run builds them from Go modules: ~20 minutes)"
TESTENV_BIN_DIR=$(bash tests/testenv/provision.sh | tail -n 1)
export TESTENV_BIN_DIR

log "the client-go peer (built once from tests/bench/peer, then cached)"
peer=$(bash tests/bench/peer/build.sh | tail -n 1)

log "release build of elector, webhook and bench (opt-level z, LTO: a few minutes the first time)"
cargo build --release -p elector --bin elector -p webhook --bin webhook -p testenv --bin bench

# The elector measured is the one the image ships: static, musl (no shared libc pages).
log "static musl build of the elector (as in images/build.sh)"
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
cargo build --release --target x86_64-unknown-linux-musl -p elector --bin elector

target="${CARGO_TARGET_DIR:-target}"
args=(--elector-bin "$target/x86_64-unknown-linux-musl/release/elector" --peer-bin "$peer")
# The webhook logs a line per admission at info, as deployed.
export WEBHOOK_TEST_LOG="${WEBHOOK_TEST_LOG:-info}"
log "running the bench ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
exec "$target/release/bench" "${args[@]}" "$@"
