//! The Lease a workload's pods elect on, per kind. Pure; used by the pod patch (what the elector
//! is told) and by the controller (the Lease it creates ahead, the Role's `resourceNames`), so
//! the two can never disagree.
//!
//! | workload | Lease |
//! | --- | --- |
//! | Deployment | `<name>` (unchanged since the first release: `kubectl get lease my-app`) |
//! | Argo Rollout | `rollout.<name>`: one Lease across revisions (canary, blue-green) |
//! | StatefulSet | `statefulset.<name>` |
//! | DaemonSet | `daemonset.<name>` |
//! | ReplicaSet without a Deployment or Rollout | `replicaset.<name>` |
//! | Job without a CronJob | `job.<name>` |
//! | CronJob | `cronjob.<name>`: one Lease shared by all its Jobs, pinned on each Job at admission |
//! | bare pod | label `app.kubernetes.io/name`, else `app` |
//!
//! The `<kind>.` prefix keeps a Deployment and a StatefulSet (or any two kinds) of one name on
//! two Leases. It cannot make every pair distinct (a Deployment may itself be named
//! `statefulset.web`): the controller notices a Lease owned by another workload and grants it
//! to no one but its owner (event `LeaseNameTaken`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::settings;

/// Label the Deployment controller puts on a ReplicaSet's pods: `<deployment>-<hash>` is the
/// ReplicaSet's name.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The same for Argo Rollouts' ReplicaSets.
pub const ROLLOUTS_POD_TEMPLATE_HASH: &str = "rollouts-pod-template-hash";

/// A kind of workload that runs pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deployment,
    Rollout,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Deployment,
        Kind::Rollout,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::ReplicaSet,
        Kind::Job,
        Kind::CronJob,
    ];

    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::Rollout => "Rollout",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
        }
    }

    /// The API group of the kind.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Rollout => "argoproj.io",
            Kind::Job | Kind::CronJob => "batch",
            _ => "apps",
        }
    }

    pub fn from_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.group() == group)
    }

    /// The Lease name prefix; none for Deployments.
    fn prefix(self) -> Option<&'static str> {
        match self {
            Kind::Deployment => None,
            Kind::Rollout => Some("rollout"),
            Kind::StatefulSet => Some("statefulset"),
            Kind::DaemonSet => Some("daemonset"),
            Kind::ReplicaSet => Some("replicaset"),
            Kind::Job => Some("job"),
            Kind::CronJob => Some("cronjob"),
        }
    }
}

/// The Lease of a workload's pods when no `leader-election/lease-name` is set; `None` when the
/// result is not a valid Lease name (e.g. a name longer than 253 characters with its prefix).
pub fn for_workload(kind: Kind, name: &str) -> Option<String> {
    let lease = match kind.prefix() {
        None => name.to_string(),
        Some(p) => format!("{p}.{name}"),
    };
    settings::is_dns_subdomain(&lease).then_some(lease)
}

/// The workload that runs a pod, from the pod's own metadata: its controller ownerReference (or
/// its first one), a ReplicaSet carrying the pod's `rollouts-pod-template-hash` or
/// `pod-template-hash` reported as its Rollout or Deployment (the ReplicaSet's name minus
/// `-<hash>`), so the answer is the same across revisions. A Job is reported as a Job: whether a
/// CronJob runs it is on the Job, not the pod (see [`crate::admission::propagate`], which pins
/// the CronJob's Lease on the Job's pod template).
///
/// Other owner kinds (e.g. a custom controller's) are reported with their own kind name.
pub fn owning_workload(meta: &ObjectMeta) -> Option<(&str, &str)> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let o = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    if o.kind == "ReplicaSet" {
        let labels = meta.labels.as_ref();
        for (label, kind) in [
            (ROLLOUTS_POD_TEMPLATE_HASH, Kind::Rollout),
            (POD_TEMPLATE_HASH, Kind::Deployment),
        ] {
            let hash = labels.and_then(|l| l.get(label));
            if let Some(parent) = hash
                .filter(|h| !h.is_empty())
                .and_then(|h| o.name.strip_suffix(h.as_str()))
                .and_then(|n| n.strip_suffix('-'))
                .filter(|n| !n.is_empty())
            {
                return Some((kind.as_str(), parent));
            }
        }
    }
    Some((o.kind.as_str(), o.name.as_str()))
}

