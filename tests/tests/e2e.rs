//! End to end on the real cluster, as a user runs it: `kubectl apply -k manifests/` as shipped,
//! the example app (3 replicas), and then only what the cluster reports — pod and container
//! statuses, the Lease, `kubectl logs` of the elector and the app, and the elector's answer to
//! `wget -qO- localhost:4040` through `kubectl exec`.

use std::collections::BTreeSet;
use std::time::Duration;

use testenv::cluster::{self, Cluster, pods};
use testenv::{Result, eventually, fail, workspace_root};

const SYSTEM: &str = contract::deploy::NAMESPACE;
const TIMEOUT: Duration = Duration::from_secs(240);

/// The shared cluster with the webhook deployed from manifests/ (once per test binary).
async fn deployed() -> Result<&'static Cluster> {
    static DEPLOYED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let c = cluster::shared().await?;
    DEPLOYED
        .get_or_try_init(|| async {
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
            // The webhook provisions its certificate and writes the caBundle itself.
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
        })
        .await?;
    Ok(c)
}

async fn json(c: &Cluster, args: &[&str]) -> Result<serde_json::Value> {
    let out = c.kubectl_ok(args, None).await?;
    serde_json::from_str(&out)
        .map_err(|e| fail(format!("kubectl {}", args.join(" ")), e.to_string()))
}

#[tokio::test]
async fn the_example_app_elects_one_leader_in_real_pods() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("my-app").await?;
    let app = workspace_root().join("tests/e2e/my-app");
    c.kubectl_ok(
        &["apply", "-n", &ns, "-k", &app.display().to_string()],
        None,
    )
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

    // Three Running pods, every container ready, as `kubectl get pods` reports them.
    let pods = eventually(
        "3 my-app pods with every container ready",
        TIMEOUT,
        || async {
            let list = json(
                c,
                &["get", "pods", "-n", &ns, "-l", "app=my-app", "-o", "json"],
            )
            .await
            .map_err(|e| e.to_string())?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            if items.len() != 3 {
                return Err(format!("{} pods", items.len()));
            }
            if let Some(problem) = items.iter().find_map(pods::not_ready) {
                return Err(problem);
            }
            Ok(items)
        },
    )
    .await?;
    let names: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();

    // The Lease names one of them.
    let holder = eventually("a holder in Lease my-app", TIMEOUT, || async {
        let lease = json(c, &["get", "lease", "my-app", "-n", &ns, "-o", "json"])
            .await
            .map_err(|e| e.to_string())?;
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
        if names.contains(holder) {
            Ok(holder.to_string())
        } else {
            Err(format!("holder {holder:?} is not one of {names:?}"))
        }
    })
    .await?;

    // The elector says so in its own log; the app logs that it leads.
    let line = format!("{holder} is the leader");
    eventually("the elector's log line and the app's", TIMEOUT, || async {
        let elector = c
            .kubectl_ok(
                &["logs", "-n", &ns, &holder, "-c", contract::CONTAINER_NAME],
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        let app = c
            .kubectl_ok(&["logs", "-n", &ns, &holder, "-c", "app"], None)
            .await
            .map_err(|e| e.to_string())?;
        if elector.contains(&line) && app.contains("leading: doing the work") {
            Ok(())
        } else {
            Err(format!("elector log: {elector}\napp log: {app}"))
        }
    })
    .await?;

    // Every pod's app container gets the same answer from its own elector.
    let want = serde_json::json!({ "name": holder });
    for pod in &names {
        let answer = c
            .kubectl_ok(
                &[
                    "exec",
                    "-n",
                    &ns,
                    pod,
                    "-c",
                    "app",
                    "--",
                    "wget",
                    "-qO-",
                    "localhost:4040",
                ],
                None,
            )
            .await?;
        let answer: serde_json::Value = serde_json::from_str(answer.trim())
            .map_err(|e| fail(format!("GET / in {pod}"), format!("{e}: {answer:?}")))?;
        assert_eq!(answer, want, "GET localhost:4040 in {pod}");
        if *pod != holder {
            let app = c
                .kubectl_ok(&["logs", "-n", &ns, pod, "-c", "app"], None)
                .await?;
            assert!(
                app.contains("standby") && !app.contains("leading"),
                "{pod} is a follower: {app}"
            );
        }
    }
    Ok(())
}
