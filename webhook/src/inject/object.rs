//! Inject and uninject one object (pure). Injection is the admission code's own: the workload's
//! annotations are propagated into its pod template ([`propagate::mutate_workload`]), then the
//! template is patched as a pod created from it would be ([`patch::mutate_pod`]).

use crate::admission::lease_name::Kind as LeaseKind;
use std::collections::BTreeSet;

use contract::annotations as ann;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_json::{Map, Value, json};

use super::kinds::{self, Kind};
use crate::admission::patch::{self, PodContext};
use crate::admission::propagate;
use crate::admission::settings::{Denial, NativeMode};
use crate::controller::grants::{self, Owner};

/// What admission would learn from the cluster, given on the command line instead.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub image_pull_policy: String,
    pub native_mode: NativeMode,
    /// What `auto` resolves to: whether every kubelet can run native sidecars.
    pub native_supported: bool,
    /// Namespace of objects that name none.
    pub namespace: Option<String>,
    /// Also emit the Lease, Role and RoleBinding the controller would create.
    pub with_rbac: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            image: contract::deploy::DEFAULT_ELECTOR_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            native_mode: NativeMode::Auto,
            native_supported: true,
            namespace: None,
            with_rbac: false,
        }
    }
}

/// What is wrong with an object, and where (a dotted field path, or empty for the whole object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The result of rewriting one object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edit {
    pub changed: bool,
    /// Objects to emit after this one (`--with-rbac`).
    pub extra: Vec<Value>,
    /// The object goes (uninject of an object inject added).
    pub dropped: bool,
    pub warnings: Vec<Problem>,
}

/// `Kind name` of an object, for messages.
pub fn describe(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str);
    match name {
        Some(n) => format!("{kind} {n}"),
        None => kind.to_string(),
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The field a denial is about: the annotation it names, under `base`.
fn denial_problem(base: &[&str], d: Denial) -> Problem {
    // The first setting the message names is the one to change.
    let key = ann::USER_KEYS
        .iter()
        .filter_map(|(k, _)| d.0.find(k).map(|at| (at, *k)))
        .min()
        .map(|(_, k)| k);
    let field = match key {
        // A port clash: the containers are at fault, the annotation is the way out.
        _ if d.0.starts_with("container ") => kinds::dotted(base, "spec.containers"),
        Some(k) => kinds::dotted(base, &format!("metadata.annotations.{k}")),
        None => kinds::dotted(base, ""),
    };
    Problem::new(field, d.0)
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value, base: &[&str]) -> Result<T, Problem> {
    serde_json::from_value(v.clone())
        .map_err(|e| Problem::new(kinds::dotted(base, ""), format!("cannot read it: {e}")))
}

fn apply(doc: &mut Value, p: &json_patch::Patch, base: &[&str]) -> Result<(), Problem> {
    json_patch::patch(doc, p).map_err(|e| {
        Problem::new(
            kinds::dotted(base, ""),
            format!("cannot apply the admission patch: {e}"),
        )
    })
}

/// Injects the elector into `obj` when it is a workload (or pod) that opted in.
pub fn inject(obj: &mut Value, opts: &Options) -> Result<Edit, Problem> {
    let Some(kind) = kinds::of(obj) else {
        return Ok(Edit::default());
    };
    let namespace = str_at(obj, "/metadata/namespace")
        .map(str::to_string)
        .or_else(|| opts.namespace.clone())
        .unwrap_or_default();
    // The webhook never sees these namespaces' objects.
    if contract::deploy::EXCLUDED_NAMESPACES.contains(&namespace.as_str()) {
        return Ok(Edit::default());
    }
    let ctx = PodContext {
        namespace: &namespace,
        image: &opts.image,
        image_pull_policy: &opts.image_pull_policy,
        native_mode: opts.native_mode,
        native_supported: Some(opts.native_supported),
    };
    let base = kind.template;
    let mut edit = Edit::default();
    let before = obj.clone();
    if base.is_empty() {
        let pod: Pod = decode(obj, base)?;
        let m = patch::mutate_pod(&pod, &ctx).map_err(|d| denial_problem(base, d))?;
        if let Some(p) = &m.patch {
            apply(obj, p, base)?;
        }
    } else {
        let ptr = kinds::pointer(base);
        let Some(template) = obj.pointer(&ptr).cloned() else {
            if annotated(obj.pointer("/metadata/annotations")) {
                return Err(Problem::new(
                    kinds::dotted(base, ""),
                    "missing: the workload is annotated but has no pod template to inject into",
                ));
            }
            return Ok(edit);
        };
        let template = inject_template(obj, kind, template, &ctx, &mut edit)?;
        if let Some(slot) = obj.pointer_mut(&ptr) {
            *slot = template;
        }
    }
    edit.changed = *obj != before;
    if opts.with_rbac {
        edit.extra = rbac(obj, kind, &namespace)?;
    }
    Ok(edit)
}

fn annotated(annotations: Option<&Value>) -> bool {
    annotations
        .and_then(|a| a.get(ann::ENABLED))
        .and_then(Value::as_str)
        == Some("true")
}

/// Propagation, then the pod patch, applied to a workload's pod template.
fn inject_template(
    obj: &Value,
    kind: &Kind,
    template: Value,
    ctx: &PodContext<'_>,
    edit: &mut Edit,
) -> Result<Value, Problem> {
    let base = kind.template;
    // Propagation reads the workload's metadata and `spec.template`, whatever the kind's path.
    let mut wrapper = json!({
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": {"template": template},
    });
    // The wrapper has a Deployment's shape (`spec.template`) whatever the kind.
    let m = propagate::mutate_workload(LeaseKind::Deployment, &wrapper, None).map_err(|d| {
        let own = d.0.contains("would be refused")
            && ann::USER_KEYS.iter().any(|(k, _)| {
                obj.pointer("/metadata/annotations")
                    .and_then(|a| a.get(*k))
                    .is_some()
                    && d.0.contains(k)
            });
        denial_problem(if own { &[] } else { base }, d)
    })?;
    edit.warnings.extend(
        m.warnings
            .into_iter()
            .map(|w| Problem::new("metadata.annotations", w)),
    );
    if let Some(p) = &m.patch {
        apply(&mut wrapper, p, base)?;
    }
    let mut template = wrapper["spec"]["template"].take();
    // Offline, the copied keys are the user's own (they go to Git): no `propagated` record, or
    // the webhook would take it as its own bookkeeping and drop it at CREATE (a drift).
    remove_annotation(&mut template, ann::PROPAGATED);
    // The pods' owner as the API server would set it, so the Lease is named after the workload.
    let mut as_pod = template.clone();
    let owner = json!([{
        "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": kind.kind,
        "name": str_at(obj, "/metadata/name").unwrap_or_default(),
        "uid": "",
        "controller": true,
    }]);
    match as_pod.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(meta) => {
            meta.insert("ownerReferences".into(), owner);
        }
        None => return Ok(template),
    }
    let pod: Pod = decode(&as_pod, base)?;
    let m = patch::mutate_pod(&pod, ctx).map_err(|d| denial_problem(base, d))?;
    if let Some(p) = &m.patch {
        apply(&mut template, p, base)?;
    }
    Ok(template)
}

