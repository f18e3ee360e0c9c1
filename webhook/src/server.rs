//! The HTTP routes and the TLS listener with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use contract::listen::Listen;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, AppState, Reply};
use crate::cluster::Cluster;
use crate::error::{Error, Result};

/// Slow or stuck clients must not hold a connection slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `/mutate`, `/healthz`, `/readyz`, `/metrics`; bodies above `max_body_bytes` get 413.
pub fn router<C: Cluster>(state: Arc<AppState<C>>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(contract::deploy::MUTATE_PATH, post(mutate::<C>))
        .route(contract::http::HEALTHZ_PATH, get(|| async { "ok" }))
        .route(contract::http::READYZ_PATH, get(readyz::<C>))
        .route(contract::http::METRICS_PATH, get(metrics::<C>))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn mutate<C: Cluster>(State(state): State<Arc<AppState<C>>>, body: Bytes) -> Response {
    match admission::review(&state, &body).await {
        Reply::Review(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Reply::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg).into_response(),
    }
}

async fn readyz<C: Cluster>(State(state): State<Arc<AppState<C>>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !state.resolver.is_loaded() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no serving certificate yet",
        )
            .into_response()
    } else {
        "ok".into_response()
    }
}

async fn metrics<C: Cluster>(State(state): State<Arc<AppState<C>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Binds `listen` (dual-stack by default, IPv4 only on a kernel without IPv6), with a message
/// naming the address and the flag on failure.
pub fn bind(listen: Listen) -> Result<TcpListener> {
    contract::listen::bind(listen, |err, first, v4| {
        tracing::info!(
            "IPv6 is not available here ({err} on {first}): listening on {v4}, IPv4 only"
        );
    })
    .map_err(|e| {
        Error::Server(format!(
            "cannot listen on {} (--listen): {}",
            e.addr, e.source
        ))
    })
}

/// Serves `router` over TLS until `shutdown` resolves, then stops accepting and waits up to
/// `grace` for in-flight requests.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(router);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
