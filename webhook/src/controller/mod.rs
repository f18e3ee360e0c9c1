//! The controller: one active replica (elected with the elector library, see [`election`])
//! reconciles, from objects it reads from the API server and never from admission requests:
//! - [`workloads`]: the Lease, Role and RoleBinding of each annotated workload (Deployment,
//!   StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, and Argo Rollout when [`rollouts`] finds
//!   the CRD);
//! - [`leader_label`]: the `leader-election/role` label on the pods of Leases that asked for it.
//!
//! Errors become a Warning event on the object being reconciled and one log line, and the object
//! is retried with exponential backoff. Admission does not depend on the controller: the webhook
//! keeps admitting while the controller is down or not leading.

pub mod certs;
pub mod election;
pub mod grants;
pub mod leader_label;
pub mod rollouts;
pub mod workloads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Resource, ResourceExt};
use kube_runtime::controller::{Action, Controller};
use kube_runtime::events::{Event, EventType, Recorder, Reporter};
use kube_runtime::reflector::{self, ObjectRef, Store};
use kube_runtime::{WatchStreamExt, watcher};

use crate::error::{ApiError, Error, Result};
use leader_label::{Change, Renewals};

/// Shared by every reconciler: the caches (read-only views of the API server) and the clients.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub daemonsets: Store<DaemonSet>,
    pub jobs: Store<Job>,
    pub cronjobs: Store<CronJob>,
    /// Argo Rollouts, when the CRD is installed.
    pub rollouts: Option<Store<DynamicObject>>,
    /// Leases the controller created (label-selected).
    pub leases: Store<Lease>,
    pub roles: Store<Role>,
    pub bindings: Store<RoleBinding>,
    pub renewals: Renewals,
    /// The role label this controller last wrote on each pod: authoritative over a lagging cache,
    /// so a leader it just promoted is never missed when demoting.
    pub written: Mutex<HashMap<(String, String), &'static str>>,
    pub recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

pub(crate) fn api_err(context: String, e: kube::Error) -> Error {
    Error::api(context, ApiError::from(e))
}

/// The controller's caches.
pub struct Stores {
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub daemonsets: Store<DaemonSet>,
    pub jobs: Store<Job>,
    pub cronjobs: Store<CronJob>,
    pub rollouts: Option<Store<DynamicObject>>,
    pub leases: Store<Lease>,
    pub roles: Store<Role>,
    pub bindings: Store<RoleBinding>,
}

impl Context {
    /// `identity`: this replica, the reporting instance of its events.
    pub fn new(client: kube::Client, stores: Stores, identity: &str) -> Self {
        let reporter = Reporter {
            controller: contract::deploy::WEBHOOK_NAME.into(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            pods: stores.pods,
            deployments: stores.deployments,
            statefulsets: stores.statefulsets,
            daemonsets: stores.daemonsets,
            jobs: stores.jobs,
            cronjobs: stores.cronjobs,
            rollouts: stores.rollouts,
            leases: stores.leases,
            roles: stores.roles,
            bindings: stores.bindings,
            renewals: Renewals::default(),
            written: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until every cache holds a full list, so no decision is taken on a partial view
    /// (e.g. a Role shrunk because the pods were not listed yet).
    pub async fn ready(&self) {
        filled("pods", self.pods.wait_until_ready()).await;
        filled("deployments", self.deployments.wait_until_ready()).await;
        filled("statefulsets", self.statefulsets.wait_until_ready()).await;
        filled("daemonsets", self.daemonsets.wait_until_ready()).await;
        filled("jobs", self.jobs.wait_until_ready()).await;
        filled("cronjobs", self.cronjobs.wait_until_ready()).await;
        if let Some(r) = &self.rollouts {
            filled("rollouts", r.wait_until_ready()).await;
        }
        filled("leases", self.leases.wait_until_ready()).await;
        filled("roles", self.roles.wait_until_ready()).await;
        filled("rolebindings", self.bindings.wait_until_ready()).await;
    }

    /// A Warning event on `about`; a failure to publish it is logged, not returned.
    pub async fn warn(&self, about: &ObjectReference, reason: &str, note: String) {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, about).await {
            tracing::debug!(error = %e, "event not published");
        }
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Exponential backoff per object: 1 s, 2 s, 4 s … up to 5 min.
    fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }
}

/// Delay before retry number `n` (1-based).
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The one place reconcile errors are reported: one log line, a Warning event on the object,
/// and a retry with backoff.
fn error_policy<K>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let key = key_of(obj.as_ref());
    let delay = ctx.failed(&key);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    let about = obj.object_ref(&());
    let note = err.to_string();
    tokio::spawn(async move { ctx.warn(&about, "ReconcileFailed", note).await });
    Action::requeue(delay)
}

/// [`error_policy`] for Argo Rollouts (dynamic objects).
fn rollout_error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "Rollout/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    let delay = ctx.failed(&key);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    let about = obj.object_ref(&rollouts::api_resource());
    let note = err.to_string();
    tokio::spawn(async move { ctx.warn(&about, "ReconcileFailed", note).await });
    Action::requeue(delay)
}

