//! CPU time and memory of processes, from /proc.

use crate::error::{Context, Result, fail};

/// utime + stime (clock ticks) from `/proc/<pid>/stat`; the command name may contain spaces
/// and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is index 0 here, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// CPU time of all threads: nanoseconds from schedstat, else clock ticks (10 ms) converted.
    pub cpu_ns: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Heap and other private memory.
    pub anon_kib: u64,
    /// Mapped file pages, mostly the binary's own text (shared by processes of one image).
    pub file_kib: u64,
    pub threads: u64,
    /// Proportional set size (shared pages divided among the processes mapping them).
    pub pss_kib: u64,
}

/// The first field of `/proc/<pid>/task/<tid>/schedstat`: nanoseconds spent on a CPU.
pub fn parse_schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// CPU nanoseconds summed over every thread, if the kernel has schedstat.
fn schedstat_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for t in tasks {
        let path = t.ok()?.path().join("schedstat");
        total += parse_schedstat_ns(&std::fs::read_to_string(path).ok()?)?;
    }
    Some(total)
}

/// CPU time and memory of a running process.
pub fn proc_stats(pid: u32) -> Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context(format!("reading /proc/{pid}/status"))?;
    let bad = |what: &str| fail(format!("parsing /proc/{pid}"), format!("no {what}"));
    let cpu_ns = match schedstat_ns(pid) {
        Some(ns) => ns,
        None => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .context(format!("reading /proc/{pid}/stat"))?;
            let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| bad("utime/stime"))?;
            (ticks as f64 / clock_ticks_per_sec() * 1e9) as u64
        }
    };
    Ok(ProcStats {
        cpu_ns,
        rss_kib: parse_status_kib(&status, "VmRSS").ok_or_else(|| bad("VmRSS"))?,
        hwm_kib: parse_status_kib(&status, "VmHWM").ok_or_else(|| bad("VmHWM"))?,
        anon_kib: parse_status_kib(&status, "RssAnon").unwrap_or(0),
        file_kib: parse_status_kib(&status, "RssFile").unwrap_or(0),
        threads: parse_status_kib(&status, "Threads").unwrap_or(0),
        // Shared pages divided among their users: the fair share of N candidates of one image.
        pss_kib: std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|r| parse_status_kib(&r, "Pss"))
            .unwrap_or(0),
    })
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// kube-apiserver processes on the machine other than `ours`.
pub fn other_apiservers(ours: &[u32]) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "kube-apiserver")
        })
        .count()
}

/// The command name of `pid` (`kube-apiserver`, `etcd`), empty when it is gone.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 300 0 0 0 17 5 0 0 20 0 2 0 100 10000 500";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(22));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_schedstat_ns("115672 4919901 2\n"), Some(115_672));
        assert_eq!(parse_schedstat_ns(""), None);
        let status = "Name:\telector\nVmHWM:\t    4120 kB\nVmRSS:\t    3980 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(3980));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(4120));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        // Our own process, for real.
        let me = proc_stats(std::process::id()).expect("own /proc");
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
    }
}
