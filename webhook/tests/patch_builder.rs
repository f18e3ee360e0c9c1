//! Table tests of the pure patch builders: every patch is APPLIED to its input and the result is
//! checked, then the builder is run again on its own output (it must add nothing).

use contract::annotations as ann;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use webhook::admission::patch::{self, Inspection, PodContext, SkipReason};
use webhook::admission::propagate;
use webhook::admission::settings::NativeMode;

const IMAGE: &str = "example.test/elector:1";

fn ctx(native_mode: NativeMode, native_supported: Option<bool>) -> PodContext<'static> {
    PodContext {
        namespace: "apps",
        image: IMAGE,
        image_pull_policy: "IfNotPresent",
        native_mode,
        native_supported,
    }
}

fn regular() -> PodContext<'static> {
    ctx(NativeMode::Auto, Some(false))
}

fn native() -> PodContext<'static> {
    ctx(NativeMode::Auto, Some(true))
}

/// A pod as the API server hands it to a mutating webhook on 1.20: created by a ReplicaSet, no
/// name yet, ServiceAccount admission already applied (default SA, token secret mounted).
fn deployment_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "my-app-5d4f8b7c9-",
            "namespace": "apps",
            "labels": {"app": "web", "pod-template-hash": "5d4f8b7c9"},
            "annotations": {"leader-election/enabled": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "my-app-5d4f8b7c9",
                                 "uid": "u1", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": "default", "serviceAccount": "default",
            "volumes": [{"name": "default-token-abcde", "secret": {"secretName": "default-token-abcde"}}],
            "containers": [
                {"name": "nginx", "image": "nginx:1.25",
                 "volumeMounts": [{"name": "default-token-abcde", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]},
                {"name": "helper", "image": "busybox", "env": [{"name": "LEADER_ELECTION_URL", "value": "http://custom:1"}]}
            ]
        }
    })
}

fn pod(v: &Value) -> Pod {
    serde_json::from_value(v.clone()).expect("test pod decodes")
}

/// Runs the webhook on `input`; returns the patched document (input if no patch).
fn apply(input: &Value, c: &PodContext<'_>) -> Result<Value, String> {
    let m = patch::mutate_pod(&pod(input), c).map_err(|d| d.0)?;
    let mut doc = input.clone();
    if let Some(p) = &m.patch {
        json_patch::patch(&mut doc, p).map_err(|e| format!("patch does not apply: {e}"))?;
    }
    Ok(doc)
}

/// Applies, then checks that a second admission of the result changes nothing.
fn inject(input: &Value, c: &PodContext<'_>) -> Value {
    let once = apply(input, c).expect("admitted");
    let again = patch::mutate_pod(&pod(&once), c).expect("re-admitted");
    assert!(
        again.patch.is_none(),
        "second admission must add nothing: {:?}",
        again.patch
    );
    once
}

/// Sets (adding when absent) the value at a JSON pointer.
fn set(v: &mut Value, pointer: &str, value: Value) {
    let op: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": pointer, "value": value}])).unwrap();
    json_patch::patch(v, &op).expect("test mutation applies");
}

