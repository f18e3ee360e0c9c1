//! Every Kubernetes API call the webhook binary makes, as RBAC sees it: the shipped rules
//! (`manifests/base/webhook-rbac.yaml`) must grant exactly these, no more (webhook/tests/rbac.rs
//! checks both ways). Each entry names the code that makes the call; a new call site needs an
//! entry here and a rule there.

/// Where a rule must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Any namespace (a ClusterRole bound by a ClusterRoleBinding).
    Cluster,
    /// The webhook's own namespace (a Role), limited to these names when not empty (`create`
    /// cannot be limited by name).
    Own(&'static [&'static str]),
    /// Cluster-scoped objects limited to these names.
    Named(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    pub scope: Scope,
    /// The code making the call, and why.
    pub by: &'static str,
}

const fn call(
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    scope: Scope,
    by: &'static str,
) -> Call {
    Call {
        group,
        resource,
        verb,
        scope,
        by,
    }
}

const TLS: &[&str] = &[contract::deploy::TLS_SECRET];
const MWC: &[&str] = &[contract::deploy::WEBHOOK_CONFIGURATION];
const COORD: &str = "coordination.k8s.io";
const RBAC: &str = "rbac.authorization.k8s.io";
use Scope::{Cluster, Named, Own};

pub const CALLS: &[Call] = &[
    call(
        "",
        "nodes",
        "list",
        Cluster,
        "cluster::KubeCluster::kubelet_versions (native sidecars)",
    ),
    call(
        "",
        "secrets",
        "get",
        Own(TLS),
        "cluster::KubeCluster::get_secret (self-provisioning)",
    ),
    call(
        "",
        "secrets",
        "create",
        Own(&[]),
        "cluster::KubeCluster::create_secret",
    ),
    call(
        "",
        "secrets",
        "update",
        Own(TLS),
        "cluster::KubeCluster::replace_secret",
    ),
    call(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "get",
        Named(MWC),
        "cluster::KubeCluster::get_webhooks",
    ),
    call(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
        Named(MWC),
        "cluster::KubeCluster::set_ca_bundles",
    ),
    call(
        "",
        "pods",
        "list",
        Cluster,
        "controller::run: pod cache (Controller<Pod>)",
    ),
    call("", "pods", "watch", Cluster, "controller::run: pod cache"),
    call(
        "",
        "pods",
        "patch",
        Cluster,
        "controller::sync_labels: leader-election/role label",
    ),
    call(
        "apps",
        "deployments",
        "list",
        Cluster,
        "controller::run: Controller<Deployment>",
    ),
    call("apps", "deployments", "watch", Cluster, "controller::run"),
    call(
        "apps",
        "statefulsets",
        "list",
        Cluster,
        "controller::run: Controller<StatefulSet>",
    ),
    call("apps", "statefulsets", "watch", Cluster, "controller::run"),
    call(
        "apps",
        "daemonsets",
        "list",
        Cluster,
        "controller::run: Controller<DaemonSet>",
    ),
    call("apps", "daemonsets", "watch", Cluster, "controller::run"),
    call(
        "batch",
        "jobs",
        "list",
        Cluster,
        "controller::run: Controller<Job> (a bare Job's template; a CronJob's Jobs)",
    ),
    call("batch", "jobs", "watch", Cluster, "controller::run"),
    call(
        "batch",
        "cronjobs",
        "list",
        Cluster,
        "controller::run: Controller<CronJob>",
    ),
    call("batch", "cronjobs", "watch", Cluster, "controller::run"),
    call(
        "argoproj.io",
        "rollouts",
        "list",
        Cluster,
        "controller::run: Argo Rollouts, when rollouts::installed finds the CRD",
    ),
    call(
        "argoproj.io",
        "rollouts",
        "watch",
        Cluster,
        "controller::run",
    ),
    call(
        COORD,
        "leases",
        "create",
        Cluster,
        "workloads::apply: Lease created ahead; the election; provision: the replica's report Lease",
    ),
    call(
        COORD,
        "leases",
        "get",
        Cluster,
        "workloads::apply: is an existing Lease ours; provision: report Lease; held to grant it",
    ),
    call(
        COORD,
        "leases",
        "list",
        Cluster,
        "controller::run: managed Lease cache; the election's read; certs::read: replica reports",
    ),
    call(
        COORD,
        "leases",
        "watch",
        Cluster,
        "controller::run: managed Lease cache; the election's watch",
    ),
    call(
        COORD,
        "leases",
        "update",
        Cluster,
        "controller::election: renewals; provision: report Lease; held to grant it (no escalate)",
    ),
    call(
        RBAC,
        "roles",
        "list",
        Cluster,
        "controller::run: managed Role cache",
    ),
    call(RBAC, "roles", "watch", Cluster, "controller::run"),
    call(
        RBAC,
        "roles",
        "create",
        Cluster,
        "workloads::apply: first server-side apply",
    ),
    call(
        RBAC,
        "roles",
        "patch",
        Cluster,
        "workloads::apply: server-side apply",
    ),
    call(
        RBAC,
        "roles",
        "delete",
        Cluster,
        "workloads::apply: no pod needs it",
    ),
    call(
        RBAC,
        "rolebindings",
        "list",
        Cluster,
        "controller::run: managed RoleBinding cache",
    ),
    call(RBAC, "rolebindings", "watch", Cluster, "controller::run"),
    call(
        RBAC,
        "rolebindings",
        "create",
        Cluster,
        "workloads::apply: first server-side apply",
    ),
    call(
        RBAC,
        "rolebindings",
        "patch",
        Cluster,
        "workloads::apply: server-side apply",
    ),
    call(
        RBAC,
        "rolebindings",
        "delete",
        Cluster,
        "workloads::apply: no pod needs it",
    ),
    call(
        "events.k8s.io",
        "events",
        "create",
        Cluster,
        "controller::Context::warn (kube-runtime Recorder)",
    ),
    call(
        "events.k8s.io",
        "events",
        "patch",
        Cluster,
        "controller::Context::warn: repeated event's series",
    ),
];
