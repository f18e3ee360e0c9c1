//! A cluster leaves nothing behind — processes, containers and their shims, mounts, network
//! namespaces, interfaces, iptables rules, cgroups, log links, state — whether it is stopped,
//! or its test process is SIGKILLed (the watchdog tears it down). The two tests run at once,
//! so they also show two clusters running side by side.

use std::time::Duration;

use testenv::cluster::config::Slot;
use testenv::cluster::footprint::{self, Footprint};
use testenv::cluster::{Cluster, pods};
use testenv::{ControlPlane, Result, eventually, fail};

/// Runs a pod, so that the footprint has containers, shims, mounts and a pod network namespace.
async fn run_a_pod(cp: &ControlPlane) -> Result<()> {
    let ns = cp.create_namespace("teardown").await?;
    pods::create(cp, &ns, &pods::busybox_pod("sleeper", "sleep 3600")).await?;
    pods::wait_for_phase(cp, &ns, "sleeper", &["Running"], Duration::from_secs(180)).await?;
    Ok(())
}

fn assert_footprint_while_running(slot: &Slot) -> Vec<String> {
    let running = Footprint::of(slot);
    assert!(!running.processes.is_empty(), "{running:#?}");
    assert!(!running.mounts.is_empty(), "{running:#?}");
    assert!(
        !running.netns.is_empty() && !running.links.is_empty(),
        "{running:#?}"
    );
    assert!(!running.cgroups.is_empty(), "{running:#?}");
    let sockets = footprint::shim_sockets(slot);
    assert!(!sockets.is_empty(), "a running pod has a containerd shim");
    sockets
}

async fn nothing_left(slot: &Slot, sockets: &[String], host_before: &str) -> Result<()> {
    eventually(
        "the cluster's footprint to be gone",
        Duration::from_secs(120),
        || async {
            let left = Footprint::of(slot);
            let stale: Vec<&String> = sockets
                .iter()
                .filter(|s| std::path::Path::new(s).exists())
                .collect();
            if left.is_empty() && stale.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "left: {left:#?}; shim sockets: {stale:?}\n{}",
                    footprint::teardown_state(slot)
                ))
            }
        },
    )
    .await?;
    assert_eq!(
        footprint::host_network(),
        host_before,
        "the host's own interfaces and iptables rules are unchanged"
    );
    Ok(())
}

#[tokio::test]
async fn a_stopped_cluster_leaves_nothing_behind() -> Result<()> {
    let host_before = footprint::host_network();
    let cluster = Cluster::start().await?;
    let slot = cluster.slot().clone();
    run_a_pod(&cluster).await?;
    let sockets = assert_footprint_while_running(&slot);
    cluster.stop().await?;
    // stop() waits for the teardown: nothing may be left at all, at once.
    let left = Footprint::of(&slot);
    assert!(left.is_empty(), "{left:#?}");
    nothing_left(&slot, &sockets, &host_before).await
}

#[tokio::test]
async fn a_sigkilled_test_process_leaves_nothing_behind() -> Result<()> {
    let host_before = footprint::host_network();
    let (mut child, info) = testenv::procs::start_hold(
        env!("CARGO_BIN_EXE_testenv-hold").as_ref(),
        &["--node"],
        Duration::from_secs(420),
    )
    .await?;
    let state = info["state"].as_str().unwrap_or_default().to_string();
    let index: u8 = state
        .rsplit_once("cluster-")
        .and_then(|(_, n)| n.parse().ok())
        .ok_or_else(|| fail("testenv-hold's state dir", state.clone()))?;
    let slot = Slot { index };

    // Drive the held cluster through its kubeconfig, as a user would.
    let kubeconfig = info["kubeconfig"].as_str().unwrap_or_default();
    let client = testenv::control_plane::client_from_kubeconfig(kubeconfig.as_ref()).await?;
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "killed"}}))
            .map_err(|e| fail("building a Namespace", e.to_string()))?;
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .map_err(|e| fail("creating namespace killed", e.to_string()))?;
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pods::busybox_pod("sleeper", "sleep 3600"))
            .map_err(|e| fail("building a Pod", e.to_string()))?;
    let api = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, "killed");
    eventually(
        "creating the pod (the namespace's ServiceAccount first)",
        Duration::from_secs(60),
        || {
            let (api, pod) = (api.clone(), pod.clone());
            async move {
                api.create(&Default::default(), &pod)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    eventually("the pod to run", Duration::from_secs(180), || {
        let api = api.clone();
        async move {
            let p = api.get("sleeper").await.map_err(|e| e.to_string())?;
            match p.status.and_then(|s| s.phase).as_deref() {
                Some("Running") => Ok(()),
                other => Err(format!("phase {other:?}")),
            }
        }
    })
    .await?;
    let sockets = assert_footprint_while_running(&slot);

    child
        .kill()
        .map_err(|e| fail("SIGKILL testenv-hold", e.to_string()))?;
    let _ = child.wait();
    nothing_left(&slot, &sockets, &host_before).await
}
