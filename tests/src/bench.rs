//! The bench (issue 7): the release binaries measured on the real control plane.
//!
//! Elector: N candidates per election, graceful handover (SIGTERM the leader → a survivor's
//! `/status` says `is_leader`) and crash failover (SIGKILL) over several rounds, lease API
//! requests by verb from the API server's own `apiserver_request_total`, open watches, RSS and
//! CPU of every process over an idle window, binary size. Webhook: a real AdmissionReview
//! captured from the API server, replayed over TLS with `hey` at fixed rates and unthrottled.
//!
//! Pure parts (argument parsing, statistics, Prometheus text, /proc files, hey's CSV, figures
//! and the table) come first and are table-tested; the I/O follows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::{Timings, deploy};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::elector::{Elector, ElectorSpec, ask, elector_args, wait_for_agreed_leader};
use crate::error::{Context, Error, Result, fail};
use crate::procs::Proc;
use crate::{ControlPlane, control_plane, eventually, httpc, manifests, procs};

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// Lease timings a scenario runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// client-go's defaults, 15 s / 10 s / 2 s.
    Default,
    /// 4 s / 3 s / 1 s, as the integration tests use.
    Short,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Short => "short",
        }
    }

    pub fn timings(self) -> Timings {
        match self {
            Profile::Default => Timings::default(),
            Profile::Short => crate::elector::FAST,
        }
    }

    fn parse(s: &str) -> std::result::Result<Profile, String> {
        match s {
            "default" => Ok(Profile::Default),
            "short" => Ok(Profile::Short),
            other => Err(format!("unknown profile {other:?}: use default or short")),
        }
    }
}

/// What to measure and for how long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Options {
    pub candidates: Vec<usize>,
    pub profiles: Vec<Profile>,
    /// Handover + failover rounds with the short profile.
    pub rounds: usize,
    /// Rounds with the default profile (each failover waits ~15 s).
    pub default_rounds: usize,
    /// Idle window over which requests, CPU and RSS are measured.
    pub window: Duration,
    /// Window measuring the control plane's own lease traffic before any elector runs.
    pub baseline: Duration,
    pub elector: bool,
    pub webhook: bool,
    /// Fixed webhook request rates (req/s) whose latency is measured.
    pub rates: Vec<u32>,
    /// Length of each webhook load step.
    pub load_duration: Duration,
    /// Connections of the unthrottled (max rate) step.
    pub max_connections: u32,
    pub out: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    /// A different elector binary to measure (e.g. the static musl build).
    pub elector_bin: Option<PathBuf>,
    /// RUST_LOG of the webhook under load (`info` logs one line per mutation).
    pub webhook_log: String,
    pub quick: bool,
}

pub enum Command {
    Run(Box<Options>),
    Help,
}

pub const USAGE: &str = "\
bench: measures the release elector and webhook binaries on a real control plane

Usage: bench [options]   (./bench.sh installs what it needs, builds, then runs this)

  --quick                  short smoke run: 3 candidates, short profile, 2 rounds, 20 s
                           windows, 5 s load steps (explicit options still win)
  --candidates 3,30        election sizes (default 3,30)
  --profiles default,short lease timings: default = 15s/10s/2s, short = 4s/3s/1s
  --rounds N               handover+failover rounds with the short profile (default 5)
  --default-rounds N       rounds with the default profile (default 3)
  --window DUR             idle window for requests/CPU/RSS (default 60s)
  --baseline DUR           control-plane-only window before the electors (default 10s)
  --skip-elector           do not run the elector scenarios
  --skip-webhook           do not run the webhook scenario
  --rates 200,1000         fixed webhook rates in req/s (default 200,1000)
  --load-duration DUR      length of each webhook load step (default 15s)
  --max-connections N      connections of the unthrottled step (default 16)
  --out PATH               JSON report (default <workspace>/target/bench/latest.json)
  --bin-dir DIR            where elector and webhook are (default: next to this binary)
  --elector-bin PATH       measure this elector binary instead (e.g. the static musl one)
  --webhook-log LEVEL      RUST_LOG of the webhook (default info: one line per mutation)
  -h, --help               this text
";

/// `60s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("duration {s:?} has no unit: write e.g. 60s or 500ms"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?}: {num:?} is not a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_list<T>(
    flag: &str,
    v: &str,
    one: impl Fn(&str) -> std::result::Result<T, String>,
) -> std::result::Result<Vec<T>, String> {
    let items: Vec<T> = v
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| one(x.trim()).map_err(|e| format!("{flag}: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    if items.is_empty() {
        return Err(format!("{flag} needs at least one value"));
    }
    Ok(items)
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    s: &str,
) -> std::result::Result<T, String> {
    match s.parse::<T>() {
        Ok(v) if v > T::default() => Ok(v),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

/// Parses the command line (without the program name). `--quick` only changes defaults, so
/// explicit options win wherever they appear.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> std::result::Result<Command, String> {
    let mut it = args.into_iter();
    let mut quick = false;
    let mut candidates = None;
    let mut profiles = None;
    let mut rounds = None;
    let mut default_rounds = None;
    let mut window = None;
    let mut baseline = None;
    let mut elector = true;
    let mut webhook = true;
    let mut rates = None;
    let mut load_duration = None;
    let mut max_connections = None;
    let mut out = None;
    let mut bin_dir = None;
    let mut elector_bin = None;
    let mut webhook_log = None;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |inline: Option<String>| -> std::result::Result<String, String> {
            inline
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => quick = true,
            "--skip-elector" => elector = false,
            "--skip-webhook" => webhook = false,
            "--candidates" => {
                candidates = Some(parse_list(&flag, &value(inline)?, positive::<usize>)?)
            }
            "--profiles" => profiles = Some(parse_list(&flag, &value(inline)?, Profile::parse)?),
            "--rounds" => {
                rounds =
                    Some(positive::<usize>(&value(inline)?).map_err(|e| format!("--rounds: {e}"))?)
            }
            "--default-rounds" => {
                default_rounds = Some(
                    positive::<usize>(&value(inline)?)
                        .map_err(|e| format!("--default-rounds: {e}"))?,
                )
            }
            "--window" => {
                window =
                    Some(parse_duration(&value(inline)?).map_err(|e| format!("--window: {e}"))?)
            }
            "--baseline" => {
                baseline =
                    Some(parse_duration(&value(inline)?).map_err(|e| format!("--baseline: {e}"))?)
            }
            "--rates" => rates = Some(parse_list(&flag, &value(inline)?, positive::<u32>)?),
            "--load-duration" => {
                load_duration = Some(
                    parse_duration(&value(inline)?).map_err(|e| format!("--load-duration: {e}"))?,
                )
            }
            "--max-connections" => {
                max_connections = Some(
                    positive::<u32>(&value(inline)?)
                        .map_err(|e| format!("--max-connections: {e}"))?,
                )
            }
            "--out" => out = Some(PathBuf::from(value(inline)?)),
            "--bin-dir" => bin_dir = Some(PathBuf::from(value(inline)?)),
            "--elector-bin" => elector_bin = Some(PathBuf::from(value(inline)?)),
            "--webhook-log" => webhook_log = Some(value(inline)?),
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if !elector && !webhook {
        return Err("--skip-elector and --skip-webhook together leave nothing to measure".into());
    }
    let secs = Duration::from_secs;
    Ok(Command::Run(Box::new(Options {
        candidates: candidates.unwrap_or_else(|| if quick { vec![3] } else { vec![3, 30] }),
        profiles: profiles.unwrap_or_else(|| {
            if quick {
                vec![Profile::Short]
            } else {
                vec![Profile::Default, Profile::Short]
            }
        }),
        rounds: rounds.unwrap_or(if quick { 2 } else { 5 }),
        default_rounds: default_rounds.unwrap_or(if quick { 1 } else { 3 }),
        window: window.unwrap_or(if quick { secs(20) } else { secs(60) }),
        baseline: baseline.unwrap_or(if quick { secs(5) } else { secs(10) }),
        elector,
        webhook,
        rates: rates.unwrap_or_else(|| vec![200, 1000]),
        load_duration: load_duration.unwrap_or(if quick { secs(5) } else { secs(15) }),
        max_connections: max_connections.unwrap_or(16),
        out,
        bin_dir,
        elector_bin,
        webhook_log: webhook_log.unwrap_or_else(|| "info".into()),
        quick,
    })))
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// min / median / max; None for no values.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        n,
        min: v[0],
        median,
        max: v[n - 1],
    })
}

/// Nearest-rank percentile (q in 0..=1) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `name{a="b",c="d"} value [timestamp]` lines; comments and malformed lines are skipped.
pub fn parse_prometheus(text: &str) -> Vec<MetricSample> {
    text.lines().filter_map(parse_metric_line).collect()
}

fn parse_metric_line(line: &str) -> Option<MetricSample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        // Label values are quoted and may contain escaped quotes, commas and braces.
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => val.push('\n'),
                        Some(other) => val.push(other),
                        None => return None,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return None;
            }
            labels.insert(key.trim().to_string(), val);
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(MetricSample {
        name,
        labels,
        value,
    })
}

fn matches(s: &MetricSample, name: &str, filter: &[(&str, &str)]) -> bool {
    s.name == name
        && filter
            .iter()
            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
}

/// Sum of `name` over all series matching `filter`.
pub fn sum_where(samples: &[MetricSample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| matches(s, name, filter))
        .map(|s| s.value)
        .sum()
}

/// Sum of `name` over series matching `filter`, grouped by the value of label `by`.
pub fn group_by(
    samples: &[MetricSample],
    name: &str,
    filter: &[(&str, &str)],
    by: &str,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| matches(s, name, filter)) {
        let key = s.labels.get(by).cloned().unwrap_or_default();
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// `after - before` per key (keys of either side; counters never go down).
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for k in before.keys().chain(after.keys()) {
        let d = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        out.insert(k.clone(), d);
    }
    out
}

/// Lease requests to the API server by verb (`apiserver_request_total`, all codes).
pub fn lease_requests_by_verb(samples: &[MetricSample]) -> BTreeMap<String, f64> {
    group_by(
        samples,
        "apiserver_request_total",
        &[("resource", "leases")],
        "verb",
    )
}

