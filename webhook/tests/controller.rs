//! The controller's reconcilers against a fake API server (a kube::Client over an in-process
//! service that records every request) and hand-filled caches.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube_runtime::reflector::{self, Store};
use kube_runtime::watcher;
use serde_json::{Value, json};
use webhook::controller::{self, Context, Stores};

/// Every request as "METHOD path?query body".
type Log = Arc<Mutex<Vec<String>>>;

/// A fake API server: records the request, answers 200 with `{}` except for paths containing
/// one of `fail` (500).
fn client(log: Log, fail: &'static [&'static str]) -> kube::Client {
    let svc = tower::service_fn(move |req: http::Request<Body>| {
        let log = log.clone();
        async move {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            log.lock().unwrap().push(format!(
                "{method} {uri} {}",
                String::from_utf8_lossy(&bytes)
            ));
            let (status, body) = if fail.iter().any(|f| uri.contains(f)) {
                (
                    500,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "boom", "reason": "InternalError", "code": 500}),
                )
            } else if let Some(obj) = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .filter(|v| v.get("kind").is_some())
            {
                // Echo a create or a server-side apply back.
                (if method == "POST" { 201 } else { 200 }, obj)
            } else {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
                )
            };
            let resp = http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            Ok::<_, Infallible>(resp)
        }
    });
    kube::Client::new(svc, "default")
}

fn store<K>(objs: Vec<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objs {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // Keep the writer alive with the store: a dropped writer ends waits on it.
    std::mem::forget(writer);
    reader
}

fn labelled_pod(name: &str, role: Option<&str>) -> Pod {
    let mut labels = json!({"app": "web"});
    if let Some(r) = role {
        labels[contract::labels::ROLE] = json!(r);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": labels,
            "annotations": {contract::annotations::LEADER_LABEL: "true", contract::annotations::ENABLED: "true"}},
        "spec": {"containers": [
            {"name": "app"},
            {"name": contract::CONTAINER_NAME, "args": ["--election=web"]},
        ]}
    }))
    .unwrap()
}

fn lease(holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns",
            "labels": {"app.kubernetes.io/managed-by": contract::deploy::WEBHOOK_NAME}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
            "renewTime": "2026-01-01T00:00:00.000000Z"}
    }))
    .unwrap()
}

fn context(
    log: &Log,
    fail: &'static [&'static str],
    pods: Vec<Pod>,
    leases: Vec<Lease>,
    deployments: Vec<Deployment>,
) -> Context {
    Context::new(
        client(log.clone(), fail),
        Stores {
            pods: store(pods),
            deployments: store(deployments),
            statefulsets: store(vec![]),
            daemonsets: store(vec![]),
            jobs: store(vec![]),
            cronjobs: store(vec![]),
            rollouts: None,
            leases: store(leases),
            roles: store(vec![]),
            bindings: store(vec![]),
        },
        "test",
    )
}

