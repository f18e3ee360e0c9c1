//! Pure JSON Patch builder for workloads: copies `leader-election/*` annotations of a Deployment
//! or StatefulSet into its pod template.

use std::collections::{BTreeMap, BTreeSet};

use contract::annotations as ann;
use json_patch::{Patch, PatchOperation, RemoveOperation};
use serde_json::{Value, json};

use super::patch::{add, ptr};
use super::settings::{self, Denial};

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

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Why pods with these template annotations would be refused (bad opt-in or setting values).
fn template_refusal(annotations: &BTreeMap<String, String>) -> Result<(), Denial> {
    if settings::enabled(Some(annotations))? {
        settings::parse_settings(Some(annotations))?;
    }
    Ok(())
}

/// Copies `leader-election/*` annotations of a Deployment or StatefulSet into its pod template
/// and removes those it propagated earlier that are gone from the workload. No change, no patch:
/// a needless template change would start a rollout.
pub fn mutate_workload(obj: &Value) -> Result<WorkloadMutation, Denial> {
    let mut out = WorkloadMutation::default();
    if obj.pointer("/metadata/deletionTimestamp").is_some()
        || obj.pointer("/spec/template").is_none()
    {
        return Ok(out);
    }
    let own = string_map(obj.pointer("/metadata/annotations"));
    let tmpl_meta = obj.pointer("/spec/template/metadata");
    let tmpl_ann_value = tmpl_meta.and_then(|m| m.get("annotations"));
    let old = string_map(tmpl_ann_value);
    let previously: BTreeSet<&str> = old
        .get(ann::PROPAGATED)
        .map(|v| v.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();

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
    if copied.is_empty() && previously.is_empty() {
        // Nothing of ours to change, but say so now if the template's own annotations will get
        // every pod refused (otherwise only the ReplicaSet's events would tell).
        if let Err(d) = template_refusal(&old) {
            out.warnings.push(format!(
                "the pods of this workload will be refused: {d}; fix the pod template's \
                 annotations"
            ));
        }
        return Ok(out);
    }

    let mut new = old.clone();
    let mut propagated = BTreeSet::new();
    for (k, v) in &copied {
        // A key the user set on the template with the same value stays theirs.
        if old.get(*k).map(String::as_str) != Some(*v) || previously.contains(k) {
            new.insert(k.to_string(), v.to_string());
            propagated.insert(*k);
        }
    }
    for k in &previously {
        if !copied.contains_key(k) {
            new.remove(*k);
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

    let mut ops = Vec::new();
    match tmpl_ann_value.and_then(Value::as_object) {
        None if new.is_empty() => {}
        None => {
            let value = json!(new);
            if tmpl_meta.is_some_and(Value::is_object) {
                ops.push(add(
                    ptr(["spec", "template", "metadata", "annotations"]),
                    value,
                ));
            } else {
                ops.push(add(
                    ptr(["spec", "template", "metadata"]),
                    json!({"annotations": value}),
                ));
            }
        }
        Some(_) => {
            let base = ["spec", "template", "metadata", "annotations"];
            for (k, v) in &new {
                if old.get(k) != Some(v) {
                    ops.push(add(ptr(base.into_iter().chain([k.as_str()])), json!(v)));
                    if k != ann::PROPAGATED {
                        out.set.push(k.clone());
                    }
                }
            }
            for k in old.keys() {
                if !new.contains_key(k) {
                    ops.push(PatchOperation::Remove(RemoveOperation {
                        path: ptr(base.into_iter().chain([k.as_str()])),
                    }));
                    if k != ann::PROPAGATED {
                        out.removed.push(k.clone());
                    }
                }
            }
        }
    }
    if tmpl_ann_value.and_then(Value::as_object).is_none() {
        out.set = new
            .keys()
            .filter(|k| *k != ann::PROPAGATED)
            .cloned()
            .collect();
    }
    out.patch = (!ops.is_empty()).then_some(Patch(ops));
    Ok(out)
}
