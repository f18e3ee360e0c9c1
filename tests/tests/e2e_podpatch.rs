//! What the pod patch does, on the real cluster with the webhook installed from manifests/:
//! the leader-elector:0.4 sidecar refused at `kubectl apply`, a Guaranteed pod kept Guaranteed,
//! a LimitRange satisfied through the resource annotations, pod-level resources left to the
//! pod's budget, and the native sidecar started
//! before the pod's own init containers and its app. Every check reads what the API server
//! reports (pod spec and status, the Lease, kubectl's error).

use testenv::cluster::config::BUSYBOX_IMAGE;
use testenv::cluster::{Cluster, pods};
use testenv::e2e::{TIMEOUT, deployed, kubectl_json as json, leader_among, ready_pods};
use testenv::{Result, fail};

use contract::annotations as ann;

/// A Deployment of `replicas` busybox pods running `script`, with these annotations on the
/// Deployment itself and on its pod template, and extra fields merged into the pod spec.
fn deployment(
    name: &str,
    replicas: u32,
    on_deployment: serde_json::Value,
    on_template: serde_json::Value,
    script: &str,
    app_resources: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": on_deployment},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": on_template},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app",
                        "image": BUSYBOX_IMAGE,
                        "command": ["/bin/busybox", "sh", "-c", script],
                        "resources": app_resources,
                    }],
                },
            },
        },
    })
}

async fn apply(c: &Cluster, ns: &str, obj: &serde_json::Value) -> Result<testenv::CmdOutput> {
    c.kubectl(&["apply", "-n", ns, "-f", "-"], Some(&obj.to_string()))
        .await
}

fn elector_of(pod: &serde_json::Value) -> Option<&serde_json::Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == contract::CONTAINER_NAME)
}

#[tokio::test]
async fn the_old_sidecar_is_refused_at_kubectl_apply_with_the_migration() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("migrate").await?;
    let old = serde_json::json!({
        "name": "leader-elector",
        "image": "gcr.io/google_containers/leader-elector:0.4",
        "args": ["--election=example", "--http=0.0.0.0:4040"],
        "ports": [{"containerPort": 4040}],
    });
    let with_old = |on_deployment, on_template| {
        let mut d = deployment(
            "legacy",
            1,
            on_deployment,
            on_template,
            "sleep 3600",
            serde_json::json!({}),
        );
        if let Some(l) = d["spec"]["template"]["spec"]["containers"].as_array_mut() {
            l.push(old.clone());
        }
        d
    };
    let enabled = serde_json::json!({ann::ENABLED: "true"});
    let steps = [
        "leader-elector:0.4",
        "remove that container",
        "Endpoints",
        "http://localhost:4040",
        "Lease",
    ];
    // Refused at `kubectl apply` with the migration steps, and nothing stored.
    let refused = |d: serde_json::Value| {
        let ns = ns.clone();
        async move {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let out = apply(c, &ns, &d).await?;
            assert!(!out.success, "{name} was accepted: {}", out.stdout);
            for want in steps {
                assert!(
                    out.stderr.contains(want),
                    "{want:?} not in kubectl's error: {}",
                    out.stderr
                );
            }
            let get = c
                .kubectl(&["get", "deployment", &name, "-n", &ns], None)
                .await?;
            assert!(
                !get.success && get.stderr.contains("NotFound"),
                "{}",
                get.stderr
            );
            Ok::<(), testenv::Error>(())
        }
    };
    // Annotated on the Deployment.
    refused(with_old(enabled.clone(), serde_json::json!({}))).await?;

    // Annotated on the pod template only: refused at `kubectl apply` just the same (the
    // workload webhook is sent every Deployment with a leader-election/ key in its template), not
    // stored as a Deployment whose ReplicaSet silently creates no pods.
    let mut tmpl_only = with_old(serde_json::json!({}), enabled.clone());
    tmpl_only["metadata"]["name"] = serde_json::json!("legacy-template");
    tmpl_only["spec"]["selector"]["matchLabels"]["app"] = serde_json::json!("legacy-template");
    tmpl_only["spec"]["template"]["metadata"]["labels"]["app"] =
        serde_json::json!("legacy-template");
    refused(tmpl_only).await?;

    // Not annotated, the old sidecar is the user's business: accepted as it is.
    let plain = with_old(serde_json::json!({}), serde_json::json!({}));
    let out = apply(c, &ns, &plain).await?;
    assert!(out.success, "{}", out.stderr);
    let stored = json(c, &["get", "deployment", "legacy", "-n", &ns, "-o", "json"]).await?;
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // A bare pod asking for the elector next to the old sidecar is refused too.
    let mut p = pods::busybox_pod("bare-legacy", "sleep 3600");
    p["metadata"]["annotations"] =
        serde_json::json!({ann::ENABLED: "true", ann::LEASE_NAME: "bare"});
    if let Some(l) = p["spec"]["containers"].as_array_mut() {
        l.push(old.clone());
    }
    let out = c
        .kubectl(&["create", "-n", &ns, "-f", "-"], Some(&p.to_string()))
        .await?;
    assert!(
        !out.success && out.stderr.contains("leader-elector:0.4"),
        "bare pod: {} {}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

#[tokio::test]
async fn a_guaranteed_pod_stays_guaranteed_and_elects() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("qos").await?;
    let r = serde_json::json!({"requests": {"cpu": "50m", "memory": "32Mi"},
                               "limits": {"cpu": "50m", "memory": "32Mi"}});
    let d = deployment(
        "guaranteed",
        2,
        serde_json::json!({ann::ENABLED: "true"}),
        serde_json::json!({}),
        "sleep 3600",
        r,
    );
    let out = apply(c, &ns, &d).await?;
    assert!(out.success, "{}", out.stderr);
    let pods = ready_pods(c, &ns, "app=guaranteed", 2, pods::not_ready).await?;
    for p in &pods {
        let name = &p["metadata"]["name"];
        assert_eq!(
            p["status"]["qosClass"], "Guaranteed",
            "{name}: {:#}",
            p["spec"]
        );
        let e = elector_of(p).expect("elector injected");
        assert_eq!(
            e["resources"]["requests"], e["resources"]["limits"],
            "{name}: {:#}",
            e["resources"]
        );
    }
    leader_among(c, &ns, "guaranteed", &pods).await?;

    // The same app Burstable: the elector keeps its defaults (no CPU limit).
    let d = deployment(
        "burstable",
        1,
        serde_json::json!({ann::ENABLED: "true"}),
        serde_json::json!({}),
        "sleep 3600",
        serde_json::json!({"requests": {"cpu": "50m", "memory": "32Mi"}}),
    );
    assert!(apply(c, &ns, &d).await?.success);
    let pods = ready_pods(c, &ns, "app=burstable", 1, pods::not_ready).await?;
    assert_eq!(pods[0]["status"]["qosClass"], "Burstable");
    let e = elector_of(&pods[0]).expect("elector injected");
    assert_eq!(
        e["resources"],
        serde_json::json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}})
    );
    Ok(())
}

