//! Everything the webhook asks the API server, behind [`Cluster`] so the logic above it runs
//! against an in-memory fake in tests. Only the verbs the webhook's RBAC grants are used.

use std::collections::HashMap;
use std::future::Future;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Node, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::error::{ApiError, Error, Result};

type ApiResult<T> = std::result::Result<T, ApiError>;

/// One webhook entry of the MutatingWebhookConfiguration: its name and current caBundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEntry {
    pub name: String,
    pub ca_bundle: Option<Vec<u8>>,
}

/// The API calls the webhook makes.
pub trait Cluster: Send + Sync + 'static {
    fn service_account_exists(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = ApiResult<bool>> + Send;
    /// Fails with [`ApiError::AlreadyExists`] when it is there.
    fn create_service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn get_role_binding(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = ApiResult<Option<RoleBinding>>> + Send;
    fn create_role_binding(
        &self,
        ns: &str,
        rb: RoleBinding,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Replaces the subjects, guarded by `resource_version` ([`ApiError::Conflict`] if stale).
    fn set_role_binding_subjects(
        &self,
        ns: &str,
        name: &str,
        resource_version: &str,
        subjects: Vec<Subject>,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// The API server's `gitVersion`, e.g. `v1.20.2`.
    fn server_version(&self) -> impl Future<Output = ApiResult<String>> + Send;
    /// Every node's kubelet version.
    fn kubelet_versions(&self) -> impl Future<Output = ApiResult<Vec<String>>> + Send;
    fn get_secret(
        &self,
        ns: &str,
        name: &str,
    ) -> impl Future<Output = ApiResult<Option<Secret>>> + Send;
    fn create_secret(&self, ns: &str, s: Secret) -> impl Future<Output = ApiResult<()>> + Send;
    /// Replaces the Secret, guarded by its `metadata.resourceVersion`.
    fn replace_secret(&self, ns: &str, s: Secret) -> impl Future<Output = ApiResult<()>> + Send;
    /// The configuration's webhook entries, `None` if it does not exist.
    fn get_webhooks(
        &self,
        configuration: &str,
    ) -> impl Future<Output = ApiResult<Option<Vec<WebhookEntry>>>> + Send;
    /// Sets the caBundle of the entries at the given (index, name) positions; the names guard
    /// against the list having changed since it was read.
    fn set_ca_bundles(
        &self,
        configuration: &str,
        entries: &[(usize, String)],
        ca: &[u8],
    ) -> impl Future<Output = ApiResult<()>> + Send;
}

/// [`Cluster`] on a real API server.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
}

impl KubeCluster {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// In-cluster config, else KUBECONFIG / ~/.kube/config.
    pub async fn infer() -> Result<Self> {
        let client = kube::Client::try_default().await.map_err(Error::Client)?;
        Ok(Self::new(client))
    }
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                contract::deploy::WEBHOOK_NAME.to_string(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    }
}

impl Cluster for KubeCluster {
    async fn service_account_exists(&self, ns: &str, name: &str) -> ApiResult<bool> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.is_some())
    }

    async fn create_service_account(&self, ns: &str, name: &str) -> ApiResult<()> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let sa = ServiceAccount {
            metadata: meta(Some(ns), name),
            ..ServiceAccount::default()
        };
        api.create(&PostParams::default(), &sa).await?;
        Ok(())
    }

    async fn get_role_binding(&self, ns: &str, name: &str) -> ApiResult<Option<RoleBinding>> {
        let api: Api<RoleBinding> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    async fn create_role_binding(&self, ns: &str, rb: RoleBinding) -> ApiResult<()> {
        let api: Api<RoleBinding> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &rb).await?;
        Ok(())
    }

    async fn set_role_binding_subjects(
        &self,
        ns: &str,
        name: &str,
        resource_version: &str,
        subjects: Vec<Subject>,
    ) -> ApiResult<()> {
        let api: Api<RoleBinding> = Api::namespaced(self.client.clone(), ns);
        // A merge patch carrying resourceVersion is rejected with 409 if the object moved on.
        let body = serde_json::json!({
            "metadata": {"resourceVersion": resource_version},
            "subjects": subjects,
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await?;
        Ok(())
    }

    async fn server_version(&self) -> ApiResult<String> {
        Ok(self.client.apiserver_version().await?.git_version)
    }

    async fn kubelet_versions(&self) -> ApiResult<Vec<String>> {
        let api: Api<Node> = Api::all(self.client.clone());
        let nodes = api.list(&ListParams::default()).await?;
        Ok(nodes
            .items
            .into_iter()
            .map(|n| {
                n.status
                    .and_then(|s| s.node_info)
                    .map(|i| i.kubelet_version)
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn get_secret(&self, ns: &str, name: &str) -> ApiResult<Option<Secret>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    async fn create_secret(&self, ns: &str, s: Secret) -> ApiResult<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &s).await?;
        Ok(())
    }

    async fn replace_secret(&self, ns: &str, s: Secret) -> ApiResult<()> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let name = s.metadata.name.clone().unwrap_or_default();
        api.replace(&name, &PostParams::default(), &s).await?;
        Ok(())
    }

    async fn get_webhooks(&self, configuration: &str) -> ApiResult<Option<Vec<WebhookEntry>>> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        Ok(api.get_opt(configuration).await?.map(|c| {
            c.webhooks
                .unwrap_or_default()
                .into_iter()
                .map(|w| WebhookEntry {
                    name: w.name,
                    ca_bundle: w.client_config.ca_bundle.map(|b| b.0),
                })
                .collect()
        }))
    }

    async fn set_ca_bundles(
        &self,
        configuration: &str,
        entries: &[(usize, String)],
        ca: &[u8],
    ) -> ApiResult<()> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let encoded = k8s_openapi::ByteString(ca.to_vec());
        let mut ops = Vec::new();
        for (i, name) in entries {
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .map_err(|e| ApiError::Other(format!("building the caBundle patch: {e}")))?;
        api.patch(
            configuration,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
        Ok(())
    }
}

/// Makes sure a namespace has the elector's ServiceAccount (when a pod uses ours) and a
/// RoleBinding naming the pod's ServiceAccount (plus the leader-label one when asked for),
/// remembering what it did so steady-state admissions make no API calls.
pub struct Ensurer {
    ttl: Duration,
    /// namespace → ServiceAccount → what was ensured when (nested so lookups borrow `&str`).
    known: RwLock<HashMap<String, HashMap<String, Ensured>>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Ensured {
    base: Option<Instant>,
    leader_label: Option<Instant>,
}

const ENSURE_ATTEMPTS: usize = 4;

/// The RoleBinding (and ClusterRole it binds) the elector needs; with `leader_label` also the one
/// granting pods get/patch.
fn bindings(leader_label: bool) -> &'static [(&'static str, &'static str)] {
    const BASE: (&str, &str) = (contract::ROLE_BINDING, contract::CLUSTER_ROLE);
    const LABEL: (&str, &str) = (
        contract::ROLE_BINDING_LEADER_LABEL,
        contract::CLUSTER_ROLE_LEADER_LABEL,
    );
    if leader_label {
        &[BASE, LABEL]
    } else {
        &[BASE]
    }
}

impl Ensurer {
    /// `ttl`: how long an ensured (namespace, ServiceAccount) is trusted before it is checked
    /// again (someone may delete the RoleBinding).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// Whether `sa` in `ns` was ensured recently (with the leader-label binding if asked).
    pub fn is_known(&self, ns: &str, sa: &str, leader_label: bool) -> bool {
        let fresh = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < self.ttl);
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known
            .get(ns)
            .and_then(|m| m.get(sa))
            .is_some_and(|e| fresh(e.base) && (!leader_label || fresh(e.leader_label)))
    }

    /// Ensures (idempotently) and caches; returns whether API calls were made.
    pub async fn ensure<C: Cluster>(
        &self,
        cluster: &C,
        ns: &str,
        sa: &str,
        leader_label: bool,
    ) -> Result<bool> {
        if self.is_known(ns, sa, leader_label) {
            return Ok(false);
        }
        if sa == contract::SERVICE_ACCOUNT {
            let exists = cluster
                .service_account_exists(ns, sa)
                .await
                .map_err(|e| Error::api(format!("getting ServiceAccount {ns}/{sa}"), e))?;
            if !exists {
                match cluster.create_service_account(ns, sa).await {
                    Ok(()) | Err(ApiError::AlreadyExists) => {}
                    Err(e) => {
                        return Err(Error::api(format!("creating ServiceAccount {ns}/{sa}"), e));
                    }
                }
            }
        }
        for (binding, role) in bindings(leader_label) {
            ensure_role_binding(cluster, ns, sa, binding, role).await?;
        }
        let now = Instant::now();
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        let entry = known
            .entry(ns.to_string())
            .or_default()
            .entry(sa.to_string())
            .or_default();
        entry.base = Some(now);
        if leader_label {
            entry.leader_label = Some(now);
        }
        Ok(true)
    }
}

fn sa_subject(ns: &str, sa: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: sa.into(),
        namespace: Some(ns.into()),
        api_group: None,
    }
}

