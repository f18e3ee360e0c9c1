//! Prometheus metrics served on `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What an admission ended in.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// The elector was added to a pod.
    Injected,
    /// An injected pod seen again: only missing env vars were added (or nothing).
    Reinvoked,
    /// Admitted unchanged: not opted in, excluded namespace, or a kind not handled.
    Skipped,
    /// Refused because of a bad annotation.
    Denied,
    /// Refused because something failed (API call, undecodable object).
    Error,
    /// A workload's annotations were copied into (or removed from) its pod template.
    WorkloadPropagated,
    /// A workload needed no change.
    WorkloadUnchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Reinvoked => "reinvoked",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Error => "error",
            Self::WorkloadPropagated => "workload-propagated",
            Self::WorkloadUnchanged => "workload-unchanged",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: Outcome,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<ResultLabels, Counter>,
    latency: Histogram,
    cert_reloads: Counter,
    /// 1 once a serving certificate is loaded.
    cert_loaded: Gauge,
    ensure_calls: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("leader_election_webhook");
        let admissions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by result",
            admissions.clone(),
        );
        // 50 µs .. ~0.8 s: the target is p99 <= 2 ms.
        let latency = Histogram::new(exponential_buckets(0.00005, 2.0, 15));
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission review (without TLS and HTTP)",
            latency.clone(),
        );
        let cert_reloads = Counter::default();
        registry.register(
            "certificate_reloads",
            "Serving certificates loaded after the first",
            cert_reloads.clone(),
        );
        let cert_loaded = Gauge::default();
        registry.register(
            "certificate_loaded",
            "1 once a serving certificate is loaded",
            cert_loaded.clone(),
        );
        let ensure_calls = Counter::default();
        registry.register(
            "rbac_ensures",
            "ServiceAccount/RoleBinding ensures that called the API (cache misses)",
            ensure_calls.clone(),
        );
        Self {
            registry,
            admissions,
            latency,
            cert_reloads,
            cert_loaded,
            ensure_calls,
        }
    }

    pub fn admission(&self, result: Outcome, seconds: f64) {
        self.admissions
            .get_or_create(&ResultLabels { result })
            .inc();
        self.latency.observe(seconds);
    }

    pub fn admissions(&self, result: Outcome) -> u64 {
        self.admissions
            .get_or_create(&ResultLabels { result })
            .get()
    }

    pub fn cert_loaded(&self) {
        self.cert_loaded.set(1);
    }

    pub fn cert_reloaded(&self) {
        self.cert_reloads.inc();
        self.cert_loaded.set(1);
    }

    pub fn ensure_called(&self) {
        self.ensure_calls.inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