#[tokio::test]
async fn pod_level_resources_keep_the_elector_in_the_pods_budget() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("pod-level").await?;
    // The app asks for the pod's whole budget (pod-level resources, on by default since 1.34):
    // an elector with its default requests would take the sum past it, and the API server
    // would refuse every pod of the Deployment.
    let budget = serde_json::json!({"cpu": "100m", "memory": "64Mi"});
    let mut d = deployment(
        "pod-level",
        1,
        serde_json::json!({ann::ENABLED: "true"}),
        serde_json::json!({}),
        "sleep 3600",
        serde_json::json!({"requests": budget}),
    );
    d["spec"]["template"]["spec"]["resources"] =
        serde_json::json!({"requests": budget, "limits": budget});
    let out = apply(c, &ns, &d).await?;
    assert!(out.success, "{}", out.stderr);
    let pods = ready_pods(c, &ns, "app=pod-level", 1, pods::not_ready).await?;
    let p = &pods[0];
    assert_eq!(p["status"]["qosClass"], "Guaranteed", "{:#}", p["spec"]);
    assert_eq!(p["spec"]["resources"]["limits"], budget, "{:#}", p["spec"]);
    let e = elector_of(p).expect("elector injected");
    assert!(
        e["resources"].as_object().is_none_or(|r| r.is_empty()),
        "the elector shares the pod's budget: {:#}",
        e["resources"]
    );
    leader_among(c, &ns, "pod-level", &pods).await?;
    Ok(())
}

