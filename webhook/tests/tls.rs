//! Real HTTPS on 127.0.0.1: the served certificate, a reload through a Secret-style `..data`
//! symlink swap without a restart or dropped connections, and graceful shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use webhook::admission::settings::NativeMode;
use webhook::admission::{AppState, InjectConfig};
use webhook::certs::{self, CertBundle};
use webhook::fake::FakeCluster;
use webhook::metrics::Metrics;
use webhook::tls::{CertResolver, FileSource};

const DAY: Duration = Duration::from_secs(86_400);

fn bundle() -> CertBundle {
    certs::generate(&["localhost".into(), "127.0.0.1".into()], DAY).unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

/// Lays out `dir` like a mounted Secret: `tls.crt -> ..data/tls.crt`, `..data -> <version>`.
fn write_version(dir: &Path, version: &str, b: &CertBundle) {
    let v = dir.join(version);
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("tls.crt"), &b.cert_pem).unwrap();
    std::fs::write(v.join("tls.key"), &b.key_pem).unwrap();
    // Atomic swap: new link under a temporary name, then rename over `..data`.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

async fn connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(webhook::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

/// One HTTP/1.1 GET on a kept-alive connection; returns (status line, body).
async fn get(tls: &mut TlsStream<TcpStream>, path: &str) -> (String, String) {
    request(tls, "GET", path, b"").await.expect("a response")
}

/// One HTTP/1.1 request on a kept-alive connection; returns (status line, body), or an error
/// when the server closes the connection first.
async fn request(
    tls: &mut TlsStream<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(String, String), String> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(body).await.map_err(|e| e.to_string())?;
    read_response(tls).await
}

/// Reads one response: (status line, body), or an error when the server closes first.
async fn read_response(tls: &mut TlsStream<TcpStream>) -> Result<(String, String), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.lines().next().unwrap().to_string();
                return Ok((status, text[end + 4..end + 4 + len].to_string()));
            }
        }
    }
}

