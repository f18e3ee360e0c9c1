//! Lease, Role and RoleBinding for each annotated workload (every kind in [`Kind`]: Deployment,
//! Argo Rollout, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) and standalone pod.
//! Reconciled from the controller's caches of what the API server holds; writes only what
//! differs from them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Resource, ResourceExt};
use kube_runtime::controller::Action;
use kube_runtime::reflector::ObjectRef;

use super::grants::{self, Desired, Owner};
use super::{Context, api_err};
use crate::admission::lease_name::Kind;
use crate::admission::patch;
use crate::error::{ApiError, Result};

/// Field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "leader-election-webhook";
/// Periodic re-check, e.g. of a Role someone deleted by hand.
pub const RESYNC: Duration = Duration::from_secs(300);
/// A pod whose workload is not in the cache yet (watches lag each other) is looked at again.
const PENDING: Duration = Duration::from_secs(5);

fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> Owner {
    Owner {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: obj.meta().name.clone().unwrap_or_default(),
        uid: obj.meta().uid.clone().unwrap_or_default(),
    }
}

fn excluded(ns: &str) -> bool {
    contract::deploy::EXCLUDED_NAMESPACES.contains(&ns)
}

/// The unit whose Lease and grants a pod's election belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodUnit {
    /// A workload kept in a cache: (kind, name).
    Workload(Kind, String),
    /// A ReplicaSet no Deployment or Rollout runs: known from the pod's ownerReference only
    /// (ReplicaSets are not cached: there are many, and a Deployment's carry its template).
    ReplicaSet(Owner),
    /// A pod no known workload runs: its own unit.
    Bare,
    /// Its workload (or a Job's owner) is not in the cache yet.
    Pending,
}

fn job_owner(job: &Job) -> Option<String> {
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "CronJob")
        .map(|o| o.name.clone())
}

fn unit_of(ctx: &Context, ns: &str, pod: &Pod) -> PodUnit {
    let Some((kind, name)) = patch::owning_workload(&pod.metadata) else {
        return PodUnit::Bare;
    };
    match kind {
        "Deployment" => PodUnit::Workload(Kind::Deployment, name.into()),
        "StatefulSet" => PodUnit::Workload(Kind::StatefulSet, name.into()),
        "DaemonSet" => PodUnit::Workload(Kind::DaemonSet, name.into()),
        "Rollout" if ctx.rollouts.is_some() => PodUnit::Workload(Kind::Rollout, name.into()),
        "Rollout" | "ReplicaSet" => {
            let o = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.kind == "ReplicaSet");
            match o {
                Some(o) => PodUnit::ReplicaSet(Owner {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                }),
                None => PodUnit::Bare,
            }
        }
        "Job" => match ctx.jobs.get(&ObjectRef::new(name).within(ns)) {
            Some(job) => match job_owner(&job) {
                Some(cj) => PodUnit::Workload(Kind::CronJob, cj),
                None => PodUnit::Workload(Kind::Job, name.into()),
            },
            None => PodUnit::Pending,
        },
        _ => PodUnit::Bare,
    }
}

/// Injected pods of the unit `kind/name` in `ns`, from the pod cache.
fn pods_of(ctx: &Context, ns: &str, kind: Kind, name: &str) -> Vec<Arc<Pod>> {
    let want = PodUnit::Workload(kind, name.to_string());
    ctx.pods.state_filter(|p| {
        p.namespace().as_deref() == Some(ns)
            && p.metadata.deletion_timestamp.is_none()
            && patch::is_injected(p)
            && match (kind, patch::owning_workload(&p.metadata)) {
                // Cheap pre-filter before the Job lookup.
                (Kind::CronJob, Some(("Job", _))) => unit_of(ctx, ns, p) == want,
                (Kind::CronJob, _) => false,
                (k, Some((owner_kind, owner))) => owner_kind == k.as_str() && owner == name,
                (_, None) => false,
            }
    })
}

