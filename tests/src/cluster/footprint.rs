//! What a cluster leaves on the machine, looked up from the kernel's and the filesystem's own
//! views (never from what the harness remembers): the teardown tests compare it before and after.

use std::path::{Path, PathBuf};

use super::config::Slot;

/// Everything on the machine that belongs to one slot's cluster.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// `pid cmdline` of processes naming the state directory or in the slot's cgroups.
    pub processes: Vec<String>,
    /// Mount points under the state directory.
    pub mounts: Vec<String>,
    /// The slot's network namespace, if it exists.
    pub netns: Vec<String>,
    /// The host's interfaces named after the slot.
    pub links: Vec<String>,
    /// cgroup directories under the slot's cgroup root.
    pub cgroups: Vec<String>,
    /// The kubelet's symlinks into the state directory.
    pub log_links: Vec<String>,
    /// The state directory itself.
    pub state_dir: Vec<String>,
}

impl Footprint {
    pub fn of(slot: &Slot) -> Footprint {
        let state = slot.state_dir();
        let state_str = state.display().to_string();
        let root = slot.cgroup_root();
        let cgroup_dirs: Vec<PathBuf> = list("/sys/fs/cgroup")
            .into_iter()
            .map(|h| h.join(root.trim_start_matches('/')))
            .filter(|d| d.is_dir())
            .collect();
        let mut cgroups = Vec::new();
        let mut cgroup_pids = Vec::new();
        for d in &cgroup_dirs {
            walk(d, &mut |p| {
                cgroups.push(p.display().to_string());
                if let Ok(procs) = std::fs::read_to_string(p.join("cgroup.procs")) {
                    cgroup_pids.extend(procs.lines().map(String::from));
                }
            });
        }
        let mut processes = Vec::new();
        for entry in list("/proc") {
            let Some(pid) = entry.file_name().and_then(|n| n.to_str()).map(String::from) else {
                continue;
            };
            if !pid.bytes().all(|b| b.is_ascii_digit()) || is_zombie(&pid) {
                continue;
            }
            let cmdline = std::fs::read(entry.join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            // The teardown's own watchdog names the directory too while it works.
            if cmdline.contains("cluster-down.sh") || cmdline.starts_with("flock ") {
                continue;
            }
            if cmdline.contains(&state_str) || cgroup_pids.contains(&pid) {
                processes.push(format!("{pid} {}", cmdline.trim()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&state))
            .map(String::from)
            .collect();
        let netns = [slot.netns_path()]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let links = [Path::new("/sys/class/net").join(slot.name())]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let log_links = list("/var/log/containers")
            .into_iter()
            .filter(|p| std::fs::read_link(p).is_ok_and(|t| t.starts_with(&state)))
            .map(|p| p.display().to_string())
            .collect();
        let state_dir = [state]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        Footprint {
            processes,
            mounts,
            netns,
            links,
            cgroups,
            log_links,
            state_dir,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Footprint::default()
    }
}

/// What a cluster must never change on the host itself: its iptables rules and its interfaces
/// other than the slot's veth end.
pub fn host_network() -> String {
    let iptables = std::process::Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("iptables-save failed: {e}"));
    // Counters and the generation comments change on their own.
    let rules: Vec<&str> = iptables
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect();
    let mut links: Vec<String> = list("/sys/class/net")
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with("le-testenv-"))
        .collect();
    links.sort();
    format!("links: {links:?}\niptables:\n{}", rules.join("\n"))
}

/// Shim sockets of the cluster's running containerd shims (a shim killed without a clean
/// shutdown leaves its socket in /run/containerd/s).
pub fn shim_sockets(slot: &Slot) -> Vec<String> {
    let state = slot.state_dir().display().to_string();
    let mut sockets = Vec::new();
    for entry in list("/proc") {
        let cmdline = std::fs::read(entry.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if !cmdline.contains("containerd-shim") || !cmdline.contains(&state) {
            continue;
        }
        let inodes: Vec<String> = list(entry.join("fd"))
            .into_iter()
            .filter_map(|fd| std::fs::read_link(fd).ok())
            .filter_map(|t| {
                t.to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .map(String::from)
            })
            .collect();
        let unix = std::fs::read_to_string(entry.join("net/unix")).unwrap_or_default();
        for line in unix.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() >= 8 && inodes.iter().any(|i| i == cols[6]) && cols[7].starts_with('/') {
                sockets.push(cols[7].to_string());
            }
        }
    }
    sockets.sort();
    sockets.dedup();
    sockets
}

/// What the slot's teardown is doing, for a failure message: its log so far, and each watchdog
/// or teardown process still running with its state and where in the kernel it waits.
pub fn teardown_state(slot: &Slot) -> String {
    let log_path = super::slot::teardown_log(slot);
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| format!("({e})"));
    let lock = slot.lock_file().display().to_string();
    let mut out = format!("teardown log {}:\n{log}", log_path.display());
    for entry in list("/proc") {
        let Some(pid) = entry.file_name().and_then(|n| n.to_str()).map(String::from) else {
            continue;
        };
        let cmdline = std::fs::read(entry.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if !cmdline.contains(&lock) && !cmdline.contains("cluster-down.sh") {
            continue;
        }
        let stat = std::fs::read_to_string(entry.join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .map_or("?", |(_, r)| &r[..1.min(r.len())]);
        let wchan = std::fs::read_to_string(entry.join("wchan")).unwrap_or_default();
        out.push_str(&format!(
            "\nprocess {pid} state {state} wchan {wchan}: {}",
            cmdline.trim()
        ));
    }
    out
}

fn list(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path)) {
    f(dir);
    for p in list(dir) {
        if p.is_dir() && !p.is_symlink() {
            walk(&p, f);
        }
    }
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}