fn containers(v: &Value) -> &Vec<Value> {
    v["spec"]["containers"].as_array().expect("containers")
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn elector(v: &Value) -> &Value {
    find(&v["spec"]["containers"], contract::CONTAINER_NAME)
        .or_else(|| find(&v["spec"]["initContainers"], contract::CONTAINER_NAME))
        .expect("elector injected")
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    find(&c["env"], name)
}

fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn deployment_pod_gets_everything() {
    let out = inject(&deployment_pod(), &regular());
    assert_eq!(
        out["metadata"]["annotations"][ann::STATUS],
        ann::STATUS_INJECTED
    );
    // The ServiceAccount the owner chose is kept (issue 11: no silent identity change).
    assert_eq!(
        out["spec"]["serviceAccountName"],
        deployment_pod()["spec"]["serviceAccountName"]
    );
    assert_eq!(
        out["spec"]["serviceAccount"],
        deployment_pod()["spec"]["serviceAccount"]
    );

    let cs = containers(&out);
    assert_eq!(cs.len(), 3);
    assert_eq!(cs[2]["name"], contract::CONTAINER_NAME);
    let e = elector(&out);
    assert_eq!(e["image"], IMAGE);
    assert_eq!(e["imagePullPolicy"], "IfNotPresent");
    assert!(e.get("restartPolicy").is_none());
    let a = args(e);
    assert!(a.contains(&"--election=my-app"), "{a:?}");
    assert!(a.contains(&"--http=:4040"), "{a:?}");
    assert!(a.contains(&"--lease-duration=15s"), "{a:?}");
    assert!(a.contains(&"--renew-deadline=10s"), "{a:?}");
    assert!(a.contains(&"--retry-period=2s"), "{a:?}");
    assert!(!a.iter().any(|x| x.starts_with("--leader-label")), "{a:?}");
    assert_eq!(
        env(e, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env(e, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(e["livenessProbe"]["httpGet"]["path"], "/healthz");
    // Ready = it serves; an API server outage does not take the pod out of its Services.
    assert_eq!(e["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(e["readinessProbe"]["httpGet"]["port"], 4040);
    assert!(
        e.get("startupProbe").is_none(),
        "regular container: unchanged"
    );
    assert!(a.contains(&"--renew-interval=5s"), "{a:?}");
    assert_eq!(
        e["resources"],
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}})
    );
    let sc = &e["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], contract::deploy::RUN_AS_USER);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");

    // Credentials of its own, whatever the ServiceAccount plugin mounted for the app.
    let mount = find(&e["volumeMounts"], patch::API_ACCESS_VOLUME).expect("mount");
    assert_eq!(mount["mountPath"], patch::SERVICE_ACCOUNT_MOUNT);
    assert_eq!(mount["readOnly"], true);
    let vol = find(&out["spec"]["volumes"], patch::API_ACCESS_VOLUME).expect("volume");
    let sources = vol["projected"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert!(find(&out["spec"]["volumes"], "default-token-abcde").is_some());

    // App containers: missing env added, the user's own value kept.
    let nginx = &cs[0];
    assert_eq!(
        env(nginx, "LEADER_ELECTION_URL").unwrap()["value"],
        "http://127.0.0.1:4040"
    );
    assert_eq!(
        env(nginx, "LEADER_ELECTION_LEASE_NAME").unwrap()["value"],
        "my-app"
    );
    assert_eq!(
        env(nginx, "LEADER_ELECTION_IDENTITY").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let helper = &cs[1];
    assert_eq!(
        env(helper, "LEADER_ELECTION_URL").unwrap()["value"],
        "http://custom:1"
    );
    assert_eq!(helper["env"].as_array().unwrap().len(), 3);
    assert!(env(e, "LEADER_ELECTION_URL").is_none());
}

#[test]
fn lease_name_resolution_table() {
    // (mutation of the deployment pod, expected lease or Err(substring))
    type Case = (
        &'static str,
        fn(&mut Value),
        Result<&'static str, &'static str>,
    );
    let cases: Vec<Case> = vec![
        ("replicaset owner minus hash", |_| {}, Ok("my-app")),
        (
            "annotation wins",
            |v| {
                set(
                    v,
                    "/metadata/annotations/leader-election~1lease-name",
                    json!("chosen"),
                )
            },
            Ok("chosen"),
        ),
        (
            "statefulset owner",
            |v| {
                set(v, "/metadata/ownerReferences/0/kind", json!("StatefulSet"));
                set(v, "/metadata/ownerReferences/0/name", json!("db"));
            },
            Ok("db"),
        ),
        (
            "replicaset without hash label keeps its name",
            |v| {
                v["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("pod-template-hash");
            },
            Ok("my-app-5d4f8b7c9"),
        ),
        (
            "app.kubernetes.io/name label",
            |v| {
                v["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ownerReferences");
                set(
                    v,
                    "/metadata/labels",
                    json!({"app.kubernetes.io/name": "kname", "app": "web"}),
                );
            },
            Ok("kname"),
        ),
        (
            "app label",
            |v| {
                v["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ownerReferences");
            },
            Ok("web"),
        ),
        (
            "nothing to go by: never the pod's own name",
            |v| {
                v["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ownerReferences");
                v["metadata"].as_object_mut().unwrap().remove("labels");
                v["metadata"]["name"] = json!("lonely-pod");
            },
            Err("leader-election/lease-name"),
        ),
    ];
    for (what, mutate, want) in cases {
        let mut input = deployment_pod();
        mutate(&mut input);
        match (apply(&input, &regular()), want) {
            (Ok(out), Ok(lease)) => {
                let a = args(elector(&out));
                assert!(
                    a.contains(&format!("--election={lease}").as_str()),
                    "{what}: {a:?}"
                );
                assert_eq!(
                    env(&containers(&out)[0], "LEADER_ELECTION_LEASE_NAME").unwrap()["value"],
                    lease,
                    "{what}"
                );
            }
            (Err(msg), Err(sub)) => assert!(msg.contains(sub), "{what}: {msg}"),
            (got, _) => panic!("{what}: unexpected {got:?}"),
        }
    }
}

#[test]
fn opt_in_and_exclusions_table() {
    type Case = (
        &'static str,
        fn(&mut Value),
        &'static str,
        Result<bool, &'static str>,
    );
    // (what, mutation, namespace, Ok(injected?) or Err(substring))
    let cases: Vec<Case> = vec![
        ("opted in", |_| {}, "apps", Ok(true)),
        (
            "no annotation",
            |v| set(v, "/metadata/annotations", json!({})),
            "apps",
            Ok(false),
        ),
        (
            "no annotations at all",
            |v| {
                v["metadata"].as_object_mut().unwrap().remove("annotations");
            },
            "apps",
            Ok(false),
        ),
        (
            "explicit false",
            |v| {
                set(
                    v,
                    "/metadata/annotations/leader-election~1enabled",
                    json!("false"),
                )
            },
            "apps",
            Ok(false),
        ),
        (
            "bad value",
            |v| {
                set(
                    v,
                    "/metadata/annotations/leader-election~1enabled",
                    json!("yes"),
                )
            },
            "apps",
            Err("leader-election/enabled=\"yes\" is invalid: expected \"true\" or \"false\""),
        ),
        ("kube-system never", |_| {}, "kube-system", Ok(false)),
        (
            "kube-node-lease never",
            |_| {},
            "kube-node-lease",
            Ok(false),
        ),
        (
            "bad timing",
            |v| {
                set(
                    v,
                    "/metadata/annotations/leader-election~1retry-period",
                    json!("20s"),
                )
            },
            "apps",
            Err("leader-election/retry-period"),
        ),
        (
            "port taken by the app",
            |v| {
                set(
                    v,
                    "/spec/containers/0/ports",
                    json!([{"containerPort": 4040}]),
                )
            },
            "apps",
            Err("already uses port 4040"),
        ),
        (
            "no spec",
            |v| {
                v.as_object_mut().unwrap().remove("spec");
            },
            "apps",
            Err("no spec"),
        ),
    ];
    for (what, mutate, ns, want) in cases {
        let mut input = deployment_pod();
        mutate(&mut input);
        let c = PodContext {
            namespace: ns,
            ..regular()
        };
        match (apply(&input, &c), want) {
            (Ok(out), Ok(injected)) => {
                assert_eq!(out != input, injected, "{what}");
                if !injected {
                    let m = patch::mutate_pod(&pod(&input), &c).unwrap();
                    assert!(m.skipped.is_some(), "{what}");
                }
            }
            (Err(msg), Err(sub)) => assert!(msg.contains(sub), "{what}: {msg}"),
            (got, _) => panic!("{what}: unexpected {got:?}"),
        }
    }
}

#[test]
fn own_service_account_is_kept() {
    let mut input = deployment_pod();
    set(&mut input, "/spec/serviceAccountName", json!("my-sa"));
    set(&mut input, "/spec/serviceAccount", json!("my-sa"));
    let Inspection::Inject(plan) = patch::inspect_pod(&pod(&input), "apps").unwrap() else {
        panic!("not injected");
    };
    assert_eq!(plan.service_account, "my-sa");
    let out = inject(&input, &regular());
    assert_eq!(out["spec"]["serviceAccountName"], "my-sa");
    assert!(find(&elector(&out)["volumeMounts"], patch::API_ACCESS_VOLUME).is_some());
}

#[test]
fn no_service_account_field_means_default() {
    let mut input = deployment_pod();
    let spec = input["spec"].as_object_mut().unwrap();
    spec.remove("serviceAccountName");
    spec.remove("serviceAccount");
    let Inspection::Inject(plan) = patch::inspect_pod(&pod(&input), "apps").unwrap() else {
        panic!("not injected");
    };
    assert_eq!(plan.service_account, "default");
    let out = inject(&input, &regular());
    assert!(out["spec"].get("serviceAccountName").is_none());
    assert!(out["spec"].get("serviceAccount").is_none());
}

#[test]
fn automount_off_without_volumes_gets_a_projected_token() {
    let input = json!({
        "metadata": {"namespace": "apps", "labels": {"app": "solo"},
                     "annotations": {"leader-election/enabled": "true"}},
        "spec": {"automountServiceAccountToken": false, "serviceAccountName": "default",
                 "containers": [{"name": "app", "image": "app"}]}
    });
    let out = inject(&input, &regular());
    let vols = out["spec"]["volumes"].as_array().expect("volumes created");
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0]["name"], patch::API_ACCESS_VOLUME);
    assert_eq!(
        vols[0]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3607
    );
    // The app's env array is created.
    assert_eq!(containers(&out)[0]["env"].as_array().unwrap().len(), 3);
    // automount stays off for the app; the elector has its own mount.
    assert_eq!(out["spec"]["automountServiceAccountToken"], false);
    assert!(find(&elector(&out)["volumeMounts"], patch::API_ACCESS_VOLUME).is_some());
}

#[test]
fn native_sidecar_table() {
    // (cluster mode, cluster supports (None: not known yet), pod annotation, expect native or a
    // refusal naming this)
    type Case = (
        NativeMode,
        Option<bool>,
        Option<&'static str>,
        Result<bool, &'static str>,
    );
    let cases: [Case; 12] = [
        (NativeMode::Auto, Some(false), None, Ok(false)),
        (NativeMode::Auto, None, None, Ok(false)),
        (NativeMode::Auto, Some(true), None, Ok(true)),
        (NativeMode::Never, Some(true), None, Ok(false)),
        (NativeMode::Always, Some(true), None, Ok(true)),
        (NativeMode::Always, None, None, Ok(true)),
        (
            NativeMode::Always,
            Some(false),
            None,
            Err("--native-sidecar=always"),
        ),
        (NativeMode::Auto, Some(true), Some("never"), Ok(false)),
        (NativeMode::Never, None, Some("always"), Ok(true)),
        (
            NativeMode::Never,
            Some(false),
            Some("always"),
            Err(ann::NATIVE_SIDECAR),
        ),
        (NativeMode::Always, Some(true), Some("auto"), Ok(true)),
        (NativeMode::Always, Some(false), Some("auto"), Ok(false)),
    ];
    for (mode, supported, annotation, want) in cases {
        for with_init in [false, true] {
            let mut input = deployment_pod();
            if let Some(a) = annotation {
                input["metadata"]["annotations"][ann::NATIVE_SIDECAR] = json!(a);
            }
            if with_init {
                input["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
            }
            let case = format!("{mode:?} {supported:?} {annotation:?} init={with_init}");
            let native = match want {
                Ok(n) => n,
                Err(sub) => {
                    let msg = apply(&input, &ctx(mode, supported)).unwrap_err();
                    assert!(msg.contains(sub), "{case}: {msg}");
                    assert!(
                        msg.contains("1.29") && msg.contains("\"auto\""),
                        "says why and what to do: {msg}"
                    );
                    continue;
                }
            };
            let out = inject(&input, &ctx(mode, supported));
            let inits = out["spec"]["initContainers"].as_array();
            let in_init = inits
                .and_then(|l| l.iter().find(|c| c["name"] == contract::CONTAINER_NAME))
                .is_some();
            assert_eq!(in_init, native, "{case}");
            assert_eq!(
                find(&out["spec"]["containers"], contract::CONTAINER_NAME).is_some(),
                !native,
                "{case}"
            );
            if native {
                let e = elector(&out);
                assert_eq!(e["restartPolicy"], "Always", "{case}");
                assert_eq!(e["startupProbe"]["httpGet"]["path"], "/healthz", "{case}");
                assert_eq!(e["startupProbe"]["httpGet"]["port"], 4040, "{case}");
                assert_eq!(e["startupProbe"]["periodSeconds"], 1, "{case}");
                // First, before the pod's own init containers, which may use it.
                let l = inits.unwrap();
                assert_eq!(l[0]["name"], contract::CONTAINER_NAME, "{case}");
                assert_eq!(l.len(), if with_init { 2 } else { 1 }, "{case}");
                if with_init {
                    assert_eq!(l[1]["name"], "migrate");
                    assert_eq!(
                        env(&l[1], "LEADER_ELECTION_URL").unwrap()["value"],
                        "http://127.0.0.1:4040",
                        "{case}"
                    );
                }
            } else if with_init {
                // Regular mode: init containers run before the elector; nothing for them.
                assert!(
                    out["spec"]["initContainers"][0].get("env").is_none(),
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn native_elector_goes_before_every_init_container_and_they_get_the_env() {
    let mut input = deployment_pod();
    input["spec"]["initContainers"] = json!([
        {"name": "wait", "image": "busybox", "env": [{"name": "A", "value": "1"}]},
        {"name": "own-url", "image": "busybox", "env": [{"name": "LEADER_ELECTION_URL", "value": "http://x:1"}]},
        {"name": "plain", "image": "busybox"}
    ]);
    let out = inject(&input, &native());
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [contract::CONTAINER_NAME, "wait", "own-url", "plain"]
    );
    assert_eq!(inits[1]["env"][0], json!({"name": "A", "value": "1"}));
    assert_eq!(inits[1]["env"].as_array().unwrap().len(), 4);
    assert_eq!(
        env(&inits[2], "LEADER_ELECTION_URL").unwrap()["value"],
        "http://x:1"
    );
    assert_eq!(
        env(&inits[3], "LEADER_ELECTION_LEASE_NAME").unwrap()["value"],
        "my-app"
    );
    assert!(inits[0].get("env").unwrap().as_array().unwrap().len() == 2);
    // An empty list works as well.
    let mut input = deployment_pod();
    input["spec"]["initContainers"] = json!([]);
    let out = inject(&input, &native());
    assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
}

#[test]
fn settings_reach_the_container() {
    let mut input = deployment_pod();
    let a = input["metadata"]["annotations"].as_object_mut().unwrap();
    a.insert(ann::PORT.into(), json!("5050"));
    a.insert(ann::LEASE_DURATION.into(), json!("30s"));
    a.insert(ann::RENEW_DEADLINE.into(), json!("20s"));
    a.insert(ann::RETRY_PERIOD.into(), json!("1500ms"));
    a.insert(ann::LEADER_LABEL.into(), json!("true"));
    a.insert(ann::RENEW_INTERVAL.into(), json!("12s"));
    let out = inject(&input, &regular());
    let e = elector(&out);
    let a = args(e);
    for want in [
        "--http=:5050",
        "--lease-duration=30s",
        "--renew-deadline=20s",
        "--retry-period=1500ms",
        "--renew-interval=12s",
    ] {
        assert!(a.contains(&want), "{want} in {a:?}");
    }
    // The controller labels pods; the elector gets no flag (and no pods permission) for it.
    assert!(!a.iter().any(|x| x.contains("leader-label")), "{a:?}");
    assert_eq!(e["livenessProbe"]["httpGet"]["port"], 5050);
    assert_eq!(e["ports"][0]["containerPort"], 5050);
    assert_eq!(
        env(&containers(&out)[0], "LEADER_ELECTION_URL").unwrap()["value"],
        "http://127.0.0.1:5050"
    );
}

#[test]
fn reinvocation_only_adds_missing_env() {
    let c = regular();
    let mut once = inject(&deployment_pod(), &c);
    // Another webhook adds a container after us; we are reinvoked.
    once["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "late", "image": "late"}));
    let m = patch::mutate_pod(&pod(&once), &c).unwrap();
    let plan = m.plan.as_ref().unwrap();
    assert!(plan.already_injected);
    let p = m.patch.expect("env for the late container");
    let mut twice = once.clone();
    json_patch::patch(&mut twice, &p).unwrap();
    assert_eq!(
        containers(&twice).len(),
        containers(&once).len(),
        "no second elector"
    );
    let late = find(&twice["spec"]["containers"], "late").unwrap();
    assert_eq!(
        env(late, "LEADER_ELECTION_LEASE_NAME").unwrap()["value"],
        "my-app"
    );
    // ServiceAccount untouched.
    assert_eq!(
        twice["spec"]["serviceAccountName"],
        deployment_pod()["spec"]["serviceAccountName"]
    );
    assert!(patch::mutate_pod(&pod(&twice), &c).unwrap().patch.is_none());
}

#[test]
fn status_annotation_without_the_container_still_gets_the_elector() {
    // E.g. a pod spec copied from an injected pod with the sidecar removed.
    let mut input = deployment_pod();
    input["metadata"]["annotations"][ann::STATUS] = json!(ann::STATUS_INJECTED);
    let out = apply(&input, &regular()).unwrap();
    assert!(find(&out["spec"]["containers"], contract::CONTAINER_NAME).is_some());
    assert_eq!(
        env(&containers(&out)[0], "LEADER_ELECTION_LEASE_NAME").unwrap()["value"],
        "my-app"
    );
    // And only once.
    assert!(
        patch::mutate_pod(&pod(&out), &regular())
            .unwrap()
            .patch
            .is_none()
    );
}

#[test]
fn skip_reasons() {
    let mut input = deployment_pod();
    let m = patch::mutate_pod(
        &pod(&input),
        &PodContext {
            namespace: "kube-system",
            ..regular()
        },
    )
    .unwrap();
    assert_eq!(m.skipped, Some(SkipReason::ExcludedNamespace));
    input["metadata"]["annotations"] = json!({});
    let m = patch::mutate_pod(&pod(&input), &regular()).unwrap();
    assert_eq!(m.skipped, Some(SkipReason::NotEnabled));
    assert!(m.patch.is_none());
}

// ---- workloads ----

fn deployment(meta_annotations: Value, template_annotations: Option<Value>) -> Value {
    let mut template_meta = json!({"labels": {"app": "web"}});
    if let Some(t) = template_annotations {
        template_meta["annotations"] = t;
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "my-app", "namespace": "apps", "annotations": meta_annotations},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": template_meta,
                              "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}}
    })
}

fn workload(
    input: &Value,
) -> Result<(Value, webhook::admission::propagate::WorkloadMutation), String> {
    let m = propagate::mutate_workload(input).map_err(|d| d.0)?;
    let mut out = input.clone();
    if let Some(p) = &m.patch {
        json_patch::patch(&mut out, p).map_err(|e| e.to_string())?;
    }
    // Idempotent: the result needs no further change.
    let again = propagate::mutate_workload(&out).map_err(|d| d.0)?;
    assert!(
        again.patch.is_none(),
        "second pass changed {:?}",
        again.patch
    );
    Ok((out, m))
}

fn tmpl(v: &Value) -> &Value {
    &v["spec"]["template"]["metadata"]["annotations"]
}

#[test]
fn workload_annotation_is_propagated_and_removed() {
    let annotated = deployment(
        json!({"leader-election/enabled": "true", "leader-election/lease-name": "shared", "other": "x"}),
        None,
    );
    let (out, m) = workload(&annotated).unwrap();
    assert_eq!(tmpl(&out)[ann::ENABLED], "true");
    assert_eq!(tmpl(&out)[ann::LEASE_NAME], "shared");
    assert_eq!(
        tmpl(&out)[ann::PROPAGATED],
        "leader-election/enabled,leader-election/lease-name"
    );
    assert!(tmpl(&out).get("other").is_none());
    assert_eq!(m.set.len(), 2);
    assert_eq!(out["spec"]["template"]["metadata"]["labels"]["app"], "web");

    // `kubectl annotate deployment my-app leader-election/lease-name-` removes only that.
    let mut removed = out.clone();
    removed["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(ann::LEASE_NAME);
    let (out2, m2) = workload(&removed).unwrap();
    assert!(tmpl(&out2).get(ann::LEASE_NAME).is_none());
    assert_eq!(tmpl(&out2)[ann::ENABLED], "true");
    assert_eq!(tmpl(&out2)[ann::PROPAGATED], "leader-election/enabled");
    assert_eq!(m2.removed, vec![ann::LEASE_NAME.to_string()]);

    // Removing the last one clears the bookkeeping too.
    let mut none = out2.clone();
    none["metadata"]["annotations"] = json!({"other": "x"});
    let (out3, _) = workload(&none).unwrap();
    assert_eq!(tmpl(&out3), &json!({}));
}

#[test]
fn template_annotations_the_user_set_are_theirs() {
    // The template already says enabled=true itself; the workload says the same.
    let input = deployment(
        json!({"leader-election/enabled": "true"}),
        Some(json!({"leader-election/enabled": "true", "keep": "me"})),
    );
    let m = propagate::mutate_workload(&input).unwrap();
    assert!(m.patch.is_none(), "nothing to change, no rollout");

    // Removing it from the workload leaves the template's own value alone.
    let input = deployment(
        json!({}),
        Some(json!({"leader-election/enabled": "true", "keep": "me"})),
    );
    assert!(propagate::mutate_workload(&input).unwrap().patch.is_none());

    // A different value on the workload wins and is recorded as propagated.
    let input = deployment(
        json!({"leader-election/enabled": "false"}),
        Some(json!({"leader-election/enabled": "true", "keep": "me"})),
    );
    let (out, _) = workload(&input).unwrap();
    assert_eq!(tmpl(&out)[ann::ENABLED], "false");
    assert_eq!(tmpl(&out)["keep"], "me");
    assert_eq!(tmpl(&out)[ann::PROPAGATED], ann::ENABLED);
}

#[test]
fn workload_table() {
    type Case = (&'static str, Value, Result<bool, &'static str>);
    // (what, workload, Ok(patched?) or Err(substring))
    let cases: Vec<Case> = vec![
        ("no annotations", deployment(json!({}), None), Ok(false)),
        (
            "unrelated annotations",
            deployment(json!({"a": "b"}), Some(json!({"c": "d"}))),
            Ok(false),
        ),
        (
            "bad enabled value",
            deployment(json!({"leader-election/enabled": "maybe"}), None),
            Err("leader-election/enabled"),
        ),
        (
            "bad timing when enabled",
            deployment(
                json!({"leader-election/enabled": "true", "leader-election/lease-duration": "1s"}),
                None,
            ),
            Err("leader-election/renew-deadline"),
        ),
        (
            "template metadata missing",
            json!({"metadata": {"annotations": {"leader-election/enabled": "true"}},
                   "spec": {"template": {"spec": {"containers": []}}}}),
            Ok(true),
        ),
        (
            "being deleted",
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z",
                                "annotations": {"leader-election/enabled": "true"}},
                   "spec": {"template": {}}}),
            Ok(false),
        ),
        (
            "statefulset",
            json!({"kind": "StatefulSet", "metadata": {"annotations": {"leader-election/enabled": "true"}},
                   "spec": {"template": {"metadata": {"annotations": {}}}}}),
            Ok(true),
        ),
    ];
    for (what, input, want) in cases {
        match (workload(&input), want) {
            (Ok((out, _)), Ok(patched)) => assert_eq!(out != input, patched, "{what}"),
            (Err(msg), Err(sub)) => assert!(msg.contains(sub), "{what}: {msg}"),
            (got, _) => panic!("{what}: unexpected {got:?}"),
        }
    }
}

#[test]
fn unknown_workload_keys_warn_and_are_not_copied() {
    let input = deployment(
        json!({"leader-election/enabled": "true", "leader-election/enable": "true"}),
        None,
    );
    let (out, m) = workload(&input).unwrap();
    assert!(tmpl(&out).get("leader-election/enable").is_none());
    assert_eq!(m.warnings.len(), 1);
    assert!(
        m.warnings[0].contains("leader-election/enable "),
        "{:?}",
        m.warnings
    );
}

#[test]
fn a_bad_template_annotation_is_warned_about_on_the_workload() {
    // Nothing to propagate, but every pod would be refused: say so on the Deployment.
    let input = deployment(
        json!({}),
        Some(json!({"leader-election/enabled": "true", "leader-election/port": "80"})),
    );
    let m = propagate::mutate_workload(&input).unwrap();
    assert!(m.patch.is_none());
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    assert!(
        m.warnings[0].contains(ann::PORT) && m.warnings[0].contains("1024 and 65535"),
        "{:?}",
        m.warnings
    );
    // A fine template gets no warning.
    let input = deployment(json!({}), Some(json!({"leader-election/enabled": "true"})));
    assert!(
        propagate::mutate_workload(&input)
            .unwrap()
            .warnings
            .is_empty()
    );
}

// ---- migration from leader-elector:0.4 ----

#[test]
fn old_sidecar_is_refused_with_the_migration() {
    let old = |name: &str, image: &str| {
        json!({"name": name, "image": image, "args": ["--election=example", "--http=0.0.0.0:4040"],
               "ports": [{"containerPort": 4040}]})
    };
    // (what, extra container, in init containers?, refused?)
    let cases = [
        (
            "classic name and image",
            old(
                "leader-elector",
                "gcr.io/google_containers/leader-elector:0.4",
            ),
            false,
            true,
        ),
        (
            "k8s.gcr.io, no tag",
            old("elector", "k8s.gcr.io/leader-elector"),
            false,
            true,
        ),
        (
            "mirrored image, digest",
            old(
                "le",
                "registry.local:5000/mirror/leader-elector@sha256:0123",
            ),
            false,
            true,
        ),
        (
            "name leader-election, other image",
            old("leader-election", "example.test/something:1"),
            false,
            true,
        ),
        (
            "as an init container",
            old(
                "leader-elector",
                "gcr.io/google_containers/leader-elector:0.4",
            ),
            true,
            true,
        ),
        (
            "unrelated container",
            json!({"name": "leader-elections-dashboard", "image": "example.test/dash:1"}),
            false,
            false,
        ),
    ];
    for (what, extra, init, refused) in cases {
        let mut input = deployment_pod();
        let list = if init { "initContainers" } else { "containers" };
        match input["spec"][list].as_array_mut() {
            Some(l) => l.push(extra.clone()),
            None => input["spec"][list] = json!([extra.clone()]),
        }
        match apply(&input, &regular()) {
            Err(msg) if refused => {
                for want in [
                    &format!("container {:?}", extra["name"].as_str().unwrap()),
                    "leader-elector:0.4",
                    "remove that container",
                    "Endpoints",
                    "http://localhost:4040",
                    "the Lease \"my-app\"",
                    ann::ENABLED,
                ] {
                    assert!(msg.contains(want), "{what}: {want:?} in {msg}");
                }
            }
            Ok(out) if !refused => {
                assert!(find(&out["spec"]["containers"], contract::CONTAINER_NAME).is_some());
            }
            got => panic!("{what}: unexpected {got:?}"),
        }
        // Not asking for the elector: the old sidecar is the user's business.
        input["metadata"]["annotations"] = json!({});
        let m = patch::mutate_pod(&pod(&input), &regular()).unwrap();
        assert_eq!(m.skipped, Some(SkipReason::NotEnabled), "{what}");
    }
}

#[test]
fn our_own_elector_is_not_mistaken_for_the_old_one() {
    // Injected (by us, or offline), then admitted again: recognised, not refused.
    let once = inject(&deployment_pod(), &regular());
    assert!(patch::mutate_pod(&pod(&once), &regular()).is_ok());
    // Also with an image named like ours under any registry.
    let c = PodContext {
        image: "registry.local:5000/leader-election/elector:9",
        ..regular()
    };
    let once = inject(&deployment_pod(), &c);
    assert_eq!(elector(&once)["image"], c.image);
}

// ---- resources ----

fn with_resources(mut input: Value, app: Option<Value>, annotations: &[(&str, &str)]) -> Value {
    if let Some(r) = app {
        for c in input["spec"]["containers"].as_array_mut().unwrap() {
            c["resources"] = r.clone();
        }
    }
    for (k, v) in annotations {
        input["metadata"]["annotations"][*k] = json!(v);
    }
    input
}

#[test]
fn elector_resources_table() {
    let guaranteed =
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}});
    // Limits alone: the API server copies them into requests, so Guaranteed as well.
    let limits_only = json!({"limits": {"cpu": "500m", "memory": "512Mi"}});
    let burstable =
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}});
    let no_memory_limit = json!({"limits": {"cpu": "1"}});
    type Case<'a> = (
        &'a str,
        Option<Value>,
        Vec<(&'a str, &'a str)>,
        Result<Value, &'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "defaults",
            None,
            vec![],
            Ok(json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}})),
        ),
        (
            "all four annotated",
            None,
            vec![
                (ann::CPU_REQUEST, "50m"),
                (ann::CPU_LIMIT, "200m"),
                (ann::MEMORY_REQUEST, "24Mi"),
                (ann::MEMORY_LIMIT, "48Mi"),
            ],
            Ok(
                json!({"requests": {"cpu": "50m", "memory": "24Mi"}, "limits": {"cpu": "200m", "memory": "48Mi"}}),
            ),
        ),
        (
            "a CPU limit alone (ResourceQuota on limits.cpu)",
            None,
            vec![(ann::CPU_LIMIT, "100m")],
            Ok(
                json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}}),
            ),
        ),
        (
            "a limit below the default request lowers the request",
            None,
            vec![(ann::CPU_LIMIT, "5m"), (ann::MEMORY_LIMIT, "12Mi")],
            Ok(
                json!({"requests": {"cpu": "5m", "memory": "12Mi"}, "limits": {"cpu": "5m", "memory": "12Mi"}}),
            ),
        ),
        (
            "a request above the default limit raises the limit",
            None,
            vec![(ann::MEMORY_REQUEST, "64Mi")],
            Ok(json!({"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}})),
        ),
        (
            "Guaranteed pod, defaults",
            Some(guaranteed.clone()),
            vec![],
            Ok(
                json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "10m", "memory": "32Mi"}}),
            ),
        ),
        (
            "Guaranteed by limits only",
            Some(limits_only),
            vec![],
            Ok(
                json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "10m", "memory": "32Mi"}}),
            ),
        ),
        (
            "Guaranteed pod, one side annotated",
            Some(guaranteed.clone()),
            vec![(ann::CPU_REQUEST, "50m"), (ann::MEMORY_LIMIT, "64Mi")],
            Ok(
                json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "50m", "memory": "64Mi"}}),
            ),
        ),
        (
            "Guaranteed pod, equal values in other units",
            Some(guaranteed.clone()),
            vec![(ann::CPU_REQUEST, "0.1"), (ann::CPU_LIMIT, "100m")],
            Ok(
                json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}}),
            ),
        ),
        (
            "Guaranteed pod, request below limit",
            Some(guaranteed.clone()),
            vec![(ann::CPU_REQUEST, "10m"), (ann::CPU_LIMIT, "100m")],
            Err("drops to Burstable"),
        ),
        (
            "Burstable pod stays on the defaults",
            Some(burstable),
            vec![],
            Ok(json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}})),
        ),
        (
            "no memory limit: not Guaranteed",
            Some(no_memory_limit),
            vec![],
            Ok(json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}})),
        ),
        (
            "request above limit",
            None,
            vec![(ann::MEMORY_REQUEST, "64Mi"), (ann::MEMORY_LIMIT, "32Mi")],
            Err("must not exceed its limit"),
        ),
        (
            "not a quantity",
            None,
            vec![(ann::CPU_REQUEST, "fast")],
            Err("a positive CPU quantity"),
        ),
        (
            "milli-bytes",
            None,
            vec![(ann::MEMORY_REQUEST, "16m")],
            Err("did you mean \"16Mi\""),
        ),
    ];
    for (what, app, annotations, want) in cases {
        let input = with_resources(deployment_pod(), app, &annotations);
        match (apply(&input, &regular()), want) {
            (Ok(out), Ok(r)) => {
                assert_eq!(elector(&out)["resources"], r, "{what}");
                // Twice == once.
                inject(&input, &regular());
            }
            (Err(msg), Err(sub)) => {
                assert!(msg.contains(sub), "{what}: {msg}");
                assert!(
                    msg.contains("leader-election/"),
                    "{what}: names the annotation: {msg}"
                );
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn one_burstable_init_container_makes_the_pod_burstable() {
    let g = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
    let mut input = with_resources(deployment_pod(), Some(g.clone()), &[]);
    input["spec"]["initContainers"] = json!([{"name": "init", "image": "i", "resources": g}]);
    let out = inject(&input, &regular());
    assert_eq!(elector(&out)["resources"]["limits"]["cpu"], "10m");
    input["spec"]["initContainers"][0]["resources"] = json!({});
    let out = inject(&input, &regular());
    assert!(elector(&out)["resources"]["limits"].get("cpu").is_none());
}

// ---- the pod template, checked when the workload is applied ----

fn applied_workload(input: &Value, c: &PodContext<'_>) -> Result<(), String> {
    let m = propagate::mutate_workload(input).map_err(|d| d.0)?;
    patch::check_workload(input, m.patch.as_ref(), c).map_err(|d| d.0)
}

#[test]
fn workload_templates_are_checked_at_apply() {
    let old_sidecar =
        json!({"name": "leader-elector", "image": "gcr.io/google_containers/leader-elector:0.4"});
    let with_old = |meta: Value, tmpl: Option<Value>| {
        let mut d = deployment(meta, tmpl);
        d["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(old_sidecar.clone());
        d
    };
    type Case<'a> = (&'a str, Value, PodContext<'a>, Result<(), &'a str>);
    let cases: Vec<Case> = vec![
        (
            "enabled on the Deployment, old sidecar in the template",
            with_old(json!({"leader-election/enabled": "true"}), None),
            regular(),
            Err("leader-elector:0.4"),
        ),
        (
            "enabled on the template itself",
            with_old(json!({}), Some(json!({"leader-election/enabled": "true"}))),
            regular(),
            Err("remove that container"),
        ),
        (
            "old sidecar, not enabled: not ours to judge",
            with_old(json!({}), None),
            regular(),
            Ok(()),
        ),
        (
            "native always on a cluster without native sidecars",
            deployment(
                json!({"leader-election/enabled": "true", "leader-election/native-sidecar": "always"}),
                None,
            ),
            regular(),
            Err("cannot run native sidecars"),
        ),
        (
            "native always, support not known yet",
            deployment(
                json!({"leader-election/enabled": "true", "leader-election/native-sidecar": "always"}),
                None,
            ),
            ctx(NativeMode::Auto, None),
            Ok(()),
        ),
        (
            "a CronJob's template",
            json!({"kind": "CronJob", "metadata": {"annotations": {}},
                   "spec": {"jobTemplate": {"spec": {"template": {
                       "metadata": {"annotations": {"leader-election/enabled": "true"}},
                       "spec": {"containers": [old_sidecar.clone()]}}}}}}),
            regular(),
            Err("leader-elector:0.4"),
        ),
        (
            "fine",
            deployment(json!({"leader-election/enabled": "true"}), None),
            regular(),
            Ok(()),
        ),
    ];
    for (what, input, c, want) in cases {
        match (applied_workload(&input, &c), want) {
            (Ok(()), Ok(())) => {}
            (Err(msg), Err(sub)) => {
                assert!(msg.contains(sub), "{what}: {msg}");
                assert!(
                    msg.starts_with("the pod template would be refused"),
                    "{what}: {msg}"
                );
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}