/// Brings one cached workload's Lease and grants in line with its template and pods.
async fn reconcile_unit(
    ctx: &Context,
    kind: Kind,
    owner: Owner,
    ns: &str,
    template: Option<&PodTemplateSpec>,
    about: &ObjectReference,
) -> Result<Action> {
    let pods = pods_of(ctx, ns, kind, &owner.name);
    let desired =
        grants::workload_desired(ns, kind, owner, template, pods.iter().map(|p| p.as_ref()));
    apply(ctx, desired, about).await?;
    Ok(Action::requeue(RESYNC))
}

/// The common start of a workload reconcile: `None` when there is nothing to do.
async fn start<K: Resource<DynamicType = ()>>(obj: &K, ctx: &Context) -> Option<String> {
    ctx.ready().await;
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    (!excluded(&ns) && obj.meta().deletion_timestamp.is_none()).then_some(ns)
}

/// The steps every typed workload shares: skip excluded or deleting objects, then reconcile its
/// unit (Lease and grants) from its pod template.
async fn reconcile_typed<K: Resource<DynamicType = ()>>(
    obj: &K,
    kind: Kind,
    template: Option<&PodTemplateSpec>,
    ctx: &Context,
) -> Result<Action> {
    let Some(ns) = start(obj, ctx).await else {
        return Ok(Action::await_change());
    };
    let about = obj.object_ref(&());
    reconcile_unit(ctx, kind, owner_of(obj), &ns, template, &about).await
}

