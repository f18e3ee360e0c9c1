//! The contract between the webhook and the elector sidecar.
//!
//! Everything the webhook writes into a pod and the elector reads back — annotation keys, env
//! names, flag names, the HTTP port, endpoint paths and default timings — is defined here once,
//! so the two binaries cannot drift apart.

use std::time::Duration;

/// Prefix shared by every annotation this project reads or writes.
pub const ANNOTATION_PREFIX: &str = "leader-election/";

/// Annotation keys, on a pod (usually via its template) or on a Deployment/StatefulSet.
#[cfg(feature = "listen")]
pub mod listen;

pub mod annotations {
    /// `"true"` injects the elector; `"false"` or absent leaves the pod alone.
    pub const ENABLED: &str = "leader-election/enabled";
    /// Name of the Lease; defaults to the owning workload's name.
    pub const LEASE_NAME: &str = "leader-election/lease-name";
    /// Lease duration, e.g. `15s`.
    pub const LEASE_DURATION: &str = "leader-election/lease-duration";
    /// Renew deadline, e.g. `10s`.
    pub const RENEW_DEADLINE: &str = "leader-election/renew-deadline";
    /// Retry period, e.g. `2s`.
    pub const RETRY_PERIOD: &str = "leader-election/retry-period";
    /// Renew interval of the leader, e.g. `5s` (elector flag [`super::flags::RENEW_INTERVAL`]).
    pub const RENEW_INTERVAL: &str = "leader-election/renew-interval";
    /// Port of the elector's HTTP API inside the pod.
    pub const PORT: &str = "leader-election/port";
    /// `"true"`: the webhook's controller keeps [`super::labels::ROLE`] on the pods electing on
    /// the Lease (the elector itself needs no pods permission).
    pub const LEADER_LABEL: &str = "leader-election/leader-label";
    /// `auto`, `always` or `never`: inject as a native sidecar (init container with
    /// `restartPolicy: Always`).
    pub const NATIVE_SIDECAR: &str = "leader-election/native-sidecar";
    /// The elector's CPU request, a Kubernetes quantity (default `10m`).
    pub const CPU_REQUEST: &str = "leader-election/cpu-request";
    /// The elector's CPU limit, a Kubernetes quantity (default: none).
    pub const CPU_LIMIT: &str = "leader-election/cpu-limit";
    /// The elector's memory request, a Kubernetes quantity (default `16Mi`).
    pub const MEMORY_REQUEST: &str = "leader-election/memory-request";
    /// The elector's memory limit, a Kubernetes quantity (default `32Mi`).
    pub const MEMORY_LIMIT: &str = "leader-election/memory-limit";
    /// Written by the webhook once a pod is injected; makes injection idempotent.
    pub const STATUS: &str = "leader-election/status";
    /// Written by the webhook on a workload's pod template: the comma-separated annotation keys
    /// it copied from the workload's metadata, so removing them removes only what it propagated.
    pub const PROPAGATED: &str = "leader-election/propagated";

    /// Value of [`STATUS`] on an injected pod.
    pub const STATUS_INJECTED: &str = "injected";

    /// Every key a user may set, with the form its value must take (used in error messages).
    pub const USER_KEYS: &[(&str, &str)] = &[
        (ENABLED, "\"true\" or \"false\""),
        (
            LEASE_NAME,
            "a DNS subdomain name (lowercase letters, digits, '-' and '.')",
        ),
        (LEASE_DURATION, "a duration such as \"15s\" or \"1m\""),
        (RENEW_DEADLINE, "a duration such as \"10s\""),
        (RETRY_PERIOD, "a duration such as \"2s\""),
        (RENEW_INTERVAL, "a duration such as \"5s\""),
        (PORT, "a port number between 1024 and 65535"),
        (LEADER_LABEL, "\"true\" or \"false\""),
        (NATIVE_SIDECAR, "\"auto\", \"always\" or \"never\""),
        (
            CPU_REQUEST,
            "a positive CPU quantity such as \"10m\", \"0.5\" or \"1\"",
        ),
        (
            CPU_LIMIT,
            "a positive CPU quantity such as \"100m\", \"0.5\" or \"1\"",
        ),
        (
            MEMORY_REQUEST,
            "a positive whole number of bytes such as \"16Mi\", \"64M\" or \"1Gi\"",
        ),
        (
            MEMORY_LIMIT,
            "a positive whole number of bytes such as \"32Mi\", \"64M\" or \"1Gi\"",
        ),
    ];
}

