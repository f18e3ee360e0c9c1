#!/usr/bin/env bash
# The project's one test command: format check, clippy, the images, unit and simulation tests,
# and the integration and end-to-end tests against real clusters (Kubernetes built here from Go
# modules and cached; a node with containerd, the kubelet and kube-proxy in a network namespace
# of its own). Installs what it needs; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"

for arg in "$@"; do
  case "$arg" in
    *) echo "usage: ./test.sh (no arguments: it runs everything)" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "Kubernetes binaries (the first run builds them from Go modules: ~25 minutes on 2 cores)"
TESTENV_BIN_DIR=$(bash tests/testenv/provision.sh | tail -n 1)
export TESTENV_BIN_DIR

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "static images for linux/amd64 and linux/arm64 (musl, FROM scratch, buildah) and their size budgets"
images/build.sh

step "the test cluster's own images (pause, busybox)"
tests/testenv/test-images.sh >/dev/null

step "build the binaries the integration tests run"
cargo build --workspace --bins --locked

step "unit, simulation and integration tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo's own last line is the last crate's doc-tests).
awk '/^test result:/ { p += $4; f += $6; s += $8 }
     END { printf "\ntests: %d passed, %d failed", p, f; if (s) printf ", %d skipped", s; print "" }' "$log"
