//! `webhook inject` for GitOps, on the real cluster with the webhook installed as shipped: the
//! example app rendered and injected offline, applied with `kubectl apply`, then only what the
//! API server reports — the stored Deployment and pods, the Lease and the controller's Role.

use std::collections::BTreeSet;

use serde_json::Value;
use testenv::cluster::pods;
use testenv::e2e::{TIMEOUT, deployed, kubectl_json as json, ready_pods};
use testenv::{Result, eventually, fail, project_binary, workspace_root};
use tokio::io::AsyncWriteExt;

/// `webhook inject <args>` with `input` on standard input.
async fn inject(input: &str, args: &[&str]) -> Result<String> {
    let bin = project_binary("webhook")?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("inject")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail("running webhook inject", e.to_string()))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| fail("webhook inject", "no stdin"))?;
    stdin
        .write_all(input.as_bytes())
        .await
        .map_err(|e| fail("writing to webhook inject", e.to_string()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail("running webhook inject", e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            "webhook inject",
            String::from_utf8_lossy(&out.stderr).to_string(),
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| fail("webhook inject output", e.to_string()))
}

/// Containers and init containers of a pod spec, by name.
fn containers(spec: &Value) -> Vec<(String, Value)> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[k].as_array().cloned().unwrap_or_default())
        .map(|c| (c["name"].as_str().unwrap_or_default().to_string(), c))
        .collect()
}

#[tokio::test]
async fn an_offline_injected_deployment_is_admitted_unchanged_and_elects() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("inject").await?;
    // The example app as the e2e test runs it (local busybox), rendered to plain YAML and
    // injected offline, as a GitOps pipeline would before committing it.
    let app = workspace_root().join("tests/e2e/my-app");
    let rendered = c
        .kubectl_ok(&["kustomize", &app.display().to_string()], None)
        .await?;
    let injected = inject(&rendered, &["--namespace", &ns]).await?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&injected)
        .map_err(|e| fail("reading the injected YAML", e.to_string()))?;
    let template_electors = containers(&docs[0]["spec"]["template"]["spec"])
        .into_iter()
        .filter(|(n, _)| n == contract::CONTAINER_NAME)
        .count();
    assert_eq!(template_electors, 1, "injected output:\n{injected}");

    c.kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&injected))
        .await?;
    c.kubectl_ok(
        &[
            "-n",
            &ns,
            "rollout",
            "status",
            "deployment/my-app",
            "--timeout=240s",
        ],
        None,
    )
    .await?;

    // The webhook left the stored workload as applied: no propagation, one generation.
    let deployment = json(c, &["get", "deployment", "my-app", "-n", &ns, "-o", "json"]).await?;
    let template = &deployment["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    assert!(
        annotations.get(contract::annotations::PROPAGATED).is_none(),
        "{annotations}"
    );
    assert_eq!(deployment["metadata"]["generation"], 1, "{deployment}");
    let want: Vec<(String, Value)> = containers(&template["spec"]);

    // Three ready pods; each has exactly the template's containers, unchanged by admission
    // (a second elector, or env added by the webhook, would show here).
    let items = ready_pods(c, &ns, "app=my-app", 3, pods::not_ready).await?;
    for pod in &items {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let got = containers(&pod["spec"]);
        let electors = got
            .iter()
            .filter(|(n, _)| n == contract::CONTAINER_NAME)
            .count();
        assert_eq!(electors, 1, "pod {name}");
        assert_eq!(
            got.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            want.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "pod {name}"
        );
        // The ServiceAccount admission plugin (not the webhook) mounts kube-api-access-*.
        let mounts = |c: &Value| -> Vec<Value> {
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| {
                    !m["name"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("kube-api-access-")
                })
                .cloned()
                .collect()
        };
        for ((n, have), (_, template)) in got.iter().zip(&want) {
            for field in ["env", "args", "image", "restartPolicy"] {
                assert_eq!(
                    have[field], template[field],
                    "pod {name}, container {n}, {field}"
                );
            }
            assert_eq!(mounts(have), mounts(template), "pod {name}, container {n}");
        }
        let volumes = |spec: &Value| -> BTreeSet<String> {
            spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["name"].as_str())
                .filter(|v| !v.starts_with("kube-api-access-"))
                .map(String::from)
                .collect()
        };
        assert_eq!(
            volumes(&pod["spec"]),
            volumes(&template["spec"]),
            "pod {name}"
        );
    }
    let names: BTreeSet<String> = items
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();

    // The electors elect: the Lease the controller created names one of the pods.
    eventually("a holder in Lease my-app", TIMEOUT, || async {
        let lease = json(c, &["get", "lease", "my-app", "-n", &ns, "-o", "json"])
            .await
            .map_err(|e| e.to_string())?;
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
        if names.contains(holder) {
            Ok(())
        } else {
            Err(format!("holder {holder:?} is not one of {names:?}"))
        }
    })
    .await?;
    // The controller granted exactly that Lease to the pods' ServiceAccount.
    let role = json(
        c,
        &[
            "get",
            "role",
            "leader-election-deployment-my-app",
            "-n",
            &ns,
            "-o",
            "json",
        ],
    )
    .await?;
    assert_eq!(
        role["rules"][0]["resourceNames"],
        serde_json::json!(["my-app"]),
        "{role}"
    );
    Ok(())
}
