//! The shipped RBAC of the webhook's ServiceAccount grants exactly the calls the code makes
//! (`webhook::rbac::CALLS`): every call is allowed at its scope, and every granted verb is used.

use std::collections::BTreeSet;

use serde_json::Value;
use webhook::rbac::{CALLS, Scope};

fn shipped() -> Vec<Value> {
    let path = format!(
        "{}/../manifests/base/webhook-rbac.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// (role kind, role name) bound to the webhook's ServiceAccount by a binding in the file.
fn bound_roles(docs: &[Value]) -> BTreeSet<(String, String)> {
    docs.iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("ClusterRoleBinding" | "RoleBinding")
            )
        })
        .filter(|d| {
            d["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == contract::deploy::WEBHOOK_NAME
                    && s["namespace"] == contract::deploy::NAMESPACE
            })
        })
        .map(|d| {
            (
                d["roleRef"]["kind"].as_str().unwrap().to_string(),
                d["roleRef"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One granted (group, resource, verb) with its scope: (cluster-wide?, resourceNames).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    cluster: bool,
    names: Vec<String>,
}

fn grants(docs: &[Value]) -> Vec<Grant> {
    let bound = bound_roles(docs);
    let mut out = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "ClusterRole" | "Role") {
            continue;
        }
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !bound.contains(&(kind.to_string(), name.clone())) {
            continue;
        }
        if kind == "Role" {
            assert_eq!(
                d["metadata"]["namespace"],
                contract::deploy::NAMESPACE,
                "Role {name} outside the webhook's namespace"
            );
        }
        for rule in d["rules"].as_array().into_iter().flatten() {
            let names = strings(&rule["resourceNames"]);
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        assert!(g != "*" && r != "*" && v != "*", "wildcard in {name}");
                        out.push(Grant {
                            group: g.clone(),
                            resource: r.clone(),
                            verb: v,
                            cluster: kind == "ClusterRole",
                            names: names.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

fn allows(g: &Grant, c: &webhook::rbac::Call) -> bool {
    if g.group != c.group || g.resource != c.resource || g.verb != c.verb {
        return false;
    }
    let names_cover = |want: &[&str]| {
        g.names.is_empty()
            || (!want.is_empty() && want.iter().all(|n| g.names.iter().any(|x| x == n)))
    };
    match c.scope {
        Scope::Cluster => g.cluster && g.names.is_empty(),
        Scope::Named(want) => g.cluster && names_cover(want),
        Scope::Own(want) => names_cover(want),
    }
}

/// How narrow the grant is compared with the call: a grant wider than the call needs is
/// reported (e.g. cluster-wide where the webhook's namespace would do, or unnamed where the
/// call names its object).
fn wider_than_needed(g: &Grant, c: &webhook::rbac::Call) -> bool {
    match c.scope {
        Scope::Cluster => false,
        Scope::Named(_) => g.names.is_empty(),
        Scope::Own(want) => g.cluster || (!want.is_empty() && g.names.is_empty()),
    }
}

#[test]
fn every_call_the_code_makes_is_granted() {
    let docs = shipped();
    let gs = grants(&docs);
    let missing: Vec<String> = CALLS
        .iter()
        .filter(|c| !gs.iter().any(|g| allows(g, c)))
        .map(|c| {
            format!(
                "{} {}/{} ({:?}) by {}",
                c.verb, c.group, c.resource, c.scope, c.by
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not granted by manifests/base/webhook-rbac.yaml: {missing:#?}"
    );
}

#[test]
fn every_granted_verb_is_used_at_no_wider_scope() {
    let docs = shipped();
    let unused: Vec<String> = grants(&docs)
        .into_iter()
        .filter(|g| {
            !CALLS
                .iter()
                .any(|c| allows(g, c) && !wider_than_needed(g, c))
        })
        .map(|g| format!("{g:?}"))
        .collect();
    assert!(
        unused.is_empty(),
        "granted but not used as granted (webhook::rbac::CALLS): {unused:#?}"
    );
}

#[test]
fn electors_get_no_pods_permission_from_the_shipped_manifests() {
    let path = format!(
        "{}/../manifests/base/elector-clusterrole.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    for d in docs.iter().filter(|d| !d.is_null()) {
        for rule in d["rules"].as_array().into_iter().flatten() {
            assert!(
                !strings(&rule["resources"]).iter().any(|r| r == "pods"),
                "{d}"
            );
        }
    }
}
