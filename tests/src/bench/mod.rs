//! The bench (issue 14): the release elector beside client-go's leaderelection (built here from
//! tests/bench/peer), both on the same control plane in the same run, and the webhook.
//!
//! Modules: [`options`] (command line), [`stats`], [`metrics`] (Prometheus text), [`procfs`],
//! [`hey`] (pure, table-tested); [`candidates`] (both implementations, started alike),
//! [`scenarios`] (handover, failover, freeze, idle requests), [`fleet`], [`webhook_load`]; and
//! [`report`], which judges every figure against its target. The process helpers, the control
//! plane, the HTTP client and the webhook's certificates are the harness's.

pub mod candidates;
pub mod fleet;
pub mod hey;
pub mod metrics;
pub mod options;
pub mod pods;
pub mod procfs;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod webhook_load;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

pub use options::{Command, Options, Profile, USAGE, parse_args};

use candidates::{Bins, Impl};
use fleet::FleetResult;
use report::{Bound, Row};
use scenarios::{Baseline, ScenarioResult};
use webhook_load::WebhookResult;

use crate::ControlPlane;
use crate::error::{Context, Error, Result, fail};

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub cpus: usize,
    /// /proc/loadavg (1, 5, 15 min) before and after: the machine is shared.
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// kube-apiserver processes on the machine besides the bench's own.
    pub other_apiservers_start: usize,
    pub other_apiservers_end: usize,
    pub kernel: String,
    /// The commit measured (`+dirty` when the work tree differs).
    pub git_rev: String,
    pub kubernetes: String,
    pub started_unix: u64,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sizes {
    pub elector_bytes: Option<u64>,
    pub peer_bytes: Option<u64>,
    pub webhook_bytes: Option<u64>,
    pub elector_image_bytes: Option<u64>,
    pub webhook_image_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub environment: Environment,
    pub options: Options,
    pub sizes: Sizes,
    pub baseline: Option<Baseline>,
    /// kube-apiserver + etcd CPU seconds per second with nothing of ours running.
    pub idle_control_plane_cpu: Option<f64>,
    pub scenarios: Vec<ScenarioResult>,
    pub fleet: Vec<FleetResult>,
    pub webhook: Option<WebhookResult>,
    pub pods: Option<pods::PodsResult>,
    pub rows: Vec<Row>,
    pub errors: Vec<String>,
}