/// Wraps a reconciler so a success resets the object's backoff.
async fn tracked<K, F>(obj: Arc<K>, ctx: Arc<Context>, f: F) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Action>>,
{
    let key = key_of(obj.as_ref());
    let r = f.await;
    if r.is_ok() {
        ctx.succeeded(&key);
    }
    r
}

/// Pods electing on `namespace/lease` that asked for the label, with the role they carry now:
/// the cache's value when it agrees with what this controller wrote last, else unknown (so the
/// wanted value is written again: a lagging cache never hides a leader it just promoted, and a
/// label changed by someone else is put right).
fn label_candidates(ctx: &Context, namespace: &str, lease: &str) -> leader_label::Candidates {
    let mut written = ctx.written.lock().unwrap_or_else(|p| p.into_inner());
    // Forget pods that are gone.
    written.retain(|(ns, pod), _| {
        ns != namespace || ctx.pods.get(&ObjectRef::new(pod).within(ns)).is_some()
    });
    let mut out: leader_label::Candidates = ctx
        .pods
        .state_filter(|p| {
            p.namespace().as_deref() == Some(namespace)
                && p.metadata.deletion_timestamp.is_none()
                && leader_label::wants_label(p)
                && crate::admission::patch::injected_lease(p).as_deref() == Some(lease)
        })
        .into_iter()
        .map(|p| {
            let name = p.name_any();
            let cached = leader_label::role_of(&p);
            let current = match written.get(&(namespace.to_string(), name.clone())) {
                Some(w) if cached.as_deref() != Some(*w) => None,
                _ => cached,
            };
            (name, current)
        })
        .collect();
    out.sort();
    out
}

/// Brings the role labels of `namespace/lease`'s pods in line with its valid holder; returns
/// when to look again (just after the holder's expiry by this controller's clock), if there is a
/// holder.
pub async fn sync_labels(ctx: &Context, namespace: &str, lease: &str) -> Result<Option<Duration>> {
    let obj = ctx.leases.get(&ObjectRef::new(lease).within(namespace));
    let holder = match &obj {
        Some(l) => ctx.renewals.observe(namespace, l, Instant::now()),
        None => {
            ctx.renewals.forget(namespace, lease);
            leader_label::Holder {
                name: None,
                valid_for: None,
            }
        }
    };
    let pods = label_candidates(ctx, namespace, lease);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    for Change { pod, value } in leader_label::plan(holder.name.as_deref(), &pods) {
        let body = serde_json::json!({"metadata": {"labels": {contract::labels::ROLE: value}}});
        match api
            .patch(&pod, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {}
            // Gone meanwhile: nothing to label.
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            // Stop here: a failed demotion must not be followed by a promotion.
            Err(e) => {
                return Err(api_err(
                    format!("labelling pod {namespace}/{pod} {value}"),
                    e,
                ));
            }
        }
        ctx.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.to_string(), pod.clone()), value);
        tracing::info!(namespace, lease, pod = %pod, role = value, "pod labelled");
    }
    Ok(holder.valid_for.map(|d| d + Duration::from_millis(100)))
}

