//! Shared set-up of the end-to-end tests: a real cluster with the webhook installed exactly as a
//! user installs it (`kubectl apply -k manifests/`), and what the webhook's own metrics report.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cluster::{self, Cluster};
use crate::error::{Result, fail};
use crate::wait::eventually;
use crate::workspace_root;

pub const SYSTEM: &str = contract::deploy::NAMESPACE;
pub const TIMEOUT: Duration = Duration::from_secs(240);

/// Installs manifests/ and waits for the rollout and the self-provisioned caBundle.
pub async fn install_webhook(c: &Cluster) -> Result<()> {
    let manifests = workspace_root().join("manifests");
    c.kubectl_ok(&["apply", "-k", &manifests.display().to_string()], None)
        .await?;
    let deploy = format!("deployment/{}", contract::deploy::WEBHOOK_NAME);
    c.kubectl_ok(
        &["-n", SYSTEM, "rollout", "status", &deploy, "--timeout=240s"],
        None,
    )
    .await
    .map_err(|e| fail("the webhook's rollout", format!("{e}\n{}", c.logs_tail(30))))?;
    let mwc = format!(
        "mutatingwebhookconfiguration/{}",
        contract::deploy::WEBHOOK_CONFIGURATION
    );
    eventually(
        "the caBundle in the webhook configuration",
        TIMEOUT,
        || async {
            let bundle = c
                .kubectl(
                    &[
                        "get",
                        &mwc,
                        "-o",
                        "jsonpath={.webhooks[*].clientConfig.caBundle}",
                    ],
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            if bundle.success && bundle.stdout.trim().len() > 100 {
                Ok(())
            } else {
                Err(format!("caBundle: {:?} {}", bundle.stdout, bundle.stderr))
            }
        },
    )
    .await
}

/// The shared cluster of this test binary with the webhook installed (once).
pub async fn deployed() -> Result<&'static Cluster> {
    static DEPLOYED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let c = cluster::shared().await?;
    DEPLOYED.get_or_try_init(|| install_webhook(c)).await?;
    Ok(c)
}

