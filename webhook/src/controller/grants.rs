//! What the controller wants to exist for one unit (an annotated workload of any kind in
//! [`Kind`], or a standalone pod), decided from objects read from the API server only. Pure: no
//! I/O.
//!
//! A unit gets:
//! - the Lease its pods use, created ahead with an ownerReference to the unit (garbage-collected
//!   with it);
//! - a Role granting get/list/watch/update on exactly the Lease names its pods use
//!   (`resourceNames`), and a RoleBinding of that Role to the ServiceAccounts the unit's pods run
//!   as. `list` and `watch` are limited by name too: the elector lists and watches its Lease with
//!   the field selector `metadata.name=<lease>`, which the API server authorizes as that name.
//!
//! Every pod running as one of those ServiceAccounts shares the right to those Leases: give an
//! elected workload a ServiceAccount of its own.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::admission::lease_name::{self, Kind};
use crate::admission::patch;
use crate::admission::settings;

/// Label on every object the controller creates; its watches select on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = contract::deploy::WEBHOOK_NAME;
/// Label selector matching [`MANAGED_BY`].
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}

/// Verbs the elector needs on its own Lease. No create (the controller creates the Lease ahead,
/// and create cannot be limited by name), no patch, no delete.
pub const ELECTOR_LEASE_VERBS: &[&str] = &["get", "list", "watch", "update"];

/// The object a unit's Lease, Role and RoleBinding belong to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    pub fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: None,
            block_owner_deletion: None,
        }
    }

    /// Name of the unit's Role and RoleBinding: `leader-election-<kind>-<name>`.
    pub fn grant_name(&self) -> String {
        let mut n = format!(
            "{}{}-{}",
            contract::GRANT_PREFIX,
            self.kind.to_ascii_lowercase(),
            self.name
        );
        n.truncate(253);
        n
    }
}

/// What one unit needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub namespace: String,
    pub owner: Owner,
    /// The Lease to create ahead (the one new pods will use), if the unit is still annotated.
    pub create_lease: Option<String>,
    /// Every Lease the unit's pods use (old pods of a rollout may use an older name).
    pub leases: BTreeSet<String>,
    /// The Lease name the unit's kind and name give (see [`lease_name`]): one that exists with
    /// another owner is another workload's, not shared (a name chosen with the annotation may be
    /// shared on purpose).
    pub default_lease: Option<String>,
    pub service_accounts: BTreeSet<String>,
}

impl Desired {
    /// Nothing to grant: the Role and RoleBinding go.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() || self.service_accounts.is_empty()
    }
}

fn service_account_of(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> String {
    spec.and_then(|s| {
        s.service_account_name
            .as_deref()
            .or(s.service_account.as_deref())
    })
    .filter(|s| !s.is_empty())
    .unwrap_or("default")
    .to_string()
}

/// The Lease and ServiceAccount of a pod that carries the elector, as the API server stores it.
pub fn pod_grant(pod: &Pod) -> Option<(String, String)> {
    let lease = patch::injected_lease(pod)?;
    Some((lease, service_account_of(pod.spec.as_ref())))
}

/// The Lease a workload's new pods will use, when its pod template opts in with valid settings
/// (pods with invalid ones are refused by admission anyway).
pub fn template_lease(
    kind: Kind,
    workload_name: &str,
    template: &PodTemplateSpec,
) -> Option<String> {
    let ann = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    if !settings::enabled(ann).ok()? {
        return None;
    }
    let s = settings::parse_settings(ann).ok()?;
    match s.lease_name {
        Some(l) => Some(l),
        None => lease_name::for_workload(kind, workload_name),
    }
}

/// What a workload needs: its template's Lease and ServiceAccount if it is annotated, plus the
/// Lease and ServiceAccount of each of its injected pods.
pub fn workload_desired<'a>(
    namespace: &str,
    kind: Kind,
    owner: Owner,
    template: Option<&PodTemplateSpec>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Desired {
    let create_lease = template.and_then(|t| template_lease(kind, &owner.name, t));
    let default_lease = lease_name::for_workload(kind, &owner.name);
    let mut leases = BTreeSet::new();
    let mut sas = BTreeSet::new();
    if let (Some(l), Some(t)) = (&create_lease, template) {
        leases.insert(l.clone());
        sas.insert(service_account_of(t.spec.as_ref()));
    }
    for p in pods {
        if let Some((l, sa)) = pod_grant(p) {
            leases.insert(l);
            sas.insert(sa);
        }
    }
    Desired {
        namespace: namespace.to_string(),
        owner,
        create_lease,
        leases,
        default_lease,
        service_accounts: sas,
    }
}

/// What a standalone pod (not run by a Deployment or StatefulSet) needs.
pub fn pod_desired(namespace: &str, pod: &Pod) -> Desired {
    let owner = Owner {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    };
    let grant = pod_grant(pod).filter(|_| pod.metadata.deletion_timestamp.is_none());
    Desired {
        namespace: namespace.to_string(),
        owner,
        create_lease: grant.as_ref().map(|(l, _)| l.clone()),
        leases: grant.iter().map(|(l, _)| l.clone()).collect(),
        default_lease: None,
        service_accounts: grant.into_iter().map(|(_, sa)| sa).collect(),
    }
}

fn meta(d: &Desired, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(d.namespace.clone()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY.to_string(),
            MANAGED_BY_VALUE.to_string(),
        )])),
        owner_references: Some(vec![d.owner.reference()]),
        ..ObjectMeta::default()
    }
}

