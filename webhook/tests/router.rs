//! The axum router in-process (no TLS) with AdmissionReview fixtures and an in-memory cluster
//! that records every API call.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use support::*;
use webhook::metrics::Outcome;

#[tokio::test]
async fn generate_name_pod_is_injected_without_any_api_call() {
    let app = app();
    let (r, pod) = admit(&app, "pod-generatename.json").await;
    assert!(r.response.allowed);
    assert!(r.response.warnings.is_empty());
    let e = container(&pod, contract::CONTAINER_NAME).expect("elector");
    assert!(
        e["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--election=my-app"))
    );
    // The pod keeps the ServiceAccount its owner chose (here the namespace's default).
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        fixture_json("pod-generatename.json")["request"]["object"]["spec"]["serviceAccountName"]
    );
    assert_eq!(
        pod["metadata"]["annotations"]["leader-election/status"],
        "injected"
    );
    // Pure admission: nothing is read or written while answering.
    assert!(app.cluster.calls().is_empty(), "{:?}", app.cluster.calls());
    let (r2, _) = admit(&app, "pod-generatename.json").await;
    assert!(r2.response.allowed && r2.response.patch.is_some());
    assert!(app.cluster.calls().is_empty(), "{:?}", app.cluster.calls());
    assert_eq!(app.state.metrics.admissions(Outcome::Injected), 2);
}

#[tokio::test]
async fn own_service_account_is_kept() {
    let app = app();
    let (r, pod) = admit(&app, "pod-own-sa.json").await;
    assert!(r.response.allowed);
    assert_eq!(pod["spec"]["serviceAccountName"], "my-app-sa");
    assert!(app.cluster.calls().is_empty(), "{:?}", app.cluster.calls());
}

#[tokio::test]
async fn forged_review_is_answered_without_any_api_call() {
    // What anyone reaching the port could send: not a dry run, any namespace, any
    // ServiceAccount, leader label on. The answer is a patch of that object and nothing else.
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["namespace"] = json!("kube-public-victim");
    v["request"]["dryRun"] = json!(false);
    v["request"]["object"]["spec"]["serviceAccountName"] = json!("cluster-admin-sa");
    v["request"]["object"]["metadata"]["annotations"]["leader-election/leader-label"] =
        json!("true");
    let r = review(&app, serde_json::to_vec(&v).unwrap()).await;
    assert!(r.response.allowed);
    assert!(app.cluster.calls().is_empty(), "{:?}", app.cluster.calls());
}

#[tokio::test]
async fn automount_off_gets_a_token_volume_for_the_elector() {
    let app = app();
    let (r, pod) = admit(&app, "pod-automount-off.json").await;
    assert!(r.response.allowed);
    let vols = pod["spec"]["volumes"].as_array().expect("volumes created");
    assert_eq!(
        vols[0]["name"],
        webhook::admission::patch::API_ACCESS_VOLUME
    );
    let e = container(&pod, contract::CONTAINER_NAME).unwrap();
    assert_eq!(
        e["volumeMounts"][0]["mountPath"],
        webhook::admission::patch::SERVICE_ACCOUNT_MOUNT
    );
    assert!(
        container(&pod, "nginx")
            .unwrap()
            .get("volumeMounts")
            .is_none()
    );
}

#[tokio::test]
async fn already_injected_pod_only_gets_missing_env() {
    let app = app();
    let input = fixture_json("pod-already-injected.json");
    let (r, pod) = admit(&app, "pod-already-injected.json").await;
    assert!(r.response.allowed);
    assert!(
        app.cluster.calls().is_empty(),
        "no RBAC work on reinvocation"
    );
    let before = input["request"]["object"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), before);
    let proxy = container(&pod, "istio-proxy").unwrap();
    assert_eq!(proxy["env"].as_array().unwrap().len(), 3);
    // Nothing else changed.
    let mut expected = input["request"]["object"].clone();
    expected["spec"]["containers"][2]["env"] = proxy["env"].clone();
    assert_eq!(pod, expected);
    assert_eq!(app.state.metrics.admissions(Outcome::Reinvoked), 1);
}