/// Labels kept on pods.
pub mod labels {
    /// `leader` or `follower`, written by the webhook's controller when leader labelling is on.
    pub const ROLE: &str = "leader-election/role";
    pub const ROLE_LEADER: &str = "leader";
    pub const ROLE_FOLLOWER: &str = "follower";
}

/// Environment variables: those the elector reads as flag fallbacks, and those the webhook gives
/// the app containers.
pub mod env {
    /// Downward API: the pod's namespace (elector's default `--election-namespace`).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Downward API: the pod's name (elector's default `--id`).
    pub const POD_NAME: &str = "POD_NAME";

    // Elector flag fallbacks.
    pub const ELECTION: &str = "ELECTOR_ELECTION";
    pub const ELECTION_NAMESPACE: &str = "ELECTOR_ELECTION_NAMESPACE";
    pub const ID: &str = "ELECTOR_ID";
    pub const HTTP: &str = "ELECTOR_HTTP";
    pub const TTL: &str = "ELECTOR_TTL";
    pub const LEASE_DURATION: &str = "ELECTOR_LEASE_DURATION";
    pub const RENEW_DEADLINE: &str = "ELECTOR_RENEW_DEADLINE";
    pub const RETRY_PERIOD: &str = "ELECTOR_RETRY_PERIOD";
    pub const RENEW_INTERVAL: &str = "ELECTOR_RENEW_INTERVAL";
    pub const RELEASE_ON_CANCEL: &str = "ELECTOR_RELEASE_ON_CANCEL";
    /// No longer read: the elector does not label pods (the webhook's controller does).
    pub const LEADER_LABEL: &str = "ELECTOR_LEADER_LABEL";
    pub const LOG_FORMAT: &str = "ELECTOR_LOG_FORMAT";

    /// Given to app containers: where the elector answers, e.g. `http://127.0.0.1:4040`.
    pub const APP_URL: &str = "LEADER_ELECTION_URL";
    /// Given to app containers: the Lease name.
    pub const APP_LEASE_NAME: &str = "LEADER_ELECTION_LEASE_NAME";
    /// Given to app containers: this pod's candidate identity (its pod name).
    pub const APP_IDENTITY: &str = "LEADER_ELECTION_IDENTITY";
}

/// Elector command-line flags (long names, without `--`). The first four are compatible with
/// `gcr.io/google_containers/leader-elector:0.4`.
pub mod flags {
    pub const ELECTION: &str = "election";
    pub const ELECTION_NAMESPACE: &str = "election-namespace";
    pub const ID: &str = "id";
    pub const HTTP: &str = "http";
    pub const TTL: &str = "ttl";
    pub const LEASE_DURATION: &str = "lease-duration";
    pub const RENEW_DEADLINE: &str = "renew-deadline";
    pub const RETRY_PERIOD: &str = "retry-period";
    pub const RENEW_INTERVAL: &str = "renew-interval";
    pub const RELEASE_ON_CANCEL: &str = "release-on-cancel";
    /// No longer accepted by the elector (the webhook's controller labels pods).
    pub const LEADER_LABEL: &str = "leader-label";
    pub const LOG_FORMAT: &str = "log-format";
}

/// The elector's HTTP API.
pub mod http {
    /// Default port; the classic sidecar used 4040 too.
    pub const DEFAULT_PORT: u16 = 4040;
    /// `GET /` → `{"name":"<leader>"}`, byte-compatible with leader-elector:0.4.
    pub const LEADER_PATH: &str = "/";
    pub const STATUS_PATH: &str = "/status";
    /// Server-Sent Events: the status now and on every change.
    pub const EVENTS_PATH: &str = "/events";
    pub const HEALTHZ_PATH: &str = "/healthz";
    pub const READYZ_PATH: &str = "/readyz";
    pub const METRICS_PATH: &str = "/metrics";

