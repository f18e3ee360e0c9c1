//! Every kustomization under manifests/ (and certs/) renders with `kubectl kustomize` and is
//! accepted by `kubectl apply --dry-run=server` (with kubectl's full schema validation) against
//! the test control plane, the current Kubernetes built here. Components cannot
//! be built alone: each is rendered on top of the base through a small wrapper kustomization.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testenv::manifests::{self, KustomizationDir, copy_tree, find_kustomizations, kustomize};
use testenv::{ControlPlane, Result, eventually, fail, procs, shared, workspace_root};

/// Minimal cert-manager CRDs (the API server only needs the kinds to exist to dry-run them; the
/// real schemas are cert-manager's business).
fn cert_manager_crds() -> serde_json::Value {
    let crd = |kind: &str, plural: &str| {
        serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.cert-manager.io")},
            "spec": {
                "group": "cert-manager.io",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                }]
            }
        })
    };
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        crd("Issuer", "issuers"), crd("Certificate", "certificates"),
    ]})
}

async fn install_cert_manager_crds(cp: &ControlPlane) -> Result<()> {
    cp.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&cert_manager_crds().to_string()),
    )
    .await?;
    cp.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/issuers.cert-manager.io",
            "crd/certificates.cert-manager.io",
        ],
        None,
    )
    .await?;
    // Discovery of the new group lags behind Established a little.
    eventually(
        "kubectl to discover cert-manager.io",
        Duration::from_secs(60),
        || async {
            let out = cp
                .kubectl(
                    &["api-resources", "--api-group=cert-manager.io", "-o", "name"],
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            if out.stdout.contains("certificates.cert-manager.io") {
                Ok(())
            } else {
                Err(out.stdout + &out.stderr)
            }
        },
    )
    .await
}

/// Creates the namespaces the rendered objects live in (a dry-run of a Namespace creates nothing,
/// so objects inside it would be refused).
async fn ensure_namespaces(cp: &ControlPlane, docs: &[serde_json::Value]) -> Result<()> {
    let mut names: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    names.sort();
    names.dedup();
    for ns in names {
        let out = cp
            .kubectl(&["create", "namespace", ns, "--save-config"], None)
            .await?;
        if !out.success && !out.stderr.contains("AlreadyExists") {
            return Err(fail(format!("creating namespace {ns}"), out.stderr));
        }
    }
    Ok(())
}

/// A writable copy of manifests/ and certs/kustomization.yaml, with certificates from
/// `webhook certs` in certs/ (never committed, so the copy gets fresh ones).
async fn workspace_copy() -> Result<PathBuf> {
    let root = procs::scratch_dir("manifests")?;
    copy_tree(&workspace_root().join("manifests"), &root.join("manifests"))?;
    let certs = root.join("certs");
    std::fs::create_dir_all(&certs).map_err(|e| fail("creating certs/", e.to_string()))?;
    std::fs::copy(
        workspace_root().join("certs/kustomization.yaml"),
        certs.join("kustomization.yaml"),
    )
    .map_err(|e| fail("copying certs/kustomization.yaml", e.to_string()))?;
    let generated = root.join("generated-certs");
    testenv::webhook::generate_certs(&generated).await?;
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(generated.join(f), certs.join(f))
            .map_err(|e| fail(format!("copying {f}"), e.to_string()))?;
    }
    Ok(root)
}

/// A kustomization that renders `component` on top of the base, inside the copy.
fn component_wrapper(root: &Path, component: &Path) -> Result<PathBuf> {
    let rel = component
        .strip_prefix(root)
        .map_err(|e| fail("component path", e.to_string()))?;
    let name = rel.to_string_lossy().replace('/', "-");
    let dir = root.join("component-checks").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| fail("creating a wrapper", e.to_string()))?;
    let body = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../manifests/base\ncomponents:\n  - ../../{}\n",
        rel.display()
    );
    std::fs::write(dir.join("kustomization.yaml"), body)
        .map_err(|e| fail("writing a wrapper", e.to_string()))?;
    Ok(dir)
}

/// Server-side dry-run of rendered objects; returns kubectl's stderr (warnings).
/// Objects without a namespace go to the kubeconfig's `default` (creating nothing).
async fn dry_run(
    cp: &ControlPlane,
    docs: &[serde_json::Value],
) -> std::result::Result<String, String> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
    // --validate=strict: unknown or duplicate fields are errors, not warnings.
    let out = cp
        .kubectl(
            &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
            Some(&list.to_string()),
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.success {
        Ok(out.stderr)
    } else {
        Err(format!("{}\n{}", out.stdout, out.stderr))
    }
}

#[tokio::test]
async fn every_kustomization_renders_and_passes_a_server_dry_run() -> Result<()> {
    let cp = shared().await?;
    let root = workspace_copy().await?;
    let mut dirs = find_kustomizations(&root.join("manifests"))?;
    dirs.extend(find_kustomizations(&root.join("certs"))?);
    let rel = |d: &Path| {
        d.strip_prefix(&root)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let names: Vec<String> = dirs.iter().map(|k| rel(&k.dir)).collect();
    for must in [
        "manifests",
        "manifests/base",
        "manifests/examples/my-app",
        "certs",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} is a kustomization: found {names:?}"
        );
    }
    install_cert_manager_crds(cp).await?;

    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for KustomizationDir { dir, is_component } in &dirs {
        let target = if *is_component {
            component_wrapper(&root, dir)?
        } else {
            dir.clone()
        };
        let name = rel(dir);
        let docs = match kustomize(&target).await {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => {
                failures.push(format!("{name}: renders no objects"));
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: does not render: {e}"));
                continue;
            }
        };
        ensure_namespaces(cp, &docs).await?;
        match dry_run(cp, &docs).await {
            Ok(warnings) => checked.push(format!(
                "{name} ({} objects){}",
                docs.len(),
                if warnings.trim().is_empty() {
                    String::new()
                } else {
                    format!("; warnings: {}", warnings.trim())
                }
            )),
            Err(e) => failures.push(format!("{name}: server dry-run refused:\n{e}")),
        }
    }
    eprintln!("accepted:\n  {}", checked.join("\n  "));
    if failures.is_empty() {
        Ok(())
    } else {
        Err(fail("manifests", failures.join("\n\n")))
    }
}

#[tokio::test]
async fn the_default_kustomization_is_the_base_with_self_provisioned_certificates() -> Result<()> {
    let docs = kustomize(&manifests::manifests_dir()).await?;
    let deployment = manifests::of_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == contract::deploy::WEBHOOK_NAME)
        .ok_or_else(|| fail("manifests/", "no webhook Deployment"))?;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--self-provision"), "{args}");
    let mwc = manifests::of_kind(&docs, "MutatingWebhookConfiguration");
    assert_eq!(mwc.len(), 1);
    for hook in mwc[0]["webhooks"].as_array().into_iter().flatten() {
        assert!(
            hook["clientConfig"].get("caBundle").is_none(),
            "the shipped default carries no caBundle"
        );
    }
    Ok(())
}