const RSS_BUDGET_MIB: f64 = 5.0;
const HANDOVER_S: f64 = 0.2;
const HANDOVER_RATIO: f64 = 0.1;
const FAILOVER_SLACK_S: f64 = 0.5;
const LEADER_WRITES_PER_MIN: f64 = 12.0;
const FLEET_REQUESTS_RATIO: f64 = 0.15;
const FLEET_CPU_RATIO: f64 = 0.5;
const P99_MS: f64 = 2.0;
const P99_RATE: u32 = 200;
const MAX_RATE: f64 = 5000.0;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The rows of one implementation pair of scenario results.
fn scenario_rows(project: Option<&ScenarioResult>, peer: Option<&ScenarioResult>) -> Vec<Row> {
    let any = match project.or(peer) {
        Some(s) => s,
        None => return vec![],
    };
    let targets = any.profile == Profile::Default;
    let lease = any.timings_s[0];
    let topic = format!(
        "Elector vs client-go: {} candidates, {} ({} handover/failover rounds, {} freezes)",
        any.candidates,
        any.profile.name(),
        any.handovers
            .len()
            .max(peer.map_or(0, |p| p.handovers.len())),
        any.freezes.len().max(peer.map_or(0, |p| p.freezes.len())),
    );
    let t = topic.as_str();
    let both = |f: &dyn Fn(&ScenarioResult) -> Option<f64>| (project.and_then(f), peer.and_then(f));
    let when = |b: Vec<Bound>| if targets { b } else { vec![] };
    let mut rows = Vec::new();
    let (a, b) = both(&|s| s.handover.map(|x| x.median));
    rows.push(Row::new(
        t,
        "graceful handover (SIGTERM), median",
        "s",
        a,
        b,
        &when(vec![
            Bound::AtMost(HANDOVER_S),
            Bound::RatioAtMost(HANDOVER_RATIO),
        ]),
    ));
    let (a, b) = both(&|s| s.handover.map(|x| x.max));
    rows.push(Row::new(t, "graceful handover, max", "s", a, b, &[]));
    let (a, b) = both(&|s| s.failover.map(|x| x.median));
    rows.push(Row::new(
        t,
        "crash failover (SIGKILL), median",
        "s",
        a,
        b,
        &[],
    ));
    let (a, b) = both(&|s| s.failover.map(|x| x.max));
    rows.push(Row::new(
        t,
        "crash failover, max",
        "s",
        a,
        b,
        &when(vec![Bound::AtMost(lease + FAILOVER_SLACK_S)]),
    ));
    let (a, b) = both(&|s| s.stale.map(|x| x.max));
    rows.push(
        Row::new(
            t,
            "frozen past the lease, thawed: \"I lead\" after the thaw, max",
            "s",
            a,
            b,
            &when(vec![Bound::AtMost(0.0)]),
        )
        .note("0 = never claimed"),
    );
    let (a, b) = both(&|s| summarize_f(s.freezes.iter().map(|f| f.takeover_s)).map(|x| x.median));
    rows.push(Row::new(
        t,
        "takeover from a frozen leader, median",
        "s",
        a,
        b,
        &[],
    ));
    let (a, b) = both(&|s| Some(s.requests_per_min.values().sum::<f64>() / s.candidates as f64));
    rows.push(Row::new(
        t,
        "lease requests per candidate per minute",
        "/min",
        a,
        b,
        &[],
    ));
    let mut verbs: Vec<String> = project
        .iter()
        .chain(peer.iter())
        .flat_map(|s| s.requests_per_min.keys().cloned())
        .collect();
    verbs.sort();
    verbs.dedup();
    for verb in &verbs {
        let (a, b) = both(&|s| {
            Some(s.requests_per_min.get(verb).copied().unwrap_or(0.0) / s.candidates as f64)
        });
        rows.push(Row::new(
            t,
            format!("  {verb} per candidate per minute"),
            "/min",
            a,
            b,
            &[],
        ));
    }
    let (a, b) = both(&|s| Some(s.leader_writes_per_min));
    rows.push(Row::new(
        t,
        "leader writes per minute (followers frozen)",
        "/min",
        a,
        b,
        &when(vec![Bound::AtMost(LEADER_WRITES_PER_MIN)]),
    ));
    // One request in the window is the leader's renew phase between the two windows, not a
    // follower's.
    let tolerance = 60.0 / any.window_s;
    let (a, b) = both(&|s| Some(s.follower_non_watch_per_min));
    rows.push(
        Row::new(
            t,
            "follower requests besides WATCH per minute",
            "/min",
            a,
            b,
            &when(vec![Bound::AtMost(tolerance)]),
        )
        .note(format!("≤ 1 per {:.0} s window = 0", any.window_s)),
    );
    let (a, b) = both(&|s| Some(s.failed_requests_per_min));
    rows.push(Row::new(
        t,
        "failed lease requests per minute",
        "/min",
        a,
        b,
        &[],
    ));
    let (a, b) = both(&|s| s.processes.iter().map(|p| p.rss_kib).max().map(mib));
    rows.push(Row::new(
        t,
        "RSS per process (VmRSS, all resident pages), max",
        "MiB",
        a,
        b,
        &when(vec![Bound::AtMost(RSS_BUDGET_MIB)]),
    ));
    let (a, b) = both(&|s| s.processes.iter().map(|p| p.anon_kib).max().map(mib));
    rows.push(Row::new(
        t,
        "  of which anonymous (RssAnon), max",
        "MiB",
        a,
        b,
        &[],
    ));
    let (a, b) = both(&|s| {
        s.processes
            .iter()
            .find(|p| p.leader)
            .map(|p| p.cpu_ms_per_min)
    });
    rows.push(Row::new(t, "CPU, leader", "ms/min", a, b, &[]));
    let (a, b) = both(&|s| {
        summarize_f(
            s.processes
                .iter()
                .filter(|p| !p.leader)
                .map(|p| p.cpu_ms_per_min),
        )
        .map(|x| x.median)
    });
    rows.push(Row::new(t, "CPU, follower median", "ms/min", a, b, &[]));
    rows
}

fn summarize_f(it: impl Iterator<Item = f64>) -> Option<stats::Summary> {
    stats::summarize(&it.collect::<Vec<_>>())
}

