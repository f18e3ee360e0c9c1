//! Shared by the in-process router tests: the app over an in-memory cluster, fixtures, and a
//! helper that posts a review and applies the returned patch.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use serde_json::Value;
use tower::ServiceExt;
use webhook::admission::settings::NativeMode;
use webhook::admission::{AppState, InjectConfig, ReviewResponse};
use webhook::fake::FakeCluster;
use webhook::metrics::Metrics;
use webhook::tls::CertResolver;

pub const MAX_BODY: usize = 256 * 1024;

pub struct App {
    pub router: Router,
    pub cluster: Arc<FakeCluster>,
    pub state: Arc<AppState<FakeCluster>>,
}

pub fn app() -> App {
    let cluster = Arc::new(FakeCluster::new());
    let state = Arc::new(AppState::new(
        cluster.clone(),
        InjectConfig {
            image: "example.test/elector:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            native_mode: NativeMode::Auto,
        },
        Arc::new(Metrics::new()),
        Arc::new(CertResolver::default()),
    ));
    App {
        router: webhook::server::router(state.clone(), MAX_BODY),
        cluster,
        state,
    }
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

pub async fn send(
    router: &Router,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

pub async fn review(app: &App, body: Vec<u8>) -> ReviewResponse {
    let (status, bytes) = send(&app.router, "POST", "/mutate", body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let r: ReviewResponse = serde_json::from_slice(&bytes).expect("an AdmissionReview");
    assert_eq!(r.api_version, "admission.k8s.io/v1");
    assert_eq!(r.kind, "AdmissionReview");
    r
}

/// Posts a fixture; returns the response and the request object with the patch applied.
pub async fn admit(app: &App, name: &str) -> (ReviewResponse, Value) {
    let input = fixture_json(name);
    let r = review(app, fixture(name)).await;
    assert_eq!(r.response.uid, input["request"]["uid"], "uid echoed");
    let mut obj = input["request"]["object"].clone();
    if let Some(p) = &r.response.patch {
        assert_eq!(r.response.patch_type.as_deref(), Some("JSONPatch"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(p)
            .expect("base64 patch");
        let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("JSON patch");
        json_patch::patch(&mut obj, &patch).expect("patch applies to the request object");
    }
    (r, obj)
}

pub fn container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}