/// Open lease watches (`apiserver_longrunning_gauge`, the 1.20 name).
pub fn lease_watches(samples: &[MetricSample]) -> f64 {
    sum_where(
        samples,
        "apiserver_longrunning_gauge",
        &[("resource", "leases"), ("verb", "WATCH")],
    )
}

/// Cumulative histogram buckets `(le, count)` of `name` (sorted by `le`).
pub fn histogram_buckets(samples: &[MetricSample], name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| {
            let le = match s.labels.get("le")?.as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The bucket-wise difference of two cumulative histograms with the same bounds.
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, c - b)
        })
        .collect()
}

/// Upper bound of the bucket holding quantile `q` of a cumulative histogram: an upper bound of
/// the true quantile, at the histogram's resolution. None when empty.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

// ---------------------------------------------------------------------------------------------
// /proc and hey
// ---------------------------------------------------------------------------------------------

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

/// One request from `hey -o csv`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeyRow {
    /// Seconds, at hey's 0.1 ms resolution.
    pub latency: f64,
    pub status: u16,
}

/// hey's CSV: `response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,
/// status-code,offset`. Failed requests are not listed by hey at all.
pub fn parse_hey_csv(text: &str) -> std::result::Result<Vec<HeyRow>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.starts_with("response-time,") => {}
        other => return Err(format!("not hey's CSV output (first line {other:?})")),
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let latency = f.first().and_then(|v| v.parse().ok());
            let status = f.get(6).and_then(|v| v.parse().ok());
            match (latency, status) {
                (Some(latency), Some(status)) => Ok(HeyRow { latency, status }),
                _ => Err(format!("bad hey CSV line {l:?}")),
            }
        })
        .collect()
}

/// hey rate-limits per worker (`-q`), so a total rate is split over workers doing at most 100
/// req/s each — enough that one slow answer does not stall the schedule.
pub fn hey_workers(rate: u32) -> (u32, f64) {
    let workers = rate.div_ceil(100).max(1);
    (workers, f64::from(rate) / f64::from(workers))
}

// ---------------------------------------------------------------------------------------------
// Figures and the table
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Met,
    Missed,
    /// No target for this figure.
    Info,
}

/// One reported number, with its target where one exists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub target: Option<String>,
    /// value / the reference the issue names (e.g. failover / lease duration).
    pub ratio: Option<f64>,
    pub verdict: Verdict,
}

impl Figure {
    pub fn info(name: impl Into<String>, value: f64, unit: &str) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            target: None,
            ratio: None,
            verdict: Verdict::Info,
        }
    }

    /// A figure that must stay at or below `bound`; `ratio_base` is what it is compared with.
    pub fn at_most(
        name: impl Into<String>,
        value: f64,
        unit: &str,
        bound: f64,
        target: String,
        ratio_base: f64,
    ) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            target: Some(target),
            ratio: (ratio_base > 0.0).then(|| value / ratio_base),
            verdict: if value <= bound {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        }
    }

    pub fn at_least(
        name: impl Into<String>,
        value: f64,
        unit: &str,
        bound: f64,
        target: String,
    ) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            target: Some(target),
            ratio: (bound > 0.0).then(|| value / bound),
            verdict: if value >= bound {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        }
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    let num = if v.abs() >= 100.0 || v == v.trunc() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if unit.is_empty() {
        num
    } else {
        format!("{num} {unit}")
    }
}

