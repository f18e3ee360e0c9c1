//! The crate's error type. Store errors are classified so the election logic knows whether to
//! re-read, retry soon or retry slowly, and so a human reads one line that names the fix.

use std::time::Duration;

use crate::election::Failure;

/// The resource the elector needs rights on, as RBAC names it.
pub const LEASES: &str = "leases.coordination.k8s.io";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("conflict: the Lease changed since it was read ({verb})")]
    Conflict { verb: &'static str },
    #[error("the Lease already exists (create)")]
    AlreadyExists,
    #[error("the Lease was deleted ({verb})")]
    NotFound { verb: &'static str },
    #[error("watch resourceVersion too old (410 Gone); re-listing")]
    Gone,
    #[error(
        "forbidden: the elector may not {verb} {LEASES} in namespace \"{namespace}\". If the \
         leader-election webhook injected it, the webhook's controller grants this with a Role \
         and RoleBinding named {prefix}<kind>-<workload> in \"{namespace}\" (resourceNames: this \
         Lease; subjects: the pod's ServiceAccount): check that they exist and name this Lease \
         and ServiceAccount (kubectl -n {namespace} get role,rolebinding -o yaml), that the \
         workload's events show no reconcile error (kubectl -n {namespace} get events) and that \
         the controller runs (kubectl -n {system} logs deployment/{webhook}). If you run the \
         elector yourself, bind its ServiceAccount to ClusterRole \"{cluster_role}\" from \
         manifests/base/elector-clusterrole.yaml (kubectl -n {namespace} create rolebinding \
         {cluster_role} --clusterrole={cluster_role} --serviceaccount={namespace}:<serviceaccount>). \
         API server said: {message}",
        prefix = contract::GRANT_PREFIX,
        system = contract::deploy::NAMESPACE,
        webhook = contract::deploy::WEBHOOK_NAME,
        cluster_role = contract::CLUSTER_ROLE
    )]
    Forbidden {
        verb: &'static str,
        namespace: String,
        message: String,
    },
    #[error(
        "unauthorized (401) on {verb} {LEASES}: the API server rejected the credentials; check \
         KUBECONFIG or the mounted ServiceAccount token. API server said: {message}"
    )]
    Unauthorized { verb: &'static str, message: String },
    #[error(
        "namespace \"{namespace}\" does not exist: create it (kubectl create namespace \
         {namespace}) or set --election-namespace to an existing namespace"
    )]
    NamespaceNotFound { namespace: String },
    #[error(
        "cannot reach the Kubernetes API server at {url} ({verb} {LEASES}): {message}; check \
         the network, KUBECONFIG or the in-cluster service environment"
    )]
    Unreachable {
        verb: &'static str,
        url: String,
        message: String,
    },
    #[error("{verb} {LEASES} timed out after {timeout:?} (API server at {url})")]
    Timeout {
        verb: &'static str,
        url: String,
        timeout: Duration,
    },
    #[error("API server error on {verb} {LEASES}: {code} {reason}: {message}")]
    Api {
        verb: &'static str,
        /// The server's Retry-After (a 429 or 503 Status's `details.retryAfterSeconds`).
        retry_after: Option<Duration>,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("{verb} {LEASES} failed: {message}")]
    Other { verb: &'static str, message: String },
}

