//! Admission: pure functions from one AdmissionReview (and cached, read-only cluster facts) to
//! its answer. Nothing here writes to the API server.
//!
//! - [`settings`]: the `leader-election/*` annotations, parsed and validated;
//! - [`lease_name`]: the Lease of each kind of workload;
//! - [`patch`]: the pod patch (the elector container, env, token volume);
//! - [`legacy`]: the leader-elector:0.4 sidecar, refused with the migration steps;
//! - [`resources`]: the elector's CPU and memory (quantities, Guaranteed pods);
//! - [`propagate`]: the workload patch (annotations copied into the pod template);
//! - [`review`]: decoding a review and turning the outcome into its response.

pub mod lease_name;
pub mod legacy;
pub mod patch;
pub mod propagate;
pub mod resources;
pub mod review;
pub mod settings;

pub use review::*;
