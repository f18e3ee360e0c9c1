//! Pure JSON Patch builder for pods: injects the elector. No I/O: the admission handler
//! resolves cluster facts into [`PodContext`].

use contract::annotations as ann;
use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::settings::{self, Denial, NativeMode, PodSettings};

/// Projected volume giving the elector its own API credentials (see [`elector_volume`]).
pub const API_ACCESS_VOLUME: &str = "leader-elector-api-access";
/// Where client libraries (and the elector) look for in-cluster credentials.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const PORT_NAME: &str = "elector-http";

/// Facts the handler resolved before building the patch.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// Namespace of the request (a pod being created may not carry it in its metadata).
    pub namespace: &'a str,
    pub image: &'a str,
    pub image_pull_policy: &'a str,
    /// The webhook's `--native-sidecar` mode; a pod annotation overrides it.
    pub native_mode: NativeMode,
    /// Cached cluster capability used by [`NativeMode::Auto`].
    pub native_supported: bool,
}

/// Why a pod is admitted unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotEnabled,
    ExcludedNamespace,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotEnabled => "not enabled",
            Self::ExcludedNamespace => "excluded namespace",
        }
    }
}

/// What injecting a pod involves, decided from the pod alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub settings: PodSettings,
    pub lease: String,
    /// The ServiceAccount the pod runs as: the one its owner chose, never changed here. The
    /// controller binds the Lease's Role to it.
    pub service_account: String,
    /// The elector is already there (reinvocation or re-admission): only env vars may be added.
    pub already_injected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    Skip(SkipReason),
    Inject(Box<Plan>),
}

/// The outcome of [`mutate_pod`], for the response and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMutation {
    pub patch: Option<Patch>,
    pub plan: Option<Plan>,
    pub skipped: Option<SkipReason>,
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    })
}

fn elector_container(pod: &Pod) -> Option<&Container> {
    all_containers(pod).find(|c| c.name == contract::CONTAINER_NAME)
}

/// Whether the elector was injected already. The container decides, not the status annotation:
/// a pod copied from an injected one (annotation kept, container dropped) asked for an elector
/// and must get one.
pub fn is_injected(pod: &Pod) -> bool {
    elector_container(pod).is_some()
}

/// The workload that owns a pod, as (kind, name): a ReplicaSet owner carrying the pod's
/// `pod-template-hash` is reported as its Deployment (the name minus `-<hash>`), so the answer is
/// the same across rollouts. Prefers the controller reference.
pub fn owning_workload(meta: &ObjectMeta) -> Option<(&str, &str)> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let o = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    if o.kind == "ReplicaSet" {
        let hash = meta.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH));
        if let Some(deployment) = hash
            .filter(|h| !h.is_empty())
            .and_then(|h| o.name.strip_suffix(h.as_str()))
            .and_then(|n| n.strip_suffix('-'))
        {
            return Some(("Deployment", deployment));
        }
    }
    Some((o.kind.as_str(), o.name.as_str()))
}

/// Lease name: annotation, else the owning workload, else the app labels. Never the pod's name
/// (each replica would elect itself).
pub fn resolve_lease(meta: &ObjectMeta, settings: &PodSettings) -> Result<String, Denial> {
    if let Some(name) = &settings.lease_name {
        return Ok(name.clone());
    }
    if let Some((_, name)) = owning_workload(meta)
        && settings::is_dns_subdomain(name)
    {
        return Ok(name.to_string());
    }
    let labels = meta.labels.as_ref();
    for key in ["app.kubernetes.io/name", "app"] {
        if let Some(v) = labels.and_then(|l| l.get(key))
            && settings::is_dns_subdomain(v)
        {
            return Ok(v.clone());
        }
    }
    Err(Denial(format!(
        "cannot choose a Lease name for this pod: it has no owning workload and no \
         app.kubernetes.io/name or app label; set the annotation {}=<name> on the pod template",
        ann::LEASE_NAME
    )))
}

