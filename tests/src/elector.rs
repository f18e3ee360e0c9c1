//! Running the project's `elector` binary against a control plane and asking it who leads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use contract::{Timings, flags, http as api};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;

use crate::error::{Context, Error, Result, fail};
use crate::procs::Proc;
use crate::wait::eventually_while_running;
use crate::{ControlPlane, control_plane, httpc, manifests};

/// Short timings keep the tests fast; they satisfy lease > renew > retry.
pub const FAST: Timings = Timings {
    lease_duration: Duration::from_secs(4),
    renew_deadline: Duration::from_secs(3),
    retry_period: Duration::from_secs(1),
};

/// How long one HTTP probe of an elector may take before it counts as unanswered.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every elector of one election shares.
#[derive(Debug, Clone)]
pub struct ElectorSpec {
    pub lease: String,
    pub namespace: String,
    /// KUBECONFIG the process runs with (usually a ServiceAccount's).
    pub kubeconfig: PathBuf,
    pub timings: Timings,
    pub extra_args: Vec<String>,
}

/// A namespace `<prefix>-<random>` set up as the webhook sets one up for injected pods:
/// ServiceAccount `leader-elector` bound to the shipped elector ClusterRole (applied once per
/// control plane). The spec runs as that ServiceAccount, with [`FAST`] timings and no extra args.
pub async fn election(cp: &ControlPlane, prefix: &str, lease: &str) -> Result<ElectorSpec> {
    manifests::ensure_elector_cluster_roles(cp).await?;
    let ns = cp.create_namespace(prefix).await?;
    cp.create_service_account(&ns, contract::SERVICE_ACCOUNT)
        .await?;
    manifests::bind_elector_role(cp, &ns, contract::SERVICE_ACCOUNT).await?;
    let kubeconfig = cp
        .service_account_kubeconfig(&ns, contract::SERVICE_ACCOUNT)
        .await?;
    Ok(ElectorSpec {
        lease: lease.into(),
        namespace: ns,
        kubeconfig,
        timings: FAST,
        extra_args: vec![],
    })
}

/// The elector's command line for one candidate.
pub fn elector_args(spec: &ElectorSpec, id: &str, addr: SocketAddr) -> Vec<String> {
    let mut args = vec![
        format!("--{}={}", flags::ELECTION, spec.lease),
        format!("--{}={}", flags::ELECTION_NAMESPACE, spec.namespace),
        format!("--{}={id}", flags::ID),
        format!("--{}={addr}", flags::HTTP),
    ];
    args.extend(spec.timings.flag_args());
    args.extend(spec.extra_args.iter().cloned());
    args
}

/// One running elector process.
pub struct Elector {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Elector {
    /// Starts `elector` as candidate `id` on a free loopback port.
    pub fn spawn(spec: &ElectorSpec, id: &str, log_dir: &Path) -> Result<Elector> {
        Self::spawn_with_env(spec, id, &[], log_dir)
    }