#[tokio::test]
async fn bad_annotation_is_denied_with_its_name() {
    let app = app();
    let (r, _) = admit(&app, "pod-bad-annotation.json").await;
    assert!(!r.response.allowed);
    assert!(r.response.patch.is_none());
    let status = r.response.status.unwrap();
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains("leader-election/lease-duration")
            && status.message.contains("a duration such as"),
        "{}",
        status.message
    );
    assert!(app.cluster.calls().is_empty());
    assert_eq!(app.state.metrics.admissions(Outcome::Denied), 1);
}

#[tokio::test]
async fn pod_without_annotation_and_other_kinds_pass_unchanged() {
    let app = app();
    for f in ["pod-not-annotated.json", "configmap.json"] {
        let (r, _) = admit(&app, f).await;
        assert!(r.response.allowed, "{f}");
        assert!(r.response.patch.is_none(), "{f}");
    }
    assert!(app.cluster.calls().is_empty());
    assert_eq!(app.state.metrics.admissions(Outcome::Skipped), 2);
}

#[tokio::test]
async fn dry_run_is_answered_like_a_real_create() {
    let app = app();
    let (r, pod) = admit(&app, "pod-dry-run.json").await;
    assert!(r.response.allowed);
    assert!(container(&pod, contract::CONTAINER_NAME).is_some());
    assert!(r.response.warnings.is_empty(), "{:?}", r.response.warnings);
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    assert!(app.cluster.calls().is_empty(), "{:?}", app.cluster.calls());
}