fn names_subject(s: &Subject, ns: &str, sa: &str) -> bool {
    s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(ns)
}

async fn ensure_role_binding<C: Cluster>(
    cluster: &C,
    ns: &str,
    sa: &str,
    name: &str,
    cluster_role: &str,
) -> Result<()> {
    let ctx = || format!("ensuring RoleBinding {ns}/{name} for ServiceAccount {sa}");
    for _ in 0..ENSURE_ATTEMPTS {
        match cluster
            .get_role_binding(ns, name)
            .await
            .map_err(|e| Error::api(ctx(), e))?
        {
            None => {
                let rb = RoleBinding {
                    metadata: meta(Some(ns), name),
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "ClusterRole".into(),
                        name: cluster_role.into(),
                    },
                    subjects: Some(vec![sa_subject(ns, sa)]),
                };
                match cluster.create_role_binding(ns, rb).await {
                    Ok(()) => return Ok(()),
                    // Another replica or admission won the race: re-read it.
                    Err(ApiError::AlreadyExists) => continue,
                    Err(e) => return Err(Error::api(ctx(), e)),
                }
            }
            Some(rb) => {
                if rb.role_ref.kind != "ClusterRole" || rb.role_ref.name != cluster_role {
                    return Err(Error::api(
                        ctx(),
                        ApiError::Other(format!(
                            "it binds {} {} instead of ClusterRole {}; delete it so the \
                             webhook can recreate it",
                            rb.role_ref.kind, rb.role_ref.name, cluster_role
                        )),
                    ));
                }
                let mut subjects = rb.subjects.unwrap_or_default();
                if subjects.iter().any(|s| names_subject(s, ns, sa)) {
                    return Ok(());
                }
                subjects.push(sa_subject(ns, sa));
                let rv = rb.metadata.resource_version.unwrap_or_default();
                match cluster
                    .set_role_binding_subjects(ns, name, &rv, subjects)
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(ApiError::Conflict) => continue,
                    Err(e) => return Err(Error::api(ctx(), e)),
                }
            }
        }
    }
    Err(Error::api(
        ctx(),
        ApiError::Other(format!(
            "still changing concurrently after {ENSURE_ATTEMPTS} attempts"
        )),
    ))
}