/// The Lease, Role and RoleBinding the controller would create for an injected object, without
/// ownerReferences (the owner's uid exists only in the cluster; the controller adds them).
fn rbac(obj: &Value, kind: &Kind, namespace: &str) -> Result<Vec<Value>, Problem> {
    let base = kind.template;
    let Some(template) = obj.pointer(&kinds::pointer(base)) else {
        return Ok(vec![]);
    };
    let pod: Pod = decode(template, base)?;
    if !patch::is_injected(&pod) {
        return Ok(vec![]);
    }
    if namespace.is_empty() {
        return Err(Problem::new(
            "metadata.namespace",
            "missing: --with-rbac needs the namespace of the Role and RoleBinding; set it here \
             or pass --namespace",
        ));
    }
    let owner = Owner {
        api_version: str_at(obj, "/apiVersion").unwrap_or_default().into(),
        kind: kind.kind.into(),
        name: str_at(obj, "/metadata/name").unwrap_or_default().into(),
        uid: String::new(),
    };
    let desired = if base.is_empty() {
        let mut pod = pod;
        pod.metadata.deletion_timestamp = None;
        grants::pod_desired(namespace, &pod)
    } else {
        let t: PodTemplateSpec = decode(template, base)?;
        let Some(lease_kind) = LeaseKind::ALL.into_iter().find(|k| k.as_str() == kind.kind) else {
            return Ok(vec![]);
        };
        grants::workload_desired(namespace, lease_kind, owner, Some(&t), [&pod])
    };
    if desired.is_empty() {
        return Ok(vec![]);
    }
    let mut out: Vec<Value> = desired
        .leases
        .iter()
        .map(|l| serde_json::to_value(grants::lease(&desired, l)))
        .collect::<Result<_, _>>()
        .map_err(|e| Problem::new("", e.to_string()))?;
    for v in [
        serde_json::to_value(grants::role(&desired)),
        serde_json::to_value(grants::role_binding(&desired)),
    ] {
        out.push(v.map_err(|e| Problem::new("", e.to_string()))?);
    }
    for o in &mut out {
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.shift_remove("ownerReferences");
        }
    }
    Ok(out)
}

/// Whether `obj` is one of the Leases, Roles and RoleBindings `inject --with-rbac` emits.
pub fn is_generated(obj: &Value) -> bool {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let group = kinds::group(str_at(obj, "/apiVersion").unwrap_or_default());
    let ours = matches!(
        (group, kind),
        ("coordination.k8s.io", "Lease") | ("rbac.authorization.k8s.io", "Role" | "RoleBinding")
    );
    let label = obj
        .pointer("/metadata/labels")
        .and_then(|l| l.get(grants::MANAGED_BY))
        .and_then(Value::as_str);
    ours && label == Some(grants::MANAGED_BY_VALUE)
}