/// The figures as an aligned text table.
pub fn render_table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 5]> = figures
        .iter()
        .map(|f| {
            [
                f.name.clone(),
                fmt_value(f.value, &f.unit),
                f.target.clone().unwrap_or_else(|| "-".into()),
                f.ratio
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
                match f.verdict {
                    Verdict::Met => "met",
                    Verdict::Missed => "MISSED",
                    Verdict::Info => "",
                }
                .into(),
            ]
        })
        .collect();
    let header = ["figure", "value", "target", "ratio", "verdict"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String; 5]| {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 1 || i == 3 {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        cells.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(&header)];
    out.push(widths.map(|w| "-".repeat(w)).join("  "));
    out.extend(rows.iter().map(line));
    out.join("\n") + "\n"
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub cpus: usize,
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// kube-apiserver processes on the machine besides the bench's own (other helpers' tests).
    pub other_apiservers_start: usize,
    pub other_apiservers_end: usize,
    pub kernel: String,
    pub git_rev: String,
    pub started_unix: u64,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Baseline {
    pub window_s: f64,
    /// Lease requests per minute with no elector running (the controller-manager's informers).
    pub lease_requests_per_min: BTreeMap<String, f64>,
    pub lease_watches: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcFigures {
    pub id: String,
    pub leader: bool,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub threads: u64,
    pub pss_kib: u64,
    /// CPU time over the idle window, per minute.
    pub cpu_ms_per_min: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    pub round: usize,
    pub seconds: f64,
    pub from: String,
    pub to: String,
    /// How the signalled process ended (graceful handover: should be exit code 0).
    pub exit: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ElectorResult {
    pub candidates: usize,
    pub profile: Profile,
    pub timings_s: [f64; 3],
    pub window_s: f64,
    /// Lease requests per minute by verb, control-plane baseline subtracted.
    pub requests_per_min: BTreeMap<String, f64>,
    pub requests_per_min_per_candidate: f64,
    /// The leader's renews per minute (its own renew histogram).
    pub leader_renews_per_min: f64,
    /// Non-WATCH requests not explained by the leader's renews, per follower per minute.
    pub follower_requests_per_min: f64,
    /// Non-2xx lease answers per minute (conflicts etc.).
    pub failed_requests_per_min: f64,
    /// Open lease watches, baseline subtracted.
    pub watches: f64,
    pub leader_changed_during_window: bool,
    pub processes: Vec<ProcFigures>,
    pub handovers: Vec<Takeover>,
    pub failovers: Vec<Takeover>,
    pub handover: Option<Summary>,
    pub failover: Option<Summary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadStep {
    /// `/mutate`, or `/healthz` for the TLS + HTTP floor without admission work.
    pub path: String,
    /// Requested rate (req/s); None for the unthrottled step.
    pub rate: Option<u32>,
    pub connections: u32,
    pub duration_s: f64,
    pub requests: usize,
    pub non_200: usize,
    pub achieved_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Inside the webhook (its histogram, bucket upper bound): without TLS, HTTP and queueing.
    pub server_p99_ms: Option<f64>,
    pub server_mean_ms: Option<f64>,
    pub webhook_rss_max_kib: u64,
    /// Webhook CPU per admission (all threads, TLS included).
    pub webhook_cpu_us_per_request: f64,
    pub webhook_cpu_cores: f64,
    pub hey_cpu_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookResult {
    /// Where the replayed AdmissionReview came from.
    pub review_source: String,
    /// The replayed AdmissionReview itself (written beside the report, not into it).
    #[serde(skip)]
    pub review_json: Vec<u8>,
    pub review_bytes: usize,
    pub first_admission_ms: f64,
    /// API calls the webhook made (cache misses) during the load steps: should be 0.
    pub ensure_calls_during_load: f64,
    /// Admissions answered `injected` during the load, out of `requests`.
    pub injected_during_load: f64,
    pub requests: usize,
    pub idle_rss_kib: u64,
    pub hwm_kib: u64,
    pub steps: Vec<LoadStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BinarySizes {
    pub elector_bytes: Option<u64>,
    pub elector_musl_bytes: Option<u64>,
    pub webhook_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub environment: Environment,
    pub options: Options,
    pub binaries: BinarySizes,
    pub baseline: Option<Baseline>,
    pub elector: Vec<ElectorResult>,
    pub webhook: Option<WebhookResult>,
    pub figures: Vec<Figure>,
    pub errors: Vec<String>,
}

/// The issue's "8 MB", read strictly as decimal megabytes.
const SIZE_BUDGET_BYTES: f64 = 8_000_000.0;
const RSS_BUDGET_KIB: f64 = 5.0 * 1024.0;
const HANDOVER_TARGET_S: f64 = 0.2;
const FAILOVER_SLACK_S: f64 = 0.5;
const P99_TARGET_MS: f64 = 2.0;
const P99_TARGET_RATE: u32 = 200;
const RATE_TARGET: f64 = 5000.0;
/// Follower requests per minute still counted as "none": a watch the API server closes after
/// its timeout is re-established, rarely.
const FOLLOWER_TOLERANCE_PER_MIN: f64 = 0.1;

/// The figures of a report, each against its target.
pub fn figures(
    binaries: &BinarySizes,
    electors: &[ElectorResult],
    webhook: Option<&WebhookResult>,
) -> Vec<Figure> {
    let mut out = Vec::new();
    for e in electors {
        let t = format!("N={} {}", e.candidates, e.profile.name());
        let lease = e.timings_s[0];
        if let Some(h) = e.handover {
            out.push(Figure::at_most(
                format!(
                    "{t}: graceful handover median (min {:.3} max {:.3}, n={})",
                    h.min, h.max, h.n
                ),
                h.median,
                "s",
                HANDOVER_TARGET_S,
                format!("≤ {HANDOVER_TARGET_S} s"),
                HANDOVER_TARGET_S,
            ));
        }
        if let Some(f) = e.failover {
            out.push(Figure::info(
                format!("{t}: crash failover median (n={})", f.n),
                f.median,
                "s",
            ));
            out.push(Figure::at_most(
                format!("{t}: crash failover max (min {:.2}), ratio to lease", f.min),
                f.max,
                "s",
                lease + FAILOVER_SLACK_S,
                format!("≤ lease {lease} s + {FAILOVER_SLACK_S} s"),
                lease,
            ));
        }
        out.push(Figure::info(
            format!("{t}: lease requests /min/candidate"),
            e.requests_per_min_per_candidate,
            "req/min",
        ));
        out.push(Figure::info(
            format!("{t}: leader renews /min"),
            e.leader_renews_per_min,
            "req/min",
        ));
        out.push(Figure::at_most(
            format!("{t}: follower periodic requests /min/follower"),
            e.follower_requests_per_min,
            "req/min",
            FOLLOWER_TOLERANCE_PER_MIN,
            format!("none (≤ {FOLLOWER_TOLERANCE_PER_MIN})"),
            0.0,
        ));
        out.push(Figure::info(
            format!("{t}: open lease watches"),
            e.watches,
            "",
        ));
        if let Some(max) = e.processes.iter().map(|p| p.rss_kib).max() {
            out.push(Figure::at_most(
                format!("{t}: elector RSS max of {}", e.processes.len()),
                max as f64 / 1024.0,
                "MiB",
                RSS_BUDGET_KIB / 1024.0,
                "≤ 5 MiB".into(),
                RSS_BUDGET_KIB / 1024.0,
            ));
            let anon = e.processes.iter().map(|p| p.anon_kib).max().unwrap_or(0);
            out.push(Figure::info(
                format!("{t}: elector private (anon) RSS max"),
                anon as f64 / 1024.0,
                "MiB",
            ));
            let pss = e.processes.iter().map(|p| p.pss_kib).max().unwrap_or(0);
            out.push(Figure::info(
                format!("{t}: elector PSS max (shared pages split)"),
                pss as f64 / 1024.0,
                "MiB",
            ));
        }
        let cpu: Vec<f64> = e
            .processes
            .iter()
            .filter(|p| !p.leader)
            .map(|p| p.cpu_ms_per_min)
            .collect();
        if let Some(s) = summarize(&cpu) {
            out.push(Figure::info(
                format!("{t}: follower CPU median (max {:.0})", s.max),
                s.median,
                "ms/min",
            ));
        }
        if let Some(l) = e.processes.iter().find(|p| p.leader) {
            out.push(Figure::info(
                format!("{t}: leader CPU"),
                l.cpu_ms_per_min,
                "ms/min",
            ));
        }
    }
    let elector_binaries = [
        ("elector binary (release, stripped)", binaries.elector_bytes),
        ("elector binary (static musl)", binaries.elector_musl_bytes),
    ];
    for (name, bytes) in elector_binaries {
        if let Some(b) = bytes {
            out.push(Figure::at_most(
                name,
                b as f64 / 1e6,
                "MB",
                SIZE_BUDGET_BYTES / 1e6,
                "≤ 8 MB".into(),
                SIZE_BUDGET_BYTES / 1e6,
            ));
        }
    }
    if let Some(b) = binaries.webhook_bytes {
        out.push(Figure::info(
            "webhook binary (release, stripped)",
            b as f64 / 1e6,
            "MB",
        ));
    }
    if let Some(w) = webhook {
        out.push(Figure::info(
            "webhook first admission (RBAC ensure)",
            w.first_admission_ms,
            "ms",
        ));
        for s in &w.steps {
            if s.path != deploy::MUTATE_PATH {
                out.push(Figure::info(
                    format!(
                        "webhook GET {} max rate (TLS+HTTP floor, {:.0} µs CPU/req)",
                        s.path, s.webhook_cpu_us_per_request
                    ),
                    s.achieved_rate,
                    "req/s",
                ));
                continue;
            }
            match s.rate {
                Some(rate) => {
                    let name = format!(
                        "webhook p99 @ {rate} req/s TLS (p50 {:.2}, max {:.1} ms)",
                        s.p50_ms, s.max_ms
                    );
                    if rate == P99_TARGET_RATE {
                        out.push(Figure::at_most(
                            name,
                            s.p99_ms,
                            "ms",
                            P99_TARGET_MS,
                            "≤ 2 ms".into(),
                            P99_TARGET_MS,
                        ));
                    } else {
                        let mut f = Figure::info(name, s.p99_ms, "ms");
                        f.ratio = Some(s.p99_ms / P99_TARGET_MS);
                        out.push(f);
                    }
                }
                None => {
                    out.push(Figure::at_least(
                        format!(
                            "webhook max sustained rate ({} conns, p99 {:.1} ms)",
                            s.connections, s.p99_ms
                        ),
                        s.achieved_rate,
                        "req/s",
                        RATE_TARGET,
                        "≥ 5000 req/s".into(),
                    ));
                    out.push(Figure::info(
                        "webhook CPU per admission (unthrottled)",
                        s.webhook_cpu_us_per_request,
                        "µs",
                    ));
                }
            }
        }
        if let Some(max) = w.steps.iter().map(|s| s.webhook_rss_max_kib).max() {
            out.push(Figure::info(
                "webhook RSS max under load",
                max as f64 / 1024.0,
                "MiB",
            ));
        }
        out.push(Figure::info(
            "webhook API calls during load (should be 0)",
            w.ensure_calls_during_load,
            "",
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// I/O: processes and metrics
// ---------------------------------------------------------------------------------------------

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
fn other_apiservers(ours: &[u32]) -> usize {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn apiserver_metrics(client: &Client) -> Result<Vec<MetricSample>> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| fail("building GET /metrics", e.to_string()))?;
    let text = client
        .request_text(req)
        .await
        .context("scraping the API server's /metrics")?;
    Ok(parse_prometheus(&text))
}

async fn elector_metrics(e: &Elector) -> Result<Vec<MetricSample>> {
    let r = httpc::get(e.addr, contract::http::METRICS_PATH, Duration::from_secs(5)).await?;
    if r.status != 200 {
        return Err(fail(
            format!("GET /metrics of elector {}", e.id),
            format!("status {}", r.status),
        ));
    }
    Ok(parse_prometheus(&r.body))
}

fn minutes(d: Duration) -> f64 {
    d.as_secs_f64() / 60.0
}

/// A short pseudo-random delay below `max`, so kills land at different phases of the renew cycle.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from(nanos) % max_ms)
}

// ---------------------------------------------------------------------------------------------
// Elector scenarios
// ---------------------------------------------------------------------------------------------

const LEASE: &str = "bench";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

struct Election {
    bin: PathBuf,
    spec: ElectorSpec,
    log_dir: PathBuf,
    electors: Vec<Elector>,
    spawned: usize,
}

impl Election {
    fn spawn(&mut self, id: &str) -> Result<Elector> {
        let addr = SocketAddr::from(([127, 0, 0, 1], control_plane::free_port()?));
        self.spawned += 1;
        let proc = Proc::spawn(
            &format!("elector-{id}-{}", self.spawned),
            &self.bin,
            &elector_args(&self.spec, id, addr),
            &[
                ("KUBECONFIG", self.spec.kubeconfig.display().to_string()),
                ("RUST_LOG", "info".into()),
            ],
            &self.log_dir,
        )?;
        Ok(Elector {
            id: id.to_string(),
            addr,
            proc,
        })
    }

    /// Replaces candidate `i` (exited) by a fresh process with the same identity.
    async fn restart(&mut self, i: usize) -> Result<()> {
        let id = self.electors[i].id.clone();
        let fresh = self.spawn(&id)?;
        fresh.wait_ready(READY_TIMEOUT).await?;
        self.electors[i] = fresh;
        Ok(())
    }

    fn refs(&self) -> Vec<&Elector> {
        self.electors.iter().collect()
    }

    fn index_of(&self, id: &str) -> Result<usize> {
        self.electors
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| fail("finding the leader", format!("{id} is not a candidate")))
    }

    async fn agreed_leader(&self, timeout: Duration) -> Result<usize> {
        let id = wait_for_agreed_leader(&self.refs(), timeout).await?;
        self.index_of(&id)
    }

    fn logs(&self) -> String {
        self.electors
            .iter()
            .map(|e| e.proc.output_tail(15))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Signals the leader and waits until a survivor's `/status` says it leads. A Lease watch names
/// the new holder, which is then polled tightly; every survivor is also polled at `sweep`, so
/// the result never depends on the watch alone.
async fn measure_takeover(
    admin: &Client,
    election: &Election,
    leader: usize,
    signal: libc::c_int,
    sweep: Duration,
    timeout: Duration,
) -> Result<(f64, usize)> {
    let ns = &election.spec.namespace;
    let api: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let lease = api
        .get(LEASE)
        .await
        .context(format!("reading Lease {ns}/{LEASE}"))?;
    let rv = lease.metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default().fields(&format!("metadata.name={LEASE}"));
    let stream = api.watch(&wp, &rv).await.context("watching the Lease")?;
    let (tx, mut rx) = tokio::sync::watch::channel(String::new());
    let watcher = tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            if let WatchEvent::Added(l) | WatchEvent::Modified(l) = ev {
                let holder = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                if tx.send(holder).is_err() {
                    return;
                }
            }
        }
    });
    let survivors: Vec<usize> = (0..election.electors.len())
        .filter(|i| *i != leader)
        .collect();
    let probe = Duration::from_secs(2);
    let start = Instant::now();
    election.electors[leader].proc.signal(signal)?;
    let deadline = start + timeout;
    let mut hinted: Option<usize> = None;
    let mut next_sweep = start;
    let result = loop {
        if rx.has_changed().unwrap_or(false) {
            let holder = rx.borrow_and_update().clone();
            hinted = survivors
                .iter()
                .copied()
                .find(|i| election.electors[*i].id == holder);
        }
        if let Some(i) = hinted {
            let s = ask(i, election.electors[i].addr, probe).await;
            if s.leader == Some(true) {
                break Ok((s.answered.duration_since(start).as_secs_f64(), i));
            }
        }
        if Instant::now() >= next_sweep {
            let asks = survivors
                .iter()
                .map(|i| ask(*i, election.electors[*i].addr, probe));
            let samples = futures::future::join_all(asks).await;
            if let Some(s) = samples
                .iter()
                .filter(|s| s.leader == Some(true))
                .min_by_key(|s| s.answered)
            {
                break Ok((s.answered.duration_since(start).as_secs_f64(), s.who));
            }
            next_sweep = Instant::now() + sweep;
        }
        if Instant::now() >= deadline {
            break Err(Error::Timeout {
                what: "a survivor to lead".into(),
                timeout,
                last: format!("Lease holder per watch: {:?}", rx.borrow().clone()),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    watcher.abort();
    result
}

/// Lease requests by verb, non-2xx requests and open watches, as one snapshot.
struct ApiSnapshot {
    by_verb: BTreeMap<String, f64>,
    failed: f64,
    watches: f64,
}

fn api_snapshot(samples: &[MetricSample]) -> ApiSnapshot {
    // Watches end with varying codes when the server closes them; only other verbs can fail.
    let failed = samples
        .iter()
        .filter(|s| matches(s, "apiserver_request_total", &[("resource", "leases")]))
        .filter(|s| s.labels.get("verb").is_some_and(|v| v != "WATCH"))
        .filter(|s| s.labels.get("code").is_some_and(|c| !c.starts_with('2')))
        .map(|s| s.value)
        .sum();
    ApiSnapshot {
        by_verb: lease_requests_by_verb(samples),
        failed,
        watches: lease_watches(samples),
    }
}

pub async fn measure_baseline(cp: &ControlPlane, window: Duration) -> Result<Baseline> {
    let admin = cp.admin_client().await?;
    let before = api_snapshot(&apiserver_metrics(&admin).await?);
    tokio::time::sleep(window).await;
    let after = api_snapshot(&apiserver_metrics(&admin).await?);
    let per_min = delta(&before.by_verb, &after.by_verb)
        .into_iter()
        .map(|(k, v)| (k, v / minutes(window)))
        .collect();
    Ok(Baseline {
        window_s: window.as_secs_f64(),
        lease_requests_per_min: per_min,
        lease_watches: after.watches,
    })
}

/// One election of `n` candidates with `profile`: idle window, then handover/failover rounds.
pub async fn elector_scenario(
    cp: &ControlPlane,
    bin: &Path,
    n: usize,
    profile: Profile,
    rounds: usize,
    window: Duration,
    baseline: &Baseline,
) -> Result<ElectorResult> {
    let mut spec =
        crate::elector::election(cp, &format!("bench-{n}-{}", profile.name()), LEASE).await?;
    spec.timings = profile.timings();
    let mut election = Election {
        bin: bin.to_path_buf(),
        spec,
        log_dir: procs::scratch_dir(&format!("electors-{n}-{}", profile.name()))?,
        electors: Vec::new(),
        spawned: 0,
    };
    // Named like the pods of one ReplicaSet.
    for i in 0..n {
        let e = election.spawn(&format!("bench-6c9f7d8b5-{i:02}"))?;
        election.electors.push(e);
    }
    let r = run_election(cp, &mut election, n, profile, rounds, window, baseline).await;
    let r = r.map_err(|e| {
        fail(
            e.to_string(),
            format!("elector output (last lines):\n{}", election.logs()),
        )
    });
    for e in &election.electors {
        let _ = e.proc.stop(Duration::from_secs(10)).await;
    }
    r
}

async fn run_election(
    cp: &ControlPlane,
    election: &mut Election,
    n: usize,
    profile: Profile,
    rounds: usize,
    window: Duration,
    baseline: &Baseline,
) -> Result<ElectorResult> {
    let timings = profile.timings();
    let admin = cp.admin_client().await?;
    for e in &election.electors {
        e.wait_ready(READY_TIMEOUT).await?;
    }
    let leader = election.agreed_leader(READY_TIMEOUT).await?;
    // Let every follower's watch settle before the idle window.
    tokio::time::sleep(timings.retry_period * 2 + Duration::from_secs(1)).await;

    // Idle window: the API server's counters, the leader's renews, every process's CPU.
    let m0 = api_snapshot(&apiserver_metrics(&admin).await?);
    let renews0 = sum_where(
        &elector_metrics(&election.electors[leader]).await?,
        "leader_election_renew_duration_seconds_count",
        &[],
    );
    let p0: Vec<ProcStats> = election
        .electors
        .iter()
        .map(|e| proc_stats(e.proc.pid()))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let m1 = api_snapshot(&apiserver_metrics(&admin).await?);
    let p1: Vec<ProcStats> = election
        .electors
        .iter()
        .map(|e| proc_stats(e.proc.pid()))
        .collect::<Result<_>>()?;
    let renews1 = sum_where(
        &elector_metrics(&election.electors[leader]).await?,
        "leader_election_renew_duration_seconds_count",
        &[],
    );
    let elapsed = t0.elapsed();
    let still = election.agreed_leader(READY_TIMEOUT).await?;

    let mins = minutes(elapsed);
    let requests_per_min: BTreeMap<String, f64> = delta(&m0.by_verb, &m1.by_verb)
        .into_iter()
        .map(|(verb, v)| {
            let base = baseline
                .lease_requests_per_min
                .get(&verb)
                .copied()
                .unwrap_or(0.0);
            let per_min = (v / mins - base).max(0.0);
            (verb, per_min)
        })
        .collect();
    let total: f64 = requests_per_min.values().sum();
    let non_watch: f64 = requests_per_min
        .iter()
        .filter(|(v, _)| v.as_str() != "WATCH")
        .map(|(_, x)| x)
        .sum();
    let leader_renews_per_min = (renews1 - renews0) / mins;
    let followers = (n.saturating_sub(1)).max(1) as f64;
    let processes = election
        .electors
        .iter()
        .zip(p0.iter().zip(&p1))
        .enumerate()
        .map(|(i, (e, (a, b)))| ProcFigures {
            id: e.id.clone(),
            leader: i == leader,
            rss_kib: b.rss_kib,
            hwm_kib: b.hwm_kib,
            anon_kib: b.anon_kib,
            file_kib: b.file_kib,
            threads: b.threads,
            pss_kib: b.pss_kib,
            cpu_ms_per_min: b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e6 / mins,
        })
        .collect();
    eprintln!(
        "bench:   idle window {:.0} s: {total:.1} lease req/min ({requests_per_min:?}), leader renews {leader_renews_per_min:.1}/min, watches {}",
        elapsed.as_secs_f64(),
        m1.watches - baseline.lease_watches
    );

    // Rounds: SIGTERM the leader (graceful handover), restart it; then SIGKILL the new leader
    // (crash failover), restart it; N stays constant.
    let sweep = if n <= 5 {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(200)
    };
    let timeout = timings.lease_duration * 3 + Duration::from_secs(30);
    let mut handovers = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..rounds {
        for (signal, kind) in [(libc::SIGTERM, "handover"), (libc::SIGKILL, "failover")] {
            let leader = election.agreed_leader(READY_TIMEOUT).await?;
            // Kill at a random phase of the renew cycle.
            tokio::time::sleep(timings.retry_period + jitter(timings.retry_period)).await;
            let from = election.electors[leader].id.clone();
            let (secs, to) =
                measure_takeover(&admin, election, leader, signal, sweep, timeout).await?;
            let exit = match election.electors[leader]
                .proc
                .wait_exit(Duration::from_secs(30))
                .await
            {
                Some(s) => procs::describe(s),
                None => {
                    election.electors[leader].proc.kill_and_reap()?;
                    "still running 30 s after SIGTERM (killed)".into()
                }
            };
            let t = Takeover {
                round,
                seconds: secs,
                from,
                to: election.electors[to].id.clone(),
                exit,
            };
            eprintln!(
                "bench:   round {round} {kind}: {:.3} s ({} → {}, {})",
                t.seconds, t.from, t.to, t.exit
            );
            if kind == "handover" {
                handovers.push(t)
            } else {
                failovers.push(t)
            }
            election.restart(leader).await?;
        }
    }
    let secs = |v: &[Takeover]| summarize(&v.iter().map(|t| t.seconds).collect::<Vec<_>>());
    Ok(ElectorResult {
        candidates: n,
        profile,
        timings_s: [
            timings.lease_duration.as_secs_f64(),
            timings.renew_deadline.as_secs_f64(),
            timings.retry_period.as_secs_f64(),
        ],
        window_s: elapsed.as_secs_f64(),
        requests_per_min_per_candidate: total / n as f64,
        follower_requests_per_min: ((non_watch - leader_renews_per_min) / followers).max(0.0),
        failed_requests_per_min: ((m1.failed - m0.failed) / mins).max(0.0),
        watches: m1.watches - baseline.lease_watches,
        leader_changed_during_window: still != leader,
        requests_per_min,
        leader_renews_per_min,
        processes,
        handover: secs(&handovers),
        failover: secs(&failovers),
        handovers,
        failovers,
    })
}

// ---------------------------------------------------------------------------------------------
// Webhook scenario
// ---------------------------------------------------------------------------------------------

fn tls_client_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.context("reading the CA PEM")?;
        roots
            .add(cert)
            .map_err(|e| fail("adding the CA", e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS client config", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn tls_server_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("reading tls.crt")?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .context("reading tls.key")?
        .ok_or_else(|| fail("reading tls.key", "no private key in it"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS server config", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail("TLS server config", e.to_string()))
}

/// `POST https://addr/path` with a JSON body, trusting only `ca_pem` (verified for 127.0.0.1).
pub async fn post_tls(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    body: &[u8],
) -> Result<httpc::Response> {
    let config = tls_client_config(ca_pem)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
        .map_err(|e| fail("server name", e.to_string()))?;
    let what = format!("POST https://{addr}{path}");
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        match tls.read_to_end(&mut buf).await {
            Ok(_) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
            Err(e) => Err(e),
        }
    };
    let bytes = tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| fail(&what, "no answer within 30 s"))?
        .context(what.clone())?;
    httpc::parse_response(&bytes).map_err(|e| fail(what, e))
}

/// Content-Length of an HTTP/1.1 request head; a body of unknown length is refused.
pub fn request_body_len(head: &str) -> std::result::Result<usize, String> {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    if !first.starts_with("POST ") {
        return Err(format!("expected a POST, got {first:?}"));
    }
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                return v
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad Content-Length {v:?}"));
            }
            if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err(
                    "chunked request bodies are not supported by the capture server".into(),
                );
            }
        }
    }
    Err("the request has no Content-Length".into())
}

/// A TLS endpoint the API server calls as a webhook: it records every AdmissionReview and
/// allows it unchanged.
struct Capture {
    addr: SocketAddr,
    reviews: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_capture(cert_pem: &str, key_pem: &str) -> Result<Capture> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_server_config(cert_pem, key_pem)?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the capture server")?;
    let addr = listener.local_addr().context("capture server address")?;
    let reviews = Arc::new(Mutex::new(Vec::new()));
    let store = reviews.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, store) = (acceptor.clone(), store.clone());
            tokio::spawn(async move {
                if let Err(e) = capture_one(acceptor, tcp, store).await {
                    eprintln!("bench: capture server: {e}");
                }
            });
        }
    });
    Ok(Capture {
        addr,
        reviews,
        task,
    })
}

async fn capture_one(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<serde_json::Value>>>,
) -> std::result::Result<(), String> {
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tls.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = request_body_len(&head)?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = tls.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed inside the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    let review: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))?;
    let answer = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"].clone(), "allowed": true},
    })
    .to_string();
    store.lock().unwrap_or_else(|e| e.into_inner()).push(review);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    tls.write_all(resp.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let _ = tls.shutdown().await;
    Ok(())
}

