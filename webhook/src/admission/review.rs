//! Answering one AdmissionReview: decode, dispatch by kind, resolve cluster facts, build the
//! patch, encode the response.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::admission::patch::{self, Inspection, PodContext};
use crate::admission::settings::NativeMode;
use crate::admission::{lease_name, propagate};
use crate::cluster::{Cluster, NativeSupport};
use crate::metrics::{Metrics, Outcome};
use crate::tls::CertResolver;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// What the webhook injects.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub native_mode: NativeMode,
}

/// Shared by every request.
pub struct AppState<C> {
    pub cluster: Arc<C>,
    pub native: Arc<NativeSupport>,
    pub inject: InjectConfig,
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<CertResolver>,
    /// Set on SIGTERM: `/readyz` fails so endpoints drop us while requests still finish.
    pub draining: AtomicBool,
}

impl<C: Cluster> AppState<C> {
    pub fn new(
        cluster: Arc<C>,
        inject: InjectConfig,
        metrics: Arc<Metrics>,
        resolver: Arc<CertResolver>,
    ) -> Self {
        Self {
            cluster,
            native: Arc::new(NativeSupport::default()),
            inject,
            metrics,
            resolver,
            draining: AtomicBool::new(false),
        }
    }
}

/// The HTTP answer to a POST on the mutate path.
#[derive(Debug)]
pub enum Reply {
    /// 200 with this JSON AdmissionReview.
    Review(Vec<u8>),
    /// 400 with this message: the body is not an AdmissionReview we can answer.
    BadRequest(String),
}

/// The response half of an AdmissionReview. Our own type (rather than kube's) so the patch is
/// encoded as base64, as the API server's `[]byte` expects, not as an array of numbers.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReviewResponse {
    pub api_version: String,
    pub kind: String,
    pub response: ResponseBody,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseBody {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResponseStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ResponseStatus {
    pub code: u16,
    pub message: String,
}

impl ResponseBody {
    fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_string(),
            allowed: true,
            ..Self::default()
        }
    }

    fn deny(uid: &str, code: u16, message: String) -> Self {
        Self {
            uid: uid.to_string(),
            allowed: false,
            status: Some(ResponseStatus { code, message }),
            ..Self::default()
        }
    }

    fn with_patch(mut self, patch: Option<json_patch::Patch>) -> Self {
        // Serializing a Patch of plain JSON values cannot fail; treat failure as no patch.
        if let Some(bytes) = patch.and_then(|p| serde_json::to_vec(&p).ok()) {
            self.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            self.patch_type = Some("JSONPatch".into());
        }
        self
    }
}

fn encode(body: ResponseBody) -> Reply {
    let review = ReviewResponse {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        response: body,
    };
    match serde_json::to_vec(&review) {
        Ok(bytes) => Reply::Review(bytes),
        Err(e) => Reply::BadRequest(format!("cannot encode the response: {e}")),
    }
}

/// Answers one request body.
pub async fn review<C: Cluster>(state: &AppState<C>, body: &[u8]) -> Reply {
    let started = Instant::now();
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(state, started, format!("malformed AdmissionReview: {e}"));
        }
    };
    if review.types.api_version != API_VERSION || review.types.kind != KIND {
        return bad_request(
            state,
            started,
            format!(
                "expected an {KIND} of apiVersion {API_VERSION}, got kind {:?} of apiVersion {:?}",
                review.types.kind, review.types.api_version
            ),
        );
    }
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return bad_request(state, started, "the AdmissionReview has no request".into());
        }
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "admission",
        uid = %req.uid,
        namespace = %namespace,
        kind = %req.kind.kind,
        name = tracing::field::Empty,
        workload = tracing::field::Empty,
    );
    let (outcome, body) = dispatch(state, req, &namespace).instrument(span).await;
    state
        .metrics
        .admission(outcome, started.elapsed().as_secs_f64());
    encode(body)
}

fn bad_request<C>(state: &AppState<C>, started: Instant, msg: String) -> Reply {
    tracing::warn!(error = %msg, "bad admission request");
    state
        .metrics
        .admission(Outcome::Error, started.elapsed().as_secs_f64());
    Reply::BadRequest(msg)
}