/// Identity of an object in a stream, to emit each generated object once.
pub fn identity(obj: &Value) -> (String, String, String, String) {
    let s = |p: &str| str_at(obj, p).unwrap_or_default().to_string();
    (
        kinds::group(&s("/apiVersion")).to_string(),
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name"),
    )
}

/// Removes what [`inject`] added: the elector, its volume, the env vars it gave app containers,
/// the status annotation, and the annotations propagation copied into the template.
/// `with_rbac`: generated Leases, Roles and RoleBindings are dropped.
pub fn uninject(obj: &mut Value, with_rbac: bool) -> Result<Edit, Problem> {
    if with_rbac && is_generated(obj) {
        return Ok(Edit {
            changed: true,
            dropped: true,
            ..Edit::default()
        });
    }
    let Some(kind) = kinds::of(obj) else {
        return Ok(Edit::default());
    };
    let base = kind.template;
    let before = obj.clone();
    let own = before.pointer("/metadata/annotations").cloned();
    let Some(target) = obj.pointer_mut(&kinds::pointer(base)) else {
        return Ok(Edit::default());
    };
    strip_pod(target, base)?;
    if !base.is_empty() {
        unpropagate(target, own.as_ref());
    }
    Ok(Edit {
        changed: *obj != before,
        ..Edit::default()
    })
}

fn object_at<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

/// Removes the entries `drop` selects from the array `obj[key]`; the key goes when it empties.
fn retain(obj: &mut Map<String, Value>, key: &str, drop: impl Fn(&Value) -> bool) {
    if let Some(items) = obj.get_mut(key).and_then(Value::as_array_mut) {
        let had = items.len();
        items.retain(|v| !drop(v));
        if items.is_empty() && had > 0 {
            obj.shift_remove(key);
        }
    }
}

/// Removes `key` from the annotations of `meta`, then empty annotations.
fn remove_annotation(pod: &mut Value, key: &str) {
    let Some(meta) = object_at(pod, "metadata") else {
        return;
    };
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.shift_remove(key);
        if a.is_empty() {
            meta.shift_remove("annotations");
        }
    }
}

fn strip_pod(pod_value: &mut Value, base: &[&str]) -> Result<(), Problem> {
    let pod: Pod = decode(pod_value, base)?;
    if patch::is_injected(&pod) {
        let lease = patch::injected_lease(&pod).unwrap_or_default();
        let elector = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == contract::CONTAINER_NAME);
        let port = elector
            .and_then(|c| c.ports.as_ref())
            .and_then(|p| p.first())
            .and_then(|p| u16::try_from(p.container_port).ok())
            .unwrap_or(contract::http::DEFAULT_PORT);
        let plan = patch::Plan {
            settings: crate::admission::settings::PodSettings {
                port,
                ..Default::default()
            },
            lease,
            service_account: String::new(),
            already_injected: true,
            resources: Value::Null,
        };
        let added = patch::app_env(&plan);
        if let Some(spec) = object_at(pod_value, "spec") {
            let is_elector = |c: &Value| c.get("name") == Some(&json!(contract::CONTAINER_NAME));
            retain(spec, "containers", is_elector);
            retain(spec, "initContainers", is_elector);
            retain(spec, "volumes", |v| {
                v.get("name") == Some(&json!(patch::API_ACCESS_VOLUME))
            });
            // App and (native-sidecar mode) user init containers both got the env.
            for list in ["containers", "initContainers"] {
                for c in spec
                    .get_mut(list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(c) = c.as_object_mut() {
                        retain(c, "env", |e| added.contains(e));
                    }
                }
            }
        }
    }
    remove_annotation(pod_value, ann::STATUS);
    Ok(())
}

/// Removes the annotations inject copied into a template: the user keys whose value equals the
/// workload's own (and, from older output, those a `propagated` record lists).
fn unpropagate(template: &mut Value, own: Option<&Value>) {
    let copied: Vec<String> = own
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            crate::admission::settings::is_user_key(k)
                && template
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(k.as_str()))
                    == Some(*v)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in &copied {
        remove_annotation(template, k);
    }
    let listed: BTreeSet<String> = template
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ann::PROPAGATED))
        .and_then(Value::as_str)
        .map(|v| {
            v.split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if listed.is_empty()
        && template
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ann::PROPAGATED))
            .is_none()
    {
        return;
    }
    for k in listed
        .iter()
        .filter(|k| k.starts_with(contract::ANNOTATION_PREFIX))
    {
        remove_annotation(template, k);
    }
    remove_annotation(template, ann::PROPAGATED);
    if let Some(t) = template.as_object_mut()
        && t.get("metadata")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        t.shift_remove("metadata");
    }
}
