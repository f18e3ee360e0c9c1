//! `webhook serve --self-provision` out of cluster: it creates its CA and serving certificate in
//! the shipped Secret, patches the caBundle of the shipped MutatingWebhookConfiguration (pointed
//! at loopback, without caBundle), and the API server then trusts it: a pod gets injected. Own
//! test binary, so its configuration is the only one.

use std::time::Duration;

use base64::Engine;
use contract::{annotations, deploy};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use testenv::webhook::{
    Webhook, apply_shipped_rbac, ca_bundle, create_webhook_configuration,
    loopback_webhook_configuration, shipped_webhook_configuration,
};
use testenv::{ControlPlane, Result, eventually, fail, procs};

#[tokio::test]
async fn self_provisioned_certificate_is_trusted_by_the_api_server() -> Result<()> {
    let cp = ControlPlane::start().await?;
    apply_shipped_rbac(&cp).await?;
    let admin = cp.admin_client().await?;
    let dir = procs::scratch_dir("webhook-self")?;
    let kubeconfig = cp
        .service_account_kubeconfig(deploy::NAMESPACE, deploy::WEBHOOK_NAME)
        .await?;
    let webhook = Webhook::spawn(
        &kubeconfig,
        &[
            "--self-provision".into(),
            format!("--namespace={}", deploy::NAMESPACE),
            "--extra-san=127.0.0.1".into(),
            format!("--webhook-configuration={}", deploy::WEBHOOK_CONFIGURATION),
            "--resync-interval=2s".into(),
        ],
        "webhook-self-provision",
        &dir,
    )?;
    // The configuration as an operator applies it: no caBundle.
    let mwc = loopback_webhook_configuration(
        &shipped_webhook_configuration().await?,
        deploy::WEBHOOK_CONFIGURATION,
        &webhook.url(),
        None,
    )?;
    let mwc = create_webhook_configuration(&cp, &mwc).await?;
    let mwcs = Api::<MutatingWebhookConfiguration>::all(admin.clone());

    let outcome: Result<()> = async {
        // The Secret holds the CA; the caBundle of every entry is that CA.
        let ca = webhook.wait_self_provisioned_ca(&admin, Duration::from_secs(60)).await?;
        let bundle = eventually("the caBundle to be patched", Duration::from_secs(60), || async {
            let m = mwcs.get(deploy::WEBHOOK_CONFIGURATION).await.map_err(|e| e.to_string())?;
            ca_bundle(&m).ok_or_else(|| "caBundle not set on every entry".to_string())
        })
        .await?;
        assert_eq!(bundle, ca, "caBundle is the Secret's CA");
        let ca_pem = String::from_utf8(ca).map_err(|_| fail("ca.crt", "not UTF-8 PEM"))?;
        webhook.wait_ready(&ca_pem, Duration::from_secs(60)).await?;

        // The API server accepts the webhook's certificate: an annotated pod gets injected.
        let ns = cp.create_namespace("webhook-self").await?;
        let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "p"}, "annotations": {annotations::ENABLED: "true"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}
        }))
        .map_err(|e| fail("pod", e.to_string()))?;
        // Retried: the API server loads a changed configuration asynchronously.
        let created = eventually("an annotated pod to be admitted through the webhook", Duration::from_secs(60), || async {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(p) => Ok(p),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        let ann = created.metadata.annotations.unwrap_or_default();
        assert_eq!(ann.get(annotations::STATUS).map(String::as_str), Some(annotations::STATUS_INJECTED));
        let names: Vec<String> = created.spec.map(|s| s.containers.into_iter().map(|c| c.name).collect()).unwrap_or_default();
        assert!(names.iter().any(|n| n == contract::CONTAINER_NAME), "containers {names:?}");

        // An operator re-applies the manifest (no caBundle): the webhook writes it again.
        let cleared = serde_json::json!({"webhooks": mwc.webhooks.iter().flatten().map(|w| serde_json::json!({
            "name": w.name, "clientConfig": {"url": webhook.url(), "caBundle": null}
        })).collect::<Vec<_>>()});
        // Strategic merge keys webhooks by name.
        let patched = mwcs
            .patch(deploy::WEBHOOK_CONFIGURATION, &PatchParams::default(), &Patch::Strategic(&cleared))
            .await
            .map_err(|e| fail("clearing the caBundle", e.to_string()))?;
        assert!(ca_bundle(&patched).is_none(), "the re-apply cleared the caBundle");
        let restored = eventually("the caBundle to be restored", Duration::from_secs(90), || async {
            let m = mwcs.get(deploy::WEBHOOK_CONFIGURATION).await.map_err(|e| e.to_string())?;
            ca_bundle(&m).ok_or_else(|| "caBundle still cleared".to_string())
        })
        .await?;
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&restored),
            base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes()),
            "the same CA again"
        );
        Ok(())
    }
    .await;
    outcome.map_err(|e| webhook.with_output(e))
}
