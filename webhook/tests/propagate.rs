//! Propagation of workload annotations into pod templates, compared with `oldObject`: pure table
//! tests of `admission::propagate::mutate_workload` for every kind and every way a template key
//! can change hands (create, update, move, remove, user override).

use contract::annotations as ann;
use serde_json::{Value, json};
use webhook::admission::lease_name::Kind;
use webhook::admission::propagate::{self, LAST_APPLIED, WorkloadMutation};

const ENABLED: &str = ann::ENABLED;
const PROPAGATED: &str = ann::PROPAGATED;

fn workload(kind: Kind, meta: Value, template: Option<Value>) -> Value {
    let mut template_meta = json!({"labels": {"app": "web"}});
    if let Some(t) = template {
        template_meta["annotations"] = t;
    }
    let tmpl = json!({"metadata": template_meta,
                      "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
    let spec = match kind {
        Kind::CronJob => {
            json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": tmpl}}})
        }
        _ => json!({"template": tmpl}),
    };
    json!({"kind": kind.as_str(), "metadata": {"name": "web", "namespace": "ns", "annotations": meta},
           "spec": spec})
}

fn deployment(meta: Value, template: Option<Value>) -> Value {
    workload(Kind::Deployment, meta, template)
}

fn tmpl_ptr(kind: Kind) -> String {
    let mut p: String = propagate::template_path(kind)
        .iter()
        .map(|t| format!("/{t}"))
        .collect();
    p.push_str("/metadata/annotations");
    p
}

fn tmpl(kind: Kind, v: &Value) -> Value {
    v.pointer(&tmpl_ptr(kind)).cloned().unwrap_or(json!({}))
}

/// Admits `new` (with `old` as oldObject on UPDATE), applies the patch; then checks that
/// admitting the result again as an update that changes nothing changes nothing.
fn admit(
    kind: Kind,
    new: &Value,
    old: Option<&Value>,
) -> Result<(Value, WorkloadMutation), String> {
    let m = propagate::mutate_workload(kind, new, old).map_err(|d| d.0)?;
    let mut out = new.clone();
    if let Some(p) = &m.patch {
        json_patch::patch(&mut out, p).map_err(|e| e.to_string())?;
    }
    let again = propagate::mutate_workload(kind, &out, Some(&out)).map_err(|d| d.0)?;
    assert!(
        again.patch.is_none(),
        "second pass changed {:?}",
        again.patch
    );
    Ok((out, m))
}

fn without_meta(v: &Value, key: &str) -> Value {
    let mut v = v.clone();
    v["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(key);
    v
}

/// `v` with the field at `pointer` set (its parent must exist).
fn set(v: &Value, pointer: &str, value: Value) -> Value {
    let mut v = v.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    v.pointer_mut(parent).unwrap()[key] = value;
    v
}

/// The Deployment after `kubectl annotate deployment web leader-election/enabled=true` went
/// through the webhook: metadata and template say enabled, the template lists it as propagated.
fn propagated_once() -> Value {
    let d = deployment(
        json!({ENABLED: "true", "team": "x"}),
        Some(json!({"keep": "me"})),
    );
    admit(Kind::Deployment, &d, None).unwrap().0
}

/// The object without its template's annotations.
fn mask(kind: Kind, v: &Value) -> Value {
    let mut v = v.clone();
    let meta_ptr = tmpl_ptr(kind).trim_end_matches("/annotations").to_string();
    if let Some(m) = v.pointer_mut(&meta_ptr).and_then(Value::as_object_mut) {
        m.remove("annotations");
    }
    v
}

struct Case {
    what: &'static str,
    kind: Kind,
    new: Value,
    old: Option<Value>,
    /// The template annotations after the patch, or the refusal's substring.
    want: Result<Value, &'static str>,
    /// A substring every warning list must contain (empty: no warning).
    warning: &'static str,
}

#[test]
fn propagation_table() {
    let after = propagated_once();
    let removed = without_meta(&after, ENABLED);
    // `kubectl apply` of a manifest that moved `enabled` from metadata into the template:
    // last-applied now declares it in the template; the live `propagated` is kept by the merge.
    let last_applied = json!({"metadata": {"annotations": {"team": "x"}},
        "spec": {"template": {"metadata": {"annotations": {ENABLED: "true", "keep": "me"}}}}})
    .to_string();
    let moved_csa = set(
        &removed,
        "/metadata/annotations",
        json!({"team": "x", LAST_APPLIED: last_applied}),
    );
    // The same with server-side apply: an Apply manager owns the template key.
    let mut moved_ssa = removed.clone();
    moved_ssa["metadata"]["managedFields"] = json!([
        {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}},
        {"manager": "argocd-controller", "operation": "Apply", "fieldsV1": {"f:spec": {"f:template":
            {"f:metadata": {"f:annotations": {"f:leader-election/enabled": {}, "f:keep": {}}}}}}}
    ]);
    // An Update manager owning it proves nothing (the API server attributes webhook changes).
    let mut removed_update_owner = removed.clone();
    removed_update_owner["metadata"]["managedFields"] = json!([
        {"manager": "helm", "operation": "Update", "fieldsV1": {"f:spec": {"f:template":
            {"f:metadata": {"f:annotations": {"f:leader-election/enabled": {}}}}}}}
    ]);
    let cases = vec![
        Case {
            what: "create: copied and recorded",
            kind: Kind::Deployment,
            new: deployment(
                json!({ENABLED: "true", ann::LEASE_NAME: "shared", "other": "x"}),
                None,
            ),
            old: None,
            want: Ok(json!({ENABLED: "true", ann::LEASE_NAME: "shared",
                PROPAGATED: "leader-election/enabled,leader-election/lease-name"})),
            warning: "",
        },
        Case {
            what: "update: annotate an existing workload",
            kind: Kind::Deployment,
            new: deployment(json!({ENABLED: "true"}), Some(json!({"keep": "me"}))),
            old: Some(deployment(json!({}), Some(json!({"keep": "me"})))),
            want: Ok(json!({"keep": "me", ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "update: a changed workload value follows into the template",
            kind: Kind::Deployment,
            new: set(
                &after,
                "/metadata/annotations/leader-election~1enabled",
                json!("false"),
            ),
            old: Some(after.clone()),
            want: Ok(json!({"keep": "me", ENABLED: "false", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "remove: kubectl annotate enabled- removes what was propagated",
            kind: Kind::Deployment,
            new: removed.clone(),
            old: Some(after.clone()),
            want: Ok(json!({"keep": "me"})),
            warning: "",
        },
        Case {
            what: "remove: an Update manager owning the key is no declaration",
            kind: Kind::Deployment,
            new: removed_update_owner,
            old: Some(after.clone()),
            want: Ok(json!({"keep": "me"})),
            warning: "",
        },
        Case {
            what: "move (client-side apply): the user's template value stays",
            kind: Kind::Deployment,
            new: moved_csa,
            old: Some(after.clone()),
            want: Ok(json!({"keep": "me", ENABLED: "true"})),
            warning: "",
        },
        Case {
            what: "move (server-side apply): the user's template value stays",
            kind: Kind::Deployment,
            new: moved_ssa,
            old: Some(after.clone()),
            want: Ok(json!({"keep": "me", ENABLED: "true"})),
            warning: "",
        },
        Case {
            what: "user override in this request: the template's value wins, with a warning",
            kind: Kind::Deployment,
            new: set(
                &after,
                "/spec/template/metadata/annotations/leader-election~1enabled",
                json!("false"),
            ),
            old: Some(after.clone()),
            want: Ok(json!({"keep": "me", ENABLED: "false"})),
            warning: "wins over the workload's",
        },
        Case {
            what: "user override already on the template: never overwritten",
            kind: Kind::Deployment,
            new: deployment(
                json!({ENABLED: "true", ann::LEASE_DURATION: "30s"}),
                Some(json!({ann::LEASE_DURATION: "20s"})),
            ),
            old: Some(deployment(
                json!({}),
                Some(json!({ann::LEASE_DURATION: "20s"})),
            )),
            want: Ok(json!({ann::LEASE_DURATION: "20s", ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "leader-election/lease-duration=\"20s\"",
        },
        Case {
            what: "the user's own template key with the workload's value: no change, no rollout",
            kind: Kind::Deployment,
            new: deployment(json!({ENABLED: "true"}), Some(json!({ENABLED: "true"}))),
            old: Some(deployment(json!({}), Some(json!({ENABLED: "true"})))),
            want: Ok(json!({ENABLED: "true"})),
            warning: "",
        },
        Case {
            what: "the user's own template key outlives the workload's",
            kind: Kind::Deployment,
            new: deployment(json!({}), Some(json!({ENABLED: "true"}))),
            old: Some(deployment(
                json!({ENABLED: "true"}),
                Some(json!({ENABLED: "true"})),
            )),
            want: Ok(json!({ENABLED: "true"})),
            warning: "",
        },
        Case {
            what: "a listed key whose value the request changed is the user's",
            kind: Kind::Deployment,
            new: set(
                &without_meta(&after, ENABLED),
                "/spec/template/metadata/annotations/leader-election~1enabled",
                json!("false"),
            ),
            old: Some(after.clone()),
            want: Ok(json!({"keep": "me", ENABLED: "false"})),
            warning: "",
        },
        Case {
            what: "propagated only ever lists known keys",
            kind: Kind::Deployment,
            new: deployment(
                json!({ENABLED: "true"}),
                Some(
                    json!({ENABLED: "true", "keep": "me", PROPAGATED: "keep,leader-election/enabled,bogus"}),
                ),
            ),
            old: Some(deployment(
                json!({ENABLED: "true"}),
                Some(
                    json!({ENABLED: "true", "keep": "me", PROPAGATED: "keep,leader-election/enabled,bogus"}),
                ),
            )),
            want: Ok(json!({ENABLED: "true", "keep": "me", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "create from an exported manifest: nothing in it was put there by the webhook",
            kind: Kind::Deployment,
            new: deployment(
                json!({}),
                Some(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            ),
            old: None,
            want: Ok(json!({ENABLED: "true"})),
            warning: "",
        },
        Case {
            what: "unknown workload key: warned, not copied",
            kind: Kind::Deployment,
            new: deployment(
                json!({ENABLED: "true", "leader-election/enable": "true"}),
                None,
            ),
            old: None,
            want: Ok(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "leader-election/enable ",
        },
        Case {
            what: "bad enabled value: refused",
            kind: Kind::Deployment,
            new: deployment(json!({ENABLED: "maybe"}), None),
            old: None,
            want: Err(ENABLED),
            warning: "",
        },
        Case {
            what: "bad timing: refused",
            kind: Kind::StatefulSet,
            new: workload(
                Kind::StatefulSet,
                json!({ENABLED: "true", ann::LEASE_DURATION: "1s"}),
                None,
            ),
            old: None,
            want: Err(ann::RENEW_DEADLINE),
            warning: "",
        },
        Case {
            what: "bad template annotation: warned on the workload",
            kind: Kind::Deployment,
            new: deployment(json!({}), Some(json!({ENABLED: "true", ann::PORT: "80"}))),
            old: None,
            want: Ok(json!({ENABLED: "true", ann::PORT: "80"})),
            warning: "1024 and 65535",
        },
        Case {
            what: "statefulset",
            kind: Kind::StatefulSet,
            new: workload(Kind::StatefulSet, json!({ENABLED: "true"}), None),
            old: None,
            want: Ok(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "daemonset",
            kind: Kind::DaemonSet,
            new: workload(Kind::DaemonSet, json!({ENABLED: "true"}), None),
            old: None,
            want: Ok(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "argo rollout",
            kind: Kind::Rollout,
            new: workload(Kind::Rollout, json!({ENABLED: "true"}), None),
            old: None,
            want: Ok(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "cronjob: into spec.jobTemplate.spec.template",
            kind: Kind::CronJob,
            new: workload(Kind::CronJob, json!({ENABLED: "true"}), None),
            old: Some(workload(Kind::CronJob, json!({}), None)),
            want: Ok(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "bare replicaset",
            kind: Kind::ReplicaSet,
            new: workload(Kind::ReplicaSet, json!({ENABLED: "true"}), None),
            old: None,
            want: Ok(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "bare job at creation",
            kind: Kind::Job,
            new: workload(Kind::Job, json!({ENABLED: "true"}), None),
            old: None,
            want: Ok(json!({ENABLED: "true", PROPAGATED: ENABLED})),
            warning: "",
        },
        Case {
            what: "job update: the template is immutable, a warning instead of a failed update",
            kind: Kind::Job,
            new: workload(Kind::Job, json!({ENABLED: "true"}), None),
            old: Some(workload(Kind::Job, json!({}), None)),
            want: Ok(json!({})),
            warning: "cannot change after it is created",
        },
        Case {
            what: "being deleted",
            kind: Kind::Deployment,
            new: set(
                &deployment(json!({ENABLED: "true"}), None),
                "/metadata/deletionTimestamp",
                json!("2024-01-01T00:00:00Z"),
            ),
            old: None,
            want: Ok(json!({})),
            warning: "",
        },
    ];
    for c in cases {
        let old = c.old.as_ref();
        match (admit(c.kind, &c.new, old), &c.want) {
            (Ok((out, m)), Ok(want)) => {
                assert_eq!(&tmpl(c.kind, &out), want, "{}", c.what);
                if c.warning.is_empty() {
                    assert!(m.warnings.is_empty(), "{}: {:?}", c.what, m.warnings);
                } else {
                    assert!(
                        m.warnings.iter().any(|w| w.contains(c.warning)),
                        "{}: {:?}",
                        c.what,
                        m.warnings
                    );
                }
                // Only the template's annotations ever change.
                assert_eq!(mask(c.kind, &out), mask(c.kind, &c.new), "{}", c.what);
            }
            (Err(msg), Err(sub)) => assert!(msg.contains(sub), "{}: {msg}", c.what),
            (got, _) => panic!("{}: unexpected {got:?}", c.what),
        }
    }
}

#[test]
fn controlled_replicasets_and_jobs_are_left_to_their_owner() {
    let owned = |kind: Kind, owner: &str| {
        let mut v = workload(kind, json!({ENABLED: "true"}), None);
        v["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": owner, "name": "web", "uid": "u", "controller": true}]);
        v
    };
    // A Deployment's (or Rollout's) ReplicaSet: a changed template would start another one.
    for owner in ["Deployment", "Rollout"] {
        let rs = owned(Kind::ReplicaSet, owner);
        assert!(
            propagate::mutate_workload(Kind::ReplicaSet, &rs, None)
                .unwrap()
                .patch
                .is_none()
        );
    }
    let job = owned(Kind::Job, "Workflow");
    assert!(
        propagate::mutate_workload(Kind::Job, &job, None)
            .unwrap()
            .patch
            .is_none()
    );
}

#[test]
fn a_cronjobs_jobs_share_the_cronjobs_lease() {
    let job = |template: Value| {
        let mut v = workload(Kind::Job, json!({}), Some(template));
        v["metadata"]["name"] = json!("backup-29433120");
        v["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "CronJob",
            "name": "backup", "uid": "u", "controller": true}]);
        v
    };
    // (template annotations, expected template annotations after admission)
    let cases = [
        (
            json!({ENABLED: "true"}),
            json!({ENABLED: "true", ann::LEASE_NAME: "cronjob.backup"}),
        ),
        // An explicit name wins.
        (
            json!({ENABLED: "true", ann::LEASE_NAME: "mine"}),
            json!({ENABLED: "true", ann::LEASE_NAME: "mine"}),
        ),
        // Not opted in: untouched.
        (json!({"x": "y"}), json!({"x": "y"})),
    ];
    for (t, want) in cases {
        let (out, _) = admit(Kind::Job, &job(t.clone()), None).unwrap();
        assert_eq!(tmpl(Kind::Job, &out), want, "{t}");
    }
    // Only at creation (the template is immutable afterwards).
    let j = job(json!({ENABLED: "true"}));
    assert!(
        propagate::mutate_workload(Kind::Job, &j, Some(&j))
            .unwrap()
            .patch
            .is_none()
    );
}
