#!/usr/bin/env bash
# The project's one test command: format check, clippy, unit and simulation tests, and the
# integration tests against a real control plane (etcd + kube-apiserver + kube-controller-manager
# built from Debian's sources and cached). Installs what it needs; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"

# --no-images skips the static release build and image step (slow on 2 cores); CI runs it.
with_images=true
for arg in "$@"; do
  case "$arg" in
    --no-images) with_images=false ;;
    *) echo "usage: ./test.sh [--no-images]" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
command -v kubectl >/dev/null || {
  echo "kubectl not found: installing Debian's kubernetes-client"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client
}

step "control-plane binaries (first run builds Kubernetes 1.20.2 from Debian's sources: 5-10 minutes)"
TESTENV_BIN_DIR=$(bash tests/testenv/provision.sh | tail -n 1)
export TESTENV_BIN_DIR

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

if $with_images; then
  step "static images (musl, FROM scratch, buildah) and their size budget"
  images/build.sh
else
  step "SKIPPED: image build and size budget (--no-images given)"
fi

step "build the binaries the integration tests run"
cargo build --workspace --bins --locked

step "unit, simulation and integration tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo's own last line is the last crate's doc-tests).
awk '/^test result:/ { p += $4; f += $6; s += $8 }
     END { printf "\ntests: %d passed, %d failed", p, f; if (s) printf ", %d skipped", s; print "" }' "$log"
