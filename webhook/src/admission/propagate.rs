//! Pure JSON Patch builder for workloads: copies the `leader-election/*` annotations of a
//! workload's metadata into its pod template, and pins a CronJob's Lease on each of its Jobs.
//!
//! The template is the user's; the webhook only ever changes or removes a template key it put
//! there itself. A key is the webhook's when it is listed in the template's
//! `leader-election/propagated` both before and after the request, with the value it had before,
//! and the user does not declare it: a key in the template of the object's
//! `kubectl.kubernetes.io/last-applied-configuration` (client-side apply, Argo CD's default), or
//! owned by an `Apply` manager in `managedFields` (server-side apply: kubectl, Flux, Argo CD,
//! Helm 4), or changed by this very request, is the user's. Every other template key is the
//! user's too: never overwritten (a workload value that differs is reported in a warning) and
//! never removed. So one apply that moves `enabled` from the workload into its template keeps
//! the value and drops it from `propagated`, with no rollout.

use std::collections::{BTreeMap, BTreeSet};

use contract::annotations as ann;
use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation, RemoveOperation};
use serde_json::{Value, json};

use super::lease_name::{self, Kind};
use super::patch::add;
use super::settings::{self, Denial};

/// The client-side apply record kubectl (and Argo CD) keep on the object.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The outcome of [`mutate_workload`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkloadMutation {
    pub patch: Option<Patch>,
    /// Keys set in the pod template by this patch.
    pub set: Vec<String>,
    /// Keys removed from the pod template by this patch.
    pub removed: Vec<String>,
    pub warnings: Vec<String>,
}

/// Where a kind keeps its pod template.
pub fn template_path(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::CronJob => &["spec", "jobTemplate", "spec", "template"],
        _ => &["spec", "template"],
    }
}

fn pointer(tokens: &[&str]) -> String {
    tokens.iter().map(|t| format!("/{t}")).collect()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn template_annotations(obj: &Value, kind: Kind) -> BTreeMap<String, String> {
    let mut p = template_path(kind).to_vec();
    p.extend(["metadata", "annotations"]);
    string_map(obj.pointer(&pointer(&p)))
}

/// Known keys listed in a template's `leader-election/propagated`.
fn propagated_list(template: &BTreeMap<String, String>) -> BTreeSet<String> {
    template
        .get(ann::PROPAGATED)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|k| settings::is_user_key(k))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Template annotation keys the user declares through client-side or server-side apply.
fn declared_keys(obj: &Value, kind: Kind) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(last) = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    {
        out.extend(template_annotations(&last, kind).into_keys());
    }
    let mut fields: Vec<String> = template_path(kind)
        .iter()
        .chain(&["metadata", "annotations"])
        .map(|t| format!("f:{t}"))
        .collect();
    fields.insert(0, String::new());
    let fields_ptr = fields.join("/");
    for entry in obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if entry.get("operation").and_then(Value::as_str) != Some("Apply") {
            continue;
        }
        if let Some(keys) = entry
            .get("fieldsV1")
            .and_then(|f| f.pointer(&fields_ptr))
            .and_then(Value::as_object)
        {
            out.extend(
                keys.keys()
                    .filter_map(|k| k.strip_prefix("f:"))
                    .map(String::from),
            );
        }
    }
    out
}

/// Why pods with these template annotations would be refused (bad opt-in or setting values).
fn template_refusal(annotations: &BTreeMap<String, String>) -> Result<(), Denial> {
    if settings::enabled(Some(annotations))? {
        settings::parse_settings(Some(annotations))?;
    }
    Ok(())
}

/// The controller ownerReference's (kind, name), if another object controls this one.
fn controller(obj: &Value) -> Option<(&str, &str)> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|o| {
            (
                o.get("kind").and_then(Value::as_str).unwrap_or_default(),
                o.get("name").and_then(Value::as_str).unwrap_or_default(),
            )
        })
}

/// A Job a CronJob creates: its pods elect on the CronJob's Lease, shared by every run (so
/// overlapping runs exclude each other and no Lease is left per run). The pod cannot know its
/// Job's owner, so the Lease name is pinned on the Job's pod template as it is created.
fn pin_cronjob_lease(obj: &Value, cronjob: &str) -> Result<WorkloadMutation, Denial> {
    let mut out = WorkloadMutation::default();
    let tmpl = template_annotations(obj, Kind::Job);
    if !settings::enabled(Some(&tmpl)).unwrap_or(false) || tmpl.contains_key(ann::LEASE_NAME) {
        return Ok(out);
    }
    let Some(lease) = lease_name::for_workload(Kind::CronJob, cronjob) else {
        return Err(Denial(format!(
            "CronJob {cronjob:?} makes no valid Lease name (cronjob.<name> is longer than 253 \
             characters); set the annotation {} on its job template's pod template",
            ann::LEASE_NAME
        )));
    };
    let mut new = tmpl.clone();
    new.insert(ann::LEASE_NAME.to_string(), lease);
    let ops = template_ops(obj, Kind::Job, &tmpl, &new, &mut out);
    out.patch = (!ops.is_empty()).then_some(Patch(ops));
    Ok(out)
}