fn fleet_rows(fleet: &[FleetResult], idle_cpu: Option<f64>) -> Vec<Row> {
    let project = fleet.iter().find(|f| f.implementation == Impl::Project);
    let peer = fleet.iter().find(|f| f.implementation == Impl::Peer);
    let Some(any) = project.or(peer) else {
        return vec![];
    };
    let topic = format!(
        "Fleet: {} elections × {} candidates, 15s/10s/2s, one API server",
        any.elections, any.candidates_per_election
    );
    let t = topic.as_str();
    let both = |f: &dyn Fn(&FleetResult) -> Option<f64>| (project.and_then(f), peer.and_then(f));
    let mut rows = Vec::new();
    let (a, b) = both(&|f| Some(f.requests_per_s_total));
    rows.push(Row::new(
        t,
        "lease requests per second",
        "/s",
        a,
        b,
        &[Bound::RatioAtMost(FLEET_REQUESTS_RATIO)],
    ));
    let mut verbs: Vec<String> = fleet
        .iter()
        .flat_map(|f| f.requests_per_s.keys().cloned())
        .collect();
    verbs.sort();
    verbs.dedup();
    for verb in &verbs {
        let (a, b) = both(&|f| Some(f.requests_per_s.get(verb).copied().unwrap_or(0.0)));
        rows.push(Row::new(t, format!("  {verb} per second"), "/s", a, b, &[]));
    }
    let (a, b) = both(&|f| Some(f.requests_per_s_total / f.elections as f64));
    rows.push(Row::new(
        t,
        "lease requests per second per election",
        "/s",
        a,
        b,
        &[],
    ));
    let idle = idle_cpu.unwrap_or(0.0);
    let (a, b) = both(&|f| Some((f.apiserver_etcd_cpu - idle).max(0.0)));
    rows.push(
        Row::new(
            t,
            "API server + etcd CPU above idle",
            "cores",
            a,
            b,
            &[Bound::RatioAtMost(FLEET_CPU_RATIO)],
        )
        .note(format!("idle {idle:.3} cores")),
    );
    let (a, b) = both(&|f| Some(f.apiserver_etcd_cpu));
    rows.push(Row::new(
        t,
        "API server + etcd CPU, total",
        "cores",
        a,
        b,
        &[],
    ));
    let (a, b) = both(&|f| Some(mib(f.total_rss_kib)));
    rows.push(Row::new(t, "total RSS of the candidates", "MiB", a, b, &[]));
    let (a, b) = both(&|f| Some(mib(f.total_rss_kib) / f.elections as f64));
    rows.push(Row::new(t, "RSS per election", "MiB", a, b, &[]));
    let (a, b) = both(&|f| Some(f.settle_s));
    rows.push(Row::new(
        t,
        "time until every election has a leader answering",
        "s",
        a,
        b,
        &[],
    ));
    rows
}

fn pod_rows(p: &pods::PodsResult) -> Vec<Row> {
    let t = "Real pods: the example app, 3 replicas, on the real cluster (elector only)";
    let mut rows = Vec::new();
    for (summary, until) in [
        (p.delete, "another pod holds the Lease"),
        (p.delete_answered, "the new holder answers it leads"),
    ] {
        if let Some(d) = summary {
            rows.push(
                Row::new(
                    t,
                    format!(
                        "kubectl delete pod <leader> → {until}, median ({} rounds)",
                        d.n
                    ),
                    "s",
                    Some(d.median),
                    None,
                    &[],
                )
                .note(format!("max {:.2} s", d.max)),
            );
        }
    }
    let moves: Vec<f64> = p.restarts.iter().map(|r| r.leader_moves as f64).collect();
    if let Some(m) = stats::summarize(&moves) {
        rows.push(
            Row::new(
                t,
                format!(
                    "leader moves per kubectl rollout restart, max ({} restarts)",
                    m.n
                ),
                "",
                Some(m.max),
                None,
                &[],
            )
            .note(format!("median {}", m.median)),
        );
    }
    rows
}

