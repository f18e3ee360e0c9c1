//! HTTP API tests, in-process: exact bytes of `GET /`, `/status` fields, SSE, probes, metrics,
//! and the default listener answering on IPv4 and IPv6 loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use elector::config::{Listen, parse_listen};
use elector::election::{Mono, View};
use elector::http::{Shared, router};
use elector::listen;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

struct Fixture {
    shared: Arc<Shared>,
    clock_ms: Arc<AtomicU64>,
}

impl Fixture {
    fn new() -> Self {
        let clock_ms = Arc::new(AtomicU64::new(1_000_000));
        let c = clock_ms.clone();
        let shared = Shared::new("pod-a", "my-lease", "team", move || {
            Mono(Duration::from_millis(c.load(Ordering::SeqCst)))
        });
        Fixture { shared, clock_ms }
    }

    fn now(&self) -> Mono {
        self.shared.now()
    }

    fn advance(&self, ms: u64) {
        self.clock_ms.fetch_add(ms, Ordering::SeqCst);
    }

    fn leading_view(&self) -> View {
        let now = self.now();
        View {
            holder: Some("pod-a".into()),
            observed_at: Some(now),
            observed_wall: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
            lease_duration: Duration::from_secs(15),
            transitions: Some(4),
            resource_version: Some("77".into()),
            claim_until: Some(now + Duration::from_secs(10)),
            last_renew_wall: Some(jiff::Timestamp::from_second(1_700_000_001).unwrap()),
            holder_is_mine: true,
            ready: true,
            ..View::new("pod-a")
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, String, String) {
        let resp = router(self.shared.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn root_is_byte_compatible_with_the_classic_sidecar() {
    let f = Fixture::new();
    let (code, ctype, body) = f.get("/").await;
    assert_eq!(
        (code, ctype.as_str(), body.as_str()),
        (StatusCode::OK, "application/json", r#"{"name":""}"#)
    );

    f.shared.publish(f.leading_view(), f.now());
    let (_, _, body) = f.get("/").await;
    assert_eq!(body, r#"{"name":"pod-a"}"#);

    // Time passes beyond the renew deadline with no new publish (e.g. a frozen runner): the
    // answer changes at the moment of asking.
    f.advance(10_000);
    let (_, _, body) = f.get("/").await;
    assert_eq!(body, r#"{"name":""}"#);

    // Another holder, known until its lease expires by our observation.
    let now = f.now();
    let other = View {
        holder: Some("pod-\"b\"".into()),
        observed_at: Some(now),
        lease_duration: Duration::from_secs(15),
        ready: true,
        ..View::new("pod-a")
    };
    f.shared.publish(other, now);
    let (_, _, body) = f.get("/").await;
    assert_eq!(body, r#"{"name":"pod-\"b\""}"#);
    f.advance(15_000);
    assert_eq!(f.get("/").await.2, r#"{"name":""}"#);
}

#[tokio::test(flavor = "current_thread")]
async fn status_has_the_documented_fields() {
    let f = Fixture::new();
    f.shared.publish(f.leading_view(), f.now());
    f.advance(2_500);
    let (code, ctype, body) = f.get("/status").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ctype, "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["identity"], "pod-a");
    assert_eq!(v["leader"], "pod-a");
    assert_eq!(v["is_leader"], true);
    assert_eq!(v["lease_name"], "my-lease");
    assert_eq!(v["namespace"], "team");
    assert_eq!(v["leader_transitions"], 4);
    assert_eq!(v["lease_duration_seconds"], 15);
    assert_eq!(v["last_renew"], "2023-11-14T22:13:21Z");
    assert_eq!(v["last_observed"], "2023-11-14T22:13:20Z");
    assert_eq!(v["valid_for_ms"], 7_500);
    assert_eq!(v["resource_version"], "77");
    assert_eq!(v["ready"], true);
    f.advance(8_000);
    let v: serde_json::Value = serde_json::from_str(&f.get("/status").await.2).unwrap();
    assert_eq!(
        (v["is_leader"].clone(), v["leader"].clone()),
        (false.into(), "".into())
    );
    assert!(v["valid_for_ms"].is_null());
}

#[tokio::test(flavor = "current_thread")]
async fn probes() {
    let f = Fixture::new();
    assert_eq!(f.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(f.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    f.shared.publish(f.leading_view(), f.now());
    assert_eq!(f.get("/readyz").await.0, StatusCode::OK);
    assert_eq!(f.get("/nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_are_computed_at_scrape_time() {
    let f = Fixture::new();
    f.shared.publish(f.leading_view(), f.now());
    f.shared.metrics.api_error("forbidden");
    f.shared.metrics.renewed(Duration::from_millis(7));
    f.shared.metrics.leader_changed();
    let (code, ctype, body) = f.get("/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    for line in [
        r#"leader_election_master_status{name="my-lease"} 1"#,
        r#"leader_election_leader_changes_total{name="my-lease"} 1"#,
        r#"leader_election_lease_transitions{name="my-lease"} 4"#,
        r#"leader_election_api_errors_total{kind="forbidden"} 1"#,
        "leader_election_renew_duration_seconds_count 1",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line} in\n{body}");
    }
    f.advance(10_000);
    let body = f.get("/metrics").await.2;
    assert!(
        body.contains(r#"leader_election_master_status{name="my-lease"} 0"#),
        "{body}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn events_send_the_state_at_once_then_on_changes() {
    let f = Fixture::new();
    f.shared.publish(f.leading_view(), f.now());
    let resp = router(f.shared.clone())
        .oneshot(Request::get("/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.headers().get(header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body().into_data_stream();
    let first = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.starts_with("event: status\ndata: {"), "{first}");
    assert!(first.contains(r#""is_leader":true"#), "{first}");

    // A renew (same leadership state) is not an event; a lapse is.
    let mut renewed = f.leading_view();
    renewed.resource_version = Some("78".into());
    let (_, changed) = f.shared.publish(renewed.clone(), f.now());
    assert!(!changed);
    f.advance(10_000);
    let (_, changed) = f.shared.publish(renewed, f.now());
    assert!(changed);
    let next = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("an event after the change")
        .unwrap()
        .unwrap();
    let next = String::from_utf8(next.to_vec()).unwrap();
    assert!(next.contains(r#""is_leader":false"#), "{next}");
}

/// `GET path` over a real TCP connection; returns the status line and the body.
async fn get_over_tcp(addr: std::net::SocketAddr, path: &str) -> Result<(String, String), String> {
    let io = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        conn.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| format!("{addr}: no answer in 10 s"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Serves the API on `listen` and returns the port it got.
async fn serve(f: &Fixture, listen: Listen) -> u16 {
    let listener = listen::bind(listen).expect("bind");
    let port = listener.local_addr().unwrap().port();
    let app = router(f.shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "current_thread")]
async fn the_default_listener_answers_on_ipv4_and_ipv6() {
    let f = Fixture::new();
    f.shared.publish(f.leading_view(), f.now());
    // `:0` is the default `:4040` with a free port: one dual-stack socket.
    let port = serve(&f, parse_listen(":0").unwrap()).await;
    for host in ["127.0.0.1", "[::1]"] {
        let addr = format!("{host}:{port}").parse().unwrap();
        let (status, body) = get_over_tcp(addr, "/").await.unwrap();
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", r#"{"name":"pod-a"}"#),
            "{addr}"
        );
        let (status, _) = get_over_tcp(addr, "/readyz").await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "{addr}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_explicit_address_is_used_as_given() {
    let f = Fixture::new();
    let port = serve(&f, parse_listen("127.0.0.1:0").unwrap()).await;
    let v4 = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get_over_tcp(v4, "/healthz").await.unwrap().1, "ok");
    // Nothing listens on IPv6 loopback at that port.
    let v6 = format!("[::1]:{port}").parse().unwrap();
    let err = get_over_tcp(v6, "/healthz").await.unwrap_err();
    assert!(err.contains("refused"), "{err}");

    let port = serve(&f, parse_listen("[::1]:0").unwrap()).await;
    let v6 = format!("[::1]:{port}").parse().unwrap();
    assert_eq!(get_over_tcp(v6, "/healthz").await.unwrap().1, "ok");
}

#[tokio::test(flavor = "current_thread")]
async fn a_port_in_use_is_an_error_naming_the_flag_not_a_fallback() {
    let taken = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = listen::bind(Listen::AllInterfaces(port))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot listen on [::]:{port} (--http)")),
        "{err}"
    );
}