    /// As [`Self::spawn`], with extra environment (`POD_NAME` for `--leader-label`).
    pub fn spawn_with_env(
        spec: &ElectorSpec,
        id: &str,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> Result<Elector> {
        let addr = control_plane::free_loopback_addr()?;
        let args = elector_args(spec, id, addr);
        Self::start(id, addr, &args, &spec.kubeconfig, env, log_dir)
    }

    /// Starts `elector <args…>` as candidate `id` answering on `addr` (which `args` must name),
    /// with `KUBECONFIG=kubeconfig`, `RUST_LOG=info` and `env`.
    pub fn start(
        id: &str,
        addr: SocketAddr,
        args: &[String],
        kubeconfig: &Path,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> Result<Elector> {
        let bin = crate::project_binary("elector")?;
        let mut all_env = vec![
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("RUST_LOG", "info".to_string()),
        ];
        all_env.extend(env.iter().cloned());
        let proc = Proc::spawn(&format!("elector-{id}"), &bin, args, &all_env, log_dir)?;
        Ok(Elector {
            id: id.to_string(),
            addr,
            proc,
        })
    }

    /// `GET /` → the leader's name (`""` when none), checking the exact classic body shape.
    pub async fn leader(&self) -> Result<String> {
        let r = httpc::get(self.addr, api::LEADER_PATH, PROBE_TIMEOUT).await?;
        let context = format!("GET / of elector {}", self.id);
        if r.status != 200 {
            return Err(fail(context, format!("status {}: {}", r.status, r.body)));
        }
        parse_leader_body(&r.body).map_err(|e| fail(context, e))
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Result<serde_json::Value> {
        let r = httpc::get(self.addr, api::STATUS_PATH, PROBE_TIMEOUT).await?;
        let context = format!("GET /status of elector {}", self.id);
        if r.status != 200 {
            return Err(fail(context, format!("status {}: {}", r.status, r.body)));
        }
        serde_json::from_str(&r.body).map_err(|e| fail(context, format!("{e}: {}", r.body)))
    }

    /// `is_leader` from `GET /status`.
    pub async fn is_leader(&self) -> Result<bool> {
        let s = self.status().await?;
        s.get("is_leader").and_then(|v| v.as_bool()).ok_or_else(|| {
            fail(
                format!("/status of {}", self.id),
                format!("no boolean is_leader in {s}"),
            )
        })
    }

    /// Waits until `GET /readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let addr = self.addr;
        eventually_while_running(
            &format!("elector {} to be ready", self.id),
            timeout,
            &[&self.proc],
            || async move {
                match httpc::get(addr, api::READYZ_PATH, PROBE_TIMEOUT).await {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("{} {}", r.status, r.body)),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    /// Every line of stdout and stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.proc.stdout_text(), self.proc.stderr_text())
    }
}

/// `e` with the last lines of each elector's output, so a red test explains itself.
pub fn with_output<'a>(e: Error, electors: impl IntoIterator<Item = &'a Elector>) -> Error {
    let logs: Vec<String> = electors
        .into_iter()
        .map(|x| x.proc.output_tail(30))
        .collect();
    fail(
        e.to_string(),
        format!("elector output:\n{}", logs.join("\n")),
    )
}

/// `r`, a failure with the electors' output appended (see [`with_output`]).
pub fn explain<'a, T>(r: Result<T>, electors: impl IntoIterator<Item = &'a Elector>) -> Result<T> {
    r.map_err(|e| with_output(e, electors))
}

/// The elector with id `leader` and all the others.
pub fn leader_and_rest<'a>(
    electors: impl IntoIterator<Item = &'a Elector>,
    leader: &str,
) -> Result<(&'a Elector, Vec<&'a Elector>)> {
    let (found, rest): (Vec<&Elector>, Vec<&Elector>) =
        electors.into_iter().partition(|e| e.id == leader);
    match found.first() {
        Some(&e) => Ok((e, rest)),
        None => Err(fail("the electors", format!("none has id {leader}"))),
    }
}

/// `{"name":"x"}` → `x`; anything else is an error naming what was wrong.
pub fn parse_leader_body(body: &str) -> std::result::Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body:?}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("not an object: {body:?}"))?;
    if obj.len() != 1 || !obj.contains_key("name") {
        return Err(format!("expected exactly the key \"name\": {body:?}"));
    }
    obj.get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("\"name\" is not a string: {body:?}"))
}

/// Waits until exactly one of `electors` says it leads and all of them name it on `GET /`;
/// returns the leader's id.
pub async fn wait_for_agreed_leader(electors: &[&Elector], timeout: Duration) -> Result<String> {
    let procs: Vec<&Proc> = electors.iter().map(|e| &e.proc).collect();
    eventually_while_running(
        "one leader all electors agree on",
        timeout,
        &procs,
        || async { agreed_leader(electors).await },
    )
    .await
}

/// The leader all electors agree on right now, or why there is none.
pub async fn agreed_leader(electors: &[&Elector]) -> std::result::Result<String, String> {
    let mut leaders = Vec::new();
    let mut names = Vec::new();
    for e in electors {
        if e.is_leader().await.map_err(|x| x.to_string())? {
            leaders.push(e.id.clone());
        }
        names.push(e.leader().await.map_err(|x| x.to_string())?);
    }
    match leaders.as_slice() {
        [one] if names.iter().all(|n| n == one) => Ok(one.clone()),
        _ => Err(format!(
            "is_leader true for {leaders:?}; GET / names {names:?}"
        )),
    }
}

/// The Lease, if it exists.
pub async fn get_lease(client: &Client, namespace: &str, name: &str) -> Result<Option<Lease>> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .context(format!("reading Lease {namespace}/{name}"))
}

/// (holderIdentity, leaderTransitions) of a Lease.
pub fn holder_and_transitions(lease: &Lease) -> (String, i32) {
    let spec = lease.spec.as_ref();
    (
        spec.and_then(|s| s.holder_identity.clone())
            .unwrap_or_default(),
        spec.and_then(|s| s.lease_transitions).unwrap_or(0),
    )
}

/// One answer (or non-answer) to "do you lead?" from elector `who`: the question was sent at
/// `sent` and the answer read at `answered`, so the elector decided somewhere in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub who: usize,
    pub sent: Instant,
    pub answered: Instant,
    /// `is_leader`, or None when there was no valid answer.
    pub leader: Option<bool>,
}

/// Pairs of "I lead" answers from different electors whose answer windows overlap: then two
/// processes may have claimed leadership at the same instant. `ignore` drops samples that cannot
/// be judged (see the SIGSTOP test).
pub fn overlapping_claims(
    samples: &[Sample],
    ignore: impl Fn(&Sample) -> bool,
) -> Vec<(Sample, Sample)> {
    let mut yes: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.leader == Some(true) && !ignore(s))
        .collect();
    yes.sort_by_key(|s| s.sent);
    let mut found = Vec::new();
    for (i, a) in yes.iter().enumerate() {
        for b in &yes[i + 1..] {
            if b.sent > a.answered {
                break; // sorted by `sent`: no later sample overlaps `a`
            }
            if a.who != b.who {
                found.push((**a, **b));
            }
        }
    }
    found
}