    /// URL an app container in the same pod uses to reach the elector.
    pub fn local_url(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }
}

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "leader-elector";
/// The elector's resources unless annotated otherwise (requests 10m CPU / 16Mi, limit 32Mi, no
/// CPU limit). A pod whose containers are all Guaranteed gets requests = limits instead.
pub mod resources {
    pub const CPU_REQUEST: &str = "10m";
    pub const MEMORY_REQUEST: &str = "16Mi";
    pub const MEMORY_LIMIT: &str = "32Mi";
}
/// Names of the leader-elector:0.4 sidecar this project replaces (containers so named, or
/// running an image of the first name, are refused next to the elector: see the README's
/// migration section).
pub const LEGACY_CONTAINER_NAMES: &[&str] = &["leader-elector", "leader-election"];
/// Image repository name of the leader-elector:0.4 sidecar (`gcr.io/google_containers/…`,
/// `k8s.gcr.io/…`, or a mirror).
pub const LEGACY_IMAGE_NAME: &str = "leader-elector";
/// A ServiceAccount name for running the elector by hand (tests, the elector without the
/// webhook). The webhook no longer moves pods to it: a pod keeps its own ServiceAccount.
pub const SERVICE_ACCOUNT: &str = "leader-elector";
/// ClusterRole shipped in `manifests/` for running the elector without the webhook (leases of a
/// namespace). Injected electors get a per-workload Role from the webhook's controller instead.
pub const CLUSTER_ROLE: &str = "leader-election:elector";
/// Prefix of the per-workload Role and RoleBinding the webhook's controller creates for injected
/// electors: `leader-election-<kind>-<workload name>` (e.g. `leader-election-deployment-my-app`).
pub const GRANT_PREFIX: &str = "leader-election-";
/// A RoleBinding name to [`CLUSTER_ROLE`] for running the elector by hand.
pub const ROLE_BINDING: &str = "leader-election:elector";
/// No longer shipped nor bound: electors get no pods permission (the webhook's controller keeps
/// the leader label). Kept so older tooling still compiles.
pub const CLUSTER_ROLE_LEADER_LABEL: &str = "leader-election:elector-leader-label";
/// No longer created (see [`CLUSTER_ROLE_LEADER_LABEL`]).
pub const ROLE_BINDING_LEADER_LABEL: &str = "leader-election:elector-leader-label";

/// Names of the webhook's own objects, shared by the webhook's defaults, `manifests/` and the tests.
pub mod deploy {
    /// Namespace the webhook runs in.
    pub const NAMESPACE: &str = "leader-election-system";
    /// The webhook's Deployment, Service and ServiceAccount.
    pub const WEBHOOK_NAME: &str = "leader-election-webhook";
    /// Secret holding the self-provisioned CA and serving certificate (`ca.crt`, `tls.crt`,
    /// `tls.key`).
    pub const TLS_SECRET: &str = "leader-election-webhook-tls";
    /// The MutatingWebhookConfiguration whose `caBundle` the webhook keeps in sync.
    pub const WEBHOOK_CONFIGURATION: &str = "leader-election-webhook";
    /// Webhook entry for pods.
    pub const POD_WEBHOOK: &str = "pods.leader-election.dev";
    /// Webhook entry for workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob,
    /// Argo Rollout).
    pub const WORKLOAD_WEBHOOK: &str = "workloads.leader-election.dev";
    /// Webhook entry for the Jobs a CronJob creates (pins the CronJob's Lease).
    pub const CRONJOB_JOB_WEBHOOK: &str = "cronjob-jobs.leader-election.dev";
    /// Path the API server posts AdmissionReviews to.
    pub const MUTATE_PATH: &str = "/mutate";
    /// Port the webhook container listens on (the Service maps 443 to it).
    pub const WEBHOOK_PORT: u16 = 8443;
    /// Namespaces carrying this label with value [`OPT_OUT_VALUE`] are never sent to the webhook.
    pub const OPT_OUT_LABEL: &str = "leader-election/injection";
    pub const OPT_OUT_VALUE: &str = "disabled";
    /// Namespaces never injected, whatever their labels.
    pub const EXCLUDED_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];
    /// Image the webhook injects unless told otherwise.
    pub const DEFAULT_ELECTOR_IMAGE: &str = concat!(
        "ghcr.io/leader-election/elector:",
        env!("CARGO_PKG_VERSION")
    );
    /// The webhook's own image.
    pub const DEFAULT_WEBHOOK_IMAGE: &str = concat!(
        "ghcr.io/leader-election/webhook:",
        env!("CARGO_PKG_VERSION")
    );
    /// Non-root UID both images run as.
    pub const RUN_AS_USER: i64 = 65532;
}

