//! Pure JSON Patch builder for pods: injects the elector. No I/O: the admission handler
//! resolves cluster facts into [`PodContext`].

use contract::annotations as ann;
use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{Value, json};

use super::settings::{self, Denial, NativeMode, PodSettings};
use super::{legacy, resources};

/// Projected volume giving the elector its own API credentials (see [`elector_volume`]).
pub const API_ACCESS_VOLUME: &str = "leader-elector-api-access";
/// Where client libraries (and the elector) look for in-cluster credentials.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
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
    /// Cached cluster capability: `Some(false)` refuses [`NativeMode::Always`], and
    /// [`NativeMode::Auto`] injects natively only on `Some(true)`. `None`: not known (yet).
    pub native_supported: Option<bool>,
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
    /// The elector's `resources` (JSON), from the annotations and the pod's QoS.
    pub resources: Value,
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
    all_containers(pod).find(|c| legacy::is_our_elector(c))
}

/// Whether the elector was injected already. The container decides, not the status annotation:
/// a pod copied from an injected one (annotation kept, container dropped) asked for an elector
/// and must get one. A leader-elector:0.4 sidecar of the same name is not ours.
pub fn is_injected(pod: &Pod) -> bool {
    elector_container(pod).is_some()
}

pub use super::lease_name::owning_workload;

/// Lease name: annotation, else the owning workload's (see [`super::lease_name`]), else the app
/// labels.
pub fn resolve_lease(meta: &ObjectMeta, settings: &PodSettings) -> Result<String, Denial> {
    if let Some(name) = &settings.lease_name {
        return Ok(name.clone());
    }
    super::lease_name::for_pod(meta).ok_or_else(|| {
        Denial(format!(
            "cannot choose a Lease name for this pod: its workload's name does not make a valid \
             Lease name, or it has no owning workload and no app.kubernetes.io/name or app \
             label; set the annotation {}=<name> on the pod template",
            ann::LEASE_NAME
        ))
    })
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
        Some(l) if already_injected => Ok(l),
        _ => resolve_lease(&pod.metadata, &settings),
    };
    // The old sidecar first: its port would clash too, and its message says what to do.
    legacy::refuse(spec, lease.as_ref().ok().map(String::as_str))?;
    let lease = lease?;
    let resources = check_spec(spec, &settings, already_injected)?;
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
        resources,
    })))
}

