//! End to end on the real cluster, as a user runs it: `kubectl apply -k manifests/` as shipped,
//! the example app (3 replicas), and then only what the cluster reports — pod and container
//! statuses, the Lease, `kubectl logs` of the elector and the app, and the elector's answer to
//! `wget -qO- localhost:4040` through `kubectl exec`.

use std::collections::BTreeSet;

use testenv::cluster::{Cluster, pods};
use testenv::e2e::{TIMEOUT, deployed};
use testenv::{Result, eventually, fail, workspace_root};

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

/// A bare pod, annotated or not, that sleeps.
fn sleeper(name: &str, annotated: bool) -> serde_json::Value {
    let mut pod = pods::busybox_pod(name, "sleep 3600");
    if annotated {
        pod["metadata"]["annotations"] = serde_json::json!({
            contract::annotations::ENABLED: "true",
            contract::annotations::LEASE_NAME: name,
        });
    }
    pod
}

fn has_elector(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == contract::CONTAINER_NAME)
}

#[tokio::test]
async fn the_api_server_sends_only_annotated_pods_of_eligible_namespaces() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("rules").await?;
    let opted_out = c.create_namespace("opted-out").await?;
    c.kubectl_ok(
        &[
            "label",
            "namespace",
            &opted_out,
            "leader-election/injection=disabled",
        ],
        None,
    )
    .await?;
    // Other tests of this binary admit pods too: serialise on the counter.
    static COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _counter = COUNTER.lock().await;

    // matchConditions: unannotated pods are never sent (the webhook's own counter stays put).
    let before = testenv::e2e::webhook_admissions(c).await?;
    for i in 0..3 {
        let p = pods::create(c, &ns, &sleeper(&format!("plain-{i}"), false)).await?;
        assert!(!has_elector(&p), "an unannotated pod was injected");
    }
    // namespaceSelector: kube-system and namespaces labelled injection=disabled are skipped
    // even when the pod asks.
    for namespace in ["kube-system", opted_out.as_str()] {
        let name = format!("asks-{}", testenv::procs::rand_suffix());
        let p = pods::create(c, namespace, &sleeper(&name, true)).await?;
        assert!(!has_elector(&p), "a pod in {namespace} was injected");
        c.kubectl_ok(
            &["delete", "pod", "-n", namespace, &name, "--wait=false"],
            None,
        )
        .await?;
    }
    let after = testenv::e2e::webhook_admissions(c).await?;
    assert_eq!(
        after, before,
        "the webhook answered reviews it should never have been sent"
    );

    // Positive control: an annotated pod in an ordinary namespace is sent, and injected.
    let p = pods::create(c, &ns, &sleeper("asks", true)).await?;
    assert!(has_elector(&p), "the annotated pod was not injected");
    let counted = testenv::e2e::webhook_admissions(c).await?;
    assert!(
        counted > after,
        "the webhook's counter did not move ({after} -> {counted})"
    );
    Ok(())
}