async fn dispatch<C: Cluster>(
    state: &AppState<C>,
    req: AdmissionRequest<DynamicObject>,
    namespace: &str,
) -> (Outcome, ResponseBody) {
    let uid = req.uid.as_str();
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return (Outcome::Skipped, ResponseBody::allow(uid));
    }
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    let workload_kind = lease_name::Kind::from_kind(&req.kind.group, &req.kind.kind);
    let is_workload = workload_kind.is_some();
    let handled_op = if is_pod {
        req.operation == Operation::Create
    } else {
        matches!(req.operation, Operation::Create | Operation::Update)
    };
    if !(is_pod || is_workload) || !handled_op {
        tracing::debug!(operation = ?req.operation, "kind or operation not handled; admitted unchanged");
        return (Outcome::Skipped, ResponseBody::allow(uid));
    }
    if contract::deploy::EXCLUDED_NAMESPACES.contains(&namespace) {
        return (Outcome::Skipped, ResponseBody::allow(uid));
    }
    let Some(object) = req.object.as_ref() else {
        return (
            Outcome::Error,
            ResponseBody::deny(uid, 400, "the admission request carries no object".into()),
        );
    };
    let name = object
        .metadata
        .name
        .as_deref()
        .or(object.metadata.generate_name.as_deref())
        .unwrap_or_default();
    // The workload a log line is about: the pod's owner (a ReplicaSet reported as its
    // Deployment), or the workload itself.
    let owner = match patch::owning_workload(&object.metadata) {
        Some((kind, owner)) if is_pod => format!("{kind}/{owner}"),
        _ => format!("{}/{name}", req.kind.kind),
    };
    let span = tracing::Span::current();
    span.record("name", name);
    span.record("workload", owner.as_str());
    match workload_kind {
        Some(kind) if !is_pod => {
            workload(state, uid, kind, object, req.old_object.as_ref(), namespace)
        }
        _ => pod(state, &req, object, namespace),
    }
}

/// What a pod's patch depends on besides the pod: the injection settings and the cached
/// cluster facts.
fn pod_context<'a, C>(state: &'a AppState<C>, namespace: &'a str) -> PodContext<'a> {
    PodContext {
        namespace,
        image: &state.inject.image,
        image_pull_policy: &state.inject.image_pull_policy,
        native_mode: state.inject.native_mode,
        native_supported: state.native.known(),
    }
}

fn decode_pod(object: &DynamicObject) -> Result<Pod, serde_json::Error> {
    let spec = match object.data.get("spec") {
        Some(v) => Some(PodSpec::deserialize(v)?),
        None => None,
    };
    Ok(Pod {
        metadata: object.metadata.clone(),
        spec,
        status: None,
    })
}

/// Pure: the answer depends on the request and cached cluster facts only, and nothing is written
/// (`sideEffects: None`). Lease and RBAC are the controller's job, from objects it reads from the
/// API server, never from a request's content.
fn pod<C: Cluster>(
    state: &AppState<C>,
    req: &AdmissionRequest<DynamicObject>,
    object: &DynamicObject,
    namespace: &str,
) -> (Outcome, ResponseBody) {
    let uid = req.uid.as_str();
    let pod = match decode_pod(object) {
        Ok(p) => p,
        Err(e) => {
            return (
                Outcome::Error,
                ResponseBody::deny(uid, 400, format!("cannot decode the pod: {e}")),
            );
        }
    };
    let ctx = pod_context(state, namespace);
    let plan = match patch::plan_pod(&pod, &ctx) {
        Err(d) => {
            tracing::info!(reason = %d, "pod refused");
            return (Outcome::Denied, ResponseBody::deny(uid, 403, d.0));
        }
        Ok(Inspection::Skip(reason)) => {
            tracing::debug!(reason = reason.as_str(), "pod admitted unchanged");
            return (Outcome::Skipped, ResponseBody::allow(uid));
        }
        Ok(Inspection::Inject(plan)) => plan,
    };
    let sa = plan.service_account.as_str();
    let patch = patch::build_patch(&pod, &plan, &ctx);
    let outcome = if plan.already_injected {
        tracing::debug!(added = patch.is_some(), "pod already injected");
        Outcome::Reinvoked
    } else {
        tracing::info!(
            lease = %plan.lease,
            service_account = sa,
            native_sidecar = patch::use_native(&plan.settings, &ctx),
            dry_run = req.dry_run,
            "elector injected"
        );
        Outcome::Injected
    };
    (outcome, ResponseBody::allow(uid).with_patch(patch))
}

fn workload<C: Cluster>(
    state: &AppState<C>,
    uid: &str,
    kind: lease_name::Kind,
    object: &DynamicObject,
    old: Option<&DynamicObject>,
    namespace: &str,
) -> (Outcome, ResponseBody) {
    let (value, old) = match (
        serde_json::to_value(object),
        old.map(serde_json::to_value).transpose(),
    ) {
        (Ok(v), Ok(o)) => (v, o),
        (Err(e), _) | (_, Err(e)) => {
            return (
                Outcome::Error,
                ResponseBody::deny(uid, 400, format!("cannot read the object: {e}")),
            );
        }
    };
    match propagate::mutate_workload(kind, &value, old.as_ref()) {
        Err(d) => {
            tracing::info!(reason = %d, "workload refused");
            (Outcome::Denied, ResponseBody::deny(uid, 403, d.0))
        }
        Ok(m) => {
            let ctx = pod_context(state, namespace);
            if let Err(d) = patch::check_workload(&value, m.patch.as_ref(), &ctx) {
                tracing::info!(reason = %d, "workload refused");
                return (Outcome::Denied, ResponseBody::deny(uid, 403, d.0));
            }
            let outcome = if m.patch.is_some() {
                tracing::info!(set = ?m.set, removed = ?m.removed, "workload annotations propagated to the pod template");
                Outcome::WorkloadPropagated
            } else {
                Outcome::WorkloadUnchanged
            };
            let mut body = ResponseBody::allow(uid).with_patch(m.patch);
            body.warnings = m.warnings;
            (outcome, body)
        }
    }
}
