//! The built `elector` binary against a real control plane under everyday cluster actions that
//! are not faults of the elector: `kubectl delete lease` while the leader's view lags, two live
//! processes with one identity, and the handover and failover times CI holds the binary to.

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams};
use testenv::elector::{
    Elector, ElectorSpec, FAST, Pollers, Sample, agreed_leader, explain, get_lease,
    holder_and_transitions, leader_and_rest, overlapping_claims, wait_for_agreed_leader,
};
use testenv::{Result, fail, procs, shared};

const LEASE: &str = "my-app";
const ELECTION_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one poll of the survivors may take before it counts against the handover.
const PROBE: Duration = Duration::from_secs(5);

async fn spawn_all(spec: &ElectorSpec, ids: &[&str]) -> Result<Vec<Elector>> {
    let dir = procs::scratch_dir("electors")?;
    let electors = ids
        .iter()
        .map(|id| Elector::spawn(spec, id, &dir))
        .collect::<Result<Vec<_>>>()?;
    for e in &electors {
        e.wait_ready(ELECTION_TIMEOUT).await?;
    }
    Ok(electors)
}

/// Fails with the first pair of overlapping "I lead" answers, if any.
fn no_overlap(samples: &[Sample], ignore: impl Fn(&Sample) -> bool) -> Result<()> {
    let overlaps = overlapping_claims(samples, ignore);
    match overlaps.first() {
        None => Ok(()),
        Some(first) => Err(fail(
            "two electors claimed leadership at once",
            format!("{} overlapping claims, first: {first:?}", overlaps.len()),
        )),
    }
}