#[tokio::test]
async fn deployment_annotation_is_propagated_then_removed() {
    let app = app();
    let (r, d) = admit(&app, "deployment-annotate.json").await;
    assert!(r.response.allowed);
    let t = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(t["leader-election/enabled"], "true");
    assert_eq!(t["leader-election/propagated"], "leader-election/enabled");
    // Workload metadata itself is left alone.
    assert_eq!(
        d["metadata"]["annotations"]["leader-election/enabled"],
        "true"
    );

    let (r, d) = admit(&app, "deployment-remove.json").await;
    assert!(r.response.allowed);
    let t = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(t, &json!({"team": "x"}));
    assert!(app.cluster.calls().is_empty());
    assert_eq!(app.state.metrics.admissions(Outcome::WorkloadPropagated), 2);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let app = app();
    let cases: [(&str, StatusCode, &str); 3] = [
        (
            "malformed.json",
            StatusCode::BAD_REQUEST,
            "malformed AdmissionReview",
        ),
        (
            "wrong-kind.json",
            StatusCode::BAD_REQUEST,
            "got kind \"Pod\"",
        ),
        (
            "wrong-version.json",
            StatusCode::BAD_REQUEST,
            "admission.k8s.io/v1beta1",
        ),
    ];
    for (f, code, text) in cases {
        let (status, body) = send(&app.router, "POST", "/mutate", fixture(f)).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, code, "{f}: {body}");
        assert!(body.contains(text), "{f}: {body}");
    }
    let (status, body) = send(&app.router, "POST", "/mutate", b"[]".to_vec()).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = send(&app.router, "POST", "/mutate", Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A known uid but no object: an AdmissionReview refusing it.
    let (r, _) = admit(&app, "pod-missing-object.json").await;
    assert!(!r.response.allowed);
    assert_eq!(r.response.status.unwrap().code, 400);

    // An undecodable pod spec is refused, not a panic.
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["object"]["spec"]["containers"] = json!("not a list");
    let r = review(&app, serde_json::to_vec(&v).unwrap()).await;
    assert!(!r.response.allowed);
    assert!(
        r.response
            .status
            .unwrap()
            .message
            .contains("cannot decode the pod")
    );

    let (status, _) = send(&app.router, "GET", "/mutate", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["object"]["metadata"]["annotations"]["filler"] = json!("x".repeat(MAX_BODY));
    let (status, _) = send(
        &app.router,
        "POST",
        "/mutate",
        serde_json::to_vec(&v).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.cluster.calls().is_empty());
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = app();
    let (s, _) = send(&app.router, "GET", "/healthz", Vec::new()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = send(&app.router, "GET", "/readyz", Vec::new()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "no certificate yet");
    assert!(String::from_utf8_lossy(&body).contains("certificate"));

    let b = webhook::certs::generate(&["x".into()], Duration::from_secs(86_400)).unwrap();
    app.state
        .resolver
        .set(webhook::tls::certified_key(b.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap());
    let (s, _) = send(&app.router, "GET", "/readyz", Vec::new()).await;
    assert_eq!(s, StatusCode::OK);
    app.state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (s, _) = send(&app.router, "GET", "/readyz", Vec::new()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "draining");

    admit(&app, "pod-generatename.json").await;
    admit(&app, "pod-bad-annotation.json").await;
    let (s, body) = send(&app.router, "GET", "/metrics", Vec::new()).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("leader_election_webhook_admissions_total{result=\"injected\"} 1"),
        "{text}"
    );
    assert!(text.contains("leader_election_webhook_admissions_total{result=\"denied\"} 1"));
    assert!(text.contains("leader_election_webhook_admission_duration_seconds_count 2"));
}

#[tokio::test]
async fn leader_label_gives_the_elector_no_flag_and_makes_no_call() {
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["object"]["metadata"]["annotations"]["leader-election/leader-label"] =
        json!("true");
    let input = v["request"]["object"].clone();
    let r = review(&app, serde_json::to_vec(&v).unwrap()).await;
    assert!(r.response.allowed);
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        r.response.patch.unwrap(),
    )
    .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut pod = input;
    json_patch::patch(&mut pod, &patch).unwrap();
    let e = container(&pod, contract::CONTAINER_NAME).expect("elector");
    assert!(
        !e["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("leader-label")),
        "{e}"
    );
    assert!(app.cluster.calls().is_empty(), "{:?}", app.cluster.calls());
}

/// Posts `v` (an AdmissionReview) and returns the response and the patched object.
async fn admit_value(
    app: &App,
    v: serde_json::Value,
) -> (webhook::admission::ReviewResponse, serde_json::Value) {
    let r = review(app, serde_json::to_vec(&v).unwrap()).await;
    let mut obj = v["request"]["object"].clone();
    if let Some(p) = &r.response.patch {
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
        json_patch::patch(&mut obj, &patch).unwrap();
    }
    (r, obj)
}

fn old_sidecar() -> serde_json::Value {
    json!({"name": "leader-elector", "image": "gcr.io/google_containers/leader-elector:0.4",
           "args": ["--election=web", "--http=0.0.0.0:4040"], "ports": [{"containerPort": 4040}]})
}

#[tokio::test]
async fn old_sidecar_pod_is_refused_with_the_migration() {
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["object"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(old_sidecar());
    let (r, _) = admit_value(&app, v).await;
    assert!(!r.response.allowed);
    assert!(r.response.patch.is_none());
    let status = r.response.status.unwrap();
    assert_eq!(status.code, 403);
    for want in [
        "leader-elector:0.4",
        "remove that container",
        "Endpoints",
        "Lease",
    ] {
        assert!(status.message.contains(want), "{want}: {}", status.message);
    }
    assert_eq!(app.state.metrics.admissions(Outcome::Denied), 1);
    assert!(app.cluster.calls().is_empty());
}

#[tokio::test]
async fn deployment_with_the_old_sidecar_is_refused_when_annotated() {
    let app = app();
    let mut v = fixture_json("deployment-annotate.json");
    v["request"]["object"]["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(old_sidecar());
    let (r, _) = admit_value(&app, v.clone()).await;
    assert!(!r.response.allowed);
    let msg = r.response.status.unwrap().message;
    assert!(
        msg.starts_with("the pod template would be refused") && msg.contains("leader-elector:0.4"),
        "{msg}"
    );
    // Without the annotation it is none of our business.
    v["request"]["object"]["metadata"]["annotations"] = json!({});
    let (r, d) = admit_value(&app, v.clone()).await;
    assert!(r.response.allowed);
    assert_eq!(d, v["request"]["object"]);
}

#[tokio::test]
async fn native_always_follows_the_cached_cluster_fact() {
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["object"]["metadata"]["annotations"]["leader-election/native-sidecar"] =
        json!("always");
    v["request"]["object"]["spec"]["initContainers"] =
        json!([{"name": "wait-for-leader", "image": "busybox"}]);
    // Not known yet (first probe failed): honoured.
    assert_eq!(app.state.native.known(), None);
    let (r, pod) = admit_value(&app, v.clone()).await;
    assert!(r.response.allowed);
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"],
        contract::CONTAINER_NAME
    );
    // Known unsupported: refused, saying why and what to do.
    app.state.native.set(false);
    let (r, _) = admit_value(&app, v.clone()).await;
    assert!(!r.response.allowed);
    let msg = r.response.status.unwrap().message;
    assert!(
        msg.contains("leader-election/native-sidecar")
            && msg.contains("1.29")
            && msg.contains("\"auto\""),
        "{msg}"
    );
    // Supported: first init container, with a startup probe; the user's init container after
    // it gets the URL.
    app.state.native.set(true);
    let (r, pod) = admit_value(&app, v).await;
    assert!(r.response.allowed);
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], contract::CONTAINER_NAME);
    assert_eq!(inits[0]["restartPolicy"], "Always");
    assert_eq!(inits[0]["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(inits[1]["name"], "wait-for-leader");
    assert_eq!(inits[1]["env"][0]["name"], "LEADER_ELECTION_URL");
    assert!(app.cluster.calls().is_empty());
}

#[tokio::test]
async fn guaranteed_pod_gets_a_guaranteed_elector() {
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}});
    v["request"]["object"]["metadata"]["annotations"]["leader-election/cpu-limit"] = json!("20m");
    let (r, pod) = admit_value(&app, v).await;
    assert!(r.response.allowed);
    let e = container(&pod, contract::CONTAINER_NAME).unwrap();
    assert_eq!(
        e["resources"],
        json!({"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"cpu": "20m", "memory": "32Mi"}})
    );
}

#[tokio::test]
async fn pod_level_resources_leave_the_elector_in_the_pods_budget() {
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    let budget = json!({"cpu": "100m", "memory": "64Mi"});
    v["request"]["object"]["spec"]["resources"] = json!({"requests": budget, "limits": budget});
    v["request"]["object"]["spec"]["containers"][0]["resources"] = json!({"requests": budget});
    let (r, pod) = admit_value(&app, v.clone()).await;
    assert!(r.response.allowed);
    let e = container(&pod, contract::CONTAINER_NAME).unwrap();
    assert_eq!(e["resources"], json!({}));
    // What the user annotates is still set.
    v["request"]["object"]["metadata"]["annotations"]["leader-election/memory-limit"] =
        json!("16Mi");
    let (r, pod) = admit_value(&app, v).await;
    assert!(r.response.allowed);
    let e = container(&pod, contract::CONTAINER_NAME).unwrap();
    assert_eq!(e["resources"], json!({"limits": {"memory": "16Mi"}}));
}

#[tokio::test]
async fn bad_resource_annotation_is_denied_with_its_name_and_form() {
    let app = app();
    let mut v = fixture_json("pod-generatename.json");
    v["request"]["object"]["metadata"]["annotations"]["leader-election/memory-limit"] =
        json!("lots");
    let (r, _) = admit_value(&app, v).await;
    assert!(!r.response.allowed);
    let msg = r.response.status.unwrap().message;
    assert!(
        msg.contains("leader-election/memory-limit=\"lots\"") && msg.contains("\"32Mi\""),
        "{msg}"
    );
}
