//! Which objects carry a pod template, and where.

use serde_json::Value;

/// A kind whose pods the webhook injects, with the path of its pod template (empty: the object
/// is the pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group (`""` for the core group).
    pub group: &'static str,
    pub kind: &'static str,
    pub template: &'static [&'static str],
}

const TEMPLATE: &[&str] = &["spec", "template"];

/// Every kind `inject` rewrites. Argo Rollouts is recognised by its group whatever its version.
pub const KINDS: &[Kind] = &[
    Kind {
        group: "apps",
        kind: "Deployment",
        template: TEMPLATE,
    },
    Kind {
        group: "apps",
        kind: "StatefulSet",
        template: TEMPLATE,
    },
    Kind {
        group: "apps",
        kind: "DaemonSet",
        template: TEMPLATE,
    },
    Kind {
        group: "apps",
        kind: "ReplicaSet",
        template: TEMPLATE,
    },
    Kind {
        group: "batch",
        kind: "Job",
        template: TEMPLATE,
    },
    Kind {
        group: "batch",
        kind: "CronJob",
        template: &["spec", "jobTemplate", "spec", "template"],
    },
    Kind {
        group: "argoproj.io",
        kind: "Rollout",
        template: TEMPLATE,
    },
    Kind {
        group: "",
        kind: "Pod",
        template: &[],
    },
];

/// The group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// The kind of `obj`, if `inject` handles it.
pub fn of(obj: &Value) -> Option<&'static Kind> {
    let kind = obj.get("kind")?.as_str()?;
    let api_version = obj.get("apiVersion")?.as_str()?;
    KINDS
        .iter()
        .find(|k| k.kind == kind && k.group == group(api_version))
}

/// `spec.template` style path, for messages; `prefix` is prepended with a dot when not empty.
pub fn dotted(path: &[&str], field: &str) -> String {
    path.iter()
        .copied()
        .chain((!field.is_empty()).then_some(field))
        .collect::<Vec<_>>()
        .join(".")
}

/// JSON Pointer of a path.
pub fn pointer(path: &[&str]) -> String {
    path.iter().map(|p| format!("/{p}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_by_group() {
        let cases = [
            ("apps/v1", "Deployment", Some(TEMPLATE)),
            ("batch/v1", "CronJob", Some(KINDS[5].template)),
            ("argoproj.io/v1alpha1", "Rollout", Some(TEMPLATE)),
            ("v1", "Pod", Some(&[][..])),
            // Same kind name in another group: not ours.
            ("example.com/v1", "Deployment", None),
            ("v1", "ConfigMap", None),
        ];
        for (api_version, kind, want) in cases {
            let got = of(&json!({"apiVersion": api_version, "kind": kind})).map(|k| k.template);
            assert_eq!(got, want, "{api_version} {kind}");
        }
        assert_eq!(
            dotted(&["spec", "template"], "metadata"),
            "spec.template.metadata"
        );
        assert_eq!(dotted(&[], "metadata"), "metadata");
        assert_eq!(pointer(&["spec", "template"]), "/spec/template");
    }
}