/// Asks elector `who` at `addr` "do you lead?" back to back until `stop` is set; each question
/// may wait `timeout` (long, so an answer delayed by a frozen process is still recorded).
pub fn spawn_poller(
    who: usize,
    addr: SocketAddr,
    timeout: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let sample = ask(who, addr, timeout).await;
            samples.push(sample);
            // Not listening (yet / any more): do not spin.
            let pause = if sample.leader.is_none() { 50 } else { 5 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        samples
    })
}

/// Every elector asked "do you lead?" back to back (one [`spawn_poller`] each) until
/// [`Pollers::finish`].
pub struct Pollers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Pollers {
    /// Starts polling `electors`; a sample's `who` is the elector's index in `electors`.
    pub fn start(electors: &[Elector], timeout: Duration) -> Pollers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = electors
            .iter()
            .enumerate()
            .map(|(i, e)| spawn_poller(i, e.addr, timeout, stop.clone()))
            .collect();
        Pollers { stop, tasks }
    }

    /// Stops asking and returns every sample taken.
    pub async fn finish(self) -> Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for t in self.tasks {
            samples.extend(t.await.map_err(|e| fail("poller", e.to_string()))?);
        }
        Ok(samples)
    }
}

/// Asks elector `who` at `addr` once whether it leads (`GET /status`, waiting up to `timeout`).
pub async fn ask(who: usize, addr: SocketAddr, timeout: Duration) -> Sample {
    let sent = Instant::now();
    let leader = match httpc::get(addr, api::STATUS_PATH, timeout).await {
        Ok(r) if r.status == 200 => serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v.get("is_leader").and_then(|b| b.as_bool())),
        _ => None,
    };
    Sample {
        who,
        sent,
        answered: Instant::now(),
        leader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_body_table() {
        let cases: &[(&str, std::result::Result<&str, &str>)] = &[
            (r#"{"name":"pod-a"}"#, Ok("pod-a")),
            (r#"{"name":""}"#, Ok("")),
            (r#"{"name":"a","x":1}"#, Err("exactly the key")),
            (r#"{"leader":"a"}"#, Err("exactly the key")),
            (r#"{"name":3}"#, Err("not a string")),
            ("pod-a", Err("not JSON")),
            ("[]", Err("not an object")),
        ];
        for (body, want) in cases {
            match (parse_leader_body(body), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{body}"),
                (Err(e), Err(frag)) => assert!(e.contains(frag), "{body}: {e}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn overlap_table() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = |who, a, b, leader| Sample {
            who,
            sent: at(a),
            answered: at(b),
            leader: Some(leader),
        };
        let cases: Vec<(&str, Vec<Sample>, usize)> = vec![
            (
                "one leader, many yes",
                vec![s(0, 0, 10, true), s(0, 10, 20, true), s(1, 5, 15, false)],
                0,
            ),
            (
                "handover without overlap",
                vec![s(0, 0, 10, true), s(1, 11, 20, true)],
                0,
            ),
            (
                "thawed leader answers yes late",
                vec![s(0, 0, 9000, true), s(1, 5000, 5010, true)],
                1,
            ),
            (
                "touching windows overlap",
                vec![s(0, 0, 10, true), s(1, 10, 20, true)],
                1,
            ),
            (
                "no answer is no claim",
                vec![
                    Sample {
                        who: 0,
                        sent: at(0),
                        answered: at(50),
                        leader: None,
                    },
                    s(1, 1, 2, true),
                ],
                0,
            ),
            (
                "three-way",
                vec![s(0, 0, 100, true), s(1, 10, 20, true), s(2, 30, 40, true)],
                2,
            ),
        ];
        for (name, samples, want) in cases {
            assert_eq!(
                overlapping_claims(&samples, |_| false).len(),
                want,
                "{name}"
            );
        }
        let late = vec![s(0, 0, 9000, true), s(1, 5000, 5010, true)];
        assert!(
            overlapping_claims(&late, |x| x.who == 0).is_empty(),
            "ignored samples are not judged"
        );
    }

    #[test]
    fn args_use_the_contract_flag_names() {
        let spec = ElectorSpec {
            lease: "my-app".into(),
            namespace: "ns".into(),
            kubeconfig: PathBuf::from("/k"),
            timings: FAST,
            extra_args: vec!["--log-format=json".into()],
        };
        let args = elector_args(&spec, "pod-0", SocketAddr::from(([127, 0, 0, 1], 4040)));
        assert_eq!(
            args,
            [
                "--election=my-app",
                "--election-namespace=ns",
                "--id=pod-0",
                "--http=127.0.0.1:4040",
                "--lease-duration=4s",
                "--renew-deadline=3s",
                "--retry-period=1s",
                "--log-format=json",
            ]
        );
        assert_eq!(
            contract::format_duration(Duration::from_millis(1500)),
            "1500ms"
        );
        FAST.validate(("l", "r", "p"))
            .expect("fast timings are valid");
    }
}
