//! `failurePolicy: Fail` on the real cluster: with every webhook replica gone, a pod that asks
//! for an elector is refused (it would otherwise run without one), while a pod that does not ask
//! is created — it is never sent to the webhook. Its own binary: it takes the webhook down.

use testenv::cluster::pods;
use testenv::e2e::{SYSTEM, deployed, install_webhook};
use testenv::{Result, eventually};

#[tokio::test]
async fn with_the_webhook_down_annotated_pods_are_refused_and_others_created() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("down").await?;
    let deploy = format!("deployment/{}", contract::deploy::WEBHOOK_NAME);
    c.kubectl_ok(&["-n", SYSTEM, "scale", &deploy, "--replicas=0"], None)
        .await?;
    let selector = format!("app.kubernetes.io/name={}", contract::deploy::WEBHOOK_NAME);
    eventually(
        "every webhook pod to be gone",
        testenv::e2e::TIMEOUT,
        || async {
            let left = c
                .kubectl_ok(
                    &["get", "pods", "-n", SYSTEM, "-l", &selector, "-o", "name"],
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            left.trim().is_empty().then_some(()).ok_or(left)
        },
    )
    .await?;

    let mut asks = pods::busybox_pod("asks", "sleep 3600");
    asks["metadata"]["annotations"] = serde_json::json!({
        contract::annotations::ENABLED: "true",
        contract::annotations::LEASE_NAME: "asks",
    });
    let refused = c
        .kubectl(&["create", "-n", &ns, "-f", "-"], Some(&asks.to_string()))
        .await?;
    assert!(
        !refused.success,
        "an annotated pod was created without the webhook"
    );
    assert!(
        refused.stderr.contains("failed calling webhook"),
        "refused for another reason: {}",
        refused.stderr
    );
    let plain = pods::busybox_pod("plain", "sleep 3600");
    c.kubectl_ok(&["create", "-n", &ns, "-f", "-"], Some(&plain.to_string()))
        .await?;

    // Back as shipped.
    install_webhook(c).await?;
    c.kubectl_ok(&["-n", SYSTEM, "scale", &deploy, "--replicas=2"], None)
        .await?;
    c.kubectl_ok(
        &["-n", SYSTEM, "rollout", "status", &deploy, "--timeout=240s"],
        None,
    )
    .await?;
    Ok(())
}