#[tokio::test]
async fn a_limit_range_minimum_is_met_through_the_annotations() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("limits").await?;
    let lr = serde_json::json!({
        "apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": "floor"},
        "spec": {"limits": [{"type": "Container", "min": {"cpu": "50m", "memory": "16Mi"},
                             "default": {"cpu": "200m", "memory": "64Mi"}}]},
    });
    assert!(apply(c, &ns, &lr).await?.success);
    let app = serde_json::json!({"requests": {"cpu": "50m", "memory": "32Mi"}});
    let pod = |name: &str, extra: serde_json::Value| {
        let mut p = pods::busybox_pod(name, "sleep 3600");
        let mut a = serde_json::json!({ann::ENABLED: "true", ann::LEASE_NAME: name});
        for (k, v) in extra.as_object().into_iter().flatten() {
            a[k] = v.clone();
        }
        p["metadata"]["annotations"] = a;
        p["spec"]["containers"][0]["resources"] = app.clone();
        p
    };
    // The default 10m request is below the namespace's minimum: the API server refuses the pod.
    let out = c
        .kubectl(
            &["create", "-n", &ns, "-f", "-"],
            Some(&pod("floor-default", serde_json::json!({})).to_string()),
        )
        .await?;
    assert!(
        !out.success && out.stderr.contains("minimum cpu usage"),
        "{} {}",
        out.stdout,
        out.stderr
    );
    // With the request annotated, it is admitted and runs.
    let p = pod("floor-set", serde_json::json!({ann::CPU_REQUEST: "50m"}));
    let created = pods::create(c, &ns, &p).await?;
    let spec = serde_json::to_value(created.spec.unwrap_or_default()).unwrap_or_default();
    let e = elector_of(&serde_json::json!({"spec": spec}))
        .cloned()
        .expect("elector");
    // The annotated request; the LimitRange's default fills the CPU limit the elector leaves
    // unset (LimitRanger runs again after the webhook); its own memory limit stays.
    assert_eq!(
        e["resources"],
        serde_json::json!({"requests": {"cpu": "50m", "memory": "16Mi"},
                           "limits": {"cpu": "200m", "memory": "32Mi"}})
    );
    pods::wait_for_phase(c, &ns, "floor-set", &["Running"], TIMEOUT).await?;
    Ok(())
}

fn time(status: &serde_json::Value, path: &str) -> Result<String> {
    status
        .pointer(path)
        .and_then(|v| v.as_str())
        .map(String::from)
        .ok_or_else(|| {
            fail(
                "reading a container status",
                format!("no {path} in {status:#}"),
            )
        })
}

#[tokio::test]
async fn the_native_sidecar_starts_first_and_the_rest_waits_for_it() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("native").await?;
    // The user's init container and the app each ask the elector once, with no retry (no -T:
    // Debian's static busybox wget crashes with it): either
    // fails (and restarts, counted) if it starts before the elector answers.
    let mut d = deployment(
        "native",
        1,
        serde_json::json!({ann::ENABLED: "true", ann::NATIVE_SIDECAR: "always"}),
        serde_json::json!({}),
        "wget -qO- http://127.0.0.1:4040/healthz && sleep 3600",
        serde_json::json!({}),
    );
    d["spec"]["template"]["spec"]["initContainers"] = serde_json::json!([{
        "name": "ask-first",
        "image": BUSYBOX_IMAGE,
        "command": ["/bin/busybox", "sh", "-c",
                    "wget -qO- \"$LEADER_ELECTION_URL/status\" > /dev/termination-log"],
    }]);
    let out = apply(c, &ns, &d).await?;
    assert!(out.success, "{}", out.stderr);
    let pods = ready_pods(c, &ns, "app=native", 1, pods::not_ready).await?;
    let p = &pods[0];
    let inits: Vec<&str> = p["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        inits,
        [contract::CONTAINER_NAME, "ask-first"],
        "init containers"
    );
    assert_eq!(p["spec"]["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(
        p["spec"]["initContainers"][0]["startupProbe"]["httpGet"]["path"],
        contract::http::HEALTHZ_PATH
    );

    let status = &p["status"];
    let init_status = |name: &str| {
        status["initContainerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let elector = init_status(contract::CONTAINER_NAME);
    let ask = init_status("ask-first");
    let app = status["containerStatuses"][0].clone();
    assert_eq!(elector["started"], true, "{elector:#}");
    // The user's init container ran once and got the elector's answer.
    assert_eq!(ask["restartCount"], 0, "{ask:#}");
    assert_eq!(ask["state"]["terminated"]["exitCode"], 0, "{ask:#}");
    let answer: serde_json::Value = serde_json::from_str(
        ask["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or("{}"),
    )
    .map_err(|e| fail("the init container's answer", format!("{e}: {ask:#}")))?;
    assert_eq!(answer["lease_name"], "native", "{answer:#}");
    // The app started after it, and its own first call succeeded.
    assert_eq!(app["restartCount"], 0, "{app:#}");
    let elector_started = time(&elector, "/state/running/startedAt")?;
    let ask_started = time(&ask, "/state/terminated/startedAt")?;
    let ask_finished = time(&ask, "/state/terminated/finishedAt")?;
    let app_started = time(&app, "/state/running/startedAt")?;
    // RFC 3339 UTC with whole seconds: ordered as strings.
    assert!(
        elector_started <= ask_started && ask_finished <= app_started,
        "elector {elector_started}, init {ask_started}..{ask_finished}, app {app_started}"
    );
    leader_among(c, &ns, "native", &pods).await?;
    Ok(())
}
