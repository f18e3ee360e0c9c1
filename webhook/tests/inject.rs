//! `webhook inject` / `uninject` over fixture manifests (pure: no cluster, no binary). The
//! webhook's own admission code is the judge: a pod created from an injected template must be
//! admitted unchanged, the workload must need no propagation, and the controller must want the
//! Lease the elector uses.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use proptest::prelude::*;
use serde_json::{Value, json};
use webhook::admission::patch::{self, PodContext};
use webhook::admission::propagate;
use webhook::admission::settings::NativeMode;
use webhook::controller::grants;
use webhook::inject::stream::{self, Format, Output, Seen};
use webhook::inject::{self, Options};

fn fixture(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inject")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn opts() -> Options {
    Options {
        image: "example.test/elector:1".into(),
        ..Options::default()
    }
}

fn run_inject(name: &str, text: &str, format: Format, o: &Options) -> Result<Output, Vec<String>> {
    let mut seen = Seen::new();
    stream::collect_identities(text, format, &mut seen);
    stream::rewrite(name, text, format, &|d| inject::inject(d, o), &mut seen)
}

fn run_uninject(text: &str, format: Format, with_rbac: bool) -> Output {
    stream::rewrite(
        "x.yaml",
        text,
        format,
        &|d| inject::uninject(d, with_rbac),
        &mut Seen::new(),
    )
    .unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn electors(template: &Value) -> Vec<Value> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| template["spec"][k].as_array().cloned().unwrap_or_default())
        .filter(|c| c["name"] == contract::CONTAINER_NAME)
        .collect()
}

/// A pod as the API server would create it from `template`, owned by `owner` (kind, name) with
/// the template-hash label its controller adds.
fn pod_from(template: &Value, owner: Option<(&str, &str)>, hash: Option<(&str, &str)>) -> Pod {
    let mut p = template.clone();
    if let Some((kind, name)) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": kind, "name": name, "uid": "u", "controller": true}]);
    }
    if let Some((k, v)) = hash {
        p["metadata"]["labels"][k] = json!(v);
    }
    serde_json::from_value(p).unwrap()
}

