//! Argo Rollouts (`argoproj.io/v1alpha1` Rollout), watched only when the CRD is installed: the
//! controller asks the API server's discovery (open to every authenticated client) once when it
//! starts leading, and runs without Rollouts, saying so, when they are absent.

use kube::core::{ApiResource, GroupVersionKind};

pub const GROUP: &str = "argoproj.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "argoproj.io/v1alpha1";
pub const PLURAL: &str = "rollouts";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, "Rollout"), PLURAL)
}

/// Whether the API server serves Argo Rollouts. Any failure counts as "no": the controller must
/// never stop for a CRD that is optional.
pub async fn installed(client: &kube::Client) -> bool {
    match client.list_api_group_resources(API_VERSION).await {
        Ok(list) => {
            let found = list.resources.iter().any(|r| r.name == PLURAL);
            if found {
                tracing::info!("Argo Rollouts found: annotated Rollouts are reconciled");
            } else {
                tracing::info!("{API_VERSION} has no {PLURAL}: Argo Rollouts are not reconciled");
            }
            found
        }
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            tracing::info!(
                "Argo Rollouts not installed ({API_VERSION} not served): Rollouts are not \
                 reconciled; restart the webhook after installing them"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether Argo Rollouts are installed; Rollouts are not reconciled until the controller restarts");
            false
        }
    }
}
