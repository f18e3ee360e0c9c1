//! An in-memory [`Cluster`] that records every call, for tests (here and in other crates' tests).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;

use crate::cluster::{Cluster, WebhookEntry};
use crate::error::ApiError;

type ApiResult<T> = std::result::Result<T, ApiError>;

#[derive(Debug, Default)]
pub struct FakeState {
    pub secrets: BTreeMap<(String, String), Secret>,
    pub leases: BTreeMap<(String, String), Lease>,
    /// configuration name → entries
    pub webhooks: BTreeMap<String, Vec<WebhookEntry>>,
    pub server_version: String,
    pub kubelets: Vec<String>,
    /// Every call, e.g. `get_secret ns/name`.
    pub calls: Vec<String>,
    /// Calls (by method name) that fail once with the given error before behaving normally.
    pub fail_once: BTreeMap<String, ApiError>,
    /// How long every call takes (a slow API server), e.g. to keep a request in flight.
    pub latency: Duration,
    next_rv: u64,
}

#[derive(Debug, Default)]
pub struct FakeCluster {
    pub state: Mutex<FakeState>,
}

impl FakeCluster {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    pub fn clear_calls(&self) {
        self.with(|s| s.calls.clear());
    }

    /// Records the call (so a test sees it while it is in flight), waits the latency, then
    /// fails if asked to.
    async fn call(&self, method: &str, what: String) -> ApiResult<()> {
        let latency = self.with(|s| {
            s.calls.push(format!("{method} {what}"));
            s.latency
        });
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        self.with(|s| match s.fail_once.remove(method) {
            Some(e) => Err(e),
            None => Ok(()),
        })
    }
}

impl FakeState {
    fn rv(&mut self) -> String {
        self.next_rv += 1;
        self.next_rv.to_string()
    }
}

impl Cluster for FakeCluster {
    async fn server_version(&self) -> ApiResult<String> {
        self.call("server_version", String::new()).await?;
        Ok(self.with(|s| s.server_version.clone()))
    }

    async fn kubelet_versions(&self) -> ApiResult<Vec<String>> {
        self.call("kubelet_versions", String::new()).await?;
        Ok(self.with(|s| s.kubelets.clone()))
    }

    async fn get_secret(&self, ns: &str, name: &str) -> ApiResult<Option<Secret>> {
        self.call("get_secret", format!("{ns}/{name}")).await?;
        Ok(self.with(|s| s.secrets.get(&(ns.to_string(), name.to_string())).cloned()))
    }

    async fn create_secret(&self, ns: &str, mut secret: Secret) -> ApiResult<()> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        self.call("create_secret", format!("{ns}/{name}")).await?;
        self.with(|s| {
            let key = (ns.to_string(), name);
            if s.secrets.contains_key(&key) {
                return Err(ApiError::AlreadyExists);
            }
            secret.metadata.resource_version = Some(s.rv());
            s.secrets.insert(key, secret);
            Ok(())
        })
    }

    async fn replace_secret(&self, ns: &str, mut secret: Secret) -> ApiResult<()> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        self.call("replace_secret", format!("{ns}/{name}")).await?;
        self.with(|s| {
            let rv = s.rv();
            let key = (ns.to_string(), name);
            let current = s.secrets.get(&key).ok_or(ApiError::NotFound)?;
            if current.metadata.resource_version != secret.metadata.resource_version {
                return Err(ApiError::Conflict);
            }
            secret.metadata.resource_version = Some(rv);
            s.secrets.insert(key, secret);
            Ok(())
        })
    }

    async fn list_leases(&self, ns: &str, selector: &str) -> ApiResult<Vec<Lease>> {
        self.call("list_leases", format!("{ns} {selector}")).await?;
        let (key, value) = selector.split_once('=').unwrap_or((selector, ""));
        Ok(self.with(|s| {
            s.leases
                .iter()
                .filter(|((n, _), l)| {
                    n == ns
                        && l.metadata
                            .labels
                            .as_ref()
                            .and_then(|m| m.get(key))
                            .is_some_and(|v| v == value)
                })
                .map(|(_, l)| l.clone())
                .collect()
        }))
    }

    async fn upsert_lease(&self, ns: &str, lease: Lease) -> ApiResult<()> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.call("upsert_lease", format!("{ns}/{name}")).await?;
        self.with(|s| {
            s.leases.insert((ns.to_string(), name), lease);
        });
        Ok(())
    }

    async fn get_webhooks(&self, configuration: &str) -> ApiResult<Option<Vec<WebhookEntry>>> {
        self.call("get_webhooks", configuration.to_string()).await?;
        Ok(self.with(|s| s.webhooks.get(configuration).cloned()))
    }

    async fn set_ca_bundles(
        &self,
        configuration: &str,
        entries: &[(usize, String)],
        ca: &[u8],
    ) -> ApiResult<()> {
        self.call("set_ca_bundles", configuration.to_string())
            .await?;
        self.with(|s| {
            let list = s
                .webhooks
                .get_mut(configuration)
                .ok_or(ApiError::NotFound)?;
            for (i, name) in entries {
                match list.get_mut(*i) {
                    Some(e) if e.name == *name => e.ca_bundle = Some(ca.to_vec()),
                    _ => return Err(ApiError::Other(format!("test failed at /webhooks/{i}"))),
                }
            }
            Ok(())
        })
    }
}