fn size_rows(s: &Sizes) -> Vec<Row> {
    let t = "Sizes";
    let mb = |b: Option<u64>| b.map(|b| b as f64 / 1e6);
    let mut rows = vec![Row::new(
        t,
        "elector binary (static musl, as shipped) vs peer (Go, stripped)",
        "MB",
        mb(s.elector_bytes),
        mb(s.peer_bytes),
        &[],
    )];
    if s.elector_image_bytes.is_some() {
        rows.push(Row::new(
            t,
            "elector image (OCI archive)",
            "MB",
            mb(s.elector_image_bytes),
            None,
            &[],
        ));
    }
    rows.push(Row::new(
        t,
        "webhook binary",
        "MB",
        mb(s.webhook_bytes),
        None,
        &[],
    ));
    if s.webhook_image_bytes.is_some() {
        rows.push(Row::new(
            t,
            "webhook image (OCI archive)",
            "MB",
            mb(s.webhook_image_bytes),
            None,
            &[],
        ));
    }
    rows
}

fn webhook_rows(w: &WebhookResult) -> Vec<Row> {
    let t = "Webhook (TLS, hey on the same 2 cores)";
    let mut rows = Vec::new();
    for s in &w.steps {
        match (s.rate, s.path.as_str()) {
            (Some(rate), _) => {
                let bounds: &[Bound] = if rate == P99_RATE {
                    &[Bound::AtMost(P99_MS)]
                } else {
                    &[]
                };
                rows.push(
                    Row::new(
                        t,
                        format!("p99 at {rate} admissions/s"),
                        "ms",
                        Some(s.p99_ms),
                        None,
                        bounds,
                    )
                    .note(format!(
                        "p50 {:.2} ms; {} non-200; {} of {} scheduled answered",
                        s.p50_ms, s.failed, s.ok, s.expected
                    )),
                );
            }
            (None, p) if p == contract::deploy::MUTATE_PATH => {
                rows.push(
                    Row::new(
                        t,
                        "admissions/s, unthrottled",
                        "/s",
                        Some(s.achieved_rate),
                        None,
                        &[Bound::AtLeast(MAX_RATE)],
                    )
                    .note(format!(
                        "{} connections, p99 {:.1} ms, {} failed",
                        s.connections, s.p99_ms, s.failed
                    )),
                );
                rows.push(Row::new(
                    t,
                    "webhook CPU per admission",
                    "µs",
                    Some(s.webhook_cpu_us_per_request),
                    None,
                    &[],
                ));
            }
            (None, p) => rows.push(Row::new(
                t,
                format!("GET {p}/s, unthrottled (TLS + HTTP floor)"),
                "/s",
                Some(s.achieved_rate),
                None,
                &[],
            )),
        }
    }
    if let Some(max) = w.steps.iter().map(|s| s.webhook_rss_max_kib).max() {
        rows.push(Row::new(
            t,
            "webhook RSS under load, max",
            "MiB",
            Some(mib(max)),
            None,
            &[],
        ));
    }
    if let Some(p) = &w.pods {
        let n = p.with_webhook_s.len();
        let t =
            "Pod creation through the API server (peer column: the same pods without the webhook)";
        rows.push(
            Row::new(
                t,
                format!("create latency p50 ({n} pods each)"),
                "ms",
                Some(p.with_p50_ms),
                Some(p.without_p50_ms),
                &[],
            )
            .note(format!("{} of {n} injected", p.injected)),
        );
        rows.push(Row::new(
            t,
            format!("create latency p99 ({n} pods each)"),
            "ms",
            Some(p.with_p99_ms),
            Some(p.without_p99_ms),
            &[],
        ));
    }
    rows
}

/// Every figure of a report, judged.
pub fn rows(r: &Report) -> Vec<Row> {
    let mut out = Vec::new();
    let mut profiles: Vec<Profile> = r.scenarios.iter().map(|s| s.profile).collect();
    profiles.dedup();
    for p in profiles {
        let find = |imp| {
            r.scenarios
                .iter()
                .find(|s| s.profile == p && s.implementation == imp)
        };
        out.extend(scenario_rows(find(Impl::Project), find(Impl::Peer)));
    }
    out.extend(fleet_rows(&r.fleet, r.idle_control_plane_cpu));
    if let Some(p) = &r.pods {
        out.extend(pod_rows(p));
    }
    out.extend(size_rows(&r.sizes));
    if let Some(w) = &r.webhook {
        out.extend(webhook_rows(w));
    }
    out
}

fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Where the binaries are: `--bin-dir`, else the directory of this executable (target/release).
pub fn bin_dir(opts: &Options) -> Result<PathBuf> {
    if let Some(d) = &opts.bin_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| {
        fail(
            "locating the binaries",
            "the bench executable has no directory",
        )
    })
}

fn existing(p: PathBuf, name: &str) -> Result<PathBuf> {
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::ProjectBinaryMissing {
            name: name.into(),
            path: p,
        })
    }
}

fn git_rev() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(crate::workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{rev}+dirty") } else { rev }
}

/// Runs everything `opts` asks for. A failing scenario is recorded in `errors` and the others
/// still run.
pub async fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = bin_dir(opts)?;
    let bins = Bins {
        elector: existing(
            opts.elector_bin
                .clone()
                .unwrap_or_else(|| dir.join("elector")),
            "elector",
        )?,
        peer: existing(
            opts.peer_bin
                .clone()
                .unwrap_or_else(|| crate::workspace_root().join("target/bench/peer")),
            "the client-go peer (bench.sh builds it; or --peer-bin)",
        )?,
    };
    let images = crate::workspace_root().join("target/images");
    let sizes = Sizes {
        elector_bytes: file_size(&bins.elector),
        peer_bytes: file_size(&bins.peer),
        webhook_bytes: file_size(&dir.join("webhook")),
        elector_image_bytes: file_size(&images.join("elector.oci.tar")),
        webhook_image_bytes: file_size(&images.join("webhook.oci.tar")),
    };
    let loadavg_start = procfs::loadavg();
    let other_start = procfs::other_apiservers(&[]);
    eprintln!("bench: load average {loadavg_start}, other kube-apiservers running: {other_start}");
    eprintln!("bench: starting the control plane (etcd, kube-apiserver, kube-controller-manager)");
    let cp = ControlPlane::start().await?;
    let ours = cp.pids();
    let mut errors = Vec::new();
    let (mut scenarios, mut fleets) = (Vec::new(), Vec::new());
    let (mut baseline, mut idle_cpu) = (None, None);
    if opts.elector {
        crate::manifests::ensure_elector_cluster_roles(&cp).await?;
        eprintln!(
            "bench: baseline: the control plane's own lease traffic for {:?}",
            opts.baseline
        );
        let (b, cpu) = tokio::join!(
            scenarios::measure_baseline(&cp, opts.baseline),
            fleet::idle_control_plane_cpu(&cp, opts.baseline)
        );
        let b = b?;
        eprintln!(
            "bench:   {:?}/min, {} open lease watches; API server + etcd idle {cpu:.3} cores",
            b.lease_requests_per_min, b.lease_watches
        );
        idle_cpu = Some(cpu);
        for profile in &opts.profiles {
            let rounds = match profile {
                Profile::Default => opts.rounds,
                Profile::Short => opts.short_rounds,
            };
            for imp in Impl::BOTH {
                eprintln!(
                    "bench: {} × {}, {}: {rounds} rounds, {} freezes",
                    opts.candidates,
                    imp.name(),
                    profile.name(),
                    opts.freeze_rounds
                );
                match scenarios::scenario(
                    &cp,
                    imp,
                    &bins,
                    opts.candidates,
                    *profile,
                    rounds,
                    opts.freeze_rounds,
                    opts.window,
                    &b,
                )
                .await
                {
                    Ok(r) => scenarios.push(r),
                    Err(e) => {
                        eprintln!("bench: {} {}: FAILED: {e}", imp.name(), profile.name());
                        errors.push(format!("{} {}: {e}", imp.name(), profile.name()));
                    }
                }
            }
        }
        if opts.fleet > 0 {
            for imp in Impl::BOTH {
                eprintln!("bench: fleet of {} × 3 {}", opts.fleet, imp.name());
                match fleet::fleet(&cp, imp, &bins, opts.fleet, opts.fleet_window, &b).await {
                    Ok(f) => {
                        eprintln!(
                            "bench:   settled in {:.1} s; {:.2} lease req/s {:?}; API server + etcd {:.3} cores; RSS {:.0} MiB",
                            f.settle_s,
                            f.requests_per_s_total,
                            f.requests_per_s,
                            f.apiserver_etcd_cpu,
                            mib(f.total_rss_kib)
                        );
                        fleets.push(f)
                    }
                    Err(e) => {
                        eprintln!("bench: fleet {}: FAILED: {e}", imp.name());
                        errors.push(format!("fleet {}: {e}", imp.name()));
                    }
                }
            }
        }
        baseline = Some(b);
    }
    let mut webhook = None;
    if opts.webhook {
        eprintln!(
            "bench: webhook: files-mode TLS, the fixture review replayed with hey; pods through the API server"
        );
        match webhook_load::webhook_scenario(&cp, opts).await {
            Ok(w) => webhook = Some(w),
            Err(e) => {
                eprintln!("bench: webhook: FAILED: {e}");
                errors.push(format!("webhook: {e}"));
            }
        }
    }
    let other_end = procfs::other_apiservers(&ours);
    drop(cp);
    let mut real = None;
    if opts.elector && (opts.pod_deletes > 0 || opts.restarts > 0) {
        eprintln!("bench: real pods: the example app's 3 replicas on the real cluster");
        match pods::real_pods(opts.pod_deletes, opts.restarts).await {
            Ok(p) => real = Some(p),
            Err(e) => {
                eprintln!("bench: real pods: FAILED: {e}");
                errors.push(format!("real pods: {e}"));
            }
        }
    }
    let environment = Environment {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        loadavg_start,
        loadavg_end: procfs::loadavg(),
        other_apiservers_start: other_start,
        other_apiservers_end: other_end,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        git_rev: git_rev(),
        kubernetes: crate::layout::KUBERNETES_VERSION.to_string(),
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
    };
    let mut report = Report {
        environment,
        options: opts.clone(),
        sizes,
        baseline,
        idle_control_plane_cpu: idle_cpu,
        scenarios,
        fleet: fleets,
        webhook,
        pods: real,
        rows: Vec::new(),
        errors,
    };
    report.rows = rows(&report);
    Ok(report)
}

