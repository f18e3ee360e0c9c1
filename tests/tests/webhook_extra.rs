//! What a real API server (the current Kubernetes built here) sends a mutating webhook, captured: a recording HTTPS endpoint on
//! loopback (it admits everything unchanged) sits behind the shipped MutatingWebhookConfiguration
//! while pods and workloads are created the way users and controllers create them. The test
//! asserts the facts the webhook relies on (ServiceAccount admission runs before webhooks, pods
//! from ReplicaSets have no name, dry-run is flagged, annotate is an UPDATE with the old object);
//! with `WEBHOOK_FIXTURES_OUT=<dir>` it also writes the reviews there, which is how
//! webhook/tests/fixtures/*.json were captured.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use testenv::webhook::{
    create_webhook_configuration, loopback_webhook_configuration, shipped_webhook_configuration,
};
use testenv::{ControlPlane, Result, eventually, fail};

/// The namespace the fixtures are captured in (the router tests expect it).
const NS: &str = "apps";
const TIMEOUT: Duration = Duration::from_secs(90);

type Captured = Arc<Mutex<Vec<Value>>>;

/// Reads one HTTP/1.1 request body (Content-Length framing, as the API server sends).
async fn read_request<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + len].to_vec());
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves HTTPS on 127.0.0.1: records every AdmissionReview and allows it unchanged.
async fn capture_server(cert_pem: &str, key_pem: &str) -> Result<(String, Captured)> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| fail("capture server certificate", e.to_string()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| fail("capture server key", e.to_string()))?
        .ok_or_else(|| fail("capture server key", "none in the PEM"))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail("capture server TLS", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| fail("capture server TLS", e.to_string()))?;
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("capture server bind", e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail("capture server address", e.to_string()))?;
    let captured: Captured = Arc::default();
    let sink = captured.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                while let Some(body) = read_request(&mut tls).await {
                    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let uid = review["request"]["uid"].clone();
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(review);
                    let answer = json!({
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": uid, "allowed": true}
                    })
                    .to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if tls.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((format!("https://{addr}/mutate"), captured))
}

/// The first captured review matching `pred`, waiting for it.
async fn captured(reviews: &Captured, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    eventually(what, TIMEOUT, || async {
        let all = reviews.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.into_iter()
            .find(|r| pred(&r["request"]))
            .ok_or_else(|| {
                format!(
                    "not captured yet; {} reviews",
                    reviews.lock().map(|v| v.len()).unwrap_or(0)
                )
            })
    })
    .await
}

fn is_pod_create(r: &Value) -> bool {
    r["kind"]["kind"] == "Pod" && r["operation"] == "CREATE"
}

/// An UPDATE of Deployment `name` (what `kubectl annotate` sends).
fn is_deployment_update(r: &Value, name: &str) -> bool {
    r["kind"]["kind"] == "Deployment" && r["operation"] == "UPDATE" && r["name"] == name
}

fn owned_by_replicaset_of(r: &Value, deployment: &str) -> bool {
    is_pod_create(r)
        && r["object"]["metadata"]["ownerReferences"][0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("{deployment}-")))
}

fn deployment(name: &str, template_annotations: Value, spec_extra: Value) -> Result<Deployment> {
    let mut spec = json!({"containers": [{"name": "nginx", "image": "nginx:1.25"}]});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": template_annotations},
                "spec": spec
            }
        }
    }))
    .map_err(|e| fail(format!("Deployment {name}"), e.to_string()))
}

