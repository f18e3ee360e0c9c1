//! The real single-node cluster the end-to-end tests run on: Kubernetes built here from Go
//! modules, a node whose kubelet runs pods through containerd, and kube-proxy routing the
//! `kubernetes` Service to the API server. Everything is read from what the cluster reports.

use std::time::Duration;

use testenv::cluster::{self, pods};
use testenv::layout::KUBERNETES_VERSION;
use testenv::{Result, fail};

#[tokio::test]
async fn the_cluster_runs_the_version_built_here() -> Result<()> {
    let c = cluster::shared().await?;
    let version: serde_json::Value =
        serde_json::from_str(&c.kubectl_ok(&["version", "-o", "json"], None).await?)
            .map_err(|e| fail("kubectl version -o json", e.to_string()))?;
    assert_eq!(
        version["serverVersion"]["gitVersion"], KUBERNETES_VERSION,
        "{version}"
    );
    assert_eq!(
        version["clientVersion"]["gitVersion"], KUBERNETES_VERSION,
        "the harness's kubectl matches the server: {version}"
    );
    let node: serde_json::Value = serde_json::from_str(
        &c.kubectl_ok(&["get", "node", "testenv-node", "-o", "json"], None)
            .await?,
    )
    .map_err(|e| fail("kubectl get node -o json", e.to_string()))?;
    let info = &node["status"]["nodeInfo"];
    assert_eq!(info["kubeletVersion"], KUBERNETES_VERSION, "{info}");
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("containerd://1.")),
        "{info}"
    );
    let addresses = node["status"]["addresses"].to_string();
    assert!(
        addresses.contains(&c.node_ip().to_string()),
        "the node reports its address {}: {addresses}",
        c.node_ip()
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_reaches_the_api_server_through_the_kubernetes_service() -> Result<()> {
    let c = cluster::shared().await?;
    let ns = c.create_namespace("pod-net").await?;
    // The ClusterIP only works if kube-proxy's rules and the bridge network do. busybox's wget
    // cannot complete a TLS handshake with Go's server, so it speaks plain HTTP to the HTTPS
    // port: the answer is the API server's refusal (400), from the other end of the Service.
    let script = "wget -O- http://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version 2>&1; \
                  echo; echo \"service=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"";
    pods::create(c, &ns, &pods::busybox_pod("asks-the-api", script)).await?;
    pods::wait_for_phase(
        c,
        &ns,
        "asks-the-api",
        &["Succeeded"],
        Duration::from_secs(120),
    )
    .await?;
    let logs = c
        .kubectl_ok(&["logs", "-n", &ns, "asks-the-api"], None)
        .await?;
    assert!(
        logs.contains("service=10.0.0.1:443")
            && logs.contains("Connecting to 10.0.0.1:443")
            && logs.contains("HTTP/1.0 400 Bad Request"),
        "kubectl logs (through the kubelet): {logs}"
    );

    // kubectl exec goes API server -> kubelet -> containerd's stream server.
    let sleeper = pods::busybox_pod("sleeper", "sleep 3600");
    pods::create(c, &ns, &sleeper).await?;
    pods::wait_for_phase(c, &ns, "sleeper", &["Running"], Duration::from_secs(120)).await?;
    let out = c
        .kubectl_ok(
            &[
                "exec",
                "-n",
                &ns,
                "sleeper",
                "--",
                "/bin/busybox",
                "cat",
                "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
            ],
            None,
        )
        .await?;
    assert_eq!(
        out.trim(),
        ns,
        "the projected token volume names the pod's namespace"
    );
    Ok(())
}