/// The Lease of a pod without `leader-election/lease-name`: its workload's (see
/// [`for_workload`]), else, for a pod no known workload runs, its app label. Never the pod's
/// name (each replica would elect itself).
pub fn for_pod(meta: &ObjectMeta) -> Option<String> {
    if let Some((kind, name)) = owning_workload(meta)
        && let Some(k) = Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    {
        return for_workload(k, name);
    }
    let labels = meta.labels.as_ref();
    ["app.kubernetes.io/name", "app"]
        .into_iter()
        .find_map(|key| {
            labels
                .and_then(|l| l.get(key))
                .filter(|v| settings::is_dns_subdomain(v))
                .cloned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(owner: Option<(&str, &str)>, labels: serde_json::Value) -> ObjectMeta {
        let owners = owner.map(|(kind, name)| {
            json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}])
        });
        serde_json::from_value(json!({"name": "p", "ownerReferences": owners, "labels": labels}))
            .unwrap()
    }

    #[test]
    fn lease_per_kind() {
        let cases = [
            (Kind::Deployment, "web", Some("web")),
            (Kind::Rollout, "web", Some("rollout.web")),
            (Kind::StatefulSet, "web", Some("statefulset.web")),
            (Kind::DaemonSet, "agent", Some("daemonset.agent")),
            (Kind::ReplicaSet, "rs", Some("replicaset.rs")),
            (Kind::Job, "migrate", Some("job.migrate")),
            (Kind::CronJob, "backup", Some("cronjob.backup")),
            (Kind::Deployment, "a.b", Some("a.b")),
            // Too long with its prefix: no name (the user must set one).
            (Kind::StatefulSet, &"x".repeat(250), None),
            (Kind::Deployment, &"x".repeat(253), Some(&"x".repeat(253))),
        ];
        for (kind, name, want) in cases {
            assert_eq!(for_workload(kind, name).as_deref(), want, "{kind:?} {name}");
        }
        // Two kinds of one name never share a Lease.
        let all: std::collections::BTreeSet<_> = Kind::ALL
            .iter()
            .map(|k| for_workload(*k, "same").unwrap())
            .collect();
        assert_eq!(all.len(), Kind::ALL.len());
    }

    #[test]
    fn lease_of_a_pod() {
        let no = json!({});
        let cases = [
            // Deployment through its ReplicaSet.
            (
                Some(("ReplicaSet", "web-5d4f8")),
                json!({"pod-template-hash": "5d4f8"}),
                Some("web"),
            ),
            // Argo Rollouts: every revision's pods on one Lease.
            (
                Some(("ReplicaSet", "web-6c9b7")),
                json!({"rollouts-pod-template-hash": "6c9b7"}),
                Some("rollout.web"),
            ),
            (
                Some(("ReplicaSet", "web-7a1b2")),
                json!({"rollouts-pod-template-hash": "7a1b2", "pod-template-hash": "7a1b2"}),
                Some("rollout.web"),
            ),
            // A hash that is not the ReplicaSet's suffix: a bare ReplicaSet.
            (
                Some(("ReplicaSet", "web")),
                json!({"pod-template-hash": "5d4f8"}),
                Some("replicaset.web"),
            ),
            (
                Some(("ReplicaSet", "rs")),
                no.clone(),
                Some("replicaset.rs"),
            ),
            (
                Some(("StatefulSet", "db")),
                no.clone(),
                Some("statefulset.db"),
            ),
            (
                Some(("DaemonSet", "agent")),
                no.clone(),
                Some("daemonset.agent"),
            ),
            (
                Some(("Job", "backup-29001")),
                no.clone(),
                Some("job.backup-29001"),
            ),
            // Bare pods and unknown owners: the app label.
            (None, json!({"app": "solo"}), Some("solo")),
            (
                None,
                json!({"app": "x", "app.kubernetes.io/name": "named"}),
                Some("named"),
            ),
            (
                Some(("MyOperator", "m")),
                json!({"app": "m-app"}),
                Some("m-app"),
            ),
            (None, json!({"app": "Not_A_Name"}), None),
            (None, no, None),
        ];
        for (owner, labels, want) in cases {
            let m = meta(owner, labels.clone());
            assert_eq!(for_pod(&m).as_deref(), want, "{owner:?} {labels}");
        }
    }
}