fn save(name: &str, review: &Value) -> Result<()> {
    let Ok(dir) = std::env::var("WEBHOOK_FIXTURES_OUT") else {
        return Ok(());
    };
    let path = std::path::Path::new(&dir).join(name);
    let text = serde_json::to_string_pretty(review).map_err(|e| fail(name, e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| fail(path.display().to_string(), e.to_string()))
}

fn volume_names(pod: &Value) -> Vec<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn what_the_api_server_sends_the_webhook() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = cp.admin_client().await?;
    let pki = testenv::pki::Pki::generate(&[])?;
    let (url, reviews) = capture_server(&pki.serving_cert_pem, &pki.serving_key_pem).await?;

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))
        .map_err(|e| fail("namespace", e.to_string()))?;
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| fail("creating namespace apps", e.to_string()))?;
    cp.service_account_token(NS, "default").await?;
    cp.create_service_account(NS, "my-app-sa").await?;
    cp.create_service_account(NS, contract::SERVICE_ACCOUNT)
        .await?;
    cp.service_account_token(NS, "my-app-sa").await?;
    cp.service_account_token(NS, contract::SERVICE_ACCOUNT)
        .await?;

    let mwc = loopback_webhook_configuration(
        &shipped_webhook_configuration().await?,
        "capture",
        &url,
        Some(&pki.ca_pem),
    )?;
    create_webhook_configuration(&cp, &mwc).await?;

    let pods = Api::<Pod>::namespaced(admin.clone(), NS);
    let deployments = Api::<Deployment>::namespaced(admin.clone(), NS);
    let enabled = json!({"leader-election/enabled": "true"});

    // Server-side dry run of a bare pod with generateName; retried until the API server has
    // picked up the configuration (it then reaches the capture server).
    let dry: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "dry-", "labels": {"app": "dry"}, "annotations": enabled},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}
    }))
    .map_err(|e| fail("dry-run pod", e.to_string()))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let review = eventually("the API server to call the capture server", TIMEOUT, || {
        let (pods, dry, dry_run, reviews) =
            (pods.clone(), dry.clone(), dry_run.clone(), reviews.clone());
        async move {
            pods.create(&dry_run, &dry)
                .await
                .map_err(|e| e.to_string())?;
            let all = reviews.lock().unwrap_or_else(|p| p.into_inner()).clone();
            all.into_iter()
                .find(|r| is_pod_create(&r["request"]) && r["request"]["dryRun"] == true)
                .ok_or_else(|| "no dry-run review yet".to_string())
        }
    })
    .await?;
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["request"]["namespace"], NS);
    save("pod-dry-run.json", &review)?;

    // Pods created by the ReplicaSet controller.
    let plain = deployment("plain", json!({}), json!({}))?;
    let my_app = deployment("my-app", enabled.clone(), json!({}))?;
    let own_sa = deployment(
        "own-sa",
        enabled.clone(),
        json!({"serviceAccountName": "my-app-sa"}),
    )?;
    let no_token = deployment(
        "no-token",
        enabled.clone(),
        json!({"automountServiceAccountToken": false}),
    )?;
    let bad = deployment(
        "bad",
        json!({"leader-election/enabled": "true", "leader-election/lease-duration": "soon"}),
        json!({}),
    )?;
    for d in [&plain, &my_app, &own_sa, &no_token, &bad] {
        deployments
            .create(&PostParams::default(), d)
            .await
            .map_err(|e| fail("creating a Deployment", e.to_string()))?;
    }

    let r = captured(&reviews, "my-app's pod", |r| {
        owned_by_replicaset_of(r, "my-app")
    })
    .await?;
    let req = &r["request"];
    let pod = &req["object"];
    // Created from generateName: no name at admission time.
    assert_eq!(req["name"].as_str().unwrap_or_default(), "", "{req:#}");
    assert!(pod["metadata"].get("name").is_none(), "{pod:#}");
    assert!(
        pod["metadata"]["generateName"]
            .as_str()
            .is_some_and(|g| g.starts_with("my-app-")),
        "{pod:#}"
    );
    assert!(pod["metadata"]["labels"]["pod-template-hash"].is_string());
    // The ServiceAccount plugin ran before the webhook: default SA, its projected token
    // volume (kube-api-access-*: a bound token for whichever ServiceAccount the pod ends on).
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let token_volume = volume_names(pod)
        .into_iter()
        .find(|v| v.starts_with("kube-api-access-"))
        .ok_or_else(|| {
            fail(
                "my-app's pod",
                format!("no kube-api-access volume: {pod:#}"),
            )
        })?;
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0]["name"],
        token_volume.as_str()
    );
    assert_eq!(req["dryRun"], false);
    save("pod-generatename.json", &r)?;
    // An unannotated pod is never sent (matchConditions, below); the webhook must still admit
    // one unchanged if an API server without them sends it: the same review, annotation gone.
    let mut plain_review = r.clone();
    if let Some(a) = plain_review["request"]["object"]["metadata"]["annotations"].as_object_mut() {
        a.remove(contract::annotations::ENABLED);
    }
    save("pod-not-annotated.json", &plain_review)?;

    let r = captured(&reviews, "own-sa's pod", |r| {
        owned_by_replicaset_of(r, "own-sa")
    })
    .await?;
    let pod = &r["request"]["object"];
    assert_eq!(pod["spec"]["serviceAccountName"], "my-app-sa");
    assert!(
        volume_names(pod)
            .iter()
            .any(|v| v.starts_with("kube-api-access-")),
        "{pod:#}"
    );
    save("pod-own-sa.json", &r)?;

    let r = captured(&reviews, "no-token's pod", |r| {
        owned_by_replicaset_of(r, "no-token")
    })
    .await?;
    let pod = &r["request"]["object"];
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    // Nothing mounted: the elector has to bring its own credentials.
    assert!(volume_names(pod).is_empty(), "{pod:#}");
    assert!(pod["spec"]["containers"][0].get("volumeMounts").is_none());
    save("pod-automount-off.json", &r)?;

    let r = captured(&reviews, "bad's pod", |r| owned_by_replicaset_of(r, "bad")).await?;
    assert_eq!(
        r["request"]["object"]["metadata"]["annotations"]["leader-election/lease-duration"],
        "soon"
    );
    save("pod-bad-annotation.json", &r)?;

    // The API server evaluates the shipped matchConditions: an unannotated pod is created
    // without a call to the webhook (admission runs before the pod is stored, so once it
    // exists, any call would have been captured).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    eventually("plain's pod to exist", TIMEOUT, || async {
        let list = pods
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .any(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("plain-"))
            })
            .then_some(())
            .ok_or_else(|| "not created yet".to_string())
    })
    .await?;
    let sent: Vec<Value> = reviews
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|r| owned_by_replicaset_of(&r["request"], "plain"))
        .cloned()
        .collect();
    assert!(
        sent.is_empty(),
        "matchConditions let an unannotated pod through: {sent:#?}"
    );

    // Re-admission of a pod that already carries the elector (e.g. `kubectl get -o json` of an
    // injected pod, fed back to `kubectl create`), with a container that lacks the env vars.
    let env = json!([
        {"name": contract::env::APP_URL, "value": contract::http::local_url(contract::http::DEFAULT_PORT)},
        {"name": contract::env::APP_LEASE_NAME, "value": "my-app"},
        {"name": contract::env::APP_IDENTITY, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]);
    let again: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "my-app-again-", "labels": {"app": "my-app"},
                     "annotations": {"leader-election/enabled": "true",
                                     "leader-election/status": "injected"}},
        "spec": {
            "serviceAccountName": contract::SERVICE_ACCOUNT,
            "containers": [
                {"name": "nginx", "image": "nginx:1.25", "env": env},
                {"name": contract::CONTAINER_NAME, "image": contract::deploy::DEFAULT_ELECTOR_IMAGE,
                 "args": ["--election=my-app", "--http=0.0.0.0:4040"]},
                {"name": "istio-proxy", "image": "proxy:1"}
            ]
        }
    }))
    .map_err(|e| fail("re-admitted pod", e.to_string()))?;
    pods.create(&PostParams::default(), &again)
        .await
        .map_err(|e| fail("creating the re-admitted pod", e.to_string()))?;
    let r = captured(&reviews, "the re-admitted pod", |r| {
        is_pod_create(r) && r["object"]["metadata"]["generateName"] == "my-app-again-"
    })
    .await?;
    let pod = &r["request"]["object"];
    // The plugin mounted the pod's ServiceAccount token into every container, the elector too.
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        assert!(
            c["volumeMounts"][0]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-")),
            "{c:#}"
        );
    }
    save("pod-already-injected.json", &r)?;

    // `kubectl annotate deployment web leader-election/enabled=true`, then its removal once the
    // template carries what the webhook propagates (the capture server propagates nothing, so
    // the template is patched to that state by hand in between).
    let web = deployment("web", json!({"team": "x"}), json!({}))?;
    deployments
        .create(&PostParams::default(), &web)
        .await
        .map_err(|e| fail("creating web", e.to_string()))?;
    cp.kubectl_annotate(NS, "deployment", "web", "leader-election/enabled=true")
        .await?;
    let r = captured(&reviews, "the annotate UPDATE", |r| {
        is_deployment_update(r, "web")
            && r["object"]["metadata"]["annotations"]["leader-election/enabled"] == "true"
    })
    .await?;
    let req = &r["request"];
    assert!(
        req["oldObject"]["metadata"]["annotations"]
            .get("leader-election/enabled")
            .is_none(),
        "{req:#}"
    );
    assert_eq!(
        req["object"]["spec"]["template"]["metadata"]["annotations"],
        json!({"team": "x"})
    );
    save("deployment-annotate.json", &r)?;

    let propagated = json!({"spec": {"template": {"metadata": {"annotations": {
        "leader-election/enabled": "true",
        "leader-election/propagated": "leader-election/enabled",
    }}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&propagated))
        .await
        .map_err(|e| fail("patching web's template", e.to_string()))?;
    cp.kubectl_annotate(NS, "deployment", "web", "leader-election/enabled-")
        .await?;
    let r = captured(&reviews, "the remove UPDATE", |r| {
        is_deployment_update(r, "web")
            && r["oldObject"]["metadata"]["annotations"]["leader-election/enabled"] == "true"
            && r["object"]["metadata"]["annotations"]
                .get("leader-election/enabled")
                .is_none()
    })
    .await?;
    assert_eq!(
        r["request"]["object"]["spec"]["template"]["metadata"]["annotations"]["leader-election/propagated"],
        "leader-election/enabled"
    );
    save("deployment-remove.json", &r)?;

    cp.stop().await
}