/// What a pod spec asking for the elector must allow, besides its annotations: the elector's
/// port free, and resources that keep a Guaranteed pod Guaranteed. Returns the elector's
/// `resources`.
fn check_spec(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    settings: &PodSettings,
    already_injected: bool,
) -> Result<Value, Denial> {
    if !already_injected {
        let clash = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| {
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
    let r = resources::elector_resources(&settings.resources, resources::pod_budget(spec))?;
    Ok(resources::to_json(&r))
}

/// Refuses native-sidecar `always` where the cluster is known not to run native sidecars: the
/// pod would wait in `Init:0/1` forever (or the API server would drop the field).
pub fn check_native(settings: &PodSettings, ctx: &PodContext<'_>) -> Result<(), Denial> {
    if ctx.native_supported != Some(false) {
        return Ok(());
    }
    let why = "this cluster cannot run native sidecars (init containers with restartPolicy \
               Always need Kubernetes 1.29 or later on the API server and on every node's \
               kubelet)";
    match settings.native {
        Some(NativeMode::Always) => Err(Denial(format!(
            "annotation {}=\"always\" cannot be honoured: {why}; set it to \"auto\" (a regular \
             container where native sidecars are not supported) or \"never\", or upgrade the \
             cluster",
            ann::NATIVE_SIDECAR
        ))),
        None if ctx.native_mode == NativeMode::Always => Err(Denial(format!(
            "the webhook runs with --native-sidecar=always, which cannot be honoured: {why}; \
             annotate the pod template {}=\"auto\" or \"never\", ask the cluster admin to \
             run the webhook with --native-sidecar=auto, or upgrade the cluster",
            ann::NATIVE_SIDECAR
        ))),
        _ => Ok(()),
    }
}

/// The refusals a workload's pod template would meet, told at `kubectl apply` instead of in the
/// ReplicaSet's events: the old sidecar, native `always` on a cluster without native sidecars,
/// resources that cannot keep the pod Guaranteed. (Annotation values are checked by
/// propagation; the Lease name is only known per pod.)
pub fn check_template(
    meta: &ObjectMeta,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    ctx: &PodContext<'_>,
) -> Result<(), Denial> {
    let annotations = meta.annotations.as_ref();
    if !settings::enabled(annotations).unwrap_or(false) {
        return Ok(());
    }
    legacy::refuse(spec, None)?;
    let Ok(settings) = settings::parse_settings(annotations) else {
        return Ok(());
    };
    let injected = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(legacy::is_our_elector);
    check_spec(spec, &settings, injected)?;
    if !injected {
        check_native(&settings, ctx)?;
    }
    Ok(())
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
        // `:PORT`: every interface of both families, so probes reach it on IPv4-only, IPv6-only
        // and dual-stack pods.
        format!("--{}=:{}", flags::HTTP, s.port),
    ];
    // The leader label is the controller's job (it watches the Lease); the elector needs no
    // pods permission.
    args.extend(s.timings.flag_args());
    args.push(format!(
        "--{}={}",
        flags::RENEW_INTERVAL,
        contract::format_duration(s.effective_renew_interval())
    ));
    let probe = |path: &str, period: u32, failures: u32| {
        json!({"httpGet": {"path": path, "port": s.port, "scheme": "HTTP"},
               "periodSeconds": period, "timeoutSeconds": 1, "failureThreshold": failures})
    };
    let mut c = json!({
        "name": contract::CONTAINER_NAME,
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "args": args,
        "env": [field_env(env::POD_NAME, "metadata.name"), field_env(env::POD_NAMESPACE, "metadata.namespace")],
        "ports": [{"name": PORT_NAME, "containerPort": s.port, "protocol": "TCP"}],
        "livenessProbe": probe(http::HEALTHZ_PATH, 10, 3),
        // Ready = `localhost:<port>` answers, which is what the app relies on. Not `/readyz`:
        // that fails during an API server outage longer than a lease, and a sidecar's readiness
        // is the pod's, so every replica (standbys that serve too) would leave its Services.
        "readinessProbe": probe(http::HEALTHZ_PATH, 5, 3),
        "resources": plan.resources,
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
        // The kubelet starts the next init container, and at last the app, once this passes:
        // polled every second, for up to a minute (a CPU-limited elector starts slower).
        obj.insert("startupProbe".into(), probe(http::HEALTHZ_PATH, 1, 60));
    }
    c
}

/// Whether the elector goes in as a native sidecar.
pub fn use_native(settings: &PodSettings, ctx: &PodContext<'_>) -> bool {
    match settings.native.unwrap_or(ctx.native_mode) {
        NativeMode::Always => true,
        NativeMode::Never => false,
        NativeMode::Auto => ctx.native_supported == Some(true),
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

/// Adds the app env a container lacks (never the elector's own).
fn env_ops(ops: &mut Vec<PatchOperation>, list: &str, i: usize, c: &Container, wanted: &[Value]) {
    if legacy::is_our_elector(c) {
        return;
    }
    let have = |name: &str| c.env.iter().flatten().any(|e| e.name == name);
    let missing: Vec<Value> = wanted
        .iter()
        .filter(|v| !have(v["name"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    if missing.is_empty() {
        return;
    }
    let idx = i.to_string();
    let base = ["spec", list, idx.as_str()];
    if c.env.is_some() {
        for v in missing {
            append(ops, &base, "env", true, v);
        }
    } else {
        ops.push(add(
            ptr(base.iter().copied().chain(["env"])),
            Value::Array(missing),
        ));
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
    // Where the elector is (or goes): as a native sidecar, user init containers run after it
    // and get the app env too.
    let native = if plan.already_injected {
        spec.init_containers
            .iter()
            .flatten()
            .any(legacy::is_our_elector)
    } else {
        use_native(&plan.settings, ctx)
    };
    let wanted = app_env(plan);
    // Init containers first, at their indices before the elector is inserted at 0.
    if native {
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            env_ops(&mut ops, "initContainers", i, c, &wanted);
        }
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
        let c = elector(plan, ctx, native);
        if !native {
            append(&mut ops, &["spec"], "containers", true, c);
        } else if spec.init_containers.is_some() {
            // First, so that every other init container can use it.
            ops.push(add(ptr(["spec", "initContainers", "0"]), c));
        } else {
            ops.push(add(ptr(["spec", "initContainers"]), json!([c])));
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        env_ops(&mut ops, "containers", i, c, &wanted);
    }
    (!ops.is_empty()).then_some(Patch(ops))
}

/// The pod template as it will be stored (propagation applied): the refusals its pods would
/// meet are told now, at `kubectl apply`. A workload being deleted is left alone.
pub fn check_workload(
    object: &Value,
    patch: Option<&json_patch::Patch>,
    ctx: &PodContext<'_>,
) -> Result<(), Denial> {
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(());
    }
    let mut after = object.clone();
    if let Some(p) = patch
        && json_patch::patch(&mut after, p).is_err()
    {
        // Our own patch of this very object; if it did not apply, the API server says so.
        return Ok(());
    }
    let template = after
        .pointer("/spec/template")
        .or_else(|| after.pointer("/spec/jobTemplate/spec/template"));
    let Some(t) = template else {
        return Ok(());
    };
    let Ok(t) = k8s_openapi::api::core::v1::PodTemplateSpec::deserialize(t) else {
        // An undecodable template is the API server's to refuse, with its own message.
        return Ok(());
    };
    let (meta, spec) = (t.metadata.unwrap_or_default(), t.spec.unwrap_or_default());
    check_template(&meta, &spec, ctx)
        .map_err(|d| Denial(format!("the pod template would be refused: {d}")))
}

/// [`inspect_pod`], then the checks that need the cluster's facts.
pub fn plan_pod(pod: &Pod, ctx: &PodContext<'_>) -> Result<Inspection, Denial> {
    let inspection = inspect_pod(pod, ctx.namespace)?;
    if let Inspection::Inject(plan) = &inspection
        && !plan.already_injected
    {
        check_native(&plan.settings, ctx)?;
    }
    Ok(inspection)
}

/// Inspects and, when the pod opted in, builds its patch.
pub fn mutate_pod(pod: &Pod, ctx: &PodContext<'_>) -> Result<PodMutation, Denial> {
    match plan_pod(pod, ctx)? {
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
