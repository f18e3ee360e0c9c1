//! The built `elector` binary against a real control plane: 3 candidate processes per test, each
//! with its own pod identity, running as ServiceAccount `leader-elector` bound by the ClusterRole
//! shipped in manifests/base/elector-clusterrole.yaml.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, WatchEvent, WatchParams};
use testenv::elector::{
    Elector, ElectorSpec, FAST, Pollers, explain, get_lease, holder_and_transitions,
    leader_and_rest, overlapping_claims, wait_for_agreed_leader,
};
use testenv::{ControlPlane, Result, eventually, fail, procs, shared};

const LEASE: &str = "my-app";
const ELECTION_TIMEOUT: Duration = Duration::from_secs(90);

/// A namespace with ServiceAccount `leader-elector` bound to the shipped elector ClusterRole.
async fn election(cp: &ControlPlane, prefix: &str) -> Result<(String, ElectorSpec)> {
    let spec = testenv::elector::election(cp, prefix, LEASE).await?;
    Ok((spec.namespace.clone(), spec))
}

/// Three candidates named like pods of one ReplicaSet.
async fn three(spec: &ElectorSpec) -> Result<Vec<Elector>> {
    let dir = procs::scratch_dir("electors")?;
    let electors = ["a", "b", "c"]
        .iter()
        .map(|s| Elector::spawn(spec, &format!("my-app-5d8f7c9b4-{s}"), &dir))
        .collect::<Result<Vec<_>>>()?;
    for e in &electors {
        e.wait_ready(ELECTION_TIMEOUT).await?;
    }
    Ok(electors)
}

fn refs(electors: &[Elector]) -> Vec<&Elector> {
    electors.iter().collect()
}

/// The Lease of the election, which must exist.
async fn current_lease(admin: &Client, ns: &str) -> Result<Lease> {
    get_lease(admin, ns, LEASE)
        .await?
        .ok_or_else(|| fail("Lease", "missing"))
}

/// Records every version of the Lease from `rv` on into `seen` (abort the task to stop).
fn record_lease(
    api: Api<Lease>,
    rv: String,
    seen: Arc<Mutex<Vec<Lease>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let wp = WatchParams::default().fields(&format!("metadata.name={LEASE}"));
        let Ok(stream) = api.watch(&wp, &rv).await else {
            return;
        };
        let mut stream = stream.boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            if let WatchEvent::Added(l) | WatchEvent::Modified(l) = ev {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        }
    })
}

/// The recorded Lease versions as (holder, transitions).
fn history(seen: &Mutex<Vec<Lease>>) -> Vec<(String, i32)> {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(holder_and_transitions)
        .collect()
}

#[tokio::test]
async fn one_leader_all_agree_and_sigterm_hands_over_with_a_release() -> Result<()> {
    let cp = shared().await?;
    let (ns, spec) = election(cp, "elector-term").await?;
    let electors = three(&spec).await?;
    explain(
        async {
            let all = refs(&electors);
            let leader = wait_for_agreed_leader(&all, ELECTION_TIMEOUT).await?;
            let admin = cp.admin_client().await?;
            let lease = current_lease(&admin, &ns).await?;
            let (holder, t0) = holder_and_transitions(&lease);
            assert_eq!(holder, leader, "the Lease names the leader every elector reports");
            // The classic log line, on every candidate.
            let line = format!("{leader} is the leader");
            eventually("every elector to log the leader", Duration::from_secs(30), || async {
                match electors.iter().find(|e| !e.output().contains(&line)) {
                    None => Ok(()),
                    Some(e) => Err(format!("{} has not logged {line:?}", e.id)),
                }
            })
            .await?;

            let rv = lease.metadata.resource_version.clone().unwrap_or_default();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let watch = record_lease(Api::namespaced(admin.clone(), &ns), rv, seen.clone());
            let (old, rest) = leader_and_rest(&electors, &leader)?;
            old.proc.signal(libc::SIGTERM)?;
            let status = old.proc.wait_exit(Duration::from_secs(30)).await;
            assert_eq!(status.and_then(|s| s.code()), Some(0), "SIGTERM → release → exit 0");

            let new = wait_for_agreed_leader(&rest, ELECTION_TIMEOUT).await?;
            assert_ne!(new, leader);
            let lease = current_lease(&admin, &ns).await?;
            assert_eq!(holder_and_transitions(&lease), (new.clone(), t0 + 1));
            // Let the watch deliver the last versions, then inspect the history.
            tokio::time::sleep(Duration::from_secs(2)).await;
            watch.abort();
            let history = history(&seen);
            let released = history.iter().position(|(h, t)| h.is_empty() && *t == t0);
            let taken = history.iter().position(|(h, t)| *h == new && *t == t0 + 1);
            match (released, taken) {
                (Some(r), Some(t)) if r < t => Ok(()),
                _ => Err(fail(
                    "Lease history after SIGTERM",
                    format!("expected a release (holder \"\", transitions {t0}) then {new} with {}: {history:?}", t0 + 1),
                )),
            }
        }
        .await,
        &electors,
    )
}