#[test]
fn every_kind_gets_the_webhooks_patch_and_is_then_admitted_unchanged() {
    // (fixture, template pointer, lease, owner of its pods in a cluster, hash label, native)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<(&'a str, &'a str)>,
        Option<(&'a str, &'a str)>,
        bool,
    );
    let cases: &[Case] = &[
        (
            "deployment",
            "/spec/template",
            "web",
            Some(("ReplicaSet", "web-6b7f9")),
            Some(("pod-template-hash", "6b7f9")),
            true,
        ),
        (
            "statefulset",
            "/spec/template",
            "db-primary",
            Some(("StatefulSet", "db")),
            None,
            true,
        ),
        (
            "daemonset",
            "/spec/template",
            "daemonset.agent",
            Some(("DaemonSet", "agent")),
            None,
            false,
        ),
        (
            "replicaset",
            "/spec/template",
            "replicaset.workers",
            Some(("ReplicaSet", "workers")),
            None,
            true,
        ),
        (
            "job",
            "/spec/template",
            "job.backfill",
            Some(("Job", "backfill")),
            None,
            true,
        ),
        (
            "cronjob",
            "/spec/jobTemplate/spec/template",
            "cronjob.report",
            Some(("Job", "report-29100000")),
            None,
            true,
        ),
        (
            "rollout",
            "/spec/template",
            "rollout.canary",
            Some(("ReplicaSet", "canary-5c8d")),
            Some(("rollouts-pod-template-hash", "5c8d")),
            true,
        ),
        ("pod", "", "solo", None, None, true),
    ];
    for &(name, ptr, lease, owner, hash, native) in cases {
        let text = fixture(&format!("kinds/{name}.yaml"));
        let original = docs(&text).remove(0);
        let mut obj = original.clone();
        let edit = inject::inject(&mut obj, &opts()).unwrap();
        assert!(edit.changed, "{name}");
        let template = obj.pointer(ptr).unwrap().clone();

        let found = electors(&template);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert!(
            found[0]["args"]
                .as_array()
                .unwrap()
                .contains(&json!(format!("--election={lease}"))),
            "{name}: {found:?}"
        );
        assert_eq!(found[0]["image"], "example.test/elector:1", "{name}");
        assert_eq!(found[0].get("restartPolicy").is_some(), native, "{name}");
        assert_eq!(
            template["metadata"]["annotations"]["leader-election/status"],
            "injected"
        );
        for c in template["spec"]["containers"].as_array().unwrap() {
            if c["name"] == contract::CONTAINER_NAME {
                continue;
            }
            let env: Vec<&str> = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["name"].as_str())
                .collect();
            for want in [
                contract::env::APP_URL,
                contract::env::APP_LEASE_NAME,
                contract::env::APP_IDENTITY,
            ] {
                assert!(env.contains(&want), "{name}: {} lacks {want}", c["name"]);
            }
        }

        // The webhook, seeing a pod created from it, changes nothing.
        let pod = pod_from(&template, owner, hash);
        for supported in [true, false] {
            let ctx = PodContext {
                namespace: "shop",
                image: "example.test/elector:1",
                image_pull_policy: "IfNotPresent",
                native_mode: NativeMode::Auto,
                native_supported: Some(supported),
            };
            let m = patch::mutate_pod(&pod, &ctx).unwrap();
            assert_eq!(
                m.patch, None,
                "{name}: the webhook would patch an injected pod"
            );
            assert!(m.plan.unwrap().already_injected, "{name}");
        }
        // Nor does propagation touch the workload.
        if !ptr.is_empty() && ptr == "/spec/template" {
            let m = propagate::mutate_workload(kind_of(&obj), &obj, None).unwrap();
            assert_eq!(m.patch, None, "{name}");
        }
        // The controller wants the Lease the elector uses, for the workload (or the pod).
        let desired = if ptr.is_empty() {
            grants::pod_desired("shop", &serde_json::from_value(obj.clone()).unwrap())
        } else {
            let t: PodTemplateSpec = serde_json::from_value(template.clone()).unwrap();
            let wname = obj["metadata"]["name"].as_str().unwrap().to_string();
            let owner = grants::Owner {
                api_version: "x".into(),
                kind: "X".into(),
                name: wname,
                uid: "u".into(),
            };
            grants::workload_desired("shop", kind_of(&obj), owner, Some(&t), [])
        };
        assert_eq!(desired.create_lease.as_deref(), Some(lease), "{name}");

        // Injecting again changes nothing; uninject gives back the input, key order included.
        let mut again = obj.clone();
        assert!(
            !inject::inject(&mut again, &opts()).unwrap().changed,
            "{name}"
        );
        let mut back = obj.clone();
        assert!(
            inject::uninject(&mut back, false).unwrap().changed,
            "{name}"
        );
        assert_eq!(back, original, "{name}");
        assert_eq!(back.to_string(), original.to_string(), "{name}: key order");
    }
}

#[test]
fn objects_not_asking_are_left_alone() {
    let d = docs(&fixture("kinds/deployment.yaml")).remove(0);
    let mut off = d.clone();
    off["spec"]["template"]["metadata"]["annotations"]["leader-election/enabled"] = json!("false");
    let mut none = d.clone();
    none["spec"]["template"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let mut system = d.clone();
    system["metadata"]["namespace"] = json!("kube-system");
    let mut other_group = d.clone();
    other_group["apiVersion"] = json!("example.com/v1");
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}});
    for (what, mut obj) in [
        ("enabled: false", off),
        ("no annotation", none),
        ("excluded namespace", system),
        ("a Deployment of another group", other_group),
        ("a ConfigMap", config_map),
    ] {
        let before = obj.clone();
        let e = inject::inject(
            &mut obj,
            &Options {
                with_rbac: true,
                ..opts()
            },
        )
        .unwrap();
        assert!(!e.changed && e.extra.is_empty(), "{what}");
        assert_eq!(obj, before, "{what}");
        assert!(!inject::uninject(&mut obj, true).unwrap().changed, "{what}");
    }
}