/// `(major, minor)` of a Kubernetes version such as `v1.29.3-eks-1234` or `1.20`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor_part = parts.next()?;
    let digits: String = minor_part
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, digits.parse().ok()?))
}

/// Native sidecars (init containers with `restartPolicy: Always`) need 1.29 on the API server
/// (an older one drops the field, leaving an init container that never exits) and on every
/// kubelet. Unknown versions and an empty node list count as unsupported.
pub fn native_sidecars_supported(server: &str, kubelets: &[String]) -> bool {
    let ok = |v: &str| parse_version(v).is_some_and(|mv| mv >= (1, 29));
    ok(server) && !kubelets.is_empty() && kubelets.iter().all(|k| ok(k))
}

/// The cached native-sidecar decision, refreshed in the background.
#[derive(Default)]
pub struct NativeSupport(AtomicBool);

impl NativeSupport {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, v: bool) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Asks the cluster once and stores the answer; on error the previous answer stays.
    pub async fn refresh<C: Cluster>(&self, cluster: &C) -> Result<bool> {
        let server = cluster
            .server_version()
            .await
            .map_err(|e| Error::api("reading the API server version", e))?;
        let kubelets = cluster
            .kubelet_versions()
            .await
            .map_err(|e| Error::api("listing nodes", e))?;
        let v = native_sidecars_supported(&server, &kubelets);
        if v != self.get() {
            tracing::info!(native_sidecars = v, %server, nodes = kubelets.len(), "native sidecar support changed");
        }
        self.set(v);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let cases = [
            ("v1.20.2", Some((1, 20))),
            ("v1.29.0-eks-abc", Some((1, 29))),
            ("1.30", Some((1, 30))),
            ("v1.28+", Some((1, 28))),
            ("garbage", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_version(v), want, "{v}");
        }
    }

    #[test]
    fn native_decision() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(native_sidecars_supported(
            "v1.30.1",
            &s(&["v1.29.0", "v1.30.1"])
        ));
        assert!(!native_sidecars_supported("v1.20.2", &s(&["v1.29.0"])));
        assert!(!native_sidecars_supported(
            "v1.30.1",
            &s(&["v1.29.0", "v1.28.9"])
        ));
        assert!(!native_sidecars_supported("v1.30.1", &[]));
        assert!(!native_sidecars_supported("v1.30.1", &s(&[""])));
    }
}
