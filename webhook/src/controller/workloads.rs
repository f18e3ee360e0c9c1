//! Lease, Role and RoleBinding for each annotated Deployment, StatefulSet and standalone pod.
//! Reconciled from the controller's caches of what the API server holds; writes only what
//! differs from them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use kube_runtime::controller::Action;
use kube_runtime::reflector::ObjectRef;

use super::grants::{self, Desired, Owner};
use super::{Context, api_err};
use crate::admission::patch;
use crate::error::{ApiError, Result};

/// Field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "leader-election-webhook";
/// Periodic re-check, e.g. of a Role someone deleted by hand.
pub const RESYNC: Duration = Duration::from_secs(300);

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

/// Injected pods of the workload `kind/name` in `ns`, from the pod cache.
fn pods_of(ctx: &Context, ns: &str, kind: &str, name: &str) -> Vec<Arc<Pod>> {
    ctx.pods.state_filter(|p| {
        p.namespace().as_deref() == Some(ns)
            && p.metadata.deletion_timestamp.is_none()
            && patch::owning_workload(&p.metadata) == Some((kind, name))
            && patch::is_injected(p)
    })
}

pub async fn reconcile_deployment(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action> {
    ctx.ready().await;
    let ns = d.namespace().unwrap_or_default();
    if excluded(&ns) || d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods = pods_of(&ctx, &ns, "Deployment", &d.name_any());
    let template = d.spec.as_ref().map(|s| &s.template);
    let desired = grants::workload_desired(
        &ns,
        owner_of(d.as_ref()),
        template,
        pods.iter().map(|p| p.as_ref()),
    );
    apply(&ctx, desired, &d.object_ref(&())).await?;
    Ok(Action::requeue(RESYNC))
}

pub async fn reconcile_statefulset(s: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action> {
    ctx.ready().await;
    let ns = s.namespace().unwrap_or_default();
    if excluded(&ns) || s.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods = pods_of(&ctx, &ns, "StatefulSet", &s.name_any());
    let template = s.spec.as_ref().map(|s| &s.template);
    let desired = grants::workload_desired(
        &ns,
        owner_of(s.as_ref()),
        template,
        pods.iter().map(|p| p.as_ref()),
    );
    apply(&ctx, desired, &s.object_ref(&())).await?;
    Ok(Action::requeue(RESYNC))
}

/// A pod: its workload's grants (Deployment, StatefulSet) or its own (any other pod), then its
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
    match patch::owning_workload(&pod.metadata) {
        Some(("Deployment", name))
            if let Some(d) = ctx.deployments.get(&ObjectRef::new(name).within(&ns)) =>
        {
            reconcile_deployment(d, ctx.clone()).await?;
        }
        Some(("StatefulSet", name))
            if let Some(s) = ctx.statefulsets.get(&ObjectRef::new(name).within(&ns)) =>
        {
            reconcile_statefulset(s, ctx.clone()).await?;
        }
        // Its workload is not in the cache (yet: watches lag each other; or it is gone and the
        // pod is being garbage-collected): look again later rather than grant per pod.
        Some(("Deployment" | "StatefulSet", _)) => {
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        _ => {
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
async fn apply(
    ctx: &Context,
    mut desired: Desired,
    about: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<()> {
    let ns = desired.namespace.clone();
    let name = desired.owner.grant_name();
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ns);

    if !desired.is_empty() {
        let wanted: Vec<String> = desired.leases.iter().cloned().collect();
        for lease in wanted {
            if ctx
                .leases
                .get(&ObjectRef::new(&lease).within(&ns))
                .is_some()
            {
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
