//! The elector scenarios, run for each implementation on the same control plane: an idle
//! window (lease requests by verb, CPU, RSS), the same window with the followers frozen (what
//! the leader alone costs), graceful handover (SIGTERM), crash failover (SIGKILL) and the leader
//! frozen past its lease then thawed (how long it still answers "I lead").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, WatchEvent, WatchParams};
use serde::Serialize;

use super::candidates::{Bins, Election, Impl, READY_TIMEOUT};
use super::metrics::{ApiSnapshot, api_snapshot, parse_prometheus, per_minute};
use super::options::Profile;
use super::procfs::{ProcStats, proc_stats};
use super::stats::{Summary, summarize};
use crate::elector::{Sample, ask};
use crate::error::{Context, Error, Result, fail};
use crate::{ControlPlane, procs};

const LEASE: &str = "bench";

#[derive(Debug, Clone, Default, Serialize)]
pub struct Baseline {
    pub window_s: f64,
    /// Lease requests per minute with no candidate running (the controller-manager's own).
    pub lease_requests_per_min: BTreeMap<String, f64>,
    pub lease_watches: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcFigures {
    pub id: String,
    pub leader: bool,
    /// VmRSS: everything resident, the binary's shared pages included.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub pss_kib: u64,
    pub threads: u64,
    /// CPU time over the idle window, per minute.
    pub cpu_ms_per_min: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    pub round: usize,
    pub seconds: f64,
    pub from: String,
    pub to: String,
    /// How the signalled process ended (graceful handover: exit code 0).
    pub exit: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Freeze {
    pub round: usize,
    /// From SIGSTOP to another candidate leading.
    pub takeover_s: f64,
    /// "I lead" answers of the thawed process after SIGCONT, and the time from SIGCONT to the
    /// last of them (0 when there was none).
    pub stale_answers: usize,
    pub stale_s: f64,
    /// Answers read from the thawed process.
    pub answers: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub implementation: Impl,
    pub profile: Profile,
    pub candidates: usize,
    pub timings_s: [f64; 3],
    pub window_s: f64,
    /// Lease requests per minute by verb, all candidates, baseline subtracted.
    pub requests_per_min: BTreeMap<String, f64>,
    /// The same with the followers frozen: the leader alone.
    pub leader_requests_per_min: BTreeMap<String, f64>,
    /// (all − leader alone) / followers, by verb.
    pub follower_requests_per_min: BTreeMap<String, f64>,
    /// The leader's PUT/POST/PATCH per minute.
    pub leader_writes_per_min: f64,
    /// A follower's requests besides WATCH per minute.
    pub follower_non_watch_per_min: f64,
    pub failed_requests_per_min: f64,
    pub watches: f64,
    pub processes: Vec<ProcFigures>,
    pub handovers: Vec<Takeover>,
    pub failovers: Vec<Takeover>,
    pub freezes: Vec<Freeze>,
    pub handover: Option<Summary>,
    pub failover: Option<Summary>,
    pub stale: Option<Summary>,
}

pub async fn apiserver_metrics(client: &Client) -> Result<Vec<super::metrics::MetricSample>> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| fail("building GET /metrics", e.to_string()))?;
    let text = client
        .request_text(req)
        .await
        .context("scraping the API server's /metrics")?;
    Ok(parse_prometheus(&text))
}

async fn snapshot(client: &Client) -> Result<ApiSnapshot> {
    Ok(api_snapshot(&apiserver_metrics(client).await?))
}

fn minutes(d: Duration) -> f64 {
    d.as_secs_f64() / 60.0
}

/// A pseudo-random delay below `max`, so signals land at different phases of the renew cycle.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % (max.as_millis().max(1) as u64))
}

pub async fn measure_baseline(cp: &ControlPlane, window: Duration) -> Result<Baseline> {
    let admin = cp.admin_client().await?;
    let before = snapshot(&admin).await?;
    tokio::time::sleep(window).await;
    let after = snapshot(&admin).await?;
    Ok(Baseline {
        window_s: window.as_secs_f64(),
        lease_requests_per_min: per_minute(&before.by_verb, &after.by_verb, minutes(window)),
        lease_watches: after.watches,
    })
}

/// Per-minute rates by verb with the control plane's own traffic taken out.
pub fn minus_baseline(
    rates: &BTreeMap<String, f64>,
    baseline: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    rates
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - baseline.get(k).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .collect()
}

/// Writes (PUT, POST, PATCH) and everything but WATCH, per minute.
pub fn writes_and_non_watch(rates: &BTreeMap<String, f64>) -> (f64, f64) {
    let writes = ["PUT", "POST", "PATCH"]
        .iter()
        .map(|v| rates.get(*v).copied().unwrap_or(0.0))
        .sum();
    let non_watch = rates
        .iter()
        .filter(|(v, _)| v.as_str() != "WATCH")
        .map(|(_, x)| x)
        .sum();
    (writes, non_watch)
}