/// MicroTime → seconds since the epoch, as f64.
fn micros(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> Option<f64> {
    t.as_ref().map(|m| m.0.as_millisecond() as f64 / 1000.0)
}

#[tokio::test]
async fn sigkill_fails_over_only_after_the_lease_expires() -> Result<()> {
    let cp = shared().await?;
    let (ns, spec) = election(cp, "elector-kill").await?;
    let electors = three(&spec).await?;
    explain(
        async {
            let leader = wait_for_agreed_leader(&refs(&electors), ELECTION_TIMEOUT).await?;
            let admin = cp.admin_client().await?;
            let lease = current_lease(&admin, &ns).await?;
            let (_, t0) = holder_and_transitions(&lease);
            let rv = lease.metadata.resource_version.clone().unwrap_or_default();
            let seen = Arc::new(Mutex::new(vec![lease]));
            let watch = record_lease(Api::namespaced(admin.clone(), &ns), rv, seen.clone());

            let (old, rest) = leader_and_rest(&electors, &leader)?;
            old.proc.signal(libc::SIGKILL)?;
            let new = wait_for_agreed_leader(&rest, ELECTION_TIMEOUT).await?;
            assert_ne!(new, leader);
            let lease = current_lease(&admin, &ns).await?;
            assert_eq!(holder_and_transitions(&lease), (new.clone(), t0 + 1), "one transition");
            watch.abort();

            // No release happened, so the takeover must wait for expiry: the new acquireTime is
            // at least a lease duration after the killed leader's last renewTime (same host clock;
            // 0.5 s tolerance for MicroTime rounding).
            let versions = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let last_renew = versions
                .iter()
                .filter(|l| holder_and_transitions(l).0 == leader)
                .filter_map(|l| micros(&l.spec.as_ref().and_then(|s| s.renew_time.clone())))
                .fold(f64::MIN, f64::max);
            let acquired = micros(&lease.spec.as_ref().and_then(|s| s.acquire_time.clone()))
                .ok_or_else(|| fail("new Lease", "no acquireTime"))?;
            let gap = acquired - last_renew;
            let lease_secs = FAST.lease_duration.as_secs_f64();
            if versions.iter().any(|l| holder_and_transitions(l).0.is_empty()) {
                return Err(fail("Lease history", "a SIGKILLed leader cannot release the Lease"));
            }
            if gap < lease_secs - 0.5 {
                return Err(fail(
                    "failover after SIGKILL",
                    format!("{new} acquired {gap:.2}s after {leader}'s last renew, before the {lease_secs}s lease expired"),
                ));
            }
            Ok(())
        }
        .await,
        &electors,
    )
}

#[tokio::test]
async fn frozen_leader_never_claims_leadership_alongside_its_successor() -> Result<()> {
    let cp = shared().await?;
    let (_ns, spec) = election(cp, "elector-stop").await?;
    let electors = three(&spec).await?;
    explain(
        async {
            let leader = wait_for_agreed_leader(&refs(&electors), ELECTION_TIMEOUT).await?;
            let li = electors
                .iter()
                .position(|e| e.id == leader)
                .ok_or_else(|| fail("leader", "unknown id"))?;
            let old = &electors[li];

            // Every elector is asked "do you lead?" back to back for the whole test. A question
            // to the frozen process waits (up to 60 s) and is answered after the thaw.
            let pollers = Pollers::start(&electors, Duration::from_secs(60));
            tokio::time::sleep(Duration::from_secs(1)).await;

            let stopped_at = Instant::now();
            old.proc.signal(libc::SIGSTOP)?;
            // One question surely sent during the freeze, answered only after the thaw.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let during_freeze =
                tokio::spawn(testenv::elector::ask(li, old.addr, Duration::from_secs(60)));
            // Frozen past the lease duration, until a successor leads (and a bit longer).
            let rest: Vec<&Elector> = electors.iter().filter(|e| e.id != leader).collect();
            let new = wait_for_agreed_leader_among(&rest, &leader).await;
            tokio::time::sleep(FAST.retry_period * 2).await;
            let thawed_at = Instant::now();
            old.proc.signal(libc::SIGCONT)?;
            // Keep asking through the thaw and after it.
            tokio::time::sleep(FAST.lease_duration + Duration::from_secs(2)).await;
            let polled = pollers.finish().await?;
            let mut samples = vec![
                during_freeze
                    .await
                    .map_err(|e| fail("probe", e.to_string()))?,
            ];
            samples.extend(polled);
            let new = new?;
            assert!(
                stopped_at.elapsed() > FAST.lease_duration,
                "frozen past the lease duration"
            );

            // A question in flight at the very instant of SIGSTOP may have been answered (yes,
            // rightly) just before the freeze but written to the socket after the thaw; no server
            // can make decide-and-write atomic, so those few samples are not judged. Every question
            // sent to the frozen process after the SIGSTOP is judged.
            let in_flight_at_stop = |s: &testenv::elector::Sample| {
                s.who == li && s.sent <= stopped_at && s.answered >= stopped_at
            };
            let overlaps = overlapping_claims(&samples, in_flight_at_stop);
            if !overlaps.is_empty() {
                return Err(fail(
                    "two electors claimed leadership at once",
                    format!(
                        "{} overlapping claims, first: {:?}",
                        overlaps.len(),
                        overlaps[0]
                    ),
                ));
            }
            // The scenario really happened: the frozen leader was asked during the freeze and
            // answered after the thaw, and the successor claimed leadership meanwhile.
            let ni = electors
                .iter()
                .position(|e| e.id == new)
                .ok_or_else(|| fail("new leader", "unknown id"))?;
            let asked_frozen = samples
                .iter()
                .filter(|s| {
                    s.who == li
                        && s.sent > stopped_at
                        && s.sent < thawed_at
                        && s.answered > thawed_at
                        && s.leader.is_some()
                })
                .count();
            let successor_claims = samples
                .iter()
                .filter(|s| s.who == ni && s.leader == Some(true) && s.sent > stopped_at)
                .count();
            let after_thaw = samples
                .iter()
                .filter(|s| s.who == li && s.sent > thawed_at && s.leader.is_some())
                .count();
            assert!(
                asked_frozen >= 1,
                "a question to the frozen leader was answered after the thaw"
            );
            assert!(
                successor_claims >= 1,
                "the successor claimed leadership while the old one was frozen"
            );
            assert!(
                after_thaw >= 1,
                "the thawed elector answered fresh questions"
            );
            // And afterwards all three agree again.
            let agreed = wait_for_agreed_leader(&refs(&electors), ELECTION_TIMEOUT).await?;
            assert_eq!(agreed, new, "the successor keeps leading after the thaw");
            Ok(())
        }
        .await,
        &electors,
    )
}

/// Waits until one of `rest` (not `old`) leads, judged by /status and GET / of `rest` only (the
/// frozen process cannot answer).
async fn wait_for_agreed_leader_among(rest: &[&Elector], old: &str) -> Result<String> {
    let new = wait_for_agreed_leader(rest, ELECTION_TIMEOUT).await?;
    if new == old {
        return Err(fail(
            "successor",
            format!("{old} is still reported as leader"),
        ));
    }
    Ok(new)
}

#[tokio::test]
async fn a_service_account_without_the_rbac_gets_one_clear_error() -> Result<()> {
    let cp = shared().await?;
    let ns = cp.create_namespace("elector-norbac").await?;
    cp.create_service_account(&ns, "no-rbac").await?;
    let spec = ElectorSpec {
        lease: LEASE.into(),
        namespace: ns.clone(),
        kubeconfig: cp.service_account_kubeconfig(&ns, "no-rbac").await?,
        timings: FAST,
        extra_args: vec![],
    };
    let dir = procs::scratch_dir("electors")?;
    let e = Elector::spawn(&spec, "lonely-0", &dir)?;
    let electors = [e];
    let e = &electors[0];
    explain(
        async {
            let line = eventually(
                "a clear forbidden error on stderr",
                Duration::from_secs(60),
                || async {
                    let stderr = e.proc.stderr_text();
                    stderr
                        .lines()
                        .find(|l| {
                            let l = l.to_lowercase();
                            l.contains("forbidden")
                                && l.contains("leases")
                                && ["get", "create", "update", "list", "watch"]
                                    .iter()
                                    .any(|v| l.contains(v))
                        })
                        .map(str::to_string)
                        .ok_or_else(|| format!("stderr so far: {}", procs::last_lines(&stderr, 5)))
                },
            )
            .await?;
            assert!(line.contains(&ns), "the line names the namespace: {line}");
            // It never claims leadership and names no leader.
            assert!(
                !e.is_leader().await?,
                "unauthorized elector claims leadership"
            );
            assert_eq!(e.leader().await?, "");
            Ok(())
        }
        .await,
        &electors,
    )
}