const CAPTURE_LABEL: &str = "bench-capture";

/// A realistic Deployment: three containers (app, log shipper, metrics exporter) with env,
/// probes, resources and volumes, annotated for injection on its pod template.
pub fn realistic_deployment(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "shop"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/version": "2.14.1", CAPTURE_LABEL: "true"},
                    "annotations": {
                        contract::annotations::ENABLED: "true",
                        contract::annotations::LEASE_DURATION: "15s",
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "9102",
                    },
                },
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.example.com/shop/payments-api:2.14.1",
                            "args": ["--config=/etc/payments/config.yaml", "--listen=:8080"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [
                                {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "payments-db", "key": "url"}}},
                                {"name": "LOG_LEVEL", "value": "info"},
                                {"name": "OTEL_SERVICE_NAME", "value": name},
                            ],
                            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}, "initialDelaySeconds": 10},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/payments", "readOnly": true}, {"name": "logs", "mountPath": "/var/log/app"}],
                        },
                        {
                            "name": "log-shipper",
                            "image": "fluent/fluent-bit:2.2.2",
                            "args": ["--config=/fluent-bit/etc/fluent-bit.conf"],
                            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                            "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app", "readOnly": true}],
                        },
                        {
                            "name": "metrics-exporter",
                            "image": "prom/statsd-exporter:v0.26.0",
                            "ports": [{"name": "metrics", "containerPort": 9102}],
                            "resources": {"requests": {"cpu": "10m", "memory": "24Mi"}},
                        },
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "payments-config"}}, {"name": "logs", "emptyDir": {}}],
                },
            },
        },
    })
}