/// Admission reviews the webhook replicas have answered, summed over the replicas, from their
/// own `/metrics` (read through the API server's pod proxy).
pub async fn webhook_admissions(c: &Cluster) -> Result<u64> {
    let pods = c
        .kubectl_ok(
            &[
                "get",
                "pods",
                "-n",
                SYSTEM,
                "-l",
                &format!("app.kubernetes.io/name={}", contract::deploy::WEBHOOK_NAME),
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        )
        .await?;
    let mut total = 0;
    for pod in pods.split_whitespace() {
        let path = format!(
            "/api/v1/namespaces/{SYSTEM}/pods/https:{pod}:8443/proxy{}",
            contract::http::METRICS_PATH
        );
        let text = c.kubectl_ok(&["get", "--raw", &path], None).await?;
        total += text
            .lines()
            .filter(|l| l.starts_with("leader_election_webhook_admissions_total"))
            .filter_map(|l| l.rsplit(' ').next())
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    Ok(total)
}

/// What the elector answers to `GET /` (`{"name":"<leader>"}`) in pod `namespace/pod`, asked
/// from its app container as a user would: `kubectl exec <pod> -c app -- wget -qO-
/// localhost:4040`. The error says which pod and why (exec failed, or not JSON).
pub async fn elector_answer(
    c: &Cluster,
    namespace: &str,
    pod: &str,
) -> std::result::Result<serde_json::Value, String> {
    let port = contract::http::DEFAULT_PORT.to_string();
    let url = format!("localhost:{port}");
    let out = c
        .kubectl(
            &[
                "exec", "-n", namespace, pod, "-c", "app", "--", "wget", "-qO-", &url,
            ],
            None,
        )
        .await
        .map_err(|e| format!("{pod}: {e}"))?;
    if !out.success {
        return Err(format!("{pod}: GET {url}: {}", out.stderr.trim()));
    }
    serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("{pod}: GET {url} answered {:?}: {e}", out.stdout))
}

/// The leader's name in [`elector_answer`] (empty when there is none).
pub async fn elector_leader(
    c: &Cluster,
    namespace: &str,
    pod: &str,
) -> std::result::Result<String, String> {
    let v = elector_answer(c, namespace, pod).await?;
    Ok(v["name"].as_str().unwrap_or_default().to_string())
}

/// `kubectl <args>` (which must print JSON, e.g. `-o json`), parsed.
pub async fn kubectl_json(c: &Cluster, args: &[&str]) -> Result<serde_json::Value> {
    let out = c.kubectl_ok(args, None).await?;
    serde_json::from_str(&out)
        .map_err(|e| fail(format!("kubectl {}", args.join(" ")), e.to_string()))
}

/// Every pod of `namespace` matching `selector`, terminating ones too, as JSON.
pub async fn pods(c: &Cluster, namespace: &str, selector: &str) -> Result<Vec<serde_json::Value>> {
    let list = kubectl_json(
        c,
        &["get", "pods", "-n", namespace, "-l", selector, "-o", "json"],
    )
    .await?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// The pods of `namespace` matching `selector` that are not being deleted, as JSON.
pub async fn live_pods(
    c: &Cluster,
    namespace: &str,
    selector: &str,
) -> Result<Vec<serde_json::Value>> {
    let mut items = pods(c, namespace, selector).await?;
    items.retain(|p| p["metadata"]["deletionTimestamp"].is_null());
    Ok(items)
}

/// The live pods matching `selector` once there are exactly `n` and `not_ready` (e.g.
/// [`cluster::pods::not_ready`]: Running, the elector among the containers, all ready) finds no
/// problem with any, as `kubectl get pods` reports them; on a timeout, `kubectl describe` of them
/// goes to stderr for the failure's context.
pub async fn ready_pods(
    c: &Cluster,
    namespace: &str,
    selector: &str,
    n: usize,
    not_ready: fn(&serde_json::Value) -> Option<String>,
) -> Result<Vec<serde_json::Value>> {
    let what = format!("{n} ready pods matching {selector}");
    let ready = eventually(&what, TIMEOUT, || async {
        let items = live_pods(c, namespace, selector)
            .await
            .map_err(|e| e.to_string())?;
        if items.len() != n {
            return Err(format!("{} pods", items.len()));
        }
        if let Some(problem) = items.iter().find_map(not_ready) {
            return Err(problem);
        }
        Ok(items)
    })
    .await;
    if ready.is_err()
        && let Ok(out) = c
            .kubectl(&["describe", "pods", "-n", namespace, "-l", selector], None)
            .await
    {
        eprintln!("{}", out.stdout);
    }
    ready
}

/// The holder of Lease `lease` once `pod_count` pods matching `selector` run, every one's
/// elector is told that Lease, the Lease has an ownerReference to `owner` (kind, name), and it
/// names one of those pods.
pub async fn elected(
    c: &Cluster,
    ns: &str,
    lease: &str,
    selector: &str,
    pod_count: usize,
    owner: (&str, &str),
) -> Result<String> {
    let what = format!("Lease {lease} held by one of the {pod_count} pods matching {selector}");
    eventually(&what, TIMEOUT, || async {
        let items = pods(c, ns, selector).await.map_err(|e| e.to_string())?;
        let running: Vec<&serde_json::Value> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .collect();
        if running.len() != pod_count {
            return Err(format!("{} running pods of {}", running.len(), items.len()));
        }
        // Every pod's elector is told this Lease, by the webhook's patch.
        for p in &running {
            let elector = p["spec"]["containers"]
                .as_array()
                .into_iter()
                .chain(p["spec"]["initContainers"].as_array())
                .flatten()
                .find(|c| c["name"] == contract::CONTAINER_NAME)
                .ok_or_else(|| format!("{} has no elector", p["metadata"]["name"]))?;
            let arg = format!("--election={lease}");
            if !elector["args"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a == &serde_json::json!(arg))
            {
                return Err(format!(
                    "{} elector args {}",
                    p["metadata"]["name"], elector["args"]
                ));
            }
        }
        let names: BTreeSet<&str> = running
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        let l = kubectl_json(c, &["get", "lease", lease, "-n", ns, "-o", "json"])
            .await
            .map_err(|e| e.to_string())?;
        let owners = l["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !owners
            .iter()
            .any(|o| o["kind"] == owner.0 && o["name"] == owner.1)
        {
            return Err(format!("Lease {lease} owners {owners:?}, want {owner:?}"));
        }
        let holder = l["spec"]["holderIdentity"].as_str().unwrap_or_default();
        if names.contains(holder) {
            Ok(holder.to_string())
        } else {
            Err(format!("holder {holder:?} not one of {names:?}"))
        }
    })
    .await
}

/// The holder of Lease `lease` once it names one of `pods` (as JSON from the API server).
pub async fn leader_among(
    c: &Cluster,
    namespace: &str,
    lease: &str,
    pods: &[serde_json::Value],
) -> Result<String> {
    let names: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    eventually(&format!("a holder of Lease {lease}"), TIMEOUT, || async {
        let l = kubectl_json(c, &["get", "lease", lease, "-n", namespace, "-o", "json"])
            .await
            .map_err(|e| e.to_string())?;
        let holder = l["spec"]["holderIdentity"].as_str().unwrap_or_default();
        names
            .contains(holder)
            .then(|| holder.to_string())
            .ok_or_else(|| format!("holder {holder:?}, pods {names:?}"))
    })
    .await
}

/// The example app (tests/e2e/my-app: 3 replicas) applied in `namespace` as a user applies
/// it (`kubectl apply -k`), and rolled out.
pub async fn apply_example(c: &Cluster, namespace: &str) -> Result<()> {
    let app = workspace_root().join("tests/e2e/my-app");
    c.kubectl_ok(
        &["apply", "-n", namespace, "-k", &app.display().to_string()],
        None,
    )
    .await?;
    rollout(c, namespace, "my-app").await
}

/// `kubectl rollout status deployment/<name>` in `namespace`.
pub async fn rollout(c: &Cluster, namespace: &str, name: &str) -> Result<()> {
    let deploy = format!("deployment/{name}");
    c.kubectl_ok(
        &[
            "-n",
            namespace,
            "rollout",
            "status",
            &deploy,
            "--timeout=240s",
        ],
        None,
    )
    .await?;
    Ok(())
}
