//! Small helpers for tests that run real pods: the example busybox pod and waiting for a pod's
//! phase, read from the API server.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

use super::config::BUSYBOX_IMAGE;
use crate::control_plane::ControlPlane;
use crate::error::{Context, Result, fail};
use crate::wait::eventually;

/// A pod running `sh -c <script>` in the busybox image, never restarted.
pub fn busybox_pod(name: &str, script: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "command": ["/bin/busybox", "sh", "-c", script],
            }],
        },
    })
}

/// Creates `pod` in `namespace`.
pub async fn create(cp: &ControlPlane, namespace: &str, pod: &serde_json::Value) -> Result<Pod> {
    let pod: Pod =
        serde_json::from_value(pod.clone()).map_err(|e| fail("building a Pod", e.to_string()))?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    Api::<Pod>::namespaced(cp.admin_client().await?, namespace)
        .create(&PostParams::default(), &pod)
        .await
        .context(format!("creating pod {namespace}/{name}"))
}

/// Waits until the pod's phase is one of `phases`; fails early on a phase outside them that
/// cannot change any more (Succeeded/Failed).
pub async fn wait_for_phase(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    phases: &[&str],
    timeout: Duration,
) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(cp.admin_client().await?, namespace);
    eventually(
        &format!("pod {namespace}/{name} to be {}", phases.join(" or ")),
        timeout,
        || {
            let pods = pods.clone();
            async move {
                let pod = pods
                    .get_opt(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("not found")?;
                let status = pod.status.clone().unwrap_or_default();
                let phase = status.phase.clone().unwrap_or_default();
                if phases.contains(&phase.as_str()) {
                    return Ok(pod);
                }
                let waiting: Vec<String> = status
                    .container_statuses
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.state.and_then(|s| s.waiting))
                    .map(|w| {
                        format!(
                            "{}: {}",
                            w.reason.unwrap_or_default(),
                            w.message.unwrap_or_default()
                        )
                    })
                    .collect();
                Err(format!(
                    "phase {phase:?}; waiting: {waiting:?}; conditions: {:?}",
                    status
                        .conditions
                        .unwrap_or_default()
                        .iter()
                        .map(|c| format!(
                            "{}={} {}",
                            c.type_,
                            c.status,
                            c.message.clone().unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// Why a pod (as JSON from the API server) is not Running with every container ready, the
/// elector among them (a native sidecar reports under initContainerStatuses); `None` when it is.
pub fn not_ready(pod: &serde_json::Value) -> Option<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    if pod["status"]["phase"] == "Running"
        && !statuses(pod)
            .iter()
            .any(|s| s["name"] == contract::CONTAINER_NAME)
    {
        return Some(format!(
            "{name}: no {} container status",
            contract::CONTAINER_NAME
        ));
    }
    not_running_ready(pod)
}

/// Why `pod` is not Running with every container (regular and init) ready, whichever
/// containers it has; `None` when it is.
pub fn not_running_ready(pod: &serde_json::Value) -> Option<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let status = &pod["status"];
    if status["phase"] != "Running" {
        return Some(format!("{name}: phase {}", status["phase"]));
    }
    let not_ready: Vec<String> = statuses(pod)
        .iter()
        .filter(|s| s["ready"] != true)
        .map(|s| format!("{} {}", s["name"], s["state"]))
        .collect();
    (!not_ready.is_empty()).then(|| format!("{name}: not ready: {not_ready:?}"))
}

fn statuses(pod: &serde_json::Value) -> Vec<&serde_json::Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][*k].as_array().into_iter().flatten())
        .collect()
}

/// The containerd IDs of every container of the pod (regular and init), from its status.
pub fn container_ids(pod: &serde_json::Value) -> Vec<String> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][*k].as_array().into_iter().flatten())
        .filter_map(|s| s["containerID"].as_str())
        .filter_map(|id| id.strip_prefix("containerd://"))
        .map(String::from)
        .collect()
}