/// Captures the AdmissionReview the API server sends for a pod the controller-manager creates
/// from [`realistic_deployment`] (ReplicaSet owner, generateName, pod-template-hash, and the
/// ServiceAccount admission plugin's changes already applied).
async fn capture_review(
    cp: &ControlPlane,
    ns: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<serde_json::Value> {
    let capture = start_capture(cert_pem, key_pem).await?;
    let admin = cp.admin_client().await?;
    let mwc_name = format!("bench-capture-{}", procs::rand_suffix());
    use base64::Engine;
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": mwc_name},
        "webhooks": [{
            "name": "capture.bench.leader-election.dev",
            "clientConfig": {
                "url": format!("https://{}/capture", capture.addr),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {CAPTURE_LABEL: "true"}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Ignore",
            "timeoutSeconds": 10,
        }],
    }))
    .map_err(|e| fail("building the capture webhook configuration", e.to_string()))?;
    let mwcs = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    mwcs.create(&PostParams::default(), &mwc)
        .await
        .context("creating the capture webhook configuration")?;
    let r = async {
        // The API server loads new configurations asynchronously: dry-run pods until one is seen.
        let pods = Api::<Pod>::namespaced(admin.clone(), ns);
        let probe: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "capture-probe", "labels": {CAPTURE_LABEL: "true"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .map_err(|e| fail("probe pod", e.to_string()))?;
        let reviews = capture.reviews.clone();
        eventually(
            "the API server to call the capture webhook",
            Duration::from_secs(60),
            || {
                let (pods, probe, reviews) = (pods.clone(), probe.clone(), reviews.clone());
                async move {
                    let pp = PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    };
                    pods.create(&pp, &probe).await.map_err(|e| e.to_string())?;
                    if reviews.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                        Err("no AdmissionReview received yet".into())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await?;
        let deployment: Deployment =
            serde_json::from_value(realistic_deployment("payments-api"))
                .map_err(|e| fail("the realistic Deployment", e.to_string()))?;
        Api::<Deployment>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &deployment)
            .await
            .context("creating the realistic Deployment")?;
        eventually(
            "the controller-manager's pod AdmissionReview",
            Duration::from_secs(120),
            || {
                let reviews = reviews.clone();
                async move {
                    let all = reviews.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    all.into_iter()
                        .find(|r| {
                            r["request"]["dryRun"] != true
                                && r["request"]["object"]["metadata"]["generateName"].is_string()
                        })
                        .ok_or_else(|| {
                            format!(
                                "{} reviews, none for a ReplicaSet's pod yet",
                                reviews.lock().map(|v| v.len()).unwrap_or(0)
                            )
                        })
                }
            },
        )
        .await
    }
    .await;
    let _ = mwcs.delete(&mwc_name, &DeleteParams::default()).await;
    r
}

/// CPU and memory samples of a process while a future runs.
async fn sampled<T>(pid: u32, fut: impl std::future::Future<Output = T>) -> (T, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut max = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(s) = proc_stats(pid) {
                max = max.max(s.rss_kib);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max
    });
    let out = fut.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max = sampler.await.unwrap_or(0);
    (out, max)
}

struct HeyRun {
    rows: Vec<HeyRow>,
    wall: Duration,
    hey_cpu_s: f64,
}

/// `hey -z <duration> -c <workers> [-q <per worker>] -m POST -D <body> -o csv <url>`.
async fn run_hey(
    url: &str,
    body: Option<&Path>,
    rate: Option<u32>,
    connections: u32,
    duration: Duration,
    out: &Path,
) -> Result<HeyRun> {
    let hey = control_plane::find_on_path("hey").ok_or_else(|| {
        fail(
            "running hey",
            "hey not found on PATH: apt-get install -y hey (bench.sh does this)",
        )
    })?;
    let (workers, qps) = match rate {
        Some(r) => {
            let (w, q) = hey_workers(r);
            (w, Some(q))
        }
        None => (connections, None),
    };
    // hey sends the URL's `host:port` as the TLS SNI name, which is not a valid server name, and
    // rustls refuses the handshake ("illegal parameter"): -host gives it a plain name.
    let mut args = vec![
        "-host".to_string(),
        "localhost".into(),
        "-z".into(),
        format!("{}ms", duration.as_millis()),
        "-c".into(),
        workers.to_string(),
        "-o".into(),
        "csv".into(),
    ];
    match body {
        Some(b) => args.extend([
            "-m".into(),
            "POST".into(),
            "-T".into(),
            "application/json".into(),
            "-D".into(),
            b.display().to_string(),
        ]),
        None => args.extend(["-m".into(), "GET".into()]),
    }
    if let Some(q) = qps {
        args.extend(["-q".into(), format!("{q}")]);
    }
    args.push(url.to_string());
    let file = std::fs::File::create(out).context(format!("creating {}", out.display()))?;
    let err_path = out.with_extension("err");
    let err =
        std::fs::File::create(&err_path).context(format!("creating {}", err_path.display()))?;
    let start = Instant::now();
    let mut child = tokio::process::Command::new(&hey)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .context("starting hey")?;
    let pid = child.id().unwrap_or(0);
    // hey's own CPU: its last /proc sample before it exits (it competes for the same cores).
    let mut hey_ns = 0;
    let status = loop {
        if let Ok(s) = proc_stats(pid) {
            hey_ns = s.cpu_ns;
        }
        match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
            Ok(s) => break s.context("waiting for hey")?,
            Err(_) if start.elapsed() > duration + Duration::from_secs(120) => {
                let _ = child.kill().await;
                return Err(fail(
                    "running hey",
                    "still running 2 minutes after its duration",
                ));
            }
            Err(_) => {}
        }
    };
    let wall = start.elapsed();
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(Error::Command {
            command: format!("hey {}", args.join(" ")),
            status: procs::describe(status),
            stderr,
        });
    }
    let text = std::fs::read_to_string(out).context(format!("reading {}", out.display()))?;
    let rows = parse_hey_csv(&text).map_err(|e| fail("reading hey's output", e))?;
    if rows.is_empty() {
        // The CSV lists answered requests only: a few more in summary mode say why none was.
        let mut probe: Vec<String> = args.clone();
        probe.retain(|a| a != "-o" && a != "csv");
        if let Some(i) = probe.iter().position(|a| a == "-z") {
            probe.splice(i..i + 2, ["-n".to_string(), "3".into()]);
        }
        let summary = tokio::process::Command::new(&hey)
            .args(&probe)
            .output()
            .await
            .context("running hey")?;
        let text = String::from_utf8_lossy(&summary.stdout);
        let why = text
            .split("Error distribution:")
            .nth(1)
            .unwrap_or(&text)
            .trim()
            .to_string();
        return Err(fail(
            format!("hey {}", args.join(" ")),
            format!("no request was answered: {why}"),
        ));
    }
    Ok(HeyRun {
        rows,
        wall,
        hey_cpu_s: hey_ns as f64 / 1e9,
    })
}

async fn webhook_metrics(addr: SocketAddr, ca_pem: &str) -> Result<Vec<MetricSample>> {
    let r = httpc::get_tls(
        addr,
        "127.0.0.1",
        ca_pem,
        contract::http::METRICS_PATH,
        Duration::from_secs(10),
    )
    .await?;
    if r.status != 200 {
        return Err(fail(
            "GET /metrics of the webhook",
            format!("status {}", r.status),
        ));
    }
    Ok(parse_prometheus(&r.body))
}

const WH_PREFIX: &str = "leader_election_webhook";

