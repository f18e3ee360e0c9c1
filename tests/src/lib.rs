//! Real-cluster harness for the integration and end-to-end tests: Kubernetes
//! ([`layout::KUBERNETES_VERSION`], built from Go modules by tests/testenv/provision.sh), either
//! as a control plane alone on loopback ([`ControlPlane`]) or as a whole single-node cluster
//! whose kubelet runs real pods ([`cluster::Cluster`]), plus helpers to run the project's
//! binaries against them.
//!
//! Tests usually share one control plane ([`shared`]) or cluster ([`cluster::shared`]) per test
//! binary and use a namespace each; a test that restarts the API server starts its own.

pub mod bench;
pub mod cluster;
pub mod control_plane;
pub mod demo;
pub mod e2e;
pub mod elector;
pub mod error;
pub mod httpc;
pub mod layout;
pub mod manifests;
pub mod pki;
pub mod procs;
pub mod wait;
pub mod webhook;

pub use control_plane::{CmdOutput, ControlPlane, shared};
pub use error::{Error, Result, fail};
pub use procs::Proc;
pub use wait::{eventually, eventually_while_running};

use std::path::PathBuf;

/// The workspace root (manifests/, certs/ live there).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A project binary (`elector`, `webhook`) from the target directory this executable was built
/// in: integration tests run from `<target>/<profile>/deps/`, the demo and the bench from
/// `<target>/<profile>/`. The test command builds them first (`cargo build --bins`); missing → a
/// clear error.
pub fn project_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::Io {
        context: "locating the running executable".into(),
        source: e,
    })?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::ProjectBinaryMissing {
            name: name.to_string(),
            path,
        })
    }
}