/// The Lease an injected elector already uses (its `--election=` argument).
pub fn injected_lease(pod: &Pod) -> Option<String> {
    let prefix = format!("--{}=", contract::flags::ELECTION);
    elector_container(pod)?
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

/// Decides, from the pod alone, whether and how it is injected.
pub fn inspect_pod(pod: &Pod, namespace: &str) -> Result<Inspection, Denial> {
    if contract::deploy::EXCLUDED_NAMESPACES.contains(&namespace) {
        return Ok(Inspection::Skip(SkipReason::ExcludedNamespace));
    }
    let annotations = pod.metadata.annotations.as_ref();
    if !settings::enabled(annotations)? {
        return Ok(Inspection::Skip(SkipReason::NotEnabled));
    }
    let settings = settings::parse_settings(annotations)?;
    let Some(spec) = pod.spec.as_ref() else {
        return Err(Denial("the pod has no spec".into()));
    };
    let already_injected = is_injected(pod);
    let lease = match injected_lease(pod) {
        Some(l) if already_injected => l,
        _ => resolve_lease(&pod.metadata, &settings)?,
    };
    if !already_injected {
        let clash = all_containers(pod).find(|c| {
            c.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == i32::from(settings.port))
        });
        if let Some(c) = clash {
            return Err(Denial(format!(
                "container {:?} already uses port {}, which the elector needs: set the \
                 annotation {} to a free port (1024-65535)",
                c.name,
                settings.port,
                ann::PORT
            )));
        }
    }
    let current = spec
        .service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    Ok(Inspection::Inject(Box::new(Plan {
        settings,
        lease,
        service_account: current.to_string(),
        already_injected,
    })))
}

pub(super) fn ptr<'t>(tokens: impl IntoIterator<Item: Into<Token<'t>>>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

pub(super) fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn field_env(name: &str, field_path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}})
}

/// Env vars every app container gets unless it sets them itself.
pub fn app_env(plan: &Plan) -> [Value; 3] {
    use contract::env;
    [
        json!({"name": env::APP_URL, "value": contract::http::local_url(plan.settings.port)}),
        json!({"name": env::APP_LEASE_NAME, "value": plan.lease}),
        field_env(env::APP_IDENTITY, "metadata.name"),
    ]
}

/// The elector's own credentials, shaped like the API server's `kube-api-access-*` volume and
/// mounted in the elector's container only. Kubelet mints this token for the pod's own
/// ServiceAccount whatever `automountServiceAccountToken` says, so the elector can reach its
/// Lease while app containers that had no token still have none. (The ServiceAccount admission
/// plugin, when re-run after webhooks, skips a container that already mounts this path.)
pub fn elector_volume() -> Value {
    json!({
        "name": API_ACCESS_VOLUME,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]
        }
    })
}