/// The webhook binary in files mode, a captured AdmissionReview, and the load steps.
pub async fn webhook_scenario(
    cp: &ControlPlane,
    bin: &Path,
    opts: &Options,
) -> Result<WebhookResult> {
    crate::webhook::apply_shipped_rbac(cp).await?;
    let dir = procs::scratch_dir("bench-webhook")?;
    let certs = tokio::process::Command::new(bin)
        .args([
            "certs",
            &format!("--out-dir={}", dir.display()),
            "--extra-san=127.0.0.1",
        ])
        .output()
        .await
        .context("running webhook certs")?;
    if !certs.status.success() {
        return Err(Error::Command {
            command: "webhook certs".into(),
            status: procs::describe(certs.status),
            stderr: String::from_utf8_lossy(&certs.stderr).into_owned(),
        });
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .context(format!("reading {f} written by webhook certs"))
    };
    let (ca_pem, cert_pem, key_pem) = (read("ca.crt")?, read("tls.crt")?, read("tls.key")?);

    let kubeconfig = cp
        .service_account_kubeconfig(deploy::NAMESPACE, deploy::WEBHOOK_NAME)
        .await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], control_plane::free_port()?));
    let proc = Proc::spawn(
        "webhook",
        bin,
        &[
            "serve".into(),
            format!("--listen={addr}"),
            format!("--tls-cert-file={}", dir.join("tls.crt").display()),
            format!("--tls-key-file={}", dir.join("tls.key").display()),
            format!("--namespace={}", deploy::NAMESPACE),
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", opts.webhook_log.clone()),
        ],
        &dir,
    )?;
    let webhook = crate::webhook::Webhook { addr, proc };
    let r = run_webhook(cp, &webhook, &dir, &ca_pem, &cert_pem, &key_pem, opts).await;
    let r = r.map_err(|e| {
        fail(
            e.to_string(),
            format!("webhook output:\n{}", webhook.proc.output_tail(20)),
        )
    });
    let _ = webhook.proc.stop(Duration::from_secs(25)).await;
    r
}

#[allow(clippy::too_many_arguments)]
async fn run_webhook(
    cp: &ControlPlane,
    webhook: &crate::webhook::Webhook,
    dir: &Path,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    opts: &Options,
) -> Result<WebhookResult> {
    webhook.wait_ready(ca_pem, Duration::from_secs(60)).await?;
    let ns = cp.create_namespace("bench-webhook").await?;
    let review = capture_review(cp, &ns, ca_pem, cert_pem, key_pem).await?;
    let body =
        serde_json::to_vec(&review).map_err(|e| fail("serializing the review", e.to_string()))?;
    let body_file = dir.join("admission-review.json");
    std::fs::write(&body_file, &body).context("writing the AdmissionReview")?;
    eprintln!(
        "bench:   captured the API server's AdmissionReview for pod {}* ({} bytes, saved to {})",
        review["request"]["object"]["metadata"]["generateName"]
            .as_str()
            .unwrap_or_default(),
        body.len(),
        body_file.display()
    );

    // Pre-warm: the first admission in a namespace ensures its ServiceAccount and RoleBinding.
    let t = Instant::now();
    let first = post_tls(webhook.addr, ca_pem, deploy::MUTATE_PATH, &body).await?;
    let first_admission_ms = t.elapsed().as_secs_f64() * 1000.0;
    let answer: serde_json::Value = serde_json::from_str(&first.body).map_err(|e| {
        fail(
            "the first admission's answer",
            format!("{e}: {}", first.body),
        )
    })?;
    if first.status != 200
        || answer["response"]["allowed"] != true
        || !answer["response"]["patch"].is_string()
    {
        return Err(fail(
            "the first admission",
            format!(
                "expected an allowed answer with a patch, got {} {}",
                first.status, first.body
            ),
        ));
    }
    // Admission is pure (issue 11): it creates nothing, so there is nothing to check here.

    let idle = proc_stats(webhook.proc.pid())?;
    let m_start = webhook_metrics(webhook.addr, ca_pem).await?;
    let mut steps = Vec::new();
    // Fixed rates and unthrottled on /mutate, then unthrottled GET /healthz: the same TLS and
    // HTTP work without the admission, which splits the cost between transport and handler.
    let mutate = deploy::MUTATE_PATH;
    let healthz = contract::http::HEALTHZ_PATH;
    let plan: Vec<(Option<u32>, &str)> = opts
        .rates
        .iter()
        .map(|r| (Some(*r), mutate))
        .chain([(None, mutate), (None, healthz)])
        .collect();
    for (i, (rate, path)) in plan.into_iter().enumerate() {
        let url = format!("https://{}{path}", webhook.addr);
        let body = (path == mutate).then_some(body_file.as_path());
        let before = webhook_metrics(webhook.addr, ca_pem).await?;
        let cpu0 = proc_stats(webhook.proc.pid())?.cpu_ns;
        let out = dir.join(format!("hey-{i}.csv"));
        let (run, rss_max) = sampled(
            webhook.proc.pid(),
            run_hey(
                &url,
                body,
                rate,
                opts.max_connections,
                opts.load_duration,
                &out,
            ),
        )
        .await;
        let run = run?;
        let cpu1 = proc_stats(webhook.proc.pid())?.cpu_ns;
        let after = webhook_metrics(webhook.addr, ca_pem).await?;
        let hist = format!("{WH_PREFIX}_admission_duration_seconds");
        let buckets = bucket_delta(
            &histogram_buckets(&before, &hist),
            &histogram_buckets(&after, &hist),
        );
        let count = sum_where(&after, &format!("{hist}_count"), &[])
            - sum_where(&before, &format!("{hist}_count"), &[]);
        let sum = sum_where(&after, &format!("{hist}_sum"), &[])
            - sum_where(&before, &format!("{hist}_sum"), &[]);
        let mut lat: Vec<f64> = run.rows.iter().map(|r| r.latency * 1000.0).collect();
        lat.sort_by(f64::total_cmp);
        let requests = run.rows.len();
        let secs = opts.load_duration.as_secs_f64();
        let cpu_s = cpu1.saturating_sub(cpu0) as f64 / 1e9;
        let step = LoadStep {
            path: path.to_string(),
            rate,
            connections: rate
                .map(|r| hey_workers(r).0)
                .unwrap_or(opts.max_connections),
            duration_s: secs,
            requests,
            non_200: run.rows.iter().filter(|r| r.status != 200).count(),
            achieved_rate: requests as f64 / secs,
            p50_ms: percentile(&lat, 0.5).unwrap_or(f64::NAN),
            p99_ms: percentile(&lat, 0.99).unwrap_or(f64::NAN),
            max_ms: lat.last().copied().unwrap_or(f64::NAN),
            server_p99_ms: histogram_quantile(&buckets, 0.99).map(|s| s * 1000.0),
            server_mean_ms: (count > 0.0).then(|| sum / count * 1000.0),
            webhook_rss_max_kib: rss_max,
            webhook_cpu_us_per_request: if requests > 0 {
                cpu_s / requests as f64 * 1e6
            } else {
                f64::NAN
            },
            webhook_cpu_cores: cpu_s / run.wall.as_secs_f64(),
            hey_cpu_cores: run.hey_cpu_s / run.wall.as_secs_f64(),
        };
        eprintln!(
            "bench:   load {path} {}: {} requests ({:.0}/s), p50 {:.2} ms p99 {:.2} ms max {:.1} ms, webhook {:.2} cores, hey {:.2} cores, RSS {} KiB",
            rate.map(|r| format!("{r} req/s"))
                .unwrap_or_else(|| format!("unthrottled x{}", opts.max_connections)),
            step.requests,
            step.achieved_rate,
            step.p50_ms,
            step.p99_ms,
            step.max_ms,
            step.webhook_cpu_cores,
            step.hey_cpu_cores,
            step.webhook_rss_max_kib
        );
        steps.push(step);
    }
    let m_end = webhook_metrics(webhook.addr, ca_pem).await?;
    let ensures = format!("{WH_PREFIX}_rbac_ensures_total");
    let admissions = format!("{WH_PREFIX}_admissions_total");
    let end = proc_stats(webhook.proc.pid())?;
    Ok(WebhookResult {
        review_source: "captured from kube-apiserver 1.20.2: a pod the controller-manager created for a 3-container Deployment".into(),
        review_bytes: body.len(),
        first_admission_ms,
        ensure_calls_during_load: sum_where(&m_end, &ensures, &[]) - sum_where(&m_start, &ensures, &[]),
        injected_during_load: sum_where(&m_end, &admissions, &[("result", "injected")])
            - sum_where(&m_start, &admissions, &[("result", "injected")]),
        requests: steps
            .iter()
            .filter(|s| s.path == mutate)
            .map(|s| s.requests)
            .sum(),
        review_json: body,
        idle_rss_kib: idle.rss_kib,
        hwm_kib: end.hwm_kib,
        steps,
    })
}

// ---------------------------------------------------------------------------------------------
// The whole run
// ---------------------------------------------------------------------------------------------

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

fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
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
    std::process::Command::new("git")
        .args([
            "-C",
            &crate::workspace_root().display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
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
    let elector_bin = match &opts.elector_bin {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => {
            return Err(Error::ProjectBinaryMissing {
                name: "elector (--elector-bin)".into(),
                path: p.clone(),
            });
        }
        None => binary(&dir, "elector")?,
    };
    let webhook_bin = binary(&dir, "webhook")?;
    let musl = dir.parent().map(|target| {
        target
            .join("x86_64-unknown-linux-musl")
            .join("release")
            .join("elector")
    });
    let binaries = BinarySizes {
        elector_bytes: file_size(&elector_bin),
        elector_musl_bytes: musl.as_deref().and_then(file_size),
        webhook_bytes: file_size(&webhook_bin),
    };
    let loadavg_start = loadavg();
    let other_start = other_apiservers(&[]);
    eprintln!("bench: load average {loadavg_start}, other kube-apiservers running: {other_start}");
    eprintln!(
        "bench: starting the control plane (etcd, kube-apiserver 1.20.2, kube-controller-manager)"
    );
    let cp = ControlPlane::start().await?;
    let ours = cp.pids();
    let mut errors = Vec::new();
    let mut electors = Vec::new();
    let mut baseline = None;
    if opts.elector {
        manifests::ensure_elector_cluster_roles(&cp).await?;
        eprintln!(
            "bench: baseline: the control plane's own lease traffic for {:?}",
            opts.baseline
        );
        let b = measure_baseline(&cp, opts.baseline).await?;
        eprintln!(
            "bench:   {:?}/min, {} open lease watches",
            b.lease_requests_per_min, b.lease_watches
        );
        for profile in &opts.profiles {
            for n in &opts.candidates {
                let rounds = match profile {
                    Profile::Default => opts.default_rounds,
                    Profile::Short => opts.rounds,
                };
                eprintln!(
                    "bench: elector N={n}, {} timings, {rounds} rounds",
                    profile.name()
                );
                match elector_scenario(&cp, &elector_bin, *n, *profile, rounds, opts.window, &b)
                    .await
                {
                    Ok(r) => electors.push(r),
                    Err(e) => {
                        eprintln!("bench: elector N={n} {}: FAILED: {e}", profile.name());
                        errors.push(format!("elector N={n} {}: {e}", profile.name()));
                    }
                }
            }
        }
        baseline = Some(b);
    }
    let mut webhook = None;
    if opts.webhook {
        eprintln!("bench: webhook: files-mode TLS, a captured AdmissionReview replayed with hey");
        match webhook_scenario(&cp, &webhook_bin, opts).await {
            Ok(w) => webhook = Some(w),
            Err(e) => {
                eprintln!("bench: webhook: FAILED: {e}");
                errors.push(format!("webhook: {e}"));
            }
        }
    }
    let other_end = other_apiservers(&ours);
    drop(cp);
    let environment = Environment {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        loadavg_start,
        loadavg_end: loadavg(),
        other_apiservers_start: other_start,
        other_apiservers_end: other_end,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        git_rev: git_rev(),
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
    };
    let figures = figures(&binaries, &electors, webhook.as_ref());
    Ok(Report {
        environment,
        options: opts.clone(),
        binaries,
        baseline,
        elector: electors,
        webhook,
        figures,
        errors,
    })
}

/// Requests per minute by verb as `GET 0.0, PUT 30.0`.
pub fn verbs_line(m: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, v)| **v > 0.005)
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The text printed after a run: environment, the figures table, per-scenario details.
pub fn render_report(r: &Report) -> String {
    let mut out = String::new();
    let e = &r.environment;
    out += &format!(
        "bench: {} CPUs, load {} → {}, other kube-apiservers {} → {}, git {}, {:.0} s\n\n",
        e.cpus,
        e.loadavg_start,
        e.loadavg_end,
        e.other_apiservers_start,
        e.other_apiservers_end,
        e.git_rev,
        e.duration_s
    );
    out += &render_table(&r.figures);
    if !r.elector.is_empty() {
        out += "\nlease requests per minute by verb (baseline subtracted):\n";
        if let Some(b) = &r.baseline {
            out += &format!(
                "  baseline (no elector): {}; {} watches\n",
                verbs_line(&b.lease_requests_per_min),
                b.lease_watches
            );
        }
        for s in &r.elector {
            let f: Vec<String> = s
                .failovers
                .iter()
                .map(|t| format!("{:.2}", t.seconds))
                .collect();
            let h: Vec<String> = s
                .handovers
                .iter()
                .map(|t| format!("{:.3}", t.seconds))
                .collect();
            out += &format!(
                "  N={} {}: {}; failed {:.1}/min; handovers [{}] s; failovers [{}] s\n",
                s.candidates,
                s.profile.name(),
                verbs_line(&s.requests_per_min),
                s.failed_requests_per_min,
                h.join(" "),
                f.join(" ")
            );
            // Memory split: private (anon) vs mapped binary pages (file, shared between the
            // candidates of one image).
            for (who, p) in [
                ("leader", s.processes.iter().find(|p| p.leader)),
                ("a follower", s.processes.iter().find(|p| !p.leader)),
            ] {
                if let Some(p) = p {
                    out += &format!(
                        "      {who} {}: RSS {} KiB = anon {} + file {} (+shmem), PSS {} KiB, peak {} KiB, {} threads, CPU {:.1} ms/min\n",
                        p.id,
                        p.rss_kib,
                        p.anon_kib,
                        p.file_kib,
                        p.pss_kib,
                        p.hwm_kib,
                        p.threads,
                        p.cpu_ms_per_min
                    );
                }
            }
        }
    }
    if let Some(w) = &r.webhook {
        out += &format!(
            "\nwebhook: review {} bytes ({}); {} requests, {} injected; idle RSS {} KiB, peak {} KiB\n",
            w.review_bytes,
            w.review_source,
            w.requests,
            w.injected_during_load,
            w.idle_rss_kib,
            w.hwm_kib
        );
        for s in &w.steps {
            out += &format!(
                "  {:<8} {:>12}: {:>6} req ({:>6.0}/s) p50 {:.2} p99 {:.2} max {:.1} ms | in-handler p99 ≤ {} ms mean {} ms | webhook {:.2} cores {:.0} µs/req | hey {:.2} cores | non-200 {}\n",
                s.path,
                s.rate
                    .map(|r| format!("{r} req/s"))
                    .unwrap_or_else(|| format!("max x{}", s.connections)),
                s.requests,
                s.achieved_rate,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                s.server_p99_ms
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "?".into()),
                s.server_mean_ms
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "?".into()),
                s.webhook_cpu_cores,
                s.webhook_cpu_us_per_request,
                s.hey_cpu_cores,
                s.non_200
            );
        }
    }
    for err in &r.errors {
        out += &format!("\nERROR: {err}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> std::result::Result<Command, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    fn opts(s: &str) -> Options {
        match args(s) {
            Ok(Command::Run(o)) => *o,
            Ok(Command::Help) => panic!("{s}: help"),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn argument_table() {
        let d = opts("");
        assert_eq!(d.candidates, [3, 30]);
        assert_eq!(d.profiles, [Profile::Default, Profile::Short]);
        assert_eq!((d.rounds, d.default_rounds), (5, 3));
        assert_eq!(d.window, Duration::from_secs(60));
        assert!(d.elector && d.webhook && !d.quick);

        let q = opts("--quick");
        assert_eq!(
            (q.candidates.as_slice(), q.profiles.as_slice()),
            (&[3][..], &[Profile::Short][..])
        );
        assert_eq!(q.window, Duration::from_secs(20));
        // Explicit options win over --quick in any order.
        let q = opts("--candidates=30 --quick --window 90s");
        assert_eq!(
            (q.candidates.as_slice(), q.window),
            (&[30][..], Duration::from_secs(90))
        );

        let o = opts(
            "--profiles default --rates 300,2000 --out /tmp/x.json --skip-webhook --max-connections 4",
        );
        assert_eq!(o.profiles, [Profile::Default]);
        assert_eq!(o.rates, [300, 2000]);
        assert_eq!(o.out.as_deref(), Some(Path::new("/tmp/x.json")));
        assert!(!o.webhook && o.elector);
        assert_eq!(o.max_connections, 4);
        assert_eq!(o.webhook_log, "info");
        let o = opts("--webhook-log warn --elector-bin /x/elector");
        assert_eq!(o.webhook_log, "warn");
        assert_eq!(o.elector_bin.as_deref(), Some(Path::new("/x/elector")));
        assert!(matches!(args("-h"), Ok(Command::Help)));

        let bad: &[(&str, &str)] = &[
            ("--candidates 0", "positive"),
            ("--candidates", "needs a value"),
            ("--profiles fast", "unknown profile"),
            ("--window 10", "no unit"),
            ("--window 10parsecs", "unknown unit"),
            ("--frobnicate", "unknown option"),
            ("--skip-elector --skip-webhook", "nothing to measure"),
            ("--rates ,", "at least one"),
        ];
        for (line, want) in bad {
            match args(line) {
                Err(e) => assert!(e.contains(want), "{line}: {e}"),
                Ok(_) => panic!("{line}: accepted"),
            }
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("60s", 60_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1.5s", 1500),
            ("1h", 3_600_000),
        ];
        for (s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn statistics() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(
            summarize(&[3.0, 1.0, 2.0]),
            Some(Summary {
                n: 3,
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(
            summarize(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(summarize(&[f64::NAN, 1.0]).map(|s| s.n), Some(1));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    const APISERVER: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 30
apiserver_request_total{code="409",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="GET",version="v1"} 3
apiserver_request_total{code="0",component="apiserver",contentType="application/json",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="WATCH",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 99
apiserver_longrunning_gauge{component="apiserver",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="WATCH",version="v1"} 2
apiserver_longrunning_gauge{component="apiserver",group="coordination.k8s.io",resource="leases",scope="cluster",subresource="",verb="WATCH",version="v1"} 1
apiserver_longrunning_gauge{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 5
"#;

    #[test]
    fn apiserver_metrics_by_verb_and_watches() {
        let s = parse_prometheus(APISERVER);
        assert_eq!(s.len(), 8);
        let by_verb = lease_requests_by_verb(&s);
        assert_eq!(by_verb.get("PUT"), Some(&32.0));
        assert_eq!(by_verb.get("GET"), Some(&3.0));
        assert_eq!(by_verb.get("WATCH"), Some(&1.0));
        assert_eq!(by_verb.get("LIST"), None, "pods are not leases");
        assert_eq!(lease_watches(&s), 3.0);
        let snap = api_snapshot(&s);
        assert_eq!(snap.failed, 2.0, "the 409s; a WATCH's code does not count");
        let before: BTreeMap<String, f64> = [("PUT".to_string(), 10.0)].into();
        let d = delta(&before, &by_verb);
        assert_eq!(d.get("PUT"), Some(&22.0));
        assert_eq!(d.get("GET"), Some(&3.0));
    }

    /// (name, labels, value) a line should parse to.
    type Parsed<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    #[test]
    fn prometheus_lines() {
        let cases: &[(&str, Option<Parsed>)] = &[
            ("up 1", Some(("up", &[], 1.0))),
            (
                "x_total{a=\"b\"} 2.5 1700000000",
                Some(("x_total", &[("a", "b")], 2.5)),
            ),
            (
                r#"y{a="q\"uo,te}",b="n\\l"} 3"#,
                Some(("y", &[("a", "q\"uo,te}"), ("b", "n\\l")], 3.0)),
            ),
            (
                "h_bucket{le=\"+Inf\"} 7",
                Some(("h_bucket", &[("le", "+Inf")], 7.0)),
            ),
            ("z{a=\"1\",} 4", Some(("z", &[("a", "1")], 4.0))),
            ("# HELP up x", None),
            ("", None),
            ("broken{a=\"b} 1", None),
            ("novalue", None),
            ("bad 1x", None),
        ];
        for (line, want) in cases {
            let got = parse_metric_line(line);
            match (got, want) {
                (None, None) => {}
                (Some(s), Some((name, labels, value))) => {
                    assert_eq!(s.name, *name, "{line}");
                    let want: BTreeMap<String, String> = labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    assert_eq!(s.labels, want, "{line}");
                    assert_eq!(s.value, *value, "{line}");
                }
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn histograms() {
        let text = "h_bucket{le=\"0.001\"} 10\nh_bucket{le=\"0.002\"} 90\nh_bucket{le=\"+Inf\"} 100\nh_bucket{le=\"0.004\"} 99\nh_sum 0.2\nh_count 100\n";
        let s = parse_prometheus(text);
        let b = histogram_buckets(&s, "h");
        assert_eq!(
            b,
            [
                (0.001, 10.0),
                (0.002, 90.0),
                (0.004, 99.0),
                (f64::INFINITY, 100.0)
            ]
        );
        assert_eq!(histogram_quantile(&b, 0.5), Some(0.002));
        assert_eq!(histogram_quantile(&b, 0.99), Some(0.004));
        assert_eq!(histogram_quantile(&b, 1.0), Some(f64::INFINITY));
        let before = [
            (0.001, 10.0),
            (0.002, 10.0),
            (0.004, 10.0),
            (f64::INFINITY, 10.0),
        ];
        let d = bucket_delta(&before, &b);
        assert_eq!(
            d,
            [
                (0.001, 0.0),
                (0.002, 80.0),
                (0.004, 89.0),
                (f64::INFINITY, 90.0)
            ]
        );
        assert_eq!(histogram_quantile(&d, 0.1), Some(0.002));
        assert_eq!(histogram_quantile(&[], 0.5), None);
        assert_eq!(histogram_quantile(&[(1.0, 0.0)], 0.5), None);
    }

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

    #[test]
    fn hey_output_and_workers() {
        let csv = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n\
                   0.0025,0.0002,0.0000,0.0001,0.0020,0.0001,200,0.0001\n0.0110,0,0,0,0,0,500,0.5\n";
        let rows = parse_hey_csv(csv).expect("valid");
        assert_eq!(
            rows,
            [
                HeyRow {
                    latency: 0.0025,
                    status: 200
                },
                HeyRow {
                    latency: 0.011,
                    status: 500
                }
            ]
        );
        assert_eq!(parse_hey_csv("response-time,x\n").map(|r| r.len()), Ok(0));
        assert!(parse_hey_csv("Summary:\n").is_err());
        assert!(parse_hey_csv("response-time,a\nx,y\n").is_err());
        let cases = [
            (200, (2, 100.0)),
            (1000, (10, 100.0)),
            (50, (1, 50.0)),
            (250, (3, 250.0 / 3.0)),
        ];
        for (rate, want) in cases {
            assert_eq!(hey_workers(rate), want, "{rate}");
        }
    }

    #[test]
    fn capture_server_request_heads() {
        let cases: &[(&str, std::result::Result<usize, &str>)] = &[
            (
                "POST /capture?timeout=10s HTTP/1.1\r\nHost: x\r\nContent-Length: 1234",
                Ok(1234),
            ),
            ("POST / HTTP/1.1\r\ncontent-length:  7 ", Ok(7)),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked",
                Err("chunked"),
            ),
            ("POST / HTTP/1.1\r\nHost: x", Err("no Content-Length")),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1",
                Err("expected a POST"),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: x",
                Err("bad Content-Length"),
            ),
        ];
        for (head, want) in cases {
            match (request_body_len(head), want) {
                (Ok(n), Ok(w)) => assert_eq!(n, *w, "{head}"),
                (Err(e), Err(frag)) => assert!(e.contains(frag), "{head}: {e}"),
                (got, want) => panic!("{head:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn elector_result(
        handover: &[f64],
        failover: &[f64],
        rss: u64,
        follower_rpm: f64,
    ) -> ElectorResult {
        let t = |s: &[f64]| -> Vec<Takeover> {
            s.iter()
                .enumerate()
                .map(|(i, x)| Takeover {
                    round: i,
                    seconds: *x,
                    from: "a".into(),
                    to: "b".into(),
                    exit: "exit code 0".into(),
                })
                .collect()
        };
        ElectorResult {
            candidates: 3,
            profile: Profile::Default,
            timings_s: [15.0, 10.0, 2.0],
            window_s: 60.0,
            requests_per_min: BTreeMap::new(),
            requests_per_min_per_candidate: 10.0,
            leader_renews_per_min: 30.0,
            follower_requests_per_min: follower_rpm,
            failed_requests_per_min: 0.0,
            watches: 2.0,
            leader_changed_during_window: false,
            processes: vec![ProcFigures {
                id: "a".into(),
                leader: true,
                rss_kib: rss,
                hwm_kib: rss,
                anon_kib: 1,
                file_kib: 1,
                threads: 1,
                pss_kib: 1,
                cpu_ms_per_min: 5.0,
            }],
            handover: summarize(handover),
            failover: summarize(failover),
            handovers: t(handover),
            failovers: t(failover),
        }
    }

    fn find<'a>(figs: &'a [Figure], prefix: &str) -> &'a Figure {
        figs.iter()
            .find(|f| f.name.contains(prefix))
            .unwrap_or_else(|| panic!("no figure {prefix}: {figs:#?}"))
    }

    #[test]
    fn figures_against_targets() {
        let sizes = BinarySizes {
            elector_bytes: Some(9_000_000),
            elector_musl_bytes: None,
            webhook_bytes: Some(1),
        };
        let ok = elector_result(&[0.05, 0.1, 0.3], &[14.0, 15.4], 4000, 0.0);
        let figs = figures(&sizes, &[ok], None);
        let h = find(&figs, "graceful handover");
        assert_eq!((h.verdict, h.ratio), (Verdict::Met, Some(0.5)));
        let f = find(&figs, "crash failover max");
        assert_eq!(f.verdict, Verdict::Met);
        assert!((f.ratio.unwrap_or_default() - 15.4 / 15.0).abs() < 1e-9);
        assert_eq!(find(&figs, "follower periodic").verdict, Verdict::Met);
        assert_eq!(find(&figs, "RSS").verdict, Verdict::Met);
        let size = find(&figs, "elector binary (release");
        assert_eq!(size.verdict, Verdict::Missed, "9 MB > 8 MB");
        assert!((size.ratio.unwrap_or_default() - 1.125).abs() < 1e-9);
        assert!(figs.iter().all(|f| !f.name.contains("musl")));

        let bad = elector_result(&[0.3, 0.4, 0.5], &[15.6], 6000, 2.0);
        let figs = figures(
            &BinarySizes {
                elector_bytes: None,
                elector_musl_bytes: None,
                webhook_bytes: None,
            },
            &[bad],
            None,
        );
        for name in [
            "graceful handover",
            "crash failover max",
            "follower periodic",
            "RSS",
        ] {
            assert_eq!(find(&figs, name).verdict, Verdict::Missed, "{name}");
        }

        let step = |rate: Option<u32>, p99: f64, achieved: f64| LoadStep {
            path: deploy::MUTATE_PATH.into(),
            rate,
            connections: 2,
            duration_s: 1.0,
            requests: 10,
            non_200: 0,
            achieved_rate: achieved,
            p50_ms: 0.5,
            p99_ms: p99,
            max_ms: 3.0,
            server_p99_ms: None,
            server_mean_ms: None,
            webhook_rss_max_kib: 8000,
            webhook_cpu_us_per_request: 100.0,
            webhook_cpu_cores: 1.0,
            hey_cpu_cores: 1.0,
        };
        let floor = LoadStep {
            path: "/healthz".into(),
            ..step(None, 1.0, 9000.0)
        };
        let w = WebhookResult {
            review_source: String::new(),
            review_json: Vec::new(),
            review_bytes: 1,
            first_admission_ms: 5.0,
            ensure_calls_during_load: 0.0,
            injected_during_load: 10.0,
            requests: 30,
            idle_rss_kib: 1,
            hwm_kib: 1,
            steps: vec![
                step(Some(200), 1.5, 200.0),
                step(Some(1000), 3.0, 1000.0),
                step(None, 9.0, 4000.0),
                floor,
            ],
        };
        let figs = figures(
            &BinarySizes {
                elector_bytes: None,
                elector_musl_bytes: None,
                webhook_bytes: None,
            },
            &[],
            Some(&w),
        );
        assert_eq!(find(&figs, "p99 @ 200").verdict, Verdict::Met);
        assert_eq!(
            find(&figs, "p99 @ 1000").verdict,
            Verdict::Info,
            "the 2 ms target is at 200 req/s"
        );
        let rate = find(&figs, "max sustained");
        assert_eq!((rate.verdict, rate.ratio), (Verdict::Missed, Some(0.8)));
        let floor = find(&figs, "GET /healthz");
        assert_eq!((floor.verdict, floor.value), (Verdict::Info, 9000.0));
        assert_eq!(
            figs.iter()
                .filter(|f| f.name.contains("max sustained"))
                .count(),
            1,
            "the /healthz floor is not an admission rate"
        );
    }

    #[test]
    fn table_aligns_and_marks_misses() {
        let figs = vec![
            Figure::at_most("short", 0.05, "s", 0.2, "≤ 0.2 s".into(), 0.2),
            Figure::at_least(
                "a longer name",
                4000.0,
                "req/s",
                5000.0,
                "≥ 5000 req/s".into(),
            ),
            Figure::info("info", 3.0, ""),
        ];
        let t = render_table(&figs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("figure") && lines[1].starts_with("---"));
        assert!(
            lines[2].contains("0.050 s") && lines[2].contains("0.25") && lines[2].ends_with("met")
        );
        assert!(lines[3].contains("4000 req/s") && lines[3].ends_with("MISSED"));
        assert!(lines[4].trim_end().ends_with('-'));
        // Columns line up: the value column ends at the same place on every row.
        let end = |l: &str, v: &str| l.find(v).map(|i| l[..i + v.len()].chars().count());
        assert_eq!(end(lines[2], "0.050 s"), end(lines[3], "4000 req/s"));
    }

    #[test]
    fn realistic_deployment_is_a_valid_deployment() {
        let d: Deployment =
            serde_json::from_value(realistic_deployment("payments-api")).expect("valid Deployment");
        let spec = d.spec.expect("spec");
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.containers.len(), 3);
        let ann = spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert_eq!(
            ann.get(contract::annotations::ENABLED).map(String::as_str),
            Some("true")
        );
    }
}