/// The Lease created ahead: no spec (the elector writes it), our label, the unit as owner.
pub fn lease(d: &Desired, name: &str) -> Lease {
    Lease {
        metadata: meta(d, name),
        spec: None,
    }
}

pub fn role(d: &Desired) -> Role {
    Role {
        metadata: meta(d, &d.owner.grant_name()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            verbs: ELECTOR_LEASE_VERBS.iter().map(|v| v.to_string()).collect(),
            resource_names: Some(d.leases.iter().cloned().collect()),
            non_resource_urls: None,
        }]),
    }
}

pub fn role_binding(d: &Desired) -> RoleBinding {
    let name = d.owner.grant_name();
    RoleBinding {
        metadata: meta(d, &name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name,
        },
        subjects: Some(
            d.service_accounts
                .iter()
                .map(|sa| Subject {
                    kind: "ServiceAccount".into(),
                    name: sa.clone(),
                    namespace: Some(d.namespace.clone()),
                    api_group: None,
                })
                .collect(),
        ),
    }
}

/// Whether the stored Role grants what `want` does (rules only; metadata is ours anyway).
pub fn role_matches(have: &Role, want: &Role) -> bool {
    have.rules == want.rules && owners_match(&have.metadata, &want.metadata)
}

pub fn role_binding_matches(have: &RoleBinding, want: &RoleBinding) -> bool {
    have.role_ref == want.role_ref
        && have.subjects == want.subjects
        && owners_match(&have.metadata, &want.metadata)
}

fn owners_match(have: &ObjectMeta, want: &ObjectMeta) -> bool {
    let uids = |m: &ObjectMeta| {
        m.owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.clone())
            .collect::<BTreeSet<_>>()
    };
    uids(have) == uids(want)
}

/// Whether an existing Lease (one the controller created) belongs to another workload: it is
/// this unit's default name but owned by something else (e.g. a Deployment named
/// `statefulset.web` and StatefulSet `web`).
pub fn lease_taken(d: &Desired, lease: &Lease) -> bool {
    let name = lease.metadata.name.as_deref();
    if d.owner.kind == "Pod" || name.is_none() || name != d.default_lease.as_deref() {
        return false;
    }
    let owners = lease
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default();
    !owners.is_empty()
        && !owners
            .iter()
            .any(|o| o.uid == d.owner.uid || o.kind == "Pod")
}

