//! `webhook inject` / `webhook uninject`: the admission patch applied offline to manifests, for
//! GitOps (Argo CD, Flux), as `istioctl kube-inject` and `linkerd inject` do.
//!
//! - [`kinds`]: which objects carry a pod template, and where;
//! - [`object`]: inject and uninject one object (pure; calls the admission code);
//! - [`stream`]: YAML streams, Lists and JSON files as text (pure);
//! - [`files`]: reading paths, directories and stdin, writing stdout or in place.

pub mod files;
pub mod kinds;
pub mod object;
pub mod stream;

pub use object::{Edit, Options, Problem, inject, uninject};
