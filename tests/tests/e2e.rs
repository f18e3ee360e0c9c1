//! End to end on the real cluster, as a user runs it: `kubectl apply -k manifests/` as shipped,
//! the example app (3 replicas), and then only what the cluster reports — pod and container
//! statuses, the Lease, `kubectl logs` of the elector and the app, and the elector's answer to
//! `wget -qO- localhost:4040` (and on `127.0.0.1` and `[::1]`) through `kubectl exec`.

use std::collections::BTreeSet;

use testenv::cluster::{Cluster, pods};
use testenv::e2e::{
    TIMEOUT, apply_example, deployed, kubectl_json as json, leader_among, ready_pods,
};
use testenv::{Result, eventually, fail};

#[tokio::test]
async fn the_example_app_elects_one_leader_in_real_pods() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("my-app").await?;
    apply_example(c, &ns).await?;

    // Three Running pods, every container ready, as `kubectl get pods` reports them.
    let pods = ready_pods(c, &ns, "app=my-app", 3, pods::not_ready).await?;
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

    // Plain text logs as `kubectl logs` shows them: no terminal colour codes, from either binary.
    let webhook_logs = c
        .kubectl_ok(
            &[
                "logs",
                "-n",
                testenv::e2e::SYSTEM,
                &format!("deployment/{}", contract::deploy::WEBHOOK_NAME),
            ],
            None,
        )
        .await?;
    let elector_logs = c
        .kubectl_ok(
            &["logs", "-n", &ns, &holder, "-c", contract::CONTAINER_NAME],
            None,
        )
        .await?;
    for (who, text) in [("webhook", &webhook_logs), ("elector", &elector_logs)] {
        assert!(!text.trim().is_empty(), "the {who} logged nothing");
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in the {who}'s log: {text:?}"
        );
    }

    // Every pod's app container gets the same answer from its own elector, over IPv4 and IPv6
    // loopback alike (the injected elector listens on every interface of both families).
    let want = serde_json::json!({ "name": holder });
    for pod in &names {
        for url in [
            "localhost:4040",
            "http://127.0.0.1:4040/",
            "http://[::1]:4040/",
        ] {
            let answer = c
                .kubectl_ok(
                    &[
                        "exec", "-n", &ns, pod, "-c", "app", "--", "wget", "-qO-", url,
                    ],
                    None,
                )
                .await?;
            let answer: serde_json::Value = serde_json::from_str(answer.trim())
                .map_err(|e| fail(format!("GET {url} in {pod}"), format!("{e}: {answer:?}")))?;
            assert_eq!(answer, want, "GET {url} in {pod}");
        }
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

/// Applies the example into `ns` and waits for its rollout.
async fn rollout(c: &Cluster, ns: &str) -> Result<()> {
    testenv::e2e::rollout(c, ns, "my-app").await
}

#[tokio::test]
async fn without_token_automount_the_app_container_has_no_token_and_the_elector_leads() -> Result<()>
{
    let c = deployed().await?;
    let ns = c.create_namespace("no-token").await?;
    c.kubectl_ok(
        &[
            "patch",
            "serviceaccount",
            "default",
            "-n",
            &ns,
            "-p",
            r#"{"automountServiceAccountToken": false}"#,
        ],
        None,
    )
    .await?;
    apply_example(c, &ns).await?;
    let pods = ready_pods(c, &ns, "app=my-app", 3, pods::not_ready).await?;
    leader_among(c, &ns, "my-app", &pods).await?;
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            pod["spec"]["serviceAccountName"], "default",
            "{name} keeps its ServiceAccount"
        );
        // Inside the running app container, as the kubelet mounted it.
        let ls = c
            .kubectl(
                &[
                    "exec",
                    "-n",
                    &ns,
                    name,
                    "-c",
                    "app",
                    "--",
                    "ls",
                    "/var/run/secrets/kubernetes.io/serviceaccount",
                ],
                None,
            )
            .await?;
        assert!(
            !ls.success && ls.stderr.contains("No such file or directory"),
            "{name}: the app container has a token directory: {} {}",
            ls.stdout,
            ls.stderr
        );
    }
    Ok(())
}

#[tokio::test]
async fn workload_annotations_on_the_real_cluster() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("workload").await?;
    apply_example(c, &ns).await?;

    // A bad value on the Deployment is refused, with the webhook's message.
    let bad = c
        .kubectl(
            &[
                "annotate",
                "-n",
                &ns,
                "deployment",
                "my-app",
                "leader-election/lease-duration=soon",
            ],
            None,
        )
        .await?;
    assert!(!bad.success, "a bad annotation was accepted");
    assert!(
        bad.stderr.contains("leader-election/lease-duration"),
        "the refusal names the annotation: {}",
        bad.stderr
    );

    // native-sidecar: never — the elector is a regular container, and it still elects.
    c.kubectl_ok(
        &["patch", "-n", &ns, "deployment", "my-app", "--type=merge", "-p",
          r#"{"spec":{"template":{"metadata":{"annotations":{"leader-election/native-sidecar":"never"}}}}}"#],
        None,
    )
    .await?;
    rollout(c, &ns).await?;
    let pods = ready_pods(c, &ns, "app=my-app", 3, pods::not_ready).await?;
    for pod in &pods {
        let regular = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == contract::CONTAINER_NAME);
        let init = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == contract::CONTAINER_NAME);
        assert!(
            regular && !init,
            "{}: {:#}",
            pod["metadata"]["name"],
            pod["spec"]
        );
    }
    leader_among(c, &ns, "my-app", &pods).await?;

    // Removing the annotation rolls out pods without the elector.
    c.kubectl_ok(
        &["patch", "-n", &ns, "deployment", "my-app", "--type=json", "-p",
          r#"[{"op":"remove","path":"/spec/template/metadata/annotations/leader-election~1enabled"}]"#],
        None,
    )
    .await?;
    rollout(c, &ns).await?;
    let pods = ready_pods(c, &ns, "app=my-app", 3, pods::not_running_ready).await?;
    for pod in &pods {
        let containers: Vec<&str> = ["containers", "initContainers"]
            .iter()
            .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(containers, ["app"], "{}", pod["metadata"]["name"]);
    }
    Ok(())
}
