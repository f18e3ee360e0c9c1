//! The harness's one error type. Every variant says what to do about it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(thiserror::Error)]
pub enum Error {
    #[error(
        "Kubernetes binaries not found in {dir} (missing {missing}): run tests/testenv/provision.sh \
         (it builds them from Go modules; or set TESTENV_BIN_DIR to the directory it prints)"
    )]
    ControlPlaneBinariesMissing { dir: PathBuf, missing: String },

    #[error(
        "kubectl not found at {path}: run tests/testenv/provision.sh (it builds the kubectl that \
         matches the test cluster)"
    )]
    KubectlMissing { path: PathBuf },

    #[error("project binary {name} not found at {path}: build it first with `cargo build --bins`")]
    ProjectBinaryMissing { name: String, path: PathBuf },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },

    #[error("{context}: {message}")]
    Parse { context: String, message: String },

    #[error("{context}: {message}")]
    Check { context: String, message: String },

    #[error("generating test certificates: {0}")]
    Cert(#[from] rcgen::Error),

    #[error("{what} did not happen within {timeout:?}; last observation: {last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },

    #[error("{name} exited unexpectedly ({status}); last output lines:\n{log}")]
    Exited {
        name: String,
        status: String,
        log: String,
    },

    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

// Tests return `Result<(), Error>`; the test harness prints errors with Debug, so Debug shows
// the readable message instead of the enum structure.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches context to I/O and kube errors.
pub trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context.into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, kube::Error> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Kube {
            context: context.into(),
            source,
        })
    }
}

/// A failed check inside a test, as an error so the test reports it with context.
pub fn fail(context: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Check {
        context: context.into(),
        message: message.into(),
    }
}
