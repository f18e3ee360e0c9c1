//! The elector while the API server goes away and comes back. This test stops the API server,
//! so it has a control plane of its own (its own test binary).

use std::time::{Duration, Instant};

use testenv::elector::{Elector, FAST, Pollers, election, explain, wait_for_agreed_leader};
use testenv::{ControlPlane, Result, fail, procs};

const ELECTION_TIMEOUT: Duration = Duration::from_secs(90);
/// Slack for polling and a loaded machine on top of the renew deadline.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test]
async fn leader_steps_down_within_the_renew_deadline_and_an_election_follows_the_return()
-> Result<()> {
    let mut cp = ControlPlane::start().await?;
    let spec = election(&cp, "elector-outage", "my-app").await?;
    let dir = procs::scratch_dir("electors")?;
    let electors = ["a", "b", "c"]
        .iter()
        .map(|s| Elector::spawn(&spec, &format!("my-app-6b7f9d-{s}"), &dir))
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<&Elector> = electors.iter().collect();

    let outcome = async {
        for e in &electors {
            e.wait_ready(ELECTION_TIMEOUT).await?;
        }
        let leader = wait_for_agreed_leader(&all, ELECTION_TIMEOUT).await?;

        let pollers = Pollers::start(&electors, Duration::from_secs(5));
        // Let the pollers see the leader leading first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A crisp outage: the API server stops answering now (a graceful stop drains for a while).
        cp.kill_apiserver()?;
        let down_at = Instant::now();
        // Down for well past the lease duration.
        tokio::time::sleep(FAST.lease_duration + FAST.renew_deadline + SLACK).await;
        let up_from = Instant::now();
        let samples = pollers.finish().await?;
        // Nobody may claim leadership once the renew deadline has passed without the API server
        // (the last successful renew started before `down_at`).
        let deadline = down_at + FAST.renew_deadline + SLACK;
        if let Some(s) = samples.iter().find(|s| s.leader == Some(true) && s.answered > deadline) {
            let who = &electors[s.who].id;
            return Err(fail(
                "leadership during the outage",
                format!("{who} (leader before: {leader}) said it leads {:?} after the API server stopped", s.answered - down_at),
            ));
        }
        assert!(
            samples.iter().any(|s| s.leader == Some(true) && s.answered <= down_at),
            "the leader claimed leadership before the outage"
        );
        let late_answers = samples.iter().filter(|s| s.leader.is_some() && s.sent > deadline).count();
        assert!(late_answers > 0, "the electors kept answering during the outage");

        cp.start_apiserver().await?;
        let after = wait_for_agreed_leader(&all, ELECTION_TIMEOUT).await?;
        eprintln!(
            "leader before the outage: {leader}; after: {after} ({:?} after the API server returned)",
            up_from.elapsed()
        );
        Ok(())
    }
    .await;
    let outcome = explain(outcome, &electors);

    // Stopping the control plane leaves nothing behind.
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    drop(electors);
    cp.stop().await?;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "pid {pid} still runs: {stat}"
        );
    }
    assert!(!dir.exists(), "{} removed", dir.display());
    outcome
}