async fn reconcile_lease(lease: Arc<Lease>, ctx: Arc<Context>) -> Result<Action> {
    ctx.ready().await;
    let ns = lease.namespace().unwrap_or_default();
    let again = sync_labels(&ctx, &ns, &lease.name_any()).await?;
    Ok(again.map_or_else(Action::await_change, Action::requeue))
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This replica, for events' reporting instance.
    pub identity: String,
    /// The self-provisioned certificate, when the webhook is in that mode.
    pub certs: Option<certs::CertPolicy>,
    /// How often the certificate is checked.
    pub resync: Duration,
}

/// Keeps the self-provisioned certificate consistent while this replica leads.
async fn keep_certificate(
    client: kube::Client,
    policy: Option<certs::CertPolicy>,
    every: Duration,
) {
    let Some(policy) = policy else {
        return std::future::pending().await;
    };
    let cluster = crate::cluster::KubeCluster::new(client);
    let mut failures = 0u32;
    loop {
        let wait = match certs::reconcile(&cluster, &policy).await {
            Ok(_) => {
                failures = 0;
                every
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures).min(every);
                tracing::warn!(error = %e, retry_in = ?delay, "certificate not reconciled");
                delay
            }
        };
        tokio::time::sleep(wait).await;
    }
}

type RunResult<K> = std::result::Result<
    (ObjectRef<K>, Action),
    kube_runtime::controller::Error<Error, watcher::Error>,
>;

fn log_result<K: Resource>(r: RunResult<K>) -> futures::future::Ready<()> {
    use kube_runtime::controller::Error as E;
    match r {
        Ok((o, _)) => tracing::debug!(object = %o, "reconciled"),
        // Reported by error_policy already.
        Err(E::ReconcilerFailed(..)) => {}
        // Deleted before its turn: nothing to do (ownerReferences clean up after it).
        Err(E::ObjectNotFound(o)) => tracing::debug!(object = %o, "gone before reconcile"),
        // A watch failing (e.g. a permission missing from the ServiceAccount): retried with
        // backoff by the watcher; say why.
        Err(e) => tracing::warn!(error = %e, "controller watch failed; retrying"),
    }
    futures::future::ready(())
}

/// A reflector's events: an error (a failing list or watch, retried with backoff) is said, as
/// the store stays unready and no reconcile runs meanwhile.
fn log_watch<K>(event: std::result::Result<K, watcher::Error>) -> futures::future::Ready<()> {
    if let Err(e) = event {
        tracing::warn!(error = %e, "controller watch failed; retrying");
    }
    futures::future::ready(())
}

/// Waits for one cache's first full list, saying so once if it takes long (nothing is
/// reconciled meanwhile). The wait is polled again every second: with several reconciles
/// waiting at once, a waiter could miss the wake-up when the cache filled and hang until the
/// next resync (seen on a real API server: the Role came 20 s late, or not at all); a re-poll
/// sees the cache filled.
async fn filled<F: std::future::Future>(cache: &str, wait: F) {
    tokio::pin!(wait);
    let started = std::time::Instant::now();
    let mut said = false;
    while tokio::time::timeout(Duration::from_secs(1), &mut wait)
        .await
        .is_err()
    {
        if !said && started.elapsed() >= Duration::from_secs(20) {
            tracing::warn!(cache, "cache not filled after 20 s; reconciles wait for it");
            said = true;
        }
    }
}