/// (pod, role) of each label patch, in order.
fn label_writes(log: &Log) -> Vec<(String, String)> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("PATCH /api/v1/namespaces/ns/pods/"))
        .map(|l| {
            let pod = l
                .split('/')
                .nth(6)
                .unwrap()
                .split(['?', ' '])
                .next()
                .unwrap()
                .to_string();
            let body: Value = serde_json::from_str(l.splitn(3, ' ').nth(2).unwrap()).unwrap();
            (
                pod,
                body["metadata"]["labels"][contract::labels::ROLE]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

fn w(p: &str, r: &str) -> (String, String) {
    (p.to_string(), r.to_string())
}

#[tokio::test]
async fn labels_demote_before_they_promote_and_steady_state_writes_nothing() {
    let log = Log::default();
    let pods = vec![
        labelled_pod("a", Some("leader")),
        labelled_pod("b", Some("follower")),
        labelled_pod("c", None),
    ];
    let ctx = context(&log, &[], pods, vec![lease("b")], vec![]);
    controller::sync_labels(&ctx, "ns", "web").await.unwrap();
    assert_eq!(
        label_writes(&log),
        vec![w("a", "follower"), w("c", "follower"), w("b", "leader")]
    );
    // Nothing else was called: no Role, no Lease, no pod other than the label patches.
    assert_eq!(log.lock().unwrap().len(), 3, "{:?}", log.lock().unwrap());

    // Already right: no write.
    let log = Log::default();
    let pods = vec![
        labelled_pod("a", Some("follower")),
        labelled_pod("b", Some("leader")),
    ];
    let ctx = context(&log, &[], pods, vec![lease("b")], vec![]);
    controller::sync_labels(&ctx, "ns", "web").await.unwrap();
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
}

#[tokio::test]
async fn a_failed_demotion_stops_the_promotion() {
    let log = Log::default();
    let pods = vec![
        labelled_pod("a", Some("leader")),
        labelled_pod("b", Some("follower")),
    ];
    let ctx = context(&log, &["/pods/a"], pods, vec![lease("b")], vec![]);
    let err = controller::sync_labels(&ctx, "ns", "web")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("labelling pod ns/a follower"),
        "{err}"
    );
    assert_eq!(
        label_writes(&log),
        vec![w("a", "follower")],
        "b never promoted"
    );
}

#[tokio::test]
async fn a_released_or_missing_lease_leaves_no_leader() {
    let log = Log::default();
    let pods = vec![labelled_pod("a", Some("leader"))];
    let ctx = context(&log, &[], pods.clone(), vec![lease("")], vec![]);
    controller::sync_labels(&ctx, "ns", "web").await.unwrap();
    assert_eq!(label_writes(&log), vec![w("a", "follower")]);
    let log = Log::default();
    let ctx = context(&log, &[], pods, vec![], vec![]);
    controller::sync_labels(&ctx, "ns", "web").await.unwrap();
    assert_eq!(label_writes(&log), vec![w("a", "follower")]);
}

#[tokio::test]
async fn a_deployment_gets_its_lease_role_and_binding_from_its_template() {
    let log = Log::default();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "d-uid"},
        "spec": {"selector": {}, "template": {
            "metadata": {"annotations": {contract::annotations::ENABLED: "true"}},
            "spec": {"serviceAccountName": "web-sa", "containers": [{"name": "app"}]}}}
    }))
    .unwrap();
    let ctx = Arc::new(context(&log, &[], vec![], vec![], vec![d.clone()]));
    controller::workloads::reconcile_deployment(Arc::new(d), ctx)
        .await
        .unwrap();
    let calls = log.lock().unwrap().clone();
    let paths: Vec<String> = calls
        .iter()
        .map(|c| c.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .map(|c| c.split('?').next().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "POST /apis/coordination.k8s.io/v1/namespaces/ns/leases",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/leader-election-deployment-web",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/leader-election-deployment-web",
        ]
    );
    let body = |i: usize| -> Value {
        serde_json::from_str(calls[i].splitn(3, ' ').nth(2).unwrap()).unwrap()
    };
    assert_eq!(body(0)["metadata"]["ownerReferences"][0]["uid"], "d-uid");
    assert_eq!(body(1)["rules"][0]["resourceNames"], json!(["web"]));
    assert_eq!(
        body(1)["rules"][0]["verbs"],
        json!(["get", "list", "watch", "update"])
    );
    assert_eq!(
        body(2)["subjects"],
        json!([{"kind": "ServiceAccount", "name": "web-sa", "namespace": "ns"}])
    );
    assert!(
        calls[1].contains("fieldManager=leader-election-webhook"),
        "{}",
        calls[1]
    );
}

#[tokio::test]
async fn an_unannotated_deployment_without_grants_costs_no_call() {
    let log = Log::default();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "plain", "namespace": "ns", "uid": "u"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "app"}]}}}
    }))
    .unwrap();
    let ctx = Arc::new(context(&log, &[], vec![], vec![], vec![d.clone()]));
    controller::workloads::reconcile_deployment(Arc::new(d), ctx)
        .await
        .unwrap();
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
}