#[test]
fn a_stream_keeps_untouched_documents_byte_for_byte_and_key_order() {
    let text = fixture("stream.yaml");
    let out = run_inject("stream.yaml", &text, Format::Yaml, &opts()).unwrap();
    assert!(out.changed);
    let chunks = stream::split_documents(&text);
    // The comment-only preamble, the ConfigMap and the Service, exactly as read.
    for i in [0, 1, 3] {
        assert!(
            out.text.contains(chunks[i]),
            "document {i} changed:\n{}",
            out.text
        );
    }
    assert!(
        out.text
            .starts_with("# Shop: config, the app and its Service.\n---\n# Settings")
    );
    assert!(
        out.text
            .contains("---\n# The app: one replica of three does the work.\napiVersion: apps/v1\n")
    );
    // Keys of the changed document keep their order; added ones come last.
    let pos = |s: &str| {
        out.text
            .find(s)
            .unwrap_or_else(|| panic!("{s} not in\n{}", out.text))
    };
    assert!(pos("name: web\n  namespace: shop") < pos("replicas: 3"));
    assert!(pos("leader-election/enabled") < pos("prometheus.io/scrape"));
    assert!(pos("prometheus.io/scrape") < pos("leader-election/status"));
    assert!(pos("terminationGracePeriodSeconds") < pos("containers:"));
    let all = docs(&out.text);
    assert_eq!(all.len(), 3);
    // Strings stay strings for YAML 1.1 readers (kubectl): "true", "on", "3".
    assert_eq!(
        all[1]["spec"]["template"]["metadata"]["annotations"]["leader-election/enabled"],
        "true"
    );
    assert_eq!(all[0]["data"]["flag"], "yes");
    assert!(
        !out.text.contains("leader-election/enabled: true"),
        "{}",
        out.text
    );
    assert_eq!(electors(&all[1]["spec"]["template"]).len(), 1);

    // Idempotent, byte for byte; uninject gives back the documents.
    let again = run_inject("stream.yaml", &out.text, Format::Yaml, &opts()).unwrap();
    assert!(!again.changed);
    assert_eq!(again.text, out.text);
    let back = run_uninject(&out.text, Format::Yaml, false);
    assert_eq!(docs(&back.text), docs(&text));
    // Untouched documents are still byte-identical after the round trip.
    for i in [0, 1, 3] {
        assert!(back.text.contains(chunks[i]), "document {i}");
    }
}

#[test]
fn workload_annotations_are_propagated_as_the_webhook_would() {
    let text = fixture("workload-annotated.yaml");
    let out = run_inject("w.yaml", &text, Format::Yaml, &opts()).unwrap();
    let d = docs(&out.text).remove(0);
    let a = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(a["leader-election/enabled"], "true");
    assert_eq!(a["leader-election/leader-label"], "true");
    assert_eq!(
        a["leader-election/propagated"],
        Value::Null,
        "offline, the copied keys are the user's: no propagation record"
    );
    assert_eq!(electors(&d["spec"]["template"]).len(), 1);
    // In the cluster: no propagation patch (no drift), no pod patch.
    assert_eq!(
        propagate::mutate_workload(kind_of(&d), &d, None)
            .unwrap()
            .patch,
        None
    );
    let back = run_uninject(&out.text, Format::Yaml, false);
    assert_eq!(docs(&back.text), docs(&text));
    assert_eq!(docs(&back.text)[0].to_string(), docs(&text)[0].to_string());
}

#[test]
fn a_json_list_stays_json_with_its_items_in_order() {
    let text = fixture("list.json");
    let out = run_inject("list.json", &text, Format::Json, &opts()).unwrap();
    let v: Value = serde_json::from_str(&out.text).unwrap();
    assert!(
        out.text
            .starts_with("{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\""),
        "{}",
        out.text
    );
    let input: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["items"][0], input["items"][0]);
    assert_eq!(electors(&v["items"][1]["spec"]["template"]).len(), 1);
    let keys: Vec<&String> = v["items"][1].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
    let back = run_uninject(&out.text, Format::Json, false);
    assert_eq!(
        serde_json::from_str::<Value>(&back.text)
            .unwrap()
            .to_string(),
        input.to_string()
    );
    // An untouched JSON file is written back as read.
    let plain = run_inject(
        "p.json",
        "{\"kind\": \"Service\", \"apiVersion\": \"v1\"}",
        Format::Json,
        &opts(),
    )
    .unwrap();
    assert!(!plain.changed);
    assert_eq!(
        plain.text,
        "{\"kind\": \"Service\", \"apiVersion\": \"v1\"}"
    );
}

