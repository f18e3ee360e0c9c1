#!/usr/bin/env bash
# The one-command demo on a real single-node Kubernetes cluster started on this machine:
# `kubectl apply -k manifests/`, the example app (3 replicas), who leads, a graceful handover
# (`kubectl delete pod`), a crash (SIGKILL through containerd) and a rolling update, each timed
# and checked from what the cluster reports. Everything it starts is removed on exit, on failure
# and on Ctrl-C; your ~/.kube/config is never used.
#
#   ./demo.sh           interactive: pauses between steps when run in a terminal
#   ./demo.sh --ci      no pauses; non-zero exit when a check fails (also when stdin is not a
#                       terminal or CI is set)
#   ./demo.sh --keep    run without pauses, then leave the cluster running and print the
#                       `export KUBECONFIG=...` line to explore it with kubectl
#   ./demo.sh down      remove a cluster left by --keep
#
# First run: builds Kubernetes from Go modules (~16 minutes on 2 cores, cached), the project and
# its images (a few minutes). Later runs start the cluster in about 15 seconds.
set -euo pipefail
cd "$(dirname "$0")"

STATE=/run/leader-election-testenv
# One kept demo per checkout: `down` finds the one this checkout started (other checkouts on the
# same machine keep theirs).
checkout=$(pwd -P | sha256sum | cut -c1-12)
PIDFILE=$STATE/demo-$checkout.pid
LOG=$STATE/demo-$checkout.log
keep=false
args=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --ci) args+=(--ci) ;;
    --keep) keep=true ;;
    down) ;;
    *) printf 'demo.sh: unknown argument %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

# Stops a kept demo (it tears its cluster down on SIGTERM) and waits until it is gone.
down() {
  [ -f "$PIDFILE" ] || { say "no kept demo cluster"; return 0; }
  pid=$(cat "$PIDFILE")
  # Only our demo: a stale file's pid may belong to another process by now.
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q '/demo --ci --keep'; then
    say "stopping the kept demo (pid $pid) and removing its cluster"
    kill -TERM "$pid"
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && die "pid $pid did not exit within 300 s"
  fi
  rm -f "$PIDFILE"
  say "removed"
}
if [ "${1:-}" = down ]; then down; exit 0; fi
[ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
  && die "a kept demo cluster is running (pid $(cat "$PIDFILE")): ./demo.sh down first"

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) and re-run"

say "Kubernetes binaries (built from Go modules on the first run, then cached)"
TESTENV_BIN_DIR=$(bash tests/testenv/provision.sh | tail -n 1)
export TESTENV_BIN_DIR
say "images: elector and webhook (static, FROM scratch), pause and busybox for the cluster"
# This machine's architecture only (./test.sh builds and checks every one the images ship for).
case "$(uname -m)" in x86_64) host_arch=amd64 ;; aarch64|arm64) host_arch=arm64 ;; *) host_arch=$(uname -m) ;; esac
ARCHS="${ARCHS:-$host_arch}" images/build.sh >/dev/null
tests/testenv/test-images.sh >/dev/null
say "building the demo (cargo build --bins)"
cargo build --bins --locked
demo="${CARGO_TARGET_DIR:-target}/debug/demo"

if ! $keep; then
  # exec: the demo receives Ctrl-C itself and removes everything it started.
  exec "$demo" "${args[@]}"
fi

# --keep: the demo process holds the cluster, detached from this terminal, until `down`.
mkdir -p "$STATE"
log=$LOG
setsid nohup "$demo" --ci --keep >"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PIDFILE"
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$PIDFILE"; exit 130' INT TERM
tail -n +1 -f --pid="$pid" "$log" &
tailer=$!
until grep -q '^cluster kept: export KUBECONFIG=' "$log" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$tailer" 2>/dev/null || true
    rm -f "$PIDFILE"
    die "the demo failed (log: $log)"
  fi
  sleep 0.5
done
sleep 0.5
kill "$tailer" 2>/dev/null || true
trap - INT TERM
echo
say "explore it:   $(sed -n 's/^cluster kept: //p' "$log")"
say "remove it:    ./demo.sh down"