/// Whether a Lease found on the server may be granted: only one the controller created (it
/// carries [`MANAGED_BY`]). A Lease someone else made, e.g. another controller's lock, is never
/// handed to an annotated pod's ServiceAccount.
pub fn lease_is_ours(lease: &Lease) -> bool {
    lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner() -> Owner {
        Owner {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "u1".into(),
        }
    }

    fn template(annotations: serde_json::Value, sa: Option<&str>) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"name": "app"}], "serviceAccountName": sa},
        }))
        .unwrap()
    }

    fn injected_pod(lease: &str, sa: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"serviceAccountName": sa, "containers": [
                {"name": "app"},
                {"name": contract::CONTAINER_NAME, "args": [format!("--election={lease}")]},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn workload_table() {
        let on = json!({"leader-election/enabled": "true"});
        let named =
            json!({"leader-election/enabled": "true", "leader-election/lease-name": "lock"});
        let off = json!({});
        let bad =
            json!({"leader-election/enabled": "true", "leader-election/lease-duration": "soon"});
        // (template annotations, template SA, pods (lease, sa)) -> (create, leases, sas)
        type Case<'a> = (
            serde_json::Value,
            Option<&'a str>,
            Vec<(&'a str, Option<&'a str>)>,
            Option<&'a str>,
            Vec<&'a str>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                on.clone(),
                None,
                vec![],
                Some("web"),
                vec!["web"],
                vec!["default"],
            ),
            (
                named,
                Some("app-sa"),
                vec![],
                Some("lock"),
                vec!["lock"],
                vec!["app-sa"],
            ),
            // Rollout from another ServiceAccount and Lease name: both stay granted while old
            // pods run.
            (
                on,
                Some("new-sa"),
                vec![("old", Some("old-sa")), ("web", Some("new-sa"))],
                Some("web"),
                vec!["old", "web"],
                vec!["new-sa", "old-sa"],
            ),
            // No longer annotated, no injected pod left: nothing to grant.
            (off.clone(), Some("x"), vec![], None, vec![], vec![]),
            // No longer annotated, old pods still run: they keep their Lease.
            (
                off,
                None,
                vec![("web", None)],
                None,
                vec!["web"],
                vec!["default"],
            ),
            // Invalid settings: pods are refused, nothing is granted ahead.
            (bad, None, vec![], None, vec![], vec![]),
        ];
        for (i, (ann, sa, pods, create, leases, sas)) in cases.into_iter().enumerate() {
            let t = template(ann, sa);
            let pods: Vec<Pod> = pods.iter().map(|(l, s)| injected_pod(l, *s)).collect();
            let d = workload_desired("ns", Kind::Deployment, owner(), Some(&t), pods.iter());
            assert_eq!(d.create_lease.as_deref(), create, "case {i}");
            assert_eq!(
                d.leases.iter().map(String::as_str).collect::<Vec<_>>(),
                leases,
                "case {i}"
            );
            assert_eq!(
                d.service_accounts
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                sas,
                "case {i}"
            );
            assert_eq!(d.is_empty(), leases.is_empty(), "case {i}");
        }
    }

    #[test]
    fn role_grants_only_the_named_leases_and_binding_names_the_service_accounts() {
        let t = template(json!({"leader-election/enabled": "true"}), Some("app-sa"));
        let d = workload_desired("ns", Kind::Deployment, owner(), Some(&t), []);
        let r = role(&d);
        assert_eq!(
            r.metadata.name.as_deref(),
            Some("leader-election-deployment-web")
        );
        assert_eq!(r.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
        let rules = r.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["leases".to_string()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["web".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch", "update"]);
        let b = role_binding(&d);
        assert_eq!(b.role_ref.kind, "Role");
        let s = b.subjects.unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].name.as_str(), s[0].namespace.as_deref()),
            ("app-sa", Some("ns"))
        );
        let l = lease(&d, "web");
        assert!(lease_is_ours(&l));
        assert_eq!(l.metadata.owner_references.unwrap()[0].kind, "Deployment");
    }

    #[test]
    fn bare_pod_is_its_own_owner_and_a_foreign_lease_is_not_ours() {
        let mut p = injected_pod("solo", Some("sa"));
        p.metadata.uid = Some("pu".into());
        let d = pod_desired("ns", &p);
        assert_eq!(d.owner.kind, "Pod");
        assert_eq!(d.create_lease.as_deref(), Some("solo"));
        assert_eq!(
            d.service_accounts.iter().next().map(String::as_str),
            Some("sa")
        );
        let mut foreign = lease(&d, "solo");
        foreign.metadata.labels = None;
        assert!(!lease_is_ours(&foreign));
        // Not injected (e.g. admitted while the webhook was bypassed): nothing.
        let plain: Pod = serde_json::from_value(
            json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "app"}]}}),
        )
        .unwrap();
        assert!(pod_desired("ns", &plain).is_empty());
    }

    #[test]
    fn each_kind_creates_its_default_lease_and_a_taken_one_is_refused() {
        let t = template(json!({"leader-election/enabled": "true"}), None);
        let cases = [
            (Kind::Deployment, "web"),
            (Kind::StatefulSet, "statefulset.web"),
            (Kind::DaemonSet, "daemonset.web"),
            (Kind::Job, "job.web"),
            (Kind::CronJob, "cronjob.web"),
            (Kind::Rollout, "rollout.web"),
        ];
        for (kind, want) in cases {
            let mut o = owner();
            o.kind = kind.as_str().into();
            let d = workload_desired("ns", kind, o, Some(&t), []);
            assert_eq!(d.create_lease.as_deref(), Some(want), "{kind:?}");
            assert_eq!(d.default_lease.as_deref(), Some(want), "{kind:?}");
            // Created by this unit: its own.
            assert!(!lease_taken(&d, &lease(&d, want)), "{kind:?}");
            // Owned by another workload under this unit's default name: taken.
            let mut other = lease(&d, want);
            other.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
            assert!(lease_taken(&d, &other), "{kind:?}");
        }
        // A name chosen with the annotation may be shared on purpose.
        let named = template(
            json!({"leader-election/enabled": "true", "leader-election/lease-name": "shared"}),
            None,
        );
        let d = workload_desired("ns", Kind::Deployment, owner(), Some(&named), []);
        let mut shared = lease(&d, "shared");
        shared.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        assert!(!lease_taken(&d, &shared));
    }
}
