//! Certificate rotation under load: two self-provisioning replicas (short validities so the
//! serving certificate and the CA both rotate within the run, and the Secret deleted once) while
//! annotated pods are created through the API server in a steady loop: not one admission may
//! fail. Own test binary, so its configuration is the only one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use contract::{annotations, deploy};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use testenv::webhook::{
    Webhook, apply_shipped_rbac, create_webhook_configuration, loopback_webhook_configuration,
    shipped_webhook_configuration,
};
use testenv::{ControlPlane, Result, eventually, fail, procs};

fn replica(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    extra_san: &str,
) -> Result<Webhook> {
    Webhook::spawn(
        kubeconfig,
        &[
            "--self-provision".into(),
            format!("--namespace={}", deploy::NAMESPACE),
            format!("--extra-san={extra_san}"),
            format!("--webhook-configuration={}", deploy::WEBHOOK_CONFIGURATION),
            format!("--identity={name}"),
            "--resync-interval=1s".into(),
            "--cert-validity=20s".into(),
            "--cert-renew-before=10s".into(),
            "--ca-validity=60s".into(),
            "--ca-renew-before=30s".into(),
        ],
        name,
        dir,
    )
}

fn value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|v| !v.is_empty())
}

#[tokio::test]
async fn rotations_and_a_deleted_secret_fail_no_admission() -> Result<()> {
    let cp = ControlPlane::start().await?;
    apply_shipped_rbac(&cp).await?;
    let admin = cp.admin_client().await?;
    let dir = procs::scratch_dir("webhook-rotation")?;
    let kubeconfig = cp
        .service_account_kubeconfig(deploy::NAMESPACE, deploy::WEBHOOK_NAME)
        .await?;
    // Both replicas carry 127.0.0.1 (the API server calls the first one there); their other
    // extra SAN differs, which must not make them replace each other's certificate.
    let a = replica(&kubeconfig, &dir, "replica-a", "127.0.0.1")?;
    let b = replica(&kubeconfig, &dir, "replica-b", "127.0.0.1,b.example")?;
    let mwc = loopback_webhook_configuration(
        &shipped_webhook_configuration().await?,
        deploy::WEBHOOK_CONFIGURATION,
        &a.url(),
        None,
    )?;
    create_webhook_configuration(&cp, &mwc).await?;
    let secrets = Api::<Secret>::namespaced(admin.clone(), deploy::NAMESPACE);
    let outcome: Result<()> = async {
        let ns = cp.create_namespace("rotation").await?;
        let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
        let pod = |i: usize| -> Result<Pod> {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("p{i}"), "labels": {"app": "p"},
                    "annotations": {annotations::ENABLED: "true"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}
            }))
            .map_err(|e| fail("pod", e.to_string()))
        };
        // Ready: the first admission goes through (configuration loaded, CA trusted).
        eventually("a first admission", Duration::from_secs(90), || async {
            let p = pod(0).map_err(|e| e.to_string())?;
            pods.create(&PostParams::default(), &p)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await?;

        let mut cas = BTreeSet::new();
        let mut certs = BTreeSet::new();
        let (mut ok, mut failed) = (0usize, Vec::new());
        let started = Instant::now();
        let mut deleted = false;
        let mut i = 1;
        while started.elapsed() < Duration::from_secs(150) {
            if let Some(s) = secrets
                .get_opt(deploy::TLS_SECRET)
                .await
                .map_err(|e| fail("Secret", e.to_string()))?
            {
                cas.extend(value(&s, "ca.crt"));
                certs.extend(value(&s, "tls.crt"));
            }
            if !deleted && started.elapsed() > Duration::from_secs(100) {
                secrets
                    .delete(deploy::TLS_SECRET, &DeleteParams::default())
                    .await
                    .map_err(|e| fail("deleting the Secret", e.to_string()))?;
                deleted = true;
            }
            match pods.create(&PostParams::default(), &pod(i)?).await {
                Ok(p)
                    if p.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(annotations::STATUS))
                        .is_some() =>
                {
                    ok += 1
                }
                Ok(_) => failed.push(format!("p{i}: admitted without injection")),
                Err(e) => failed.push(format!("p{i} at {:?}: {e}", started.elapsed())),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!(
            "rotation run: {ok} admissions, {} failed; {} CAs and {} serving certificates seen",
            failed.len(),
            cas.len(),
            certs.len()
        );
        assert!(failed.is_empty(), "failed admissions: {failed:#?}");
        assert!(
            cas.len() >= 3,
            "expected the CA to rotate and the deleted Secret to bring a new one: {} CAs",
            cas.len()
        );
        assert!(
            certs.len() >= cas.len() + 2,
            "expected serving renewals under a CA: {} certificates",
            certs.len()
        );
        Ok(())
    }
    .await;
    outcome.map_err(|e| a.with_output(b.with_output(e)))
}
