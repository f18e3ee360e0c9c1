//! The crate's one error type.

use std::path::PathBuf;

/// A failed Kubernetes API call, reduced to what callers branch on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("conflict (the object changed meanwhile)")]
    Conflict,
    #[error("forbidden: {0} (check the webhook's RBAC in manifests/)")]
    Forbidden(String),
    #[error("{0}")]
    Other(String),
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.is_not_found() => Self::NotFound,
            kube::Error::Api(s) if s.is_already_exists() => Self::AlreadyExists,
            kube::Error::Api(s) if s.is_conflict() => Self::Conflict,
            kube::Error::Api(s) if s.is_forbidden() => Self::Forbidden(s.message),
            other => Self::Other(other.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Api {
        context: String,
        #[source]
        source: ApiError,
    },
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("server: {0}")]
    Server(String),
    /// Problems found in manifests by `inject`/`uninject`, one per line.
    #[error("{0}")]
    Manifests(String),
}

impl Error {
    pub fn api(context: impl Into<String>, source: ApiError) -> Self {
        Self::Api {
            context: context.into(),
            source,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