pub async fn reconcile_deployment(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action> {
    let template = d.spec.as_ref().map(|s| &s.template);
    reconcile_typed(d.as_ref(), Kind::Deployment, template, &ctx).await
}

pub async fn reconcile_statefulset(s: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action> {
    let template = s.spec.as_ref().map(|s| &s.template);
    reconcile_typed(s.as_ref(), Kind::StatefulSet, template, &ctx).await
}

pub async fn reconcile_daemonset(d: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action> {
    let template = d.spec.as_ref().map(|s| &s.template);
    reconcile_typed(d.as_ref(), Kind::DaemonSet, template, &ctx).await
}

pub async fn reconcile_cronjob(c: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action> {
    let template = c
        .spec
        .as_ref()
        .and_then(|s| s.job_template.spec.as_ref())
        .map(|s| &s.template);
    reconcile_typed(c.as_ref(), Kind::CronJob, template, &ctx).await
}

/// A Job: its CronJob's unit when a CronJob runs it (one Lease for every run), else its own.
pub async fn reconcile_job(j: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let Some(ns) = start(j.as_ref(), &ctx).await else {
        return Ok(Action::await_change());
    };
    if let Some(cj) = job_owner(&j) {
        return match ctx.cronjobs.get(&ObjectRef::new(&cj).within(&ns)) {
            Some(c) => reconcile_cronjob(c, ctx.clone()).await,
            None => Ok(Action::requeue(PENDING)),
        };
    }
    let template = j.spec.as_ref().map(|s| &s.template);
    let about = j.object_ref(&());
    reconcile_unit(&ctx, Kind::Job, owner_of(j.as_ref()), &ns, template, &about).await
}

/// An Argo Rollout (a dynamic object: the CRD may be absent; see [`super::rollouts`]). A Rollout
/// with `workloadRef` has no template of its own: its Lease is created from its pods.
pub async fn reconcile_rollout(r: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action> {
    ctx.ready().await;
    let ns = r.namespace().unwrap_or_default();
    if excluded(&ns) || r.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let template: Option<PodTemplateSpec> = r
        .data
        .pointer("/spec/template")
        .and_then(|t| serde_json::from_value(t.clone()).ok());
    let owner = Owner {
        api_version: super::rollouts::API_VERSION.into(),
        kind: Kind::Rollout.as_str().into(),
        name: r.name_any(),
        uid: r.metadata.uid.clone().unwrap_or_default(),
    };
    let about = ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        namespace: Some(ns.clone()),
        uid: Some(owner.uid.clone()),
        ..ObjectReference::default()
    };
    reconcile_unit(&ctx, Kind::Rollout, owner, &ns, template.as_ref(), &about).await
}

/// A ReplicaSet no Deployment or Rollout runs, known from its pods' ownerReference.
async fn reconcile_replicaset(ctx: &Context, ns: &str, owner: Owner) -> Result<()> {
    let pods = ctx.pods.state_filter(|p| {
        p.namespace().as_deref() == Some(ns)
            && p.metadata.deletion_timestamp.is_none()
            && patch::is_injected(p)
            && unit_of(ctx, ns, p) == PodUnit::ReplicaSet(owner.clone())
    });
    let about = ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        namespace: Some(ns.to_string()),
        uid: Some(owner.uid.clone()),
        ..ObjectReference::default()
    };
    let desired = grants::workload_desired(
        ns,
        Kind::ReplicaSet,
        owner,
        None,
        pods.iter().map(|p| p.as_ref()),
    );
    apply(ctx, desired, &about).await
}

/// A pod: its workload's grants (any kind in [`Kind`]) or its own (any other pod), then its
/// Lease's leader label.
pub async fn reconcile_pod(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    ctx.ready().await;
    let ns = pod.namespace().unwrap_or_default();
    if excluded(&ns) || !patch::is_injected(&pod) {
        return Ok(Action::await_change());
    }
    // A standalone pod is looked at again periodically: the Lease it shares with other pods may
    // be owned (and garbage-collected) with one of them.
    let mut resync = None;
    // Its workload not in the cache (yet: watches lag each other; or it is gone and the pod is
    // being garbage-collected): look again later rather than grant per pod.
    let pending = Ok(Action::requeue(PENDING));
    match unit_of(&ctx, &ns, &pod) {
        PodUnit::Workload(kind, name) => {
            let found = match kind {
                Kind::Deployment => match ctx.deployments.get(&ObjectRef::new(&name).within(&ns)) {
                    Some(d) => Some(reconcile_deployment(d, ctx.clone()).await?),
                    None => None,
                },
                Kind::StatefulSet => match ctx.statefulsets.get(&ObjectRef::new(&name).within(&ns))
                {
                    Some(s) => Some(reconcile_statefulset(s, ctx.clone()).await?),
                    None => None,
                },
                Kind::DaemonSet => match ctx.daemonsets.get(&ObjectRef::new(&name).within(&ns)) {
                    Some(d) => Some(reconcile_daemonset(d, ctx.clone()).await?),
                    None => None,
                },
                Kind::CronJob => match ctx.cronjobs.get(&ObjectRef::new(&name).within(&ns)) {
                    Some(c) => Some(reconcile_cronjob(c, ctx.clone()).await?),
                    None => None,
                },
                Kind::Job => match ctx.jobs.get(&ObjectRef::new(&name).within(&ns)) {
                    Some(j) => Some(reconcile_job(j, ctx.clone()).await?),
                    None => None,
                },
                Kind::Rollout => match ctx.rollouts.as_ref().and_then(|r| {
                    r.get(&ObjectRef::new_with(&name, super::rollouts::api_resource()).within(&ns))
                }) {
                    Some(r) => Some(reconcile_rollout(r, ctx.clone()).await?),
                    None => None,
                },
                Kind::ReplicaSet => None,
            };
            if found.is_none() {
                return pending;
            }
        }
        PodUnit::ReplicaSet(owner) => reconcile_replicaset(&ctx, &ns, owner).await?,
        PodUnit::Pending => return pending,
        PodUnit::Bare => {
            let desired = grants::pod_desired(&ns, &pod);
            apply(&ctx, desired, &pod.object_ref(&())).await?;
            resync = Some(RESYNC);
        }
    }
    if super::leader_label::wants_label(&pod)
        && let Some(lease) = patch::injected_lease(&pod)
        && let Some(expiry) = super::sync_labels(&ctx, &ns, &lease).await?
    {
        resync = Some(resync.map_or(expiry, |r: Duration| r.min(expiry)));
    }
    Ok(resync.map_or_else(Action::await_change, Action::requeue))
}

/// Brings the Lease(s), Role and RoleBinding of one unit to `desired`.
async fn apply(ctx: &Context, mut desired: Desired, about: &ObjectReference) -> Result<()> {
    let ns = desired.namespace.clone();
    let name = desired.owner.grant_name();
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ns);

    if !desired.is_empty() {
        let wanted: Vec<String> = desired.leases.iter().cloned().collect();
        for lease in wanted {
            if let Some(have) = ctx.leases.get(&ObjectRef::new(&lease).within(&ns)) {
                if grants::lease_taken(&desired, &have) {
                    desired.leases.remove(&lease);
                    let msg = format!(
                        "Lease {lease} belongs to another workload ({}); this {} gets no rights \
                         on it. Set the annotation {} to a free name.",
                        have.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .map(|o| format!("{}/{}", o.kind, o.name))
                            .collect::<Vec<_>>()
                            .join(", "),
                        desired.owner.kind,
                        contract::annotations::LEASE_NAME
                    );
                    tracing::warn!(namespace = %ns, lease = %lease, "{msg}");
                    ctx.warn(about, "LeaseNameTaken", msg).await;
                }
                continue;
            }
            let obj = grants::lease(&desired, &lease);
            match leases
                .create(&PostParams::default(), &obj)
                .await
                .map_err(ApiError::from)
            {
                Ok(_) => {
                    tracing::info!(namespace = %ns, lease = %lease, owner = %desired.owner.name, "Lease created ahead")
                }
                Err(ApiError::AlreadyExists) => {
                    let existing = leases
                        .get_opt(&lease)
                        .await
                        .map_err(|e| api_err(format!("reading Lease {ns}/{lease}"), e))?;
                    if existing.as_ref().is_some_and(|l| !grants::lease_is_ours(l)) {
                        desired.leases.remove(&lease);
                        let msg = format!(
                            "Lease {lease} exists and was not created by leader-election; its \
                             rights are not granted to this workload's ServiceAccounts. Set \
                             the annotation {} to a free name.",
                            contract::annotations::LEASE_NAME
                        );
                        tracing::warn!(namespace = %ns, lease = %lease, "{msg}");
                        ctx.warn(about, "LeaseNotManaged", msg).await;
                    }
                }
                Err(e) => {
                    return Err(crate::error::Error::api(
                        format!("creating Lease {ns}/{lease}"),
                        e,
                    ));
                }
            }
        }
    }

    let role_key = ObjectRef::<Role>::new(&name).within(&ns);
    let binding_key = ObjectRef::<RoleBinding>::new(&name).within(&ns);
    if desired.is_empty() {
        if ctx.bindings.get(&binding_key).is_some() {
            delete(&bindings, &name).await.map_err(|e| {
                crate::error::Error::api(format!("deleting RoleBinding {ns}/{name}"), e)
            })?;
            tracing::info!(namespace = %ns, role_binding = %name, "RoleBinding removed: no pod needs it");
        }
        if ctx.roles.get(&role_key).is_some() {
            delete(&roles, &name)
                .await
                .map_err(|e| crate::error::Error::api(format!("deleting Role {ns}/{name}"), e))?;
            tracing::info!(namespace = %ns, role = %name, "Role removed: no pod needs it");
        }
        return Ok(());
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let role = grants::role(&desired);
    if !ctx
        .roles
        .get(&role_key)
        .is_some_and(|have| grants::role_matches(&have, &role))
    {
        roles
            .patch(&name, &pp, &Patch::Apply(&role))
            .await
            .map_err(|e| api_err(format!("applying Role {ns}/{name}"), e))?;
        tracing::info!(namespace = %ns, role = %name, leases = ?desired.leases, "Role applied");
    }
    let binding = grants::role_binding(&desired);
    if !ctx
        .bindings
        .get(&binding_key)
        .is_some_and(|have| grants::role_binding_matches(&have, &binding))
    {
        bindings
            .patch(&name, &pp, &Patch::Apply(&binding))
            .await
            .map_err(|e| api_err(format!("applying RoleBinding {ns}/{name}"), e))?;
        tracing::info!(namespace = %ns, role_binding = %name, service_accounts = ?desired.service_accounts, "RoleBinding applied");
    }
    Ok(())
}

async fn delete<K>(api: &Api<K>, name: &str) -> std::result::Result<(), ApiError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) => match ApiError::from(e) {
            ApiError::NotFound => Ok(()),
            e => Err(e),
        },
    }
}
