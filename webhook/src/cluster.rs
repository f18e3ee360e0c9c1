//! Everything the webhook asks the API server, behind [`Cluster`] so the logic above it runs
//! against an in-memory fake in tests. Only the verbs the webhook's RBAC grants are used.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use crate::error::{ApiError, Error, Result};

type ApiResult<T> = std::result::Result<T, ApiError>;

/// One webhook entry of the MutatingWebhookConfiguration: its name and current caBundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEntry {
    pub name: String,
    pub ca_bundle: Option<Vec<u8>>,
}

/// The API calls the serving side of the webhook makes: reads of cluster facts, and the
/// certificate Secret and caBundle. Nothing here is called while answering an admission.
pub trait Cluster: Send + Sync + 'static {
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
    /// Leases of `ns` matching the label selector.
    fn list_leases(
        &self,
        ns: &str,
        selector: &str,
    ) -> impl Future<Output = ApiResult<Vec<Lease>>> + Send;
    /// Creates the Lease, or replaces the one of that name (guarded by the resourceVersion read
    /// just before).
    fn upsert_lease(&self, ns: &str, lease: Lease) -> impl Future<Output = ApiResult<()>> + Send;
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

impl Cluster for KubeCluster {
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

    async fn list_leases(&self, ns: &str, selector: &str) -> ApiResult<Vec<Lease>> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), ns);
        Ok(api
            .list(&ListParams::default().labels(selector))
            .await?
            .items)
    }

    async fn upsert_lease(&self, ns: &str, mut lease: Lease) -> ApiResult<()> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), ns);
        let name = lease.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await? {
            None => {
                api.create(&PostParams::default(), &lease).await?;
            }
            Some(old) => {
                lease.metadata.resource_version = old.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &lease).await?;
            }
        }
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

/// The cached native-sidecar decision, refreshed in the background: unknown until the cluster
/// answered once.
#[derive(Default)]
pub struct NativeSupport(AtomicU8);

// 0: not known yet (the Default).
const NO: u8 = 1;
const YES: u8 = 2;

impl NativeSupport {
    /// Supported as far as known (unknown counts as not, for `auto`).
    pub fn get(&self) -> bool {
        self.known() == Some(true)
    }

    /// `None` until the cluster answered once.
    pub fn known(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            YES => Some(true),
            NO => Some(false),
            _ => None,
        }
    }

    pub fn set(&self, v: bool) {
        self.0.store(if v { YES } else { NO }, Ordering::Relaxed);
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
        if Some(v) != self.known() {
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
    fn native_support_is_unknown_until_set() {
        let n = NativeSupport::default();
        assert_eq!((n.known(), n.get()), (None, false));
        n.set(false);
        assert_eq!((n.known(), n.get()), (Some(false), false));
        n.set(true);
        assert_eq!((n.known(), n.get()), (Some(true), true));
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
