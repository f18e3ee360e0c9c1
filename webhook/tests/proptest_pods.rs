//! Property tests over random pods: the patch always applies, and admitting the result again
//! adds nothing (twice == once).

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use webhook::admission::patch::{self, PodContext};
use webhook::admission::settings::NativeMode;

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![Just(None), s.prop_map(Some)]
}

/// `None`: field absent; `Some(Value::Null)`: explicit null; otherwise the value.
fn env_list() -> impl Strategy<Value = Option<Value>> {
    let vars = vec![
        json!({"name": "LEADER_ELECTION_URL", "value": "http://mine:1"}),
        json!({"name": "LEADER_ELECTION_LEASE_NAME", "value": "mine"}),
        json!({"name": "LEADER_ELECTION_IDENTITY", "value": "me"}),
        json!({"name": "FOO", "value": "bar"}),
    ];
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        prop::sample::subsequence(vars, 0..4).prop_map(|v| Some(Value::Array(v))),
    ]
}

fn container(name: String) -> impl Strategy<Value = Value> {
    (
        env_list(),
        maybe(prop_oneof![Just(80), Just(4040), Just(5050)]),
        // Now and then the leader-elector:0.4 image, which must be refused, never patched.
        prop_oneof![
            6 => Just("img"),
            1 => Just("gcr.io/google_containers/leader-elector:0.4"),
        ],
        // Guaranteed, Burstable or no resources: the elector follows the pod's QoS.
        maybe(prop_oneof![
            Just(json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
            Just(json!({"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "1Gi"}})),
        ]),
    )
        .prop_map(move |(env, port, image, resources)| {
            let mut c = Map::new();
            c.insert("name".into(), json!(name));
            c.insert("image".into(), json!(image));
            if let Some(r) = resources {
                c.insert("resources".into(), r);
            }
            if let Some(e) = env {
                c.insert("env".into(), e);
            }
            if let Some(p) = port {
                c.insert("ports".into(), json!([{"containerPort": p}]));
            }
            Value::Object(c)
        })
}

fn containers() -> impl Strategy<Value = Vec<Value>> {
    // Unique names, occasionally one called like the elector (a pod injected before).
    prop::sample::subsequence(
        vec![
            "app",
            "sidecar",
            "leader-elector",
            "leader-election",
            "worker",
        ],
        1..4,
    )
    .prop_flat_map(|names| {
        names
            .into_iter()
            .map(|n| container(n.to_string()))
            .collect::<Vec<_>>()
    })
}

fn annotations() -> impl Strategy<Value = Option<Value>> {
    let enabled = prop_oneof![
        4 => Just(Some("true")),
        1 => Just(Some("false")),
        1 => Just(Some("perhaps")),
        1 => Just(None),
    ];
    (
        enabled,
        maybe(prop_oneof![Just("lease-a"), Just("Bad_Name")]),
        maybe(prop_oneof![Just("5050"), Just("4040"), Just("80")]),
        maybe(prop_oneof![
            Just("auto"),
            Just("always"),
            Just("never"),
            Just("x")
        ]),
        maybe(prop_oneof![Just("injected"), Just("other")]),
        maybe(prop_oneof![Just("30s"), Just("1s")]),
        any::<bool>(),
        (
            maybe(prop_oneof![Just("50m"), Just("0.2"), Just("x")]),
            maybe(prop_oneof![Just("100m"), Just("20m")]),
            maybe(prop_oneof![Just("64Mi"), Just("8Mi"), Just("16m")]),
            maybe(prop_oneof![Just("3s"), Just("9s")]),
        ),
    )
        .prop_map(
            |(
                en,
                lease,
                port,
                native,
                status,
                dur,
                present,
                (cpu, cpu_limit, mem_limit, renew),
            )| {
                let mut a = Map::new();
                let mut put = |k: &str, v: Option<&str>| {
                    if let Some(v) = v {
                        a.insert(k.into(), json!(v));
                    }
                };
                put("leader-election/enabled", en);
                put("leader-election/lease-name", lease);
                put("leader-election/port", port);
                put("leader-election/native-sidecar", native);
                put("leader-election/status", status);
                put("leader-election/lease-duration", dur);
                put("leader-election/cpu-request", cpu);
                put("leader-election/cpu-limit", cpu_limit);
                put("leader-election/memory-limit", mem_limit);
                put("leader-election/renew-interval", renew);
                (present || !a.is_empty()).then_some(Value::Object(a))
            },
        )
}

prop_compose! {
    fn pod()(
        annotations in annotations(),
        containers in containers(),
        init in maybe(prop_oneof![Just(json!([])), Just(json!([{"name": "init", "image": "i"}]))]),
        sa in maybe(prop_oneof![Just("default"), Just("custom"), Just("")]),
        alias in any::<bool>(),
        automount in maybe(any::<bool>()),
        volumes in maybe(prop_oneof![
            Just(Value::Null),
            Just(json!([])),
            Just(json!([{"name": "default-token-x", "secret": {"secretName": "default-token-x"}}])),
            Just(json!([{"name": "leader-elector-api-access", "emptyDir": {}}])),
        ]),
        owner in any::<bool>(),
        app_label in any::<bool>(),
    ) -> Value {
        let mut meta = Map::new();
        meta.insert("generateName".into(), json!("p-"));
        if let Some(a) = annotations {
            meta.insert("annotations".into(), a);
        }
        let mut labels = Map::new();
        if app_label {
            labels.insert("app".into(), json!("web"));
        }
        if owner {
            labels.insert("pod-template-hash".into(), json!("abc12"));
            meta.insert("ownerReferences".into(), json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-abc12", "uid": "u", "controller": true}]));
        }
        if !labels.is_empty() {
            meta.insert("labels".into(), Value::Object(labels));
        }
        let mut spec = Map::new();
        spec.insert("containers".into(), Value::Array(containers));
        if let Some(i) = init {
            spec.insert("initContainers".into(), i);
        }
        if let Some(sa) = sa {
            spec.insert("serviceAccountName".into(), json!(sa));
            if alias {
                spec.insert("serviceAccount".into(), json!(sa));
            }
        }
        if let Some(a) = automount {
            spec.insert("automountServiceAccountToken".into(), json!(a));
        }
        if let Some(v) = volumes {
            spec.insert("volumes".into(), v);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }
}

fn ctx_strategy() -> impl Strategy<Value = (NativeMode, Option<bool>)> {
    (
        prop_oneof![
            Just(NativeMode::Auto),
            Just(NativeMode::Always),
            Just(NativeMode::Never)
        ],
        maybe(any::<bool>()),
    )
}

fn admit(doc: &Value, ctx: &PodContext<'_>) -> Result<Value, String> {
    let pod: Pod = serde_json::from_value(doc.clone()).map_err(|e| format!("decode: {e}"))?;
    let m = patch::mutate_pod(&pod, ctx).map_err(|d| d.0)?;
    let mut out = doc.clone();
    if let Some(p) = &m.patch {
        json_patch::patch(&mut out, p).map_err(|e| format!("PATCH DOES NOT APPLY: {e}"))?;
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn patch_applies_and_is_idempotent(doc in pod(), (mode, supported) in ctx_strategy()) {
        let ctx = PodContext {
            namespace: "apps",
            image: "img:1",
            image_pull_policy: "IfNotPresent",
            native_mode: mode,
            native_supported: supported,
        };
        match admit(&doc, &ctx) {
            Ok(once) => {
                let twice = admit(&once, &ctx).map_err(TestCaseError::fail)?;
                prop_assert_eq!(&twice, &once, "second admission changed the pod");
                if once != doc {
                    // Whatever was done, the result is a decodable pod with at most one elector.
                    let pod: Pod = serde_json::from_value(once.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let spec = pod.spec.unwrap_or_default();
                    let electors = spec.containers.iter().chain(spec.init_containers.iter().flatten())
                        .filter(|c| c.name == contract::CONTAINER_NAME).count();
                    // Exactly one, unless the input already claimed to be injected.
                    let claimed = doc["metadata"]["annotations"]["leader-election/status"] == "injected";
                    prop_assert!(electors == 1 || (claimed && electors == 0), "{} electors", electors);
                    prop_assert_eq!(
                        once["metadata"]["annotations"]["leader-election/status"].as_str(),
                        Some("injected")
                    );
                    // Never injected next to the old sidecar.
                    prop_assert!(
                        !spec.containers.iter().chain(spec.init_containers.iter().flatten())
                            .any(|c| c.image.as_deref() == Some("gcr.io/google_containers/leader-elector:0.4")
                                || c.name == "leader-election"),
                        "injected next to the leader-elector:0.4 sidecar"
                    );
                    // A native elector is the first init container.
                    if let Some(i) = spec.init_containers.as_ref().and_then(|l| l.iter().position(|c| c.name == contract::CONTAINER_NAME)) {
                        prop_assert_eq!(i, 0);
                    }
                    for c in spec.containers.iter().filter(|c| c.name != contract::CONTAINER_NAME) {
                        let env = c.env.as_deref().unwrap_or_default();
                        for name in ["LEADER_ELECTION_URL", "LEADER_ELECTION_LEASE_NAME", "LEADER_ELECTION_IDENTITY"] {
                            prop_assert_eq!(env.iter().filter(|e| e.name == name).count(), 1, "{} in {}", name, c.name);
                        }
                    }
                }
            }
            Err(msg) => {
                prop_assert!(!msg.contains("PATCH DOES NOT APPLY"), "{}", msg);
                prop_assert!(msg.contains("leader-election/") || msg.contains("port"), "unclear denial: {}", msg);
            }
        }
    }
}