/// Signals the leader and waits until a survivor's `/status` says it leads. A Lease watch names
/// the new holder, which is then polled tightly; every survivor is also polled every 5 ms, so
/// the result never depends on the watch alone.
async fn measure_takeover(
    admin: &Client,
    election: &Election,
    leader: usize,
    signal: libc::c_int,
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
    let sweep = Duration::from_millis(5);
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

/// "I lead" answers after the thaw at `thawed`: how many, and how long after it the last was
/// read (0 s without any).
pub fn stale_claims(samples: &[Sample], thawed: Instant) -> (usize, f64) {
    let yes: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= thawed && s.leader == Some(true))
        .collect();
    let last = yes
        .iter()
        .map(|s| s.answered.duration_since(thawed).as_secs_f64())
        .fold(0.0, f64::max);
    (yes.len(), last)
}

/// One election of `n` candidates of `imp` with `profile`.
#[allow(clippy::too_many_arguments)]
pub async fn scenario(
    cp: &ControlPlane,
    imp: Impl,
    bins: &Bins,
    n: usize,
    profile: Profile,
    rounds: usize,
    freeze_rounds: usize,
    window: Duration,
    baseline: &Baseline,
) -> Result<ScenarioResult> {
    let prefix = format!("bench-{}", imp.name());
    let mut spec = crate::elector::election(cp, &prefix, LEASE).await?;
    spec.timings = profile.timings();
    let log_dir = procs::scratch_dir(&prefix)?;
    let mut election = Election::start(imp, bins, spec, n, log_dir)?;
    let r = run(
        cp,
        &mut election,
        profile,
        rounds,
        freeze_rounds,
        window,
        baseline,
    )
    .await;
    let r = r.map_err(|e| {
        fail(
            e.to_string(),
            format!("{} output (last lines):\n{}", imp.name(), election.logs()),
        )
    });
    election.stop(Duration::from_secs(10)).await;
    r
}

fn stats_of(election: &Election) -> Result<Vec<ProcStats>> {
    election
        .electors
        .iter()
        .map(|e| proc_stats(e.proc.pid()))
        .collect()
}