#[test]
fn with_rbac_adds_the_controllers_lease_role_and_binding_once() {
    let text = fixture("kinds/statefulset.yaml");
    let o = Options {
        with_rbac: true,
        ..opts()
    };
    let out = run_inject("s.yaml", &text, Format::Yaml, &o).unwrap();
    let all = docs(&out.text);
    let kinds: Vec<&str> = all.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["StatefulSet", "Lease", "Role", "RoleBinding"]);
    assert_eq!(all[1]["metadata"]["name"], "db-primary");
    assert_eq!(all[1]["metadata"]["namespace"], "shop");
    assert_eq!(
        all[1]["metadata"]["labels"][grants::MANAGED_BY],
        grants::MANAGED_BY_VALUE
    );
    assert_eq!(all[2]["metadata"]["name"], "leader-election-statefulset-db");
    assert_eq!(all[2]["rules"][0]["resourceNames"], json!(["db-primary"]));
    assert_eq!(
        all[2]["rules"][0]["verbs"],
        json!(grants::ELECTOR_LEASE_VERBS)
    );
    assert_eq!(
        all[3]["subjects"],
        json!([{"kind": "ServiceAccount", "name": "db", "namespace": "shop"}])
    );
    assert_eq!(all[3]["roleRef"]["name"], "leader-election-statefulset-db");
    for d in &all[1..] {
        assert!(d["metadata"].get("ownerReferences").is_none(), "{d}");
    }
    // Run again: nothing added twice.
    let again = run_inject("s.yaml", &out.text, Format::Yaml, &o).unwrap();
    assert_eq!(again.text, out.text);
    // A List gets them as items after the workload.
    let list = run_inject("l.json", &fixture("list.json"), Format::Json, &o).unwrap();
    let v: Value = serde_json::from_str(&list.text).unwrap();
    let kinds: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["Service", "Deployment", "Lease", "Role", "RoleBinding"]
    );
    // uninject --with-rbac removes them again.
    let back = run_uninject(&out.text, Format::Yaml, true);
    assert_eq!(docs(&back.text), docs(&text));
    let back = run_uninject(&list.text, Format::Json, true);
    assert_eq!(
        serde_json::from_str::<Value>(&back.text).unwrap(),
        serde_json::from_str::<Value>(&fixture("list.json")).unwrap()
    );
    // Without a namespace there is no Role to write.
    let e = run_inject(
        "b.yaml",
        &fixture("bad-duration.yaml").replace("\"abc\"", "\"30s\""),
        Format::Yaml,
        &o,
    )
    .unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("b.yaml: document 2 (Deployment my-app): metadata.namespace: missing"),
        "{e:?}"
    );
    let ns = Options {
        namespace: Some("team".into()),
        ..o
    };
    let fine = run_inject(
        "b.yaml",
        &fixture("bad-duration.yaml").replace("\"abc\"", "\"30s\""),
        Format::Yaml,
        &ns,
    )
    .unwrap();
    assert_eq!(docs(&fine.text)[2]["metadata"]["namespace"], "team");
}

#[test]
fn errors_name_file_document_and_field_and_produce_nothing() {
    let cases: Vec<(String, &str)> = vec![
        (
            fixture("bad-duration.yaml"),
            "deploy.yaml: document 2 (Deployment my-app): spec.template.metadata.annotations.leader-election/lease-duration: annotation leader-election/lease-duration=\"abc\" is invalid",
        ),
        (
            fixture("workload-annotated.yaml")
                .replace("leader-label: \"true\"", "leader-label: \"maybe\""),
            "deploy.yaml: document 1 (Deployment web): metadata.annotations.leader-election/leader-label:",
        ),
        (
            fixture("stream.yaml").replace("containerPort: 8080", "containerPort: 4040"),
            "deploy.yaml: document 2 (Deployment web): spec.template.spec.containers: container \"app\" already uses port 4040",
        ),
        (
            fixture("kinds/cronjob.yaml").replace("renew-deadline: 20s", "renew-deadline: 40s"),
            "deploy.yaml: document 1 (CronJob report): spec.jobTemplate.spec.template.metadata.annotations.leader-election/renew-deadline: invalid lease timings",
        ),
        (
            fixture("kinds/pod.yaml").replace("  labels:\n    app.kubernetes.io/name: solo\n", ""),
            "deploy.yaml: document 1 (Pod solo): metadata.annotations.leader-election/lease-name: cannot choose a Lease name",
        ),
        (
            "a: [\n".to_string(),
            "deploy.yaml: document 1: not valid YAML",
        ),
    ];
    for (text, want) in cases {
        let e = run_inject("deploy.yaml", &text, Format::Yaml, &opts()).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(want), "got {:?}\nwant {want:?}", e[0]);
    }
    // Every bad document is reported, not just the first.
    let two = format!(
        "{}---\n{}",
        fixture("bad-duration.yaml"),
        fixture("bad-duration.yaml")
    );
    assert_eq!(
        run_inject("d.yaml", &two, Format::Yaml, &opts())
            .unwrap_err()
            .len(),
        2
    );
    assert!(
        run_inject("d.json", "{", Format::Json, &opts()).unwrap_err()[0]
            .starts_with("d.json: not valid JSON")
    );
}