/// Copies the workload's `leader-election/*` annotations into its pod template (see the module
/// docs for whose template keys are whose). `old` is the request's `oldObject` (UPDATE), `None`
/// on CREATE. No change, no patch: a needless template change would start a rollout.
pub fn mutate_workload(
    kind: Kind,
    obj: &Value,
    old: Option<&Value>,
) -> Result<WorkloadMutation, Denial> {
    let mut out = WorkloadMutation::default();
    let tmpl_ptr = pointer(template_path(kind));
    if obj.pointer("/metadata/deletionTimestamp").is_some() || obj.pointer(&tmpl_ptr).is_none() {
        return Ok(out);
    }
    // A ReplicaSet or Job run by another object takes its template from it (a changed template
    // would make a Deployment start yet another ReplicaSet); only a CronJob's Job is touched, to
    // pin the CronJob's Lease.
    if matches!(kind, Kind::ReplicaSet | Kind::Job)
        && let Some((owner_kind, owner)) = controller(obj)
    {
        if kind == Kind::Job && owner_kind == "CronJob" && old.is_none() {
            return pin_cronjob_lease(obj, owner);
        }
        return Ok(out);
    }
    let own = string_map(obj.pointer("/metadata/annotations"));
    let tmpl = template_annotations(obj, kind);
    let listed = propagated_list(&tmpl);
    let declared = declared_keys(obj, kind);
    // Template keys the webhook put there and may still change or remove.
    let ours: BTreeSet<String> = match old {
        None => BTreeSet::new(),
        Some(old) => {
            let before = template_annotations(old, kind);
            let listed_before = propagated_list(&before);
            listed
                .iter()
                .filter(|k| {
                    listed_before.contains(*k)
                        && before.contains_key(*k)
                        && before.get(*k) == tmpl.get(*k)
                        && !declared.contains(*k)
                })
                .cloned()
                .collect()
        }
    };

    let mut copied = BTreeMap::new();
    for (k, v) in &own {
        if !k.starts_with(contract::ANNOTATION_PREFIX) || k == ann::STATUS || k == ann::PROPAGATED {
            continue;
        }
        if settings::is_user_key(k) {
            copied.insert(k.as_str(), v.as_str());
        } else {
            out.warnings.push(format!(
                "annotation {k} is not a leader-election setting and was not copied to the pod \
                 template; known keys: {}",
                ann::USER_KEYS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if copied.is_empty() && !tmpl.contains_key(ann::PROPAGATED) {
        // Nothing of ours to change, but say so now if the template's own annotations will get
        // every pod refused (otherwise only the ReplicaSet's events would tell).
        if let Err(d) = template_refusal(&tmpl) {
            out.warnings.push(format!(
                "the pods of this workload will be refused: {d}; fix the pod template's \
                 annotations"
            ));
        }
        return Ok(out);
    }

    let mut new = tmpl.clone();
    let mut propagated = BTreeSet::new();
    for (k, v) in &copied {
        match tmpl.get(*k) {
            Some(have) if !ours.contains(*k) => {
                if have != v {
                    out.warnings.push(format!(
                        "the pod template sets {k}={have:?} itself, which wins over the \
                         workload's {v:?}; change or remove it in the pod template"
                    ));
                }
            }
            _ => {
                new.insert(k.to_string(), v.to_string());
                propagated.insert(*k);
            }
        }
    }
    for k in &ours {
        if !copied.contains_key(k.as_str()) {
            new.remove(k);
        }
    }
    if propagated.is_empty() {
        new.remove(ann::PROPAGATED);
    } else {
        let list: Vec<&str> = propagated.into_iter().collect();
        new.insert(ann::PROPAGATED.to_string(), list.join(","));
    }

    // Refuse values the pods would be refused for, while the user is still at the keyboard.
    template_refusal(&new)
        .map_err(|d| Denial(format!("the pod template would be refused: {d}")))?;

    let ops = template_ops(obj, kind, &tmpl, &new, &mut out);
    if kind == Kind::Job && old.is_some() && !ops.is_empty() {
        // A Job's pod template cannot change once created: a patch would fail the update.
        out.set.clear();
        out.removed.clear();
        out.warnings.push(format!(
            "a Job's pod template cannot change after it is created, so its {} annotations \
             were not copied to (or removed from) it; set them on the Job's pod template when \
             you create it, or recreate the Job",
            contract::ANNOTATION_PREFIX
        ));
        return Ok(out);
    }
    out.patch = (!ops.is_empty()).then_some(Patch(ops));
    Ok(out)
}

/// Operations turning the template annotations `old` into `new`; records what they set and
/// remove in `out`.
fn template_ops(
    obj: &Value,
    kind: Kind,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    out: &mut WorkloadMutation,
) -> Vec<PatchOperation> {
    let tmpl = template_path(kind);
    let tokens = |extra: &[&str]| PointerBuf::from_tokens(tmpl.iter().chain(extra).copied());
    let meta = obj.pointer(&pointer(tmpl)).and_then(|t| t.get("metadata"));
    let ann_obj = meta
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object);
    let mut ops = Vec::new();
    let mut record = |k: &String, set: bool| {
        if k != ann::PROPAGATED {
            if set {
                out.set.push(k.clone());
            } else {
                out.removed.push(k.clone());
            }
        }
    };
    match ann_obj {
        None if new.is_empty() => {}
        None => {
            new.keys().for_each(|k| record(k, true));
            let value = json!(new);
            if meta.is_some_and(Value::is_object) {
                ops.push(add(tokens(&["metadata", "annotations"]), value));
            } else {
                ops.push(add(tokens(&["metadata"]), json!({"annotations": value})));
            }
        }
        Some(_) => {
            for (k, v) in new {
                if old.get(k) != Some(v) {
                    ops.push(add(
                        tokens(&["metadata", "annotations", k.as_str()]),
                        json!(v),
                    ));
                    record(k, true);
                }
            }
            for k in old.keys() {
                if !new.contains_key(k) {
                    ops.push(PatchOperation::Remove(RemoveOperation {
                        path: tokens(&["metadata", "annotations", k.as_str()]),
                    }));
                    record(k, false);
                }
            }
        }
    }
    ops
}