/// The elector container.
pub fn elector(plan: &Plan, ctx: &PodContext<'_>, native: bool) -> Value {
    use contract::{env, flags, http};
    let s = &plan.settings;
    let mut args = vec![
        format!("--{}={}", flags::ELECTION, plan.lease),
        format!("--{}=0.0.0.0:{}", flags::HTTP, s.port),
    ];
    // The leader label is the controller's job (it watches the Lease); the elector needs no
    // pods permission.
    args.extend(s.timings.flag_args());
    let probe = |path: &str, period: u32| {
        json!({"httpGet": {"path": path, "port": s.port, "scheme": "HTTP"},
               "periodSeconds": period, "timeoutSeconds": 1, "failureThreshold": 3})
    };
    let mut c = json!({
        "name": contract::CONTAINER_NAME,
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "args": args,
        "env": [field_env(env::POD_NAME, "metadata.name"), field_env(env::POD_NAMESPACE, "metadata.namespace")],
        "ports": [{"name": PORT_NAME, "containerPort": s.port, "protocol": "TCP"}],
        "livenessProbe": probe(http::HEALTHZ_PATH, 10),
        "readinessProbe": probe(http::READYZ_PATH, 5),
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": contract::deploy::RUN_AS_USER,
            "runAsGroup": contract::deploy::RUN_AS_USER,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "volumeMounts": [{"name": API_ACCESS_VOLUME, "mountPath": SERVICE_ACCOUNT_MOUNT, "readOnly": true}],
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    if native && let Some(obj) = c.as_object_mut() {
        obj.insert("restartPolicy".into(), json!("Always"));
    }
    c
}

/// Whether the elector goes in as a native sidecar.
pub fn use_native(settings: &PodSettings, ctx: &PodContext<'_>) -> bool {
    match settings.native.unwrap_or(ctx.native_mode) {
        NativeMode::Always => true,
        NativeMode::Never => false,
        NativeMode::Auto => ctx.native_supported,
    }
}

/// Appends `value` to the array at `base/field`, creating the array when it is absent.
fn append(ops: &mut Vec<PatchOperation>, base: &[&str], field: &str, present: bool, value: Value) {
    let mut path = ptr(base.iter().copied());
    path.push_back(field);
    if present {
        path.push_back("-");
        ops.push(add(path, value));
    } else {
        ops.push(add(path, Value::Array(vec![value])));
    }
}

/// Builds the patch for a planned pod; `None` when nothing is missing.
pub fn build_patch(pod: &Pod, plan: &Plan, ctx: &PodContext<'_>) -> Option<Patch> {
    let mut ops = Vec::new();
    let spec = pod.spec.as_ref()?;
    let annotations = pod.metadata.annotations.as_ref();
    match annotations.map(|a| a.get(ann::STATUS)) {
        None => ops.push(add(
            ptr(["metadata", "annotations"]),
            json!({ann::STATUS: ann::STATUS_INJECTED}),
        )),
        Some(v) if v.map(String::as_str) != Some(ann::STATUS_INJECTED) => ops.push(add(
            ptr(["metadata", "annotations", ann::STATUS]),
            json!(ann::STATUS_INJECTED),
        )),
        Some(_) => {}
    }
    if !plan.already_injected {
        let volumes = spec.volumes.as_ref();
        if !volumes.is_some_and(|v| v.iter().any(|v| v.name == API_ACCESS_VOLUME)) {
            append(
                &mut ops,
                &["spec"],
                "volumes",
                volumes.is_some(),
                elector_volume(),
            );
        }
        let native = use_native(&plan.settings, ctx);
        let (field, present) = if native {
            ("initContainers", spec.init_containers.is_some())
        } else {
            ("containers", true)
        };
        append(
            &mut ops,
            &["spec"],
            field,
            present,
            elector(plan, ctx, native),
        );
    }
    let wanted = app_env(plan);
    for (i, c) in spec.containers.iter().enumerate() {
        if c.name == contract::CONTAINER_NAME {
            continue;
        }
        let have = |name: &str| c.env.iter().flatten().any(|e| e.name == name);
        let missing: Vec<Value> = wanted
            .iter()
            .filter(|v| !have(v["name"].as_str().unwrap_or_default()))
            .cloned()
            .collect();
        if missing.is_empty() {
            continue;
        }
        let idx = i.to_string();
        let base = ["spec", "containers", idx.as_str()];
        if c.env.is_some() {
            for v in missing {
                append(&mut ops, &base, "env", true, v);
            }
        } else {
            ops.push(add(
                ptr(base.iter().copied().chain(["env"])),
                Value::Array(missing),
            ));
        }
    }
    (!ops.is_empty()).then_some(Patch(ops))
}

/// Inspects and, when the pod opted in, builds its patch.
pub fn mutate_pod(pod: &Pod, ctx: &PodContext<'_>) -> Result<PodMutation, Denial> {
    match inspect_pod(pod, ctx.namespace)? {
        Inspection::Skip(reason) => Ok(PodMutation {
            patch: None,
            plan: None,
            skipped: Some(reason),
        }),
        Inspection::Inject(plan) => Ok(PodMutation {
            patch: build_patch(pod, &plan, ctx),
            plan: Some(*plan),
            skipped: None,
        }),
    }
}