// ---- property test: uninject(inject(x)) == x ----

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}"
}

fn container(i: usize) -> impl Strategy<Value = Value> {
    (
        proptest::option::of(proptest::collection::vec((name(), name()), 1..3)),
        proptest::option::of(1024u16..4000),
        any::<bool>(),
    )
        .prop_map(move |(env, port, resources)| {
            let mut c = json!({"name": format!("c{i}"), "image": "img:1"});
            if let Some(env) = env {
                // Distinct names, none of the injected ones.
                let mut seen = std::collections::BTreeSet::new();
                let env: Vec<Value> = env
                    .into_iter()
                    .filter(|(n, _)| seen.insert(n.clone()))
                    .map(|(n, v)| json!({"name": format!("E_{n}"), "value": v}))
                    .collect();
                c["env"] = json!(env);
            }
            if let Some(p) = port {
                c["ports"] = json!([{"containerPort": p}]);
            }
            if resources {
                c["resources"] = json!({"requests": {"cpu": "5m"}});
            }
            c
        })
}

fn deployment() -> impl Strategy<Value = (Value, Options)> {
    (
        name(),
        (1usize..4).prop_flat_map(|n| (0..n).map(container).collect::<Vec<_>>()),
        proptest::option::of((0usize..2).prop_flat_map(|n| (0..n.max(1)).map(|i| container(10 + i)).collect::<Vec<_>>())),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just("auto"), Just("always"), Just("never")]),
        proptest::option::of(prop_oneof![Just("20s"), Just("1m")]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(n, containers, init, on_workload, native, duration, volumes, other, supported)| {
            let mut settings = serde_json::Map::new();
            settings.insert("leader-election/enabled".into(), json!("true"));
            if let Some(m) = native {
                settings.insert("leader-election/native-sidecar".into(), json!(m));
            }
            if let Some(d) = duration {
                settings.insert("leader-election/lease-duration".into(), json!(d));
            }
            let mut tmeta = json!({"labels": {"app": n}});
            if other {
                tmeta["annotations"] = json!({"example.com/x": "1"});
            }
            let mut wmeta = json!({"name": n, "namespace": "ns"});
            if on_workload {
                wmeta["annotations"] = Value::Object(settings);
            } else {
                let a = tmeta.as_object_mut().unwrap().entry("annotations").or_insert(json!({}));
                a.as_object_mut().unwrap().extend(settings);
            }
            let mut spec = json!({"containers": containers});
            if let Some(init) = init {
                spec["initContainers"] = json!(init);
            }
            if volumes {
                spec["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
            }
            let d = json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": wmeta,
                "spec": {"selector": {"matchLabels": {"app": n}}, "template": {"metadata": tmeta, "spec": spec}},
            });
            (d, Options { native_supported: supported, with_rbac: true, ..opts() })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn uninject_undoes_inject((x, o) in deployment()) {
        let mut y = x.clone();
        let e = match inject::inject(&mut y, &o) {
            // `always` where native sidecars cannot run is refused, as the webhook refuses it.
            Err(p) if !o.native_supported && p.message.contains("cannot run native sidecars") => {
                return Ok(());
            }
            r => r.map_err(|p| TestCaseError::fail(format!("{p:?}")))?,
        };
        prop_assert!(e.changed);
        prop_assert_eq!(electors(&y["spec"]["template"]).len(), 1);
        prop_assert_eq!(e.extra.len(), 3);
        let mut twice = y.clone();
        prop_assert!(!inject::inject(&mut twice, &o).unwrap().changed);
        let mut back = y.clone();
        inject::uninject(&mut back, false).unwrap();
        prop_assert_eq!(back.to_string(), x.to_string());

        // Through text as well: YAML out and back in gives the same documents.
        let text = serde_saphyr::to_string(&x).unwrap();
        let out = run_inject("p.yaml", &text, Format::Yaml, &o).unwrap();
        let injected = docs(&out.text);
        prop_assert_eq!(injected.len(), 4);
        prop_assert_eq!(&injected[0], &y);
        let back = run_uninject(&out.text, Format::Yaml, true);
        prop_assert_eq!(docs(&back.text), vec![x]);
    }
}

/// The workload kind of a manifest, as the webhook's propagation and the controller name it.
fn kind_of(obj: &Value) -> webhook::admission::lease_name::Kind {
    let kind = obj["kind"].as_str().unwrap_or_default();
    webhook::admission::lease_name::Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .unwrap_or_else(|| panic!("not a workload kind: {kind}"))
}