impl StoreError {
    /// What the election logic should do about it.
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Conflict { .. } => Failure::Conflict,
            StoreError::AlreadyExists => Failure::AlreadyExists,
            StoreError::NotFound { .. } => Failure::NotFound,
            StoreError::Gone => Failure::Gone,
            StoreError::Forbidden { .. }
            | StoreError::Unauthorized { .. }
            | StoreError::NamespaceNotFound { .. } => Failure::Permanent,
            StoreError::Api {
                retry_after: Some(after),
                ..
            } => Failure::Throttled(*after),
            StoreError::Api { code, .. } if (400..500).contains(code) && *code != 429 => {
                Failure::Permanent
            }
            StoreError::Unreachable { .. }
            | StoreError::Timeout { .. }
            | StoreError::Api { .. }
            | StoreError::Other { .. } => Failure::Transient,
        }
    }

    /// Label for the API-errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::AlreadyExists => "already_exists",
            StoreError::NotFound { .. } => "not_found",
            StoreError::Gone => "gone",
            StoreError::Forbidden { .. } => "forbidden",
            StoreError::Unauthorized { .. } => "unauthorized",
            StoreError::NamespaceNotFound { .. } => "namespace_not_found",
            StoreError::Unreachable { .. } => "unreachable",
            StoreError::Timeout { .. } => "timeout",
            StoreError::Api { .. } => "server",
            StoreError::Other { .. } => "other",
        }
    }

    /// Errors that are part of normal operation (optimistic concurrency, watch expiry) and are
    /// not worth more than a debug log.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. } | StoreError::AlreadyExists | StoreError::Gone
        )
    }

    /// Classifies a kube client error for `verb` on the Lease in `namespace`.
    pub fn from_kube(err: kube::Error, verb: &'static str, namespace: &str, url: &str) -> Self {
        match err {
            kube::Error::Api(status) => {
                let code = status.code;
                let message = status.message.clone();
                let details_kind = status.details.as_ref().map(|d| d.kind.as_str());
                if status.is_forbidden() {
                    StoreError::Forbidden {
                        verb,
                        namespace: namespace.to_owned(),
                        message,
                    }
                } else if code == 401 || status.reason == "Unauthorized" {
                    StoreError::Unauthorized { verb, message }
                } else if status.is_not_found() {
                    if details_kind == Some("namespaces") || message.starts_with("namespaces ") {
                        StoreError::NamespaceNotFound {
                            namespace: namespace.to_owned(),
                        }
                    } else {
                        StoreError::NotFound { verb }
                    }
                } else if status.is_already_exists() {
                    StoreError::AlreadyExists
                } else if status.is_conflict() {
                    StoreError::Conflict { verb }
                } else if code == 410 || status.reason == "Expired" || status.reason == "Gone" {
                    StoreError::Gone
                } else {
                    let retry_after = status
                        .details
                        .as_ref()
                        .map(|d| d.retry_after_seconds)
                        .filter(|&s| s > 0 && (code == 429 || code == 503))
                        .map(|s| Duration::from_secs(u64::from(s)));
                    StoreError::Api {
                        verb,
                        retry_after,
                        code,
                        reason: status.reason.clone(),
                        message,
                    }
                }
            }
            kube::Error::HyperError(e) => StoreError::Unreachable {
                verb,
                url: url.to_owned(),
                message: error_chain(&e),
            },
            kube::Error::Service(e) => StoreError::Unreachable {
                verb,
                url: url.to_owned(),
                message: error_chain(e.as_ref()),
            },
            kube::Error::Auth(e) => StoreError::Unauthorized {
                verb,
                message: error_chain(&e),
            },
            other => StoreError::Other {
                verb,
                message: error_chain(&other),
            },
        }
    }
}