/// The text printed after a run: environment, then one table per topic.
pub fn render_report(r: &Report) -> String {
    let e = &r.environment;
    let mut out = format!(
        "bench: git {}, Kubernetes {}, {} CPUs, load average {} → {}, other kube-apiservers {} → {}, {:.0} s\n\n",
        e.git_rev,
        e.kubernetes,
        e.cpus,
        e.loadavg_start,
        e.loadavg_end,
        e.other_apiservers_start,
        e.other_apiservers_end,
        e.duration_s
    );
    out += &report::render_tables(&r.rows);
    for m in report::misses(&r.rows) {
        out += &format!("MISS: {} / {}: {}\n", m.topic, m.figure, m.target);
    }
    for err in &r.errors {
        out += &format!("ERROR: {err}\n");
    }
    out
}

/// The README's Performance section body, from a report.
pub fn render_readme(r: &Report) -> String {
    let e = &r.environment;
    format!(
        "Measured by `./bench.sh` at commit `{}` (Kubernetes {}, {} CPUs shared with other builds: load average {} at the start, {} at the end; {:.0} minutes). \
The peer is client-go's `leaderelection` with a `LeaseLock` (tests/bench/peer, 15 s / 10 s / 2 s, `ReleaseOnCancel`), run on the same API server in the same run; ratio = elector / peer.\n\n{}",
        e.git_rev,
        e.kubernetes,
        e.cpus,
        e.loadavg_start,
        e.loadavg_end,
        e.duration_s / 60.0,
        report::render_markdown(&r.rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_pod_rows_give_both_delete_timings_and_the_leader_moves() {
        let p = pods::PodsResult {
            deletes: Vec::new(),
            delete: stats::summarize(&[0.1, 0.3, 0.2]),
            delete_answered: stats::summarize(&[0.2, 0.4, 0.3]),
            restarts: Vec::new(),
        };
        let rows = pod_rows(&p);
        let figures: Vec<(&str, Option<f64>, &str)> = rows
            .iter()
            .map(|r| (r.figure.as_str(), r.project, r.note.as_str()))
            .collect();
        assert_eq!(
            figures,
            [
                (
                    "kubectl delete pod <leader> → another pod holds the Lease, median (3 rounds)",
                    Some(0.2),
                    "max 0.30 s"
                ),
                (
                    "kubectl delete pod <leader> → the new holder answers it leads, median (3 rounds)",
                    Some(0.3),
                    "max 0.40 s"
                ),
            ]
        );
    }
}
