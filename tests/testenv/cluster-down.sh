#!/usr/bin/env bash
# Removes everything one test cluster made, from what its state directory records
# (state.env, written before anything is started): processes, containers and their shims, mounts,
# pod network namespaces, cgroups, the cluster's network namespace (with its veth pair, bridge
# and iptables rules), the kubelet's log symlinks and the state directory itself.
# Run by the harness when a cluster is dropped, by the cluster's watchdog when the test process
# dies (panic, Ctrl-C, kill -9), and before a slot is reused. Idempotent; never touches anything
# outside what the cluster made. Usage: cluster-down.sh STATE_DIR
set -uo pipefail

dir=${1:?usage: cluster-down.sh STATE_DIR}
log() { printf '[cluster-down] %s\n' "$*" >&2; }
[ -d "$dir" ] || exit 0
[ -f "$dir/state.env" ] || { log "$dir has no state.env; removing it"; rm -rf --one-file-system -- "$dir"; exit 0; }
# shellcheck disable=SC1091
. "$dir/state.env"
[ "$STATE_DIR" = "$dir" ] || { log "state.env belongs to $STATE_DIR, not $dir: refusing"; exit 1; }
log "$(date -u +%T.%N | cut -c1-12) tearing down $STATE_DIR (pid $$)"

# Our own ancestry (the watchdog that runs us names the directory too): never signal it.
keep=" $$ "
p=$$
while [ "$p" -gt 1 ] 2>/dev/null; do
  p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null) || break
  [ -n "$p" ] || break
  keep="$keep$p "
done

cgroup_pids() {
  local d
  for d in /sys/fs/cgroup/*"$CGROUP_ROOT"; do
    [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}
named_pids() {
  # One grep over every command line (a fork per process would crawl on a loaded machine).
  # The grep and this command substitution's subshell name the directory too: the subshell is
  # $BASHPID, the grep has exited by now.
  local f pid
  for f in $(grep -laF -- "$STATE_DIR" /proc/[0-9]*/cmdline 2>/dev/null); do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    case "$keep" in *" $pid "*) continue ;; esac
    [ "$pid" = "$BASHPID" ] && continue
    [ -d "/proc/$pid" ] || continue
    echo "$pid"
  done
}
# The unix sockets a process listens on (containerd shims bind theirs under /run/containerd/s).
listening_sockets() {
  local pid=$1 fd inode
  for fd in /proc/"$pid"/fd/*; do
    inode=$(readlink "$fd" 2>/dev/null) || continue
    case "$inode" in socket:\[*\]) inode=${inode#socket:[}; inode=${inode%]} ;; *) continue ;; esac
    awk -v i="$inode" '$7 == i && $8 ~ /^\// { print $8 }' "/proc/$pid/net/unix" 2>/dev/null
  done
}

# 1. The kubelet first (it would restart what we kill), then the containers, then the rest
#    (shims, containerd, kube-proxy, the control plane). Remember the shims' sockets: a killed
#    shim cannot remove its own.
sockets=()
for round in $(seq 1 50); do
  pids=$(named_pids)
  for pid in $pids; do
    grep -q kubelet "/proc/$pid/comm" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  done
  for pid in $pids; do
    grep -q containerd-shim "/proc/$pid/comm" 2>/dev/null || continue
    while IFS= read -r s; do [ -n "$s" ] && sockets+=("$s"); done < <(listening_sockets "$pid")
  done
  for pid in $(cgroup_pids); do kill -9 "$pid" 2>/dev/null; done
  for pid in $pids; do kill -9 "$pid" 2>/dev/null; done
  sleep 0.2
  [ -z "$(named_pids)$(cgroup_pids)" ] && break
  [ "$round" = 50 ] && log "processes still alive after 10 s: $(named_pids) $(cgroup_pids)"
done
log "$(date -u +%T.%N | cut -c1-12) processes gone (round $round)"
for s in "${sockets[@]}"; do
  case "$s" in /run/containerd/s/*) rm -f -- "$s" ;; esac
done

# 2. Mounts under the state directory (the kubelet's root bind-mounts itself, pod volumes, pod
#    network namespaces, overlay snapshots), deepest first.
for round in 1 2 3; do
  mounts=$(awk -v d="$STATE_DIR/" '{ m = $5; gsub(/\\040/, " ", m); if (index(m "/", d) == 1) print m }' /proc/self/mountinfo | sort -r)
  [ -z "$mounts" ] && break
  while IFS= read -r m; do umount -l -- "$m" 2>/dev/null || umount -- "$m" 2>/dev/null; done <<<"$mounts"
done

# 3. cgroups, deepest first, in every hierarchy.
for d in /sys/fs/cgroup/*"$CGROUP_ROOT"; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done

# 4. The network namespace: its interfaces (veth, bridge, dummy) and iptables rules go with it.
if [ -e "/run/netns/$NETNS" ]; then
  ip netns delete "$NETNS" 2>/dev/null || { umount -l "/run/netns/$NETNS" 2>/dev/null; rm -f "/run/netns/$NETNS"; }
fi
ip link show "$HOST_IF" >/dev/null 2>&1 && ip link delete "$HOST_IF" 2>/dev/null

# 5. The kubelet's symlinks into our pod logs (it always makes them in /var/log/containers).
if [ -d /var/log/containers ]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE_DIR/*" -delete 2>/dev/null
  rmdir /var/log/containers 2>/dev/null
fi

# 6. The state directory, unless something is still mounted under it (removing files through a
#    mount could reach outside the cluster).
if awk -v d="$STATE_DIR/" '{ if (index($5 "/", d) == 1) found = 1 } END { exit !found }' /proc/self/mountinfo; then
  log "mounts remain under $STATE_DIR; leaving it in place"
  exit 1
fi
rm -rf --one-file-system -- "$STATE_DIR"
log "$(date -u +%T.%N | cut -c1-12) done"
exit 0