/// Lease timings, as client-go's LeaderElectionConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a lease is valid after its holder last renewed it.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often the leader renews, and how long candidates wait between tries.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why a set of timings cannot work; the message names the flag (or annotation) to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingsError(pub String);

impl std::fmt::Display for TimingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimingsError {}

/// The workspace's one duration parser (elector flags, webhook flags and annotations, the bench):
/// `15s`, `1500ms`, `1m`, `2h 5m`; surrounding spaces are ignored.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "{e} in {:?} (use e.g. \"15s\", \"1500ms\" or \"1m\")",
            s.trim()
        )
    })
}

/// Formats a duration exactly, the way the elector's duration flags (and Go's
/// `time.ParseDuration`) read it: `15s`, `1500ms`, or nanoseconds when finer.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

impl Timings {
    /// The elector flags that carry these timings (`--lease-duration=15s`, …).
    pub fn flag_args(&self) -> [String; 3] {
        [
            (flags::LEASE_DURATION, self.lease_duration),
            (flags::RENEW_DEADLINE, self.renew_deadline),
            (flags::RETRY_PERIOD, self.retry_period),
        ]
        .map(|(flag, d)| format!("--{flag}={}", format_duration(d)))
    }

    /// Derives renew deadline and retry period from a lease duration in the defaults' ratio
    /// (15 s : 10 s : 2 s), as the classic sidecar's `--ttl` did with a single value.
    pub fn from_ttl(ttl: Duration) -> Self {
        Self {
            lease_duration: ttl,
            renew_deadline: ttl * 2 / 3,
            retry_period: ttl * 2 / 15,
        }
    }

    /// Checks the ordering client-go requires; `names` are the flag or annotation names used in
    /// the message as (lease duration, renew deadline, retry period).
    pub fn validate(&self, names: (&str, &str, &str)) -> Result<(), TimingsError> {
        let (lease, renew, retry) = names;
        let fmt = |d: Duration| format!("{:?}", d);
        if self.lease_duration.as_secs() < 1 {
            return Err(TimingsError(format!(
                "{lease} is {}, but a Lease stores whole seconds: set {lease} to at least 1s",
                fmt(self.lease_duration)
            )));
        }
        if self.retry_period.is_zero() {
            return Err(TimingsError(format!(
                "{retry} must be greater than zero: set {retry} to e.g. 2s"
            )));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(TimingsError(format!(
                "{renew} ({}) must be less than {lease} ({}): lower {renew} or raise {lease}",
                fmt(self.renew_deadline),
                fmt(self.lease_duration)
            )));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(TimingsError(format!(
                "{retry} ({}) must be less than {renew} ({}): lower {retry} or raise {renew}",
                fmt(self.retry_period),
                fmt(self.renew_deadline)
            )));
        }
        Ok(())
    }
}

/// The leader's renew interval, apart from the retry period (which paces retries after a
/// failure and candidates' attempts).
impl Timings {
    /// Half the lease duration, but never so long that a failed renew cannot be retried once, a
    /// retry period later, before the renew deadline (7.5 s with the defaults: 8 writes a minute
    /// instead of client-go's 30; a failed renew is then retried after 0.5 s and 1.5 s, before
    /// the 10 s deadline). Followers take over one lease duration after the last renewal they
    /// saw, whatever the interval, so it costs no failover time.
    pub fn default_renew_interval(&self) -> Duration {
        (self.lease_duration / 2).min(self.renew_deadline.saturating_sub(self.retry_period))
    }

