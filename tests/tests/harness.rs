//! The harness itself against the real control plane: it starts, the controller-manager does
//! its work (tokens, ReplicaSets, Pods), RBAC is real, and nothing outlives a killed test process.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use testenv::{Result, eventually, fail, shared};

#[tokio::test]
async fn control_plane_runs_controllers_and_enforces_rbac() -> Result<()> {
    let cp = shared().await?;
    let ns = cp.create_namespace("smoke").await?;
    let admin = cp.admin_client().await?;

    // The tokens controller mints a Secret for a new ServiceAccount; its client is really
    // subject to RBAC (no binding → forbidden).
    cp.create_service_account(&ns, "nobody").await?;
    let sa_client = cp.service_account_client(&ns, "nobody").await?;
    match Api::<Pod>::namespaced(sa_client, &ns)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => {
            return Err(fail(
                "listing pods as an unbound ServiceAccount",
                format!("expected 403, got {other:?}"),
            ));
        }
    }

    // A Deployment yields a ReplicaSet and its pods (Pending forever: there is no node).
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "smoke"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}
            }
        }
    }))
    .map_err(|e| fail("building the Deployment", e.to_string()))?;
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .map_err(|e| fail("creating the Deployment", e.to_string()))?;
    let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
    let names = eventually(
        "2 pods from the Deployment",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let names: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                if names.len() == 2 {
                    Ok(names)
                } else {
                    Err(format!("pods: {names:?}"))
                }
            }
        },
    )
    .await?;
    let rs = Api::<ReplicaSet>::namespaced(admin, &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| fail("listing ReplicaSets", e.to_string()))?;
    assert_eq!(rs.items.len(), 1, "one ReplicaSet");
    let rs_name = rs.items[0].metadata.name.clone().unwrap_or_default();
    for n in &names {
        assert!(
            n.starts_with(&format!("{rs_name}-")),
            "pod {n} named after ReplicaSet {rs_name}"
        );
    }

    // kubectl talks to the same control plane.
    let out = cp
        .kubectl_ok(&["get", "pods", "-n", &ns, "-o", "name"], None)
        .await?;
    assert_eq!(out.lines().count(), 2, "{out}");
    Ok(())
}

fn alive(pid: u32) -> bool {
    // A zombie (reaped later by init) counts as gone: it runs nothing and holds no port.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn nothing_survives_a_sigkilled_test_process() -> Result<()> {
    let (mut child, info) = testenv::procs::start_hold(
        env!("CARGO_BIN_EXE_testenv-hold").as_ref(),
        &[],
        Duration::from_secs(300),
    )
    .await?;
    let pids: Vec<u32> = info["pids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_u64())
        .map(|p| p as u32)
        .collect();
    let scratch = std::path::PathBuf::from(info["scratch"].as_str().unwrap_or_default());
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager: {info}"
    );
    assert!(
        pids.iter().all(|p| alive(*p)) && scratch.is_dir(),
        "running before the kill: {info}"
    );

    child
        .kill()
        .map_err(|e| fail("SIGKILL testenv-hold", e.to_string()))?; // SIGKILL
    let _ = child.wait();

    eventually(
        "every component and the scratch dir to be gone",
        Duration::from_secs(30),
        || {
            let pids = pids.clone();
            let scratch = scratch.clone();
            async move {
                let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
                if left.is_empty() && !scratch.exists() {
                    Ok(())
                } else {
                    Err(format!(
                        "alive: {left:?}; {} exists: {}",
                        scratch.display(),
                        scratch.exists()
                    ))
                }
            }
        },
    )
    .await
}