/// "outer: inner: root" — kube and hyper hide the useful part (e.g. "Connection refused") in
/// the source chain.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Everything that can stop the elector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "cannot load a Kubernetes client configuration (tried $KUBECONFIG, ~/.kube/config and \
         the in-cluster service account): {0}"
    )]
    KubeConfig(String),
    #[error("cannot build the Kubernetes client: {0}")]
    KubeClient(String),
    #[error("cannot listen on {addr} (--{flag}): {source}", flag = contract::flags::HTTP)]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, reason: &str, message: &str, kind: &str) -> kube::Error {
        let mut st = Status::failure(message, reason).with_code(code);
        if !kind.is_empty() {
            st = st.with_details(kube::core::response::StatusDetails {
                name: "x".into(),
                group: String::new(),
                kind: kind.into(),
                uid: String::new(),
                causes: vec![],
                retry_after_seconds: 0,
            });
        }
        kube::Error::Api(st.boxed())
    }

    #[test]
    fn classifies_api_errors() {
        let cases: &[(u16, &str, &str, &str, &str, Failure)] = &[
            (
                409,
                "Conflict",
                "the object has been modified",
                "leases",
                "conflict",
                Failure::Conflict,
            ),
            (
                409,
                "AlreadyExists",
                "leases \"x\" already exists",
                "leases",
                "already_exists",
                Failure::AlreadyExists,
            ),
            (
                404,
                "NotFound",
                "leases \"x\" not found",
                "leases",
                "not_found",
                Failure::NotFound,
            ),
            (
                404,
                "NotFound",
                "namespaces \"nope\" not found",
                "namespaces",
                "namespace_not_found",
                Failure::Permanent,
            ),
            (
                403,
                "Forbidden",
                "leases is forbidden: User \"system:serviceaccount:a:b\" cannot list",
                "leases",
                "forbidden",
                Failure::Permanent,
            ),
            (
                401,
                "Unauthorized",
                "Unauthorized",
                "",
                "unauthorized",
                Failure::Permanent,
            ),
            (
                410,
                "Expired",
                "too old resource version",
                "",
                "gone",
                Failure::Gone,
            ),
            (
                500,
                "InternalError",
                "etcd timeout",
                "",
                "server",
                Failure::Transient,
            ),
            (
                429,
                "TooManyRequests",
                "slow down",
                "",
                "server",
                Failure::Transient,
            ),
            (422, "Invalid", "bad spec", "", "server", Failure::Permanent),
        ];
        for &(code, reason, msg, kind, want_kind, want_failure) in cases {
            let e = StoreError::from_kube(api(code, reason, msg, kind), "list", "ns1", "https://k");
            assert_eq!(e.kind(), want_kind, "{code} {reason}");
            assert_eq!(e.failure(), want_failure, "{code} {reason}");
        }
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        let with_retry_after = |code: u16, reason: &str| {
            let st = Status::failure("slow down", reason)
                .with_code(code)
                .with_details(kube::core::response::StatusDetails {
                    name: String::new(),
                    group: String::new(),
                    kind: String::new(),
                    uid: String::new(),
                    causes: vec![],
                    retry_after_seconds: 3,
                });
            StoreError::from_kube(kube::Error::Api(st.boxed()), "update", "ns", "https://k")
        };
        assert_eq!(
            with_retry_after(429, "TooManyRequests").failure(),
            Failure::Throttled(Duration::from_secs(3))
        );
        assert_eq!(
            with_retry_after(503, "ServiceUnavailable").failure(),
            Failure::Throttled(Duration::from_secs(3))
        );
        assert_eq!(
            with_retry_after(500, "InternalError").failure(),
            Failure::Transient
        );
    }

    #[test]
    fn forbidden_is_one_actionable_line() {
        let e = StoreError::from_kube(
            api(403, "Forbidden", "leases is forbidden", "leases"),
            "create",
            "team-a",
            "https://k",
        );
        let line = e.to_string();
        assert!(!line.contains('\n'));
        for want in [
            "forbidden",
            "create",
            "leases",
            "team-a",
            // Injected electors: the controller's per-workload Role and RoleBinding.
            "Role and RoleBinding named leader-election-<kind>-<workload> in \"team-a\"",
            "kubectl -n team-a get role,rolebinding",
            "kubectl -n leader-election-system logs deployment/leader-election-webhook",
            // A hand-wired elector: the shipped ClusterRole.
            "manifests/base/elector-clusterrole.yaml",
            "--clusterrole=leader-election:elector",
            "API server said: leases is forbidden",
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
        // The per-workload name is the one the controller gives its grants.
        assert!(line.contains(&format!("{}<kind>", contract::GRANT_PREFIX)));
        // It no longer sends injected pods to the ClusterRole first.
        assert!(
            line.find("Role and RoleBinding") < line.find(contract::CLUSTER_ROLE),
            "{line}"
        );
    }

    #[test]
    fn missing_namespace_names_the_flag() {
        let e = StoreError::from_kube(
            api(
                404,
                "NotFound",
                "namespaces \"gone\" not found",
                "namespaces",
            ),
            "create",
            "gone",
            "https://k",
        );
        let line = e.to_string();
        assert!(
            line.contains("\"gone\"") && line.contains("--election-namespace"),
            "{line}"
        );
    }
}
