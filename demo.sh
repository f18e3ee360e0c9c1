#!/usr/bin/env bash
# The one-command local demo: a real Kubernetes control plane on this machine (etcd +
# kube-apiserver 1.20.2 + kube-controller-manager, no nodes), the webhook injecting the elector
# into manifests/examples/my-app, one elector per pod, then a graceful handover and a crash
# failover with their timings. Everything it starts is stopped on exit, on failure and on Ctrl-C;
# your ~/.kube/config is never used.
#
#   ./demo.sh           interactive: pauses between steps when run in a terminal
#   ./demo.sh --ci      no pauses; non-zero exit when a step fails (also when stdin is not a
#                       terminal or CI is set)
#   ./demo.sh --fast    short elector timings (4s lease) instead of the injected 15s
#
# First run: installs etcd and kubectl from Debian and builds kube-apiserver and
# kube-controller-manager 1.20.2 from Debian's sources (5-10 minutes on 2 cores, cached), then
# builds this project (a few minutes). Later runs start in seconds.
set -euo pipefail
cd "$(dirname "$0")"

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --ci|--fast) ;;
    *) printf 'demo.sh: unknown argument %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) and re-run"

if ! command -v kubectl >/dev/null; then
  say "installing kubectl (Debian package kubernetes-client)"
  as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq kubernetes-client \
    || die "could not install kubectl; install Debian's kubernetes-client and re-run"
fi

if [ -x "${XDG_CACHE_HOME:-$HOME/.cache}/leader-election-testenv/kubernetes-1.20.2/bin/kube-apiserver" ]; then
  say "control-plane binaries (cached)"
else
  say "control-plane binaries: not cached yet, building Kubernetes 1.20.2 from Debian's sources (5-10 minutes on 2 cores, once)"
fi
TESTENV_BIN_DIR=$(bash tests/testenv/provision.sh | tail -n 1)
export TESTENV_BIN_DIR

say "building the project (cargo build --bins; a few minutes the first time)"
cargo build --bins

target_dir=${CARGO_TARGET_DIR:-target}
# exec: the demo receives Ctrl-C itself and cleans up everything it started.
exec "$target_dir/debug/demo" "$@"