/// Runs every reconciler until the future is dropped (leadership lost or shutdown).
pub async fn run(client: kube::Client, cfg: ControllerConfig) {
    let all = watcher::Config::default();
    let managed = watcher::Config::default().labels(&grants::managed_selector());
    let pods = Controller::new(Api::<Pod>::all(client.clone()), all.clone());
    let deployments = Controller::new(Api::<Deployment>::all(client.clone()), all.clone());
    let statefulsets = Controller::new(Api::<StatefulSet>::all(client.clone()), all.clone());
    let daemonsets = Controller::new(Api::<DaemonSet>::all(client.clone()), all.clone());
    let jobs = Controller::new(Api::<Job>::all(client.clone()), all.clone());
    let cronjobs = Controller::new(Api::<CronJob>::all(client.clone()), all.clone());
    let rollouts = if rollouts::installed(&client).await {
        let ar = rollouts::api_resource();
        Some(Controller::new_with(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            all.clone(),
            ar,
        ))
    } else {
        None
    };
    let leases = Controller::new(Api::<Lease>::all(client.clone()), managed.clone());
    let (roles, roles_w) = reflector::store();
    let (bindings, bindings_w) = reflector::store();
    let roles_stream = reflector::reflector(
        roles_w,
        watcher(Api::<Role>::all(client.clone()), managed.clone()),
    )
    .default_backoff()
    .for_each(log_watch);
    let bindings_stream = reflector::reflector(
        bindings_w,
        watcher(Api::<RoleBinding>::all(client.clone()), managed),
    )
    .default_backoff()
    .for_each(log_watch);
    let ctx = Arc::new(Context::new(
        client,
        Stores {
            pods: pods.store(),
            deployments: deployments.store(),
            statefulsets: statefulsets.store(),
            daemonsets: daemonsets.store(),
            jobs: jobs.store(),
            cronjobs: cronjobs.store(),
            rollouts: rollouts.as_ref().map(|r| r.store()),
            leases: leases.store(),
            roles,
            bindings,
        },
        &cfg.identity,
    ));
    let pods = pods
        .run(
            |o, c| tracked(o.clone(), c.clone(), workloads::reconcile_pod(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let deployments = deployments
        .run(
            |o, c| tracked(o.clone(), c.clone(), workloads::reconcile_deployment(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let statefulsets = statefulsets
        .run(
            |o, c| tracked(o.clone(), c.clone(), workloads::reconcile_statefulset(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let daemonsets = daemonsets
        .run(
            |o, c| tracked(o.clone(), c.clone(), workloads::reconcile_daemonset(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let jobs = jobs
        .run(
            |o, c| tracked(o.clone(), c.clone(), workloads::reconcile_job(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let cronjobs = cronjobs
        .run(
            |o, c| tracked(o.clone(), c.clone(), workloads::reconcile_cronjob(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let rollouts = rollouts.map(|r| {
        r.run(
            workloads::reconcile_rollout,
            rollout_error_policy,
            ctx.clone(),
        )
        .for_each(log_result)
    });
    let leases = leases
        .run(
            |o, c| tracked(o.clone(), c.clone(), reconcile_lease(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(log_result);
    let certs = keep_certificate(ctx.client.clone(), cfg.certs.clone(), cfg.resync);
    tracing::info!("controller running");
    // A task each, so one busy or stalled loop never holds up the others (in one task, a stream
    // that is always ready starves its neighbours). Dropping the set aborts them all: the
    // controller stops with this future.
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(certs);
    loops.spawn(pods);
    loops.spawn(deployments);
    loops.spawn(statefulsets);
    loops.spawn(daemonsets);
    loops.spawn(jobs);
    loops.spawn(cronjobs);
    if let Some(r) = rollouts {
        loops.spawn(r);
    }
    loops.spawn(leases);
    loops.spawn(roles_stream);
    loops.spawn(bindings_stream);
    while let Some(done) = loops.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a controller loop ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
