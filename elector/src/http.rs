//! The HTTP API. Every answer about leadership is computed from the monotonic clock at the
//! moment of the request, from the latest [`View`] the runner published.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::election::{Mono, View};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    lease: NameLabel,
    master_status: Family<NameLabel, Gauge>,
    leader_changes: Family<NameLabel, Counter>,
    transitions: Family<NameLabel, Gauge>,
    renew_latency: Histogram,
    api_errors: Family<KindLabel, Counter>,
}

impl Metrics {
    pub fn new(lease_name: &str) -> Self {
        let mut registry = Registry::default();
        let master_status = Family::<NameLabel, Gauge>::default();
        registry.register(
            "leader_election_master_status",
            "1 if this process is the leader of the lease (evaluated at scrape time), else 0",
            master_status.clone(),
        );
        let leader_changes = Family::<NameLabel, Counter>::default();
        registry.register(
            "leader_election_leader_changes",
            "Times the leader known to this process changed",
            leader_changes.clone(),
        );
        let transitions = Family::<NameLabel, Gauge>::default();
        registry.register(
            "leader_election_lease_transitions",
            "leaderTransitions of the Lease as last seen (a fencing token)",
            transitions.clone(),
        );
        let renew_latency = Histogram::new(exponential_buckets(0.002, 2.0, 14));
        registry.register(
            "leader_election_renew_duration_seconds",
            "Latency of successful lease renewals",
            renew_latency.clone(),
        );
        let api_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "leader_election_api_errors",
            "Failed API requests on the Lease, by kind",
            api_errors.clone(),
        );
        Metrics {
            registry,
            lease: NameLabel {
                name: lease_name.to_owned(),
            },
            master_status,
            leader_changes,
            transitions,
            renew_latency,
            api_errors,
        }
    }

    pub fn leader_changed(&self) {
        self.leader_changes.get_or_create(&self.lease).inc();
    }

    pub fn renewed(&self, latency: Duration) {
        self.renew_latency.observe(latency.as_secs_f64());
    }

    pub fn api_error(&self, kind: &str) {
        self.api_errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    fn encode(&self, view: &View, now: Mono) -> Result<String, std::fmt::Error> {
        self.master_status
            .get_or_create(&self.lease)
            .set(i64::from(view.is_leader(now)));
        self.transitions
            .get_or_create(&self.lease)
            .set(i64::from(view.transitions.unwrap_or(0)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// What changes of leadership look like to subscribers of `/events`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderState {
    pub leader: String,
    pub is_leader: bool,
    pub transitions: Option<i32>,
    pub ready: bool,
}

/// State shared by the runner (writer) and the HTTP handlers (readers).
pub struct Shared {
    pub lease_name: String,
    pub namespace: String,
    pub metrics: Metrics,
    view: watch::Sender<View>,
    state: watch::Sender<LeaderState>,
    clock: Box<dyn Fn() -> Mono + Send + Sync>,
    started: Timestamp,
}

impl Shared {
    pub fn new(
        identity: &str,
        lease_name: &str,
        namespace: &str,
        clock: impl Fn() -> Mono + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Shared {
            lease_name: lease_name.to_owned(),
            namespace: namespace.to_owned(),
            metrics: Metrics::new(lease_name),
            view: watch::Sender::new(View::new(identity)),
            state: watch::Sender::new(LeaderState::default()),
            clock: Box::new(clock),
            started: Timestamp::now(),
        })
    }

    pub fn now(&self) -> Mono {
        (self.clock)()
    }

    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Publishes the runner's latest view; returns the leadership state at `now` and whether it
    /// changed (which also wakes `/events` subscribers).
    pub fn publish(&self, view: View, now: Mono) -> (LeaderState, bool) {
        let state = LeaderState {
            leader: view.leader(now).unwrap_or_default().to_owned(),
            is_leader: view.is_leader(now),
            transitions: view.transitions,
            ready: view.ready,
        };
        self.view.send_replace(view);
        let changed = self.state.send_if_modified(|s| {
            if *s == state {
                false
            } else {
                *s = state.clone();
                true
            }
        });
        (state, changed)
    }

    pub fn status(&self, now: Mono) -> Status {
        let v = self.view();
        let is_leader = v.is_leader(now);
        Status {
            identity: v.identity.clone(),
            leader: v.leader(now).unwrap_or_default().to_owned(),
            is_leader,
            lease_name: self.lease_name.clone(),
            namespace: self.namespace.clone(),
            holder: v.holder.clone(),
            leader_transitions: v.transitions,
            lease_duration_seconds: v.lease_duration.as_secs(),
            last_renew: v.last_renew_wall.map(|t| t.to_string()),
            last_observed: v.observed_wall.map(|t| t.to_string()),
            valid_for_ms: if is_leader {
                v.claim_until
                    .map(|u| u64::try_from(u.saturating_sub(now).as_millis()).unwrap_or(u64::MAX))
            } else {
                None
            },
            resource_version: v.resource_version.clone(),
            ready: v.ready,
            started: self.started.to_string(),
        }
    }
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    /// This candidate's identity.
    pub identity: String,
    /// Current leader as far as this process knows; "" when none or unknown.
    pub leader: String,
    /// Whether this process leads right now (same answer as `leader == identity`).
    pub is_leader: bool,
    pub lease_name: String,
    pub namespace: String,
    /// holderIdentity in the last record seen, even if expired.
    pub holder: Option<String>,
    /// leaderTransitions of the Lease: increases on every change of holder, so the app can
    /// attach it to its writes as a fencing token and storage can reject older tokens.
    pub leader_transitions: Option<i32>,
    pub lease_duration_seconds: u64,
    /// RFC 3339 wall time of this process's last successful renew, if it leads or led.
    pub last_renew: Option<String>,
    /// RFC 3339 wall time when this process last saw the Lease change.
    pub last_observed: Option<String>,
    /// While leading: milliseconds this leadership stays valid without another renew.
    pub valid_for_ms: Option<u64>,
    pub resource_version: Option<String>,
    /// The Lease has been read or written at least once.
    pub ready: bool,
    /// RFC 3339 wall time this process started.
    pub started: String,
}

pub fn router(shared: Arc<Shared>) -> Router {
    use contract::http as p;
    Router::new()
        .route(p::LEADER_PATH, get(leader))
        .route(p::STATUS_PATH, get(status))
        .route(p::EVENTS_PATH, get(events))
        .route(p::HEALTHZ_PATH, get(healthz))
        .route(p::READYZ_PATH, get(readyz))
        .route(p::METRICS_PATH, get(metrics))
        .with_state(shared)
}

/// Byte-compatible with leader-elector:0.4: `{"name":"<leader>"}`, no trailing newline.
async fn leader(State(s): State<Arc<Shared>>) -> Response {
    let now = s.now();
    let view = s.view();
    let body = serde_json::json!({ "name": view.leader(now).unwrap_or_default() }).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.status(s.now())).into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.view().ready {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Lease has not been read yet",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    match s.metrics.encode(&s.view(), s.now()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response(),
    }
}

fn status_event(s: &Shared) -> Event {
    let json = serde_json::to_string(&s.status(s.now())).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event("status").data(json)
}

/// Server-Sent Events: the status at once, then whenever the leadership state changes
/// (including a leadership that lapsed only because time passed).
async fn events(
    State(s): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = s.state.subscribe();
    rx.mark_unchanged();
    let first = status_event(&s);
    let rest = futures::stream::unfold((s, rx), |(s, mut rx)| async move {
        rx.changed().await.ok()?;
        let ev = status_event(&s);
        Some((Ok(ev), (s, rx)))
    });
    let stream = futures::StreamExt::chain(futures::stream::iter([Ok(first)]), rest);
    Sse::new(stream).keep_alive(KeepAlive::default())
}
