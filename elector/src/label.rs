//! The optional leader label: keeps `leader-election/role: leader|follower` on the elector's own
//! pod so a Service can select the leader only. Best effort: a failure is logged once and retried
//! with backoff; it never affects the election.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::error_chain;

/// Writes the role label on one pod.
pub trait RoleLabeler {
    /// Sets the label to `value`; the error is one line that names the fix.
    fn set_role(&self, value: &'static str) -> impl Future<Output = Result<(), String>> + Send;
}

/// The label value for "I lead" / "I do not".
pub fn role_value(leader: bool) -> &'static str {
    if leader {
        contract::labels::ROLE_LEADER
    } else {
        contract::labels::ROLE_FOLLOWER
    }
}

/// Backoff between failed label writes.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// Keeps the label in line with `role` until its sender is dropped; the value current at that
/// moment is still written (a shutting-down leader ends as `follower`).
pub async fn keep_role_label(
    labeler: impl RoleLabeler,
    mut role: watch::Receiver<bool>,
    backoff: Backoff,
) {
    let mut last_error: Option<String> = None;
    let mut delay = backoff.min;
    let mut closed = false;
    loop {
        let value = role_value(*role.borrow_and_update());
        match labeler.set_role(value).await {
            Ok(()) => {
                if last_error.take().is_some() {
                    info!(role = value, "labelling the pod works again");
                }
                debug!(role = value, "labelled the pod");
                delay = backoff.min;
                if closed || role.changed().await.is_err() {
                    return;
                }
            }
            Err(line) => {
                if last_error.as_deref() != Some(line.as_str()) {
                    warn!("{line}");
                    last_error = Some(line);
                }
                if closed {
                    tokio::time::sleep(delay).await;
                } else {
                    tokio::select! {
                        // A new value is written at once; a closed channel keeps retrying the
                        // last one (the caller bounds that at shutdown).
                        r = role.changed() => if r.is_err() {
                            closed = true;
                            tokio::time::sleep(delay).await;
                        },
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

/// [`RoleLabeler`] for pod `pod` in `namespace` on the API server (a JSON merge patch of one
/// label: needs `patch` on pods).
pub struct PodLabeler {
    api: Api<Pod>,
    namespace: String,
    pod: String,
}

impl PodLabeler {
    pub fn new(client: kube::Client, namespace: &str, pod: &str) -> Self {
        PodLabeler {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        }
    }
}

impl RoleLabeler for PodLabeler {
    async fn set_role(&self, value: &'static str) -> Result<(), String> {
        let patch =
            serde_json::json!({ "metadata": { "labels": { contract::labels::ROLE: value } } });
        // The metadata-only variant: the answer is not a whole Pod, which keeps the large Pod
        // deserializer out of the binary (it is mostly resident memory).
        self.api
            .patch_metadata(&self.pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| label_error(&e, &self.namespace, &self.pod, value))
    }
}

/// One line for a failed label write, naming the fix for the usual causes.
pub fn label_error(err: &kube::Error, namespace: &str, pod: &str, value: &str) -> String {
    let what = format!(
        "cannot label pod {namespace}/{pod} {}={value}",
        contract::labels::ROLE
    );
    match err {
        kube::Error::Api(s) if s.is_forbidden() => format!(
            "{what}: forbidden: the elector may not patch pods in namespace \"{namespace}\"; bind \
             its ServiceAccount to ClusterRole \"{role}\" (kubectl -n {namespace} create \
             rolebinding {role} --clusterrole={role} --serviceaccount={namespace}:<serviceaccount>) \
             or turn --{flag} off. API server said: {}",
            s.message,
            role = contract::CLUSTER_ROLE_LEADER_LABEL,
            flag = contract::flags::LEADER_LABEL,
        ),
        kube::Error::Api(s) if s.is_not_found() => format!(
            "{what}: the pod does not exist; ${} must be this pod's name (Downward API \
             metadata.name) and --{} its namespace. API server said: {}",
            contract::env::POD_NAME,
            contract::flags::ELECTION_NAMESPACE,
            s.message
        ),
        other => format!("{what}: {}", error_chain(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use std::sync::{Arc, Mutex};

    /// Records what was written; the next `failures` writes fail.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        attempts: usize,
        failures: usize,
        applied: Vec<&'static str>,
    }

    impl Fake {
        fn failing(n: usize) -> Self {
            let f = Fake::default();
            f.0.lock().unwrap().failures = n;
            f
        }
        fn applied(&self) -> Vec<&'static str> {
            self.0.lock().unwrap().applied.clone()
        }
        fn attempts(&self) -> usize {
            self.0.lock().unwrap().attempts
        }
    }

    impl RoleLabeler for Fake {
        async fn set_role(&self, value: &'static str) -> Result<(), String> {
            let mut s = self.0.lock().unwrap();
            s.attempts += 1;
            if s.failures > 0 {
                s.failures -= 1;
                return Err("cannot label: boom".into());
            }
            s.applied.push(value);
            Ok(())
        }
    }

    const FAST: Backoff = Backoff {
        min: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn finished(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the labeller ends once the role sender is gone")
            .unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn follows_the_role_and_ends_as_follower() {
        let fake = Fake::default();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(keep_role_label(fake.clone(), rx, FAST));
        until("initial follower label", || fake.applied() == ["follower"]).await;
        tx.send(true).unwrap();
        until("leader label", || fake.applied() == ["follower", "leader"]).await;
        // Stepping down and exiting at once (shutdown): the last value is still written.
        tx.send(false).unwrap();
        drop(tx);
        finished(task).await;
        assert_eq!(fake.applied(), ["follower", "leader", "follower"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn failures_are_retried_with_backoff_until_written() {
        let fake = Fake::failing(3);
        let (tx, rx) = watch::channel(true);
        let task = tokio::spawn(keep_role_label(fake.clone(), rx, FAST));
        until("the label after 3 failures", || {
            fake.applied() == ["leader"]
        })
        .await;
        assert_eq!(fake.attempts(), 4);
        // A change while failing is written as soon as the API works again, even if the
        // sender is gone meanwhile.
        fake.0.lock().unwrap().failures = 2;
        tx.send(false).unwrap();
        drop(tx);
        finished(task).await;
        assert_eq!(fake.applied(), ["leader", "follower"]);
        assert_eq!(fake.attempts(), 7);
    }

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("said no", reason).with_code(code).boxed())
    }

    #[test]
    fn errors_name_the_fix() {
        let cases: &[(kube::Error, &[&str])] = &[
            (
                api(403, "Forbidden"),
                &[
                    "team/pod-0",
                    "leader-election/role=leader",
                    "patch pods",
                    contract::CLUSTER_ROLE_LEADER_LABEL,
                    "--leader-label",
                    "said no",
                ],
            ),
            (api(404, "NotFound"), &["$POD_NAME", "--election-namespace"]),
            (api(500, "InternalError"), &["team/pod-0", "said no"]),
        ];
        for (err, wants) in cases {
            let line = label_error(err, "team", "pod-0", "leader");
            assert!(!line.contains('\n'), "{line}");
            for want in *wants {
                assert!(line.contains(want), "{want} missing in {line}");
            }
        }
    }
}