async fn run(
    cp: &ControlPlane,
    election: &mut Election,
    profile: Profile,
    rounds: usize,
    freeze_rounds: usize,
    window: Duration,
    baseline: &Baseline,
) -> Result<ScenarioResult> {
    let name = election.imp.name();
    let timings = profile.timings();
    let n = election.electors.len();
    let admin = cp.admin_client().await?;
    election.wait_ready().await?;
    let leader = election.agreed_leader(READY_TIMEOUT).await?;
    // Let every follower's watch (or poll loop) settle before the idle window.
    tokio::time::sleep(timings.retry_period * 2 + Duration::from_secs(1)).await;

    // Idle window, everyone running.
    let m0 = snapshot(&admin).await?;
    let p0 = stats_of(election)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let m1 = snapshot(&admin).await?;
    let p1 = stats_of(election)?;
    let mins = minutes(t0.elapsed());
    let all = minus_baseline(
        &per_minute(&m0.by_verb, &m1.by_verb, mins),
        &baseline.lease_requests_per_min,
    );

    // The same window with the followers frozen: what the leader alone asks for.
    let followers: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
    for i in &followers {
        election.electors[*i].proc.signal(libc::SIGSTOP)?;
    }
    let frozen = async {
        let m2 = snapshot(&admin).await?;
        let t2 = Instant::now();
        tokio::time::sleep(window).await;
        let m3 = snapshot(&admin).await?;
        Ok::<_, Error>(per_minute(&m2.by_verb, &m3.by_verb, minutes(t2.elapsed())))
    }
    .await;
    for i in &followers {
        election.electors[*i].proc.signal(libc::SIGCONT)?;
    }
    let alone = minus_baseline(&frozen?, &baseline.lease_requests_per_min);
    let per_follower: BTreeMap<String, f64> = all
        .iter()
        .map(|(verb, v)| {
            let leader = alone.get(verb).copied().unwrap_or(0.0);
            (
                verb.clone(),
                ((v - leader) / followers.len().max(1) as f64).max(0.0),
            )
        })
        .collect();
    let (leader_writes, _) = writes_and_non_watch(&alone);
    let (_, follower_non_watch) = writes_and_non_watch(&per_follower);
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
            pss_kib: b.pss_kib,
            threads: b.threads,
            cpu_ms_per_min: b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e6 / mins,
        })
        .collect();
    eprintln!(
        "bench:   {name}: all {all:?}/min; leader alone {alone:?}/min; per follower {per_follower:?}/min"
    );

    // Handover (SIGTERM) and failover (SIGKILL) rounds; the signalled one is restarted, so N
    // stays constant.
    let timeout = timings.lease_duration * 3 + Duration::from_secs(30);
    let mut handovers = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..rounds {
        for (signal, kind) in [(libc::SIGTERM, "handover"), (libc::SIGKILL, "failover")] {
            let leader = election.agreed_leader(READY_TIMEOUT).await?;
            tokio::time::sleep(timings.retry_period + jitter(timings.retry_period)).await;
            let from = election.electors[leader].id.clone();
            let (secs, to) = measure_takeover(&admin, election, leader, signal, timeout).await?;
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
                "bench:   {name} round {round} {kind}: {:.3} s ({} → {}, {})",
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

    // Freeze the leader past its lease, thaw it once another leads, and ask it back to back.
    let mut freezes = Vec::new();
    let probe = Duration::from_secs(5);
    for round in 0..freeze_rounds {
        let leader = election.agreed_leader(READY_TIMEOUT).await?;
        tokio::time::sleep(timings.retry_period + jitter(timings.retry_period)).await;
        let frozen = &election.electors[leader];
        let stopped = Instant::now();
        frozen.proc.signal(libc::SIGSTOP)?;
        let others: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
        let taken = crate::wait::eventually(
            "another candidate to lead while the leader is frozen",
            timings.lease_duration * 3 + Duration::from_secs(30),
            || {
                let asks = others
                    .iter()
                    .map(|i| ask(*i, election.electors[*i].addr, probe));
                async move {
                    let s = futures::future::join_all(asks).await;
                    if s.iter().any(|s| s.leader == Some(true)) {
                        Ok(stopped.elapsed().as_secs_f64())
                    } else {
                        Err("nobody leads yet".to_string())
                    }
                }
            },
        )
        .await;
        let thawed = Instant::now();
        frozen.proc.signal(libc::SIGCONT)?;
        let takeover_s = taken?;
        let mut samples = Vec::new();
        let listen = (timings.retry_period * 2).max(Duration::from_secs(3));
        while thawed.elapsed() < listen {
            samples.push(ask(leader, frozen.addr, probe).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (stale_answers, stale_s) = stale_claims(&samples, thawed);
        let answers = samples.iter().filter(|s| s.leader.is_some()).count();
        eprintln!(
            "bench:   {name} round {round} freeze: taken over after {takeover_s:.2} s; after the thaw {stale_answers} \"I lead\" of {answers} answers, last at {stale_s:.3} s"
        );
        freezes.push(Freeze {
            round,
            takeover_s,
            stale_answers,
            stale_s,
            answers,
        });
    }

    let secs = |v: &[Takeover]| summarize(&v.iter().map(|t| t.seconds).collect::<Vec<_>>());
    Ok(ScenarioResult {
        implementation: election.imp,
        profile,
        candidates: n,
        timings_s: [
            timings.lease_duration.as_secs_f64(),
            timings.renew_deadline.as_secs_f64(),
            timings.retry_period.as_secs_f64(),
        ],
        window_s: mins * 60.0,
        leader_writes_per_min: leader_writes,
        follower_non_watch_per_min: follower_non_watch,
        failed_requests_per_min: ((m1.failed - m0.failed) / mins).max(0.0),
        watches: m1.watches - baseline.lease_watches,
        requests_per_min: all,
        leader_requests_per_min: alone,
        follower_requests_per_min: per_follower,
        processes,
        handover: secs(&handovers),
        failover: secs(&failovers),
        stale: summarize(&freezes.iter().map(|f| f.stale_s).collect::<Vec<_>>()),
        handovers,
        failovers,
        freezes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_attributed() {
        let m = |v: &[(&str, f64)]| -> BTreeMap<String, f64> {
            v.iter().map(|(k, x)| (k.to_string(), *x)).collect()
        };
        let r = minus_baseline(
            &m(&[("GET", 31.0), ("PUT", 30.0)]),
            &m(&[("GET", 2.0), ("LIST", 1.0)]),
        );
        assert_eq!(r, m(&[("GET", 29.0), ("PUT", 30.0)]));
        assert_eq!(
            minus_baseline(&m(&[("GET", 1.0)]), &m(&[("GET", 2.0)])),
            m(&[("GET", 0.0)]),
            "never negative"
        );
        assert_eq!(
            writes_and_non_watch(&m(&[
                ("GET", 30.0),
                ("PUT", 29.0),
                ("WATCH", 0.5),
                ("POST", 1.0)
            ])),
            (30.0, 60.0)
        );
    }

    #[test]
    fn stale_claims_after_the_thaw() {
        let t = Instant::now();
        let at = |sent_ms: u64, answered_ms: u64, leader: Option<bool>| Sample {
            who: 0,
            sent: t + Duration::from_millis(sent_ms),
            answered: t + Duration::from_millis(answered_ms),
            leader,
        };
        let thaw = t + Duration::from_millis(100);
        // Answers sent before the thaw do not count; the last "I lead" after it does.
        let samples = [
            at(0, 150, Some(true)),
            at(101, 120, Some(true)),
            at(121, 340, Some(true)),
            at(341, 350, Some(false)),
            at(351, 360, None),
        ];
        let (n, last) = stale_claims(&samples, thaw);
        assert_eq!(n, 2);
        assert!((last - 0.24).abs() < 1e-9, "{last}");
        assert_eq!(stale_claims(&samples[3..], thaw), (0, 0.0));
    }
}
