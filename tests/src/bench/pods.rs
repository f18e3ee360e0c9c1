//! Real pods on the real cluster (the harness's single-node cluster, the webhook installed as a
//! user installs it, the example app's 3 replicas): `kubectl delete pod <leader>` → time until
//! the Lease names a new holder; how often the leader moves per `kubectl rollout restart`. Only
//! the project runs here: the peer has no image. Everything is read from the cluster (the
//! Lease, pod statuses), never from what the elector prints.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::stats::{Summary, summarize};
use crate::cluster::Cluster;
use crate::error::{Result, fail};
use crate::wait::eventually;

const APP: &str = "my-app";
const TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Serialize)]
pub struct LeaderDelete {
    pub from: String,
    pub to: String,
    /// From `kubectl delete pod` returning to the Lease naming another pod.
    pub seconds: f64,
    /// From `kubectl delete pod` returning to the new holder's elector answering that it leads
    /// (`GET /` through `kubectl exec`, as the app asks).
    pub answered_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// Holders the Lease named, in order, from before the restart until its rollout finished.
    pub holders: Vec<String>,
    pub leader_moves: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodsResult {
    pub deletes: Vec<LeaderDelete>,
    pub delete: Option<Summary>,
    pub delete_answered: Option<Summary>,
    pub restarts: Vec<Restart>,
}

/// Leader moves in a sequence of observed holders: changes to another non-empty holder (an
/// empty holder between two is a release, not a move).
pub fn leader_moves(holders: &[String]) -> usize {
    let named: Vec<&String> = holders.iter().filter(|h| !h.is_empty()).collect();
    named.windows(2).filter(|w| w[0] != w[1]).count()
}

async fn holder(c: &Cluster, ns: &str) -> std::result::Result<String, String> {
    let out = c
        .kubectl(
            &[
                "get",
                "lease",
                APP,
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.success {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(out.stderr)
    }
}

/// The example app's 3 ready pods and the one the Lease names.
async fn ready_and_leader(c: &Cluster, ns: &str) -> Result<(Vec<String>, String)> {
    let pods =
        crate::e2e::ready_pods(c, ns, "app=my-app", 3, crate::cluster::pods::not_ready).await?;
    let leader = crate::e2e::leader_among(c, ns, APP, &pods).await?;
    let names = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    Ok((names, leader))
}

pub async fn real_pods(deletes: usize, restarts: usize) -> Result<PodsResult> {
    eprintln!("bench:   starting the real cluster");
    let c = Cluster::start().await?;
    let r = run(&c, deletes, restarts).await;
    let r = r.map_err(|e| fail(e.to_string(), c.logs_tail(20)));
    let _ = c.stop().await;
    r
}

async fn run(c: &Cluster, deletes: usize, restarts: usize) -> Result<PodsResult> {
    crate::e2e::install_webhook(c).await?;
    let ns = c.create_namespace("bench-my-app").await?;
    crate::e2e::apply_example(c, &ns).await?;
    let mut out = Vec::new();
    for _ in 0..deletes {
        let (pods, from) = ready_and_leader(c, &ns).await?;
        let others: Vec<String> = pods.iter().filter(|p| **p != from).cloned().collect();
        c.kubectl_ok(&["delete", "pod", "-n", &ns, &from, "--wait=false"], None)
            .await?;
        let t0 = Instant::now();
        let to = eventually("another pod to hold the Lease", TIMEOUT, || async {
            let h = holder(c, &ns).await?;
            if others.contains(&h) {
                Ok(h)
            } else {
                Err(format!("holder {h:?}"))
            }
        })
        .await?;
        let seconds = t0.elapsed().as_secs_f64();
        eventually(
            "the new holder to answer that it leads",
            TIMEOUT,
            || async {
                match crate::e2e::elector_leader(c, &ns, &to).await? {
                    said if said == to => Ok(()),
                    said => Err(format!("{to} answers {said:?}")),
                }
            },
        )
        .await?;
        let answered_seconds = t0.elapsed().as_secs_f64();
        eprintln!(
            "bench:   kubectl delete pod {from}: {to} holds the Lease after {seconds:.2} s, \
             answers it leads after {answered_seconds:.2} s"
        );
        out.push(LeaderDelete {
            from,
            to,
            seconds,
            answered_seconds,
        });
    }
    let mut rs = Vec::new();
    for _ in 0..restarts {
        let (_, first) = ready_and_leader(c, &ns).await?;
        let t0 = Instant::now();
        c.kubectl_ok(
            &["-n", &ns, "rollout", "restart", "deployment/my-app"],
            None,
        )
        .await?;
        let status_args = [
            "-n",
            ns.as_str(),
            "rollout",
            "status",
            "deployment/my-app",
            "--timeout=300s",
        ];
        let status = c.kubectl(&status_args, None);
        tokio::pin!(status);
        let mut holders = vec![first];
        let done = loop {
            tokio::select! {
                r = &mut status => break r?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Ok(h) = holder(c, &ns).await
                        && holders.last() != Some(&h)
                    {
                        holders.push(h);
                    }
                }
            }
        };
        if !done.success {
            return Err(fail("kubectl rollout status", done.stderr));
        }
        // Until the new pods agree on a leader among themselves.
        let (_, last) = ready_and_leader(c, &ns).await?;
        if holders.last() != Some(&last) {
            holders.push(last);
        }
        let r = Restart {
            leader_moves: leader_moves(&holders),
            holders,
            seconds: t0.elapsed().as_secs_f64(),
        };
        eprintln!(
            "bench:   kubectl rollout restart: {} leader move(s) in {:.0} s ({:?})",
            r.leader_moves, r.seconds, r.holders
        );
        rs.push(r);
    }
    Ok(PodsResult {
        delete: summarize(&out.iter().map(|d| d.seconds).collect::<Vec<_>>()),
        delete_answered: summarize(&out.iter().map(|d| d.answered_seconds).collect::<Vec<_>>()),
        deletes: out,
        restarts: rs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_count_changes_of_named_holders() {
        let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(leader_moves(&h(&[])), 0);
        assert_eq!(leader_moves(&h(&["a"])), 0);
        assert_eq!(leader_moves(&h(&["a", "b"])), 1);
        assert_eq!(
            leader_moves(&h(&["a", "", "b"])),
            1,
            "a release is not a move"
        );
        assert_eq!(leader_moves(&h(&["a", "", "a"])), 0);
        assert_eq!(leader_moves(&h(&["a", "b", "c", "d"])), 3);
    }
}
