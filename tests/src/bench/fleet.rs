//! The fleet: many elections of 3 candidates on one API server, per implementation — how the
//! cost to the API server (requests, its and etcd's CPU) and the memory grow with the work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::candidates::{Bins, Election, Impl};
use super::metrics::per_minute;
use super::procfs::{comm, proc_stats};
use super::scenarios::{Baseline, apiserver_metrics, minus_baseline};
use crate::error::{Context, Result, fail};
use crate::{ControlPlane, procs};

pub const CANDIDATES: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct FleetResult {
    pub implementation: Impl,
    pub elections: usize,
    pub candidates_per_election: usize,
    /// From the first spawn to a candidate of every election answering that it leads.
    pub settle_s: f64,
    pub window_s: f64,
    /// Lease requests per second by verb, the control plane's own traffic subtracted.
    pub requests_per_s: BTreeMap<String, f64>,
    pub requests_per_s_total: f64,
    /// kube-apiserver + etcd CPU seconds per second over the window.
    pub apiserver_etcd_cpu: f64,
    /// VmRSS summed over every candidate.
    pub total_rss_kib: u64,
}

/// CPU nanoseconds of the control plane's kube-apiserver and etcd.
fn control_plane_cpu_ns(cp: &ControlPlane) -> u64 {
    cp.pids()
        .into_iter()
        .filter(|p| matches!(comm(*p).as_str(), "kube-apiserver" | "etcd"))
        .filter_map(|p| proc_stats(p).ok())
        .map(|s| s.cpu_ns)
        .sum()
}

/// kube-apiserver + etcd CPU seconds per second over `window`, nothing else running of ours.
pub async fn idle_control_plane_cpu(cp: &ControlPlane, window: Duration) -> f64 {
    let c0 = control_plane_cpu_ns(cp);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    (control_plane_cpu_ns(cp).saturating_sub(c0)) as f64 / 1e9 / t0.elapsed().as_secs_f64()
}

pub async fn fleet(
    cp: &ControlPlane,
    imp: Impl,
    bins: &Bins,
    elections: usize,
    window: Duration,
    baseline: &Baseline,
) -> Result<FleetResult> {
    let prefix = format!("fleet-{}", imp.name());
    let spec = crate::elector::election(cp, &prefix, "fleet-00").await?;
    let log_dir = procs::scratch_dir(&prefix)?;
    let start = Instant::now();
    let mut all = Vec::new();
    for e in 0..elections {
        let mut s = spec.clone();
        s.lease = format!("fleet-{e:02}");
        s.timings = contract::Timings::default();
        all.push(Election::start(imp, bins, s, CANDIDATES, log_dir.clone())?);
    }
    let r = measure(
        cp,
        &spec.namespace,
        &all,
        start,
        elections,
        window,
        baseline,
    )
    .await;
    let r = r.map_err(|e| {
        let logs: Vec<String> = all.iter().take(2).map(|e| e.logs()).collect();
        fail(
            e.to_string(),
            format!(
                "{} output (first elections):\n{}",
                imp.name(),
                logs.join("\n")
            ),
        )
    });
    let stops = all.iter().map(|e| e.stop(Duration::from_secs(10)));
    futures::future::join_all(stops).await;
    let mut r = r?;
    r.implementation = imp;
    Ok(r)
}

async fn measure(
    cp: &ControlPlane,
    namespace: &str,
    all: &[Election],
    start: Instant,
    elections: usize,
    window: Duration,
    baseline: &Baseline,
) -> Result<FleetResult> {
    let admin = cp.admin_client().await?;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), namespace);
    let procs: Vec<&crate::procs::Proc> = all
        .iter()
        .flat_map(|e| e.electors.iter().map(|c| &c.proc))
        .collect();
    let candidates: Vec<(usize, std::net::SocketAddr)> = all
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.electors.iter().map(move |c| (i, c.addr)))
        .collect();
    let settle_s = crate::wait::eventually_while_running(
        "a leader answering in every election of the fleet",
        Duration::from_secs(600),
        &procs,
        || {
            let candidates = candidates.clone();
            async move {
                let asks = candidates
                    .iter()
                    .map(|(i, addr)| crate::elector::ask(*i, *addr, Duration::from_secs(5)));
                let answers = futures::future::join_all(asks).await;
                let mut led: Vec<usize> = answers
                    .iter()
                    .filter(|s| s.leader == Some(true))
                    .map(|s| s.who)
                    .collect();
                led.dedup();
                if led.len() >= elections {
                    Ok(start.elapsed().as_secs_f64())
                } else {
                    Err(format!(
                        "{} of {elections} elections have a leader",
                        led.len()
                    ))
                }
            }
        },
    )
    .await?;
    // Every Lease names a holder (what the API server stores, beside what the candidates say).
    let list = leases
        .list(&ListParams::default())
        .await
        .context("listing the fleet's Leases")?;
    let held = list
        .items
        .iter()
        .filter(|l| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(|h| !h.is_empty())
        })
        .count();
    if held < elections {
        return Err(fail(
            "the fleet's Leases",
            format!("{held} of {elections} have a holder"),
        ));
    }
    // Past the first renewals and the followers' first retries.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m0 = super::metrics::api_snapshot(&apiserver_metrics(&admin).await?);
    let c0 = control_plane_cpu_ns(cp);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let m1 = super::metrics::api_snapshot(&apiserver_metrics(&admin).await?);
    let c1 = control_plane_cpu_ns(cp);
    let secs = t0.elapsed().as_secs_f64();
    for p in &procs {
        p.ensure_running()?;
    }
    let total_rss_kib = procs
        .iter()
        .map(|p| proc_stats(p.pid()).map(|s| s.rss_kib))
        .collect::<Result<Vec<u64>>>()?
        .into_iter()
        .sum();
    let per_s: BTreeMap<String, f64> = minus_baseline(
        &per_minute(&m0.by_verb, &m1.by_verb, secs / 60.0),
        &baseline.lease_requests_per_min,
    )
    .into_iter()
    .map(|(k, v)| (k, v / 60.0))
    .collect();
    Ok(FleetResult {
        implementation: Impl::Project,
        elections,
        candidates_per_election: CANDIDATES,
        settle_s,
        window_s: secs,
        requests_per_s_total: per_s.values().sum(),
        requests_per_s: per_s,
        apiserver_etcd_cpu: c1.saturating_sub(c0) as f64 / 1e9 / secs,
        total_rss_kib,
    })
}