/// How long until one of `rest` says it leads (all agreeing), polling every 10 ms.
async fn time_to_new_leader(
    rest: &[&Elector],
    since: Instant,
    limit: Duration,
) -> Result<Duration> {
    loop {
        if agreed_leader(rest).await.is_ok() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit + PROBE {
            return Err(fail(
                "a successor",
                format!("none leads {:?} after the leader went", since.elapsed()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn deleting_the_lease_under_a_lagging_leader_never_makes_two_leaders() -> Result<()> {
    let cp = shared().await?;
    let spec = testenv::elector::election(cp, "elector-delete", LEASE).await?;
    let ns = spec.namespace.clone();
    let electors = spawn_all(&spec, &["my-app-7c9-a", "my-app-7c9-b", "my-app-7c9-c"]).await?;
    explain(
        async {
            let all: Vec<&Elector> = electors.iter().collect();
            let leader = wait_for_agreed_leader(&all, ELECTION_TIMEOUT).await?;
            let li = electors
                .iter()
                .position(|e| e.id == leader)
                .ok_or_else(|| fail("leader", "unknown id"))?;
            let admin = cp.admin_client().await?;
            let before = get_lease(&admin, &ns, LEASE)
                .await?
                .ok_or_else(|| fail("Lease", "missing"))?;
            let (_, t0) = holder_and_transitions(&before);

            let pollers = Pollers::start(&electors, Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Hold the leader's view up (it learns of the delete only after it thaws, well
            // within its renew deadline), and delete the Lease meanwhile, as `kubectl delete
            // lease` does to force a re-election.
            let stopped_at = Instant::now();
            electors[li].proc.signal(libc::SIGSTOP)?;
            Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &ns)
                .delete(LEASE, &DeleteParams::default())
                .await
                .map_err(|e| fail("deleting the Lease", e.to_string()))?;
            // A follower re-creates it at once; the leader thaws with the delete still unread.
            tokio::time::sleep(Duration::from_millis(800)).await;
            electors[li].proc.signal(libc::SIGCONT)?;
            let new = wait_for_agreed_leader(&all, ELECTION_TIMEOUT).await?;
            tokio::time::sleep(FAST.retry_period).await;
            let samples = pollers.finish().await?;
            // As in the freeze test: an answer decided just before SIGSTOP may be written after
            // SIGCONT; those are not judged.
            no_overlap(&samples, |s| {
                s.who == li && s.sent <= stopped_at && s.answered >= stopped_at
            })?;
            let after = get_lease(&admin, &ns, LEASE)
                .await?
                .ok_or_else(|| fail("Lease", "not re-created"))?;
            let (holder, t1) = holder_and_transitions(&after);
            assert_eq!(holder, new);
            if t1 <= t0 {
                return Err(fail(
                    "leaseTransitions after the delete",
                    format!("went from {t0} to {t1}: the fencing token must increase"),
                ));
            }
            Ok(())
        }
        .await,
        &electors,
    )
}

#[tokio::test]
async fn the_same_identity_started_twice_never_leads_twice() -> Result<()> {
    let cp = shared().await?;
    let spec = testenv::elector::election(cp, "elector-twin", LEASE).await?;
    let mut electors = spawn_all(&spec, &["my-app-0", "my-app-1"]).await?;
    let outcome = async {
        let leader =
            wait_for_agreed_leader(&electors.iter().collect::<Vec<_>>(), ELECTION_TIMEOUT).await?;
        let admin = cp.admin_client().await?;
        let (_, t0) = holder_and_transitions(
            &get_lease(&admin, &spec.namespace, LEASE)
                .await?
                .ok_or_else(|| fail("Lease", "missing"))?,
        );
        // The StatefulSet pod is recreated elsewhere while the old process still runs.
        electors.extend(spawn_all(&spec, &[leader.as_str()]).await?);
        let twin = electors.len() - 1;
        let original = electors
            .iter()
            .position(|e| e.id == leader)
            .ok_or_else(|| fail("leader", "unknown id"))?;
        let pollers = Pollers::start(&electors, PROBE);
        // Several lease durations with both running.
        tokio::time::sleep(FAST.lease_duration * 3).await;
        // The original dies; someone (perhaps the twin) takes over after the lease expires.
        let killed_at = Instant::now();
        electors[original].proc.signal(libc::SIGKILL)?;
        let rest: Vec<&Elector> = electors
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != original)
            .map(|(_, e)| e)
            .collect();
        let new = wait_for_agreed_leader(&rest, ELECTION_TIMEOUT).await?;
        tokio::time::sleep(FAST.retry_period).await;
        let samples = pollers.finish().await?;
        no_overlap(&samples, |_| false)?;
        // Stronger: while the original ran, the twin never claimed at all (it did not write the
        // record naming its identity), and the original kept leading.
        let while_both = |s: &&Sample| s.answered < killed_at;
        let twin_claims = samples
            .iter()
            .filter(while_both)
            .filter(|s| s.who == twin && s.leader == Some(true))
            .count();
        let original_claims = samples
            .iter()
            .filter(while_both)
            .filter(|s| s.who == original && s.leader == Some(true))
            .count();
        if twin_claims > 0 || original_claims == 0 {
            return Err(fail(
                "two processes with one identity",
                format!(
                    "while both ran the twin said \"I lead\" {twin_claims} times and the \
                     original {original_claims} times"
                ),
            ));
        }
        let (holder, t1) = holder_and_transitions(
            &get_lease(&admin, &spec.namespace, LEASE)
                .await?
                .ok_or_else(|| fail("Lease", "missing"))?,
        );
        assert_eq!(holder, new);
        if t1 <= t0 {
            return Err(fail(
                "leaseTransitions after the takeover",
                format!("{t0} → {t1}: a takeover, even under the same name, is a new transition"),
            ));
        }
        Ok(())
    }
    .await;
    explain(outcome, &electors)
}

#[tokio::test]
async fn graceful_handover_within_a_second_and_crash_failover_within_lease_plus_a_second()
-> Result<()> {
    let cp = shared().await?;
    let spec = testenv::elector::election(cp, "elector-times", LEASE).await?;
    let electors = spawn_all(&spec, &["my-app-9f-a", "my-app-9f-b", "my-app-9f-c"]).await?;
    explain(
        async {
            let all: Vec<&Elector> = electors.iter().collect();
            let leader = wait_for_agreed_leader(&all, ELECTION_TIMEOUT).await?;
            // Let the followers' watches settle.
            tokio::time::sleep(FAST.retry_period * 2).await;
            let (old, rest) = leader_and_rest(&electors, &leader)?;
            let term_at = Instant::now();
            old.proc.signal(libc::SIGTERM)?;
            let handover = time_to_new_leader(&rest, term_at, Duration::from_secs(1)).await?;
            if handover > Duration::from_secs(1) {
                return Err(fail(
                    "graceful handover",
                    format!("a watching follower led {handover:?} after SIGTERM (bound 1 s)"),
                ));
            }
            let second = agreed_leader(&rest).await.map_err(|e| fail("leader", e))?;
            tokio::time::sleep(FAST.retry_period * 2).await;
            let (crashed, last) = leader_and_rest(rest.iter().copied(), &second)?;
            let kill_at = Instant::now();
            crashed.proc.signal(libc::SIGKILL)?;
            let bound = FAST.lease_duration + Duration::from_secs(1);
            let failover = time_to_new_leader(&last, kill_at, bound).await?;
            if failover > bound {
                return Err(fail(
                    "crash failover",
                    format!("a follower led {failover:?} after SIGKILL (bound {bound:?})"),
                ));
            }
            println!("graceful handover {handover:?}, crash failover {failover:?}");
            Ok(())
        }
        .await,
        &electors,
    )
}

#[tokio::test]
async fn labels_written_often_neither_postpone_failover_nor_get_lost() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let cp = shared().await?;
    let spec = testenv::elector::election(cp, "elector-labels", LEASE).await?;
    let ns = spec.namespace.clone();
    let electors = spawn_all(&spec, &["my-app-4d-a", "my-app-4d-b"]).await?;
    explain(
        async {
            let all: Vec<&Elector> = electors.iter().collect();
            let leader = wait_for_agreed_leader(&all, ELECTION_TIMEOUT).await?;
            let admin = cp.admin_client().await?;
            let leases =
                Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin.clone(), &ns);
            // A GitOps tool or controller touching the Lease every half second, far more often
            // than the lease duration.
            let writer = {
                let leases = leases.clone();
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let patch = serde_json::json!({
                            "metadata": {
                                "labels": {"team": "payments"},
                                "annotations": {"gitops/sync": i.to_string()},
                            }
                        });
                        let _ = leases
                            .patch(LEASE, &PatchParams::default(), &Patch::Merge(&patch))
                            .await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
            };
            // Several renewals under the writer.
            tokio::time::sleep(FAST.lease_duration).await;
            let (old, rest) = leader_and_rest(&electors, &leader)?;
            let kill_at = Instant::now();
            old.proc.signal(libc::SIGKILL)?;
            let bound = FAST.lease_duration + Duration::from_secs(1);
            let failover = time_to_new_leader(&rest, kill_at, bound).await;
            writer.abort();
            let failover = failover?;
            if failover > bound {
                return Err(fail(
                    "failover under metadata writes",
                    format!("{failover:?} after SIGKILL (bound {bound:?}): label writes must not restart the expiry clock"),
                ));
            }
            // The survivor's takeover and renewals kept what the writer set.
            tokio::time::sleep(FAST.retry_period * 2).await;
            let lease = get_lease(&admin, &ns, LEASE)
                .await?
                .ok_or_else(|| fail("Lease", "missing"))?;
            let labels = lease.metadata.labels.clone().unwrap_or_default();
            let annotations = lease.metadata.annotations.clone().unwrap_or_default();
            if labels.get("team").map(String::as_str) != Some("payments")
                || !annotations.contains_key("gitops/sync")
            {
                return Err(fail(
                    "Lease metadata after the elector's writes",
                    format!("labels {labels:?}, annotations {annotations:?}"),
                ));
            }
            let (holder, _) = holder_and_transitions(&lease);
            assert_eq!(holder, rest[0].id);
            Ok(())
        }
        .await,
        &electors,
    )
}