fn served_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn serves_https_and_reloads_a_swapped_secret_without_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let a = bundle();
    write_version(dir.path(), "..2024_01_01_a", &a);

    let resolver = Arc::new(CertResolver::default());
    let metrics = Arc::new(Metrics::new());
    let mut source = FileSource::new(dir.path().join("tls.crt"), dir.path().join("tls.key"));
    assert!(source.reload(&resolver).unwrap());
    assert!(
        !source.reload(&resolver).unwrap(),
        "unchanged files: no reload"
    );
    let watcher = tokio::spawn(source.watch(
        resolver.clone(),
        Duration::from_millis(100),
        metrics.clone(),
    ));

    let state = Arc::new(AppState::new(
        Arc::new(FakeCluster::new()),
        InjectConfig {
            image: "img".into(),
            image_pull_policy: "IfNotPresent".into(),
            native_mode: NativeMode::Never,
        },
        metrics,
        resolver.clone(),
    ));
    let router = webhook::server::router(state, 1024 * 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = Arc::new(webhook::tls::server_config(resolver).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(webhook::server::serve_tls(
        listener,
        router,
        tls,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));

    // A client trusting CA A gets the certificate A, over TLS, by IP SAN.
    let mut kept = connect(addr, &a.ca_pem)
        .await
        .expect("handshake with cert A");
    assert_eq!(served_cert(&kept), der(&a.cert_pem));
    let (status, body) = get(&mut kept, "/readyz").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok");

    // The Secret is updated: kubelet swaps `..data` to a new directory.
    let b = bundle();
    write_version(dir.path(), "..2024_02_01_b", &b);
    let mut swapped = None;
    for _ in 0..50 {
        if let Ok(c) = connect(addr, &b.ca_pem).await {
            swapped = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fresh = swapped.expect("new handshakes get certificate B within 5 s");
    assert_eq!(served_cert(&fresh), der(&b.cert_pem));
    let (status, _) = get(&mut fresh, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        connect(addr, &a.ca_pem).await.is_err(),
        "old CA no longer matches"
    );

    // The connection opened before the swap still works.
    let (status, _) = get(&mut kept, "/healthz").await;
    assert!(status.contains("200"), "{status}");

    // A half-written update (key missing) keeps the current certificate.
    let broken = dir.path().join("..2024_03_01_c");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("tls.crt"), &a.cert_pem).unwrap();
    std::fs::write(broken.join("tls.key"), &b.key_pem).unwrap();
    let tmp = dir.path().join("..data_tmp");
    std::os::unix::fs::symlink("..2024_03_01_c", &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c = connect(addr, &b.ca_pem).await.expect("still certificate B");
    assert_eq!(served_cert(&c), der(&b.cert_pem));

    // Graceful shutdown: stop accepting, close idle keep-alive connections, return.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(connect(addr, &b.ca_pem).await.is_err(), "listener closed");
    watcher.abort();
}

/// A server on 127.0.0.1.
struct Server {
    addr: std::net::SocketAddr,
    ca_pem: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<webhook::error::Result<()>>,
}

async fn start_server(grace: Duration) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let b = bundle();
    let resolver = Arc::new(CertResolver::default());
    resolver.set(webhook::tls::certified_key(b.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap());
    let state = Arc::new(AppState::new(
        Arc::new(FakeCluster::new()),
        InjectConfig {
            image: "img".into(),
            image_pull_policy: "IfNotPresent".into(),
            native_mode: NativeMode::Never,
        },
        Arc::new(Metrics::new()),
        resolver.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(webhook::server::serve_tls(
        listener,
        webhook::server::router(state, 1024 * 1024),
        Arc::new(webhook::tls::server_config(resolver).unwrap()),
        async {
            let _ = stopped.await;
        },
        grace,
    ));
    Server {
        addr,
        ca_pem: b.ca_pem,
        stop,
        task,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Sends the head and the first half of a POST /mutate body: the request is in flight (its
/// handler waits for the rest of the body) until the second half is sent.
async fn start_request(tls: &mut TlsStream<TcpStream>, body: &[u8]) {
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..body.len() / 2]).await.unwrap();
    tls.flush().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_an_in_flight_admission() {
    let server = start_server(Duration::from_secs(10)).await;
    let mut conn = connect(server.addr, &server.ca_pem).await.unwrap();
    let body = fixture("pod-generatename.json");
    start_request(&mut conn, &body).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop.send(()).unwrap();
    // New connections are refused at once, while the admission is still running.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.task.is_finished(),
        "returned with a request in flight"
    );
    assert!(
        connect(server.addr, &server.ca_pem).await.is_err(),
        "listener closed on shutdown"
    );
    // The rest of the body arrives: the request is answered.
    let rest = body[body.len() / 2..].to_vec();
    let response = request_rest(&mut conn, &rest).await;
    let (status, body) = response.expect("the in-flight admission is answered");
    assert!(status.contains("200"), "{status}");
    let review: webhook::admission::ReviewResponse = serde_json::from_str(&body).unwrap();
    assert!(review.response.allowed, "{body}");
    assert!(review.response.patch.is_some(), "{body}");
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server stops once the request is answered")
        .unwrap()
        .unwrap();
}

/// Sends the rest of a body started by [`start_request`] and reads the response.
async fn request_rest(
    tls: &mut TlsStream<TcpStream>,
    rest: &[u8],
) -> Result<(String, String), String> {
    tls.write_all(rest).await.map_err(|e| e.to_string())?;
    read_response(tls).await
}

#[tokio::test]
async fn shutdown_gives_up_on_requests_after_the_grace_period() {
    let server = start_server(Duration::from_millis(300)).await;
    let mut conn = connect(server.addr, &server.ca_pem).await.unwrap();
    let body = fixture("pod-generatename.json");
    // Half a body that never completes: a stuck request.
    start_request(&mut conn, &body).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    server.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("a stuck request cannot hold shutdown past the grace period")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}