    /// A renew interval keeps the claim only if a renew that fails can be retried a retry period
    /// later, before the renew deadline; `names` are (renew interval, renew deadline, retry
    /// period) as the user spelled them.
    pub fn validate_renew_interval(
        &self,
        interval: Duration,
        names: (&str, &str, &str),
    ) -> Result<(), TimingsError> {
        let (name, renew, retry) = names;
        if interval.is_zero() {
            return Err(TimingsError(format!(
                "{name} must be greater than zero: set {name} to e.g. {} or leave it unset",
                format_duration(self.default_renew_interval())
            )));
        }
        if interval.saturating_add(self.retry_period) > self.renew_deadline {
            return Err(TimingsError(format!(
                "{name} ({interval:?}) plus {retry} ({:?}) must not exceed {renew} ({:?}), or a \
                 failed renew could not be retried before the leader must step down: lower \
                 {name} (at most {}) or raise {renew}",
                self.retry_period,
                self.renew_deadline,
                format_duration(self.renew_deadline.saturating_sub(self.retry_period))
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_duration_parser() {
        let ok = [
            ("15s", 15_000),
            (" 1500ms ", 1500),
            ("1m", 60_000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("0s", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["15", "soon", "", "-1s"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("use e.g."), "{bad}: {e}");
        }
        // What format_duration writes, parse_duration reads back.
        for d in [
            Duration::from_secs(15),
            Duration::from_millis(1500),
            Duration::from_nanos(7),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn renew_interval_defaults_and_bounds() {
        let t = Timings::default();
        assert_eq!(t.default_renew_interval(), Duration::from_millis(7500));
        let names = ("--renew-interval", "--renew-deadline", "--retry-period");
        t.validate_renew_interval(Duration::from_secs(8), names)
            .unwrap();
        let e = t
            .validate_renew_interval(Duration::from_secs(9), names)
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("--renew-interval") && e.contains("at most 8s"),
            "{e}"
        );
        assert!(
            t.validate_renew_interval(Duration::ZERO, names)
                .unwrap_err()
                .0
                .contains("greater than zero")
        );
        // A tight renew deadline caps the default so that it stays valid.
        let tight = Timings {
            renew_deadline: Duration::from_secs(6),
            ..Timings::default()
        };
        assert_eq!(tight.default_renew_interval(), Duration::from_secs(4));
        // A long renew deadline leaves half the lease duration.
        let loose = Timings {
            renew_deadline: Duration::from_secs(14),
            ..Timings::default()
        };
        assert_eq!(loose.default_renew_interval(), Duration::from_millis(7500));
        for ttl in [1, 3, 15, 60] {
            let t = Timings::from_ttl(Duration::from_secs(ttl));
            t.validate_renew_interval(t.default_renew_interval(), names)
                .unwrap();
        }
    }

    const NAMES: (&str, &str, &str) = ("--lease-duration", "--renew-deadline", "--retry-period");

    #[test]
    fn defaults_are_consistent_and_match_client_go() {
        let t = Timings::default();
        assert_eq!(t.lease_duration, Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        t.validate(NAMES).unwrap();
    }

    #[test]
    fn ttl_derives_default_ratio() {
        assert_eq!(
            Timings::from_ttl(Duration::from_secs(15)),
            Timings::default()
        );
        Timings::from_ttl(Duration::from_secs(3))
            .validate(NAMES)
            .unwrap();
    }

    #[test]
    fn validation_names_the_flag_to_change() {
        let t = Timings {
            renew_deadline: Duration::from_secs(20),
            ..Timings::default()
        };
        let e = t.validate(NAMES).unwrap_err().to_string();
        assert!(
            e.contains("--renew-deadline") && e.contains("--lease-duration"),
            "{e}"
        );

        let t = Timings {
            retry_period: Duration::from_secs(10),
            ..Timings::default()
        };
        let e = t.validate(NAMES).unwrap_err().to_string();
        assert!(e.starts_with("--retry-period"), "{e}");

        let t = Timings {
            lease_duration: Duration::from_millis(500),
            renew_deadline: Duration::from_millis(300),
            retry_period: Duration::from_millis(100),
        };
        assert!(t.validate(NAMES).unwrap_err().0.contains("whole seconds"));
    }

    #[test]
    fn timings_as_flags() {
        assert_eq!(
            Timings::default().flag_args(),
            [
                "--lease-duration=15s",
                "--renew-deadline=10s",
                "--retry-period=2s"
            ]
        );
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_micros(10_500)), "10500000ns");
    }

    #[test]
    fn local_url_uses_loopback() {
        assert_eq!(http::local_url(4040), "http://127.0.0.1:4040");
    }
}
