//! The built `webhook` binary (files mode, TLS on loopback) behind the shipped
//! MutatingWebhookConfiguration — rules, selectors and policies as shipped, clientConfig pointed
//! at `https://127.0.0.1:<port>/mutate` with the caBundle of `webhook certs` — running as its
//! ServiceAccount with the shipped RBAC. Pods come from the real controller-manager.

use std::collections::HashMap;
use std::time::Duration;

use contract::{annotations, deploy};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use testenv::webhook::{
    Webhook, create_webhook_configuration, elector_container, generate_certs, injection_problems,
    loopback_webhook_configuration, shipped_webhook_configuration, untouched,
};
use testenv::{ControlPlane, Result, eventually, fail, manifests, procs, shared};
use tokio::sync::OnceCell;

const POD_TIMEOUT: Duration = Duration::from_secs(120);

struct Env {
    cp: &'static ControlPlane,
    webhook: Webhook,
}

async fn env() -> Result<&'static Env> {
    static ENV: OnceCell<Env> = OnceCell::const_new();
    ENV.get_or_try_init(|| async {
        let cp = shared().await?;
        testenv::webhook::apply_shipped_rbac(cp).await?;
        let certs = procs::scratch_dir("webhook-certs")?;
        let (ca, cert, key) = generate_certs(&certs).await?;
        let ca_pem =
            std::fs::read_to_string(&ca).map_err(|e| fail("reading ca.crt", e.to_string()))?;
        let kubeconfig = cp
            .service_account_kubeconfig(deploy::NAMESPACE, deploy::WEBHOOK_NAME)
            .await?;
        let webhook = Webhook::spawn(
            &kubeconfig,
            &[
                format!("--tls-cert-file={}", cert.display()),
                format!("--tls-key-file={}", key.display()),
                format!("--namespace={}", deploy::NAMESPACE),
            ],
            "webhook",
            &certs,
        )?;
        webhook.wait_ready(&ca_pem, Duration::from_secs(60)).await?;
        let mwc = loopback_webhook_configuration(
            &shipped_webhook_configuration().await?,
            deploy::WEBHOOK_CONFIGURATION,
            &webhook.url(),
            Some(&ca_pem),
        )?;
        create_webhook_configuration(cp, &mwc).await?;
        webhook.wait_called(cp, Duration::from_secs(60)).await?;
        Ok(Env { cp, webhook })
    })
    .await
}

fn enabled() -> serde_json::Value {
    serde_json::json!({ annotations::ENABLED: "true" })
}

/// A Deployment of nginx:1.25 with optional pod-template and workload annotations; Recreate, so
/// a template change replaces the pods even though none ever becomes ready (no nodes).
fn deployment_json(
    name: &str,
    replicas: i32,
    template_annotations: Option<serde_json::Value>,
    annotations: Option<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations.unwrap_or(serde_json::json!({}))},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": template_annotations.unwrap_or(serde_json::json!({}))},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}
            }
        }
    })
}

fn pod_json(name: &str, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}
    })
}

async fn pods(cp: &ControlPlane, ns: &str) -> Result<Vec<serde_json::Value>> {
    let list = Api::<Pod>::namespaced(cp.admin_client().await?, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| fail(format!("listing pods in {ns}"), e.to_string()))?;
    list.items
        .into_iter()
        .map(|p| serde_json::to_value(p).map_err(|e| fail("pod as JSON", e.to_string())))
        .collect()
}

/// Whether object `ns/name` of kind `K` exists.
async fn exists<K>(cp: &ControlPlane, ns: &str, name: &str) -> Result<bool>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let found = Api::<K>::namespaced(cp.admin_client().await?, ns)
        .get_opt(name)
        .await
        .map_err(|e| {
            fail(
                format!(
                    "reading {} {ns}/{name}",
                    K::kind(&K::DynamicType::default())
                ),
                e.to_string(),
            )
        })?;
    Ok(found.is_some())
}

/// Secret name → the ServiceAccount whose token it holds.
async fn token_owners(cp: &ControlPlane, ns: &str) -> Result<HashMap<String, String>> {
    let list = Api::<Secret>::namespaced(cp.admin_client().await?, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| fail(format!("listing secrets in {ns}"), e.to_string()))?;
    Ok(list
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
        .filter_map(|s| {
            let owner = s
                .metadata
                .annotations
                .as_ref()?
                .get("kubernetes.io/service-account.name")?
                .clone();
            Some((s.metadata.name?, owner))
        })
        .collect())
}

fn explain<T>(r: Result<T>, env: &Env) -> Result<T> {
    r.map_err(|e| env.webhook.with_output(e))
}

/// Waits for `n` pods matching `filter` and returns them.
async fn wait_pods(
    cp: &ControlPlane,
    ns: &str,
    n: usize,
    what: &str,
    filter: impl Fn(&serde_json::Value) -> bool,
) -> Result<Vec<serde_json::Value>> {
    eventually(what, POD_TIMEOUT, || async {
        let all = pods(cp, ns).await.map_err(|e| e.to_string())?;
        let matching: Vec<serde_json::Value> = all.iter().filter(|p| filter(p)).cloned().collect();
        if matching.len() >= n {
            Ok(matching)
        } else {
            let names: Vec<&str> = all
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect();
            Err(format!(
                "{} of {n} matching; pods: {names:?}",
                matching.len()
            ))
        }
    })
    .await
}

#[tokio::test]
async fn the_example_yields_three_injected_pods_on_their_own_service_account_with_a_lease_role()
-> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    let ns = cp.create_namespace("webhook-example").await?;
    explain(
        async {
            let example = manifests::manifests_dir().join("examples").join("my-app");
            let example = example.display().to_string();
            cp.kubectl_ok(&["apply", "-n", &ns, "-k", &example], None)
                .await?;
            let pods = wait_pods(cp, &ns, 3, "3 pods of my-app", |_| true).await?;
            assert_eq!(pods.len(), 3, "exactly the 3 replicas");
            let owners = token_owners(cp, &ns).await?;
            for pod in &pods {
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                assert!(
                    name.starts_with("my-app-"),
                    "created by the ReplicaSet: {name}"
                );
                let problems = injection_problems(pod, "my-app", &|s| owners.get(s).cloned());
                if !problems.is_empty() {
                    return Err(fail(
                        format!("pod {name}"),
                        format!("{problems:?}\n{pod:#}"),
                    ));
                }
                let image = elector_container(pod).and_then(|c| c["image"].as_str());
                assert_eq!(image, Some(deploy::DEFAULT_ELECTOR_IMAGE));
            }
            for pod in &pods {
                assert_eq!(
                    pod["spec"]["serviceAccountName"], "default",
                    "the pod keeps its ServiceAccount"
                );
            }
            // The controller: Lease created ahead, a Role on exactly that Lease bound to the
            // pods' ServiceAccount; never the old shared ServiceAccount or ClusterRole binding.
            let admin = cp.admin_client().await?;
            let grant = "leader-election-deployment-my-app";
            let (role, rb) = eventually(
                "the controller's Role and RoleBinding",
                POD_TIMEOUT,
                || async {
                    let role = Api::<Role>::namespaced(admin.clone(), &ns)
                        .get_opt(grant)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("no Role yet")?;
                    let rb = Api::<RoleBinding>::namespaced(admin.clone(), &ns)
                        .get_opt(grant)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("no RoleBinding yet")?;
                    Ok((role, rb))
                },
            )
            .await?;
            let rules = role.rules.unwrap_or_default();
            assert_eq!(rules.len(), 1, "{rules:?}");
            assert_eq!(
                rules[0].resource_names.as_deref(),
                Some(&["my-app".to_string()][..])
            );
            assert_eq!(rules[0].verbs, ["get", "list", "watch", "update"]);
            let subjects = rb.subjects.unwrap_or_default();
            assert!(
                subjects.len() == 1
                    && subjects[0].name == "default"
                    && subjects[0].namespace.as_deref() == Some(ns.as_str()),
                "RoleBinding subjects {subjects:?}"
            );
            assert!(
                exists::<Lease>(cp, &ns, "my-app").await?,
                "Lease my-app created ahead"
            );
            assert!(
                !exists::<ServiceAccount>(cp, &ns, contract::SERVICE_ACCOUNT).await?,
                "no shared elector ServiceAccount"
            );
            Ok(())
        }
        .await,
        env,
    )
}

#[tokio::test]
async fn objects_without_the_annotation_are_unchanged() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    let ns = cp.create_namespace("webhook-plain").await?;
    explain(
        async {
            let admin = cp.admin_client().await?;
            let sent: Pod = serde_json::from_value(pod_json("plain", serde_json::json!({})))
                .map_err(|e| fail("pod", e.to_string()))?;
            let stored = Api::<Pod>::namespaced(admin.clone(), &ns)
                .create(&PostParams::default(), &sent)
                .await
                .map_err(|e| fail("creating a plain pod", e.to_string()))?;
            let stored = serde_json::to_value(&stored).map_err(|e| fail("pod", e.to_string()))?;
            assert!(untouched(&stored), "{stored:#}");
            assert_eq!(stored["spec"]["serviceAccountName"], "default");
            assert_eq!(
                stored["spec"]["containers"].as_array().map(Vec::len),
                Some(1)
            );

            let d: Deployment = serde_json::from_value(deployment_json("plain", 1, None, None))
                .map_err(|e| fail("deployment", e.to_string()))?;
            let stored = Api::<Deployment>::namespaced(admin, &ns)
                .create(&PostParams::default(), &d)
                .await
                .map_err(|e| fail("creating a plain Deployment", e.to_string()))?;
            let template_ann = stored
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .unwrap_or_default();
            assert!(
                template_ann.is_empty(),
                "template annotations added: {template_ann:?}"
            );
            let p = wait_pods(cp, &ns, 2, "the plain Deployment's pod", |_| true).await?;
            assert!(p.iter().all(untouched), "{p:#?}");
            assert!(
                !exists::<ServiceAccount>(cp, &ns, contract::SERVICE_ACCOUNT).await?,
                "no elector ServiceAccount for unannotated objects"
            );
            Ok(())
        }
        .await,
        env,
    )
}

/// The message of an admission denial, or why it was not one.
fn denial_message(
    r: std::result::Result<impl std::fmt::Debug, kube::Error>,
) -> std::result::Result<String, String> {
    match r {
        Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => Ok(s.message),
        other => Err(format!("expected a denial, got {other:?}")),
    }
}

#[tokio::test]
async fn bad_annotation_values_are_rejected_with_their_message() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    let ns = cp.create_namespace("webhook-bad").await?;
    explain(
        async {
            let admin = cp.admin_client().await?;
            let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
            let deployments = Api::<Deployment>::namespaced(admin, &ns);
            let bad_pod: Pod = serde_json::from_value(pod_json(
                "bad",
                serde_json::json!({annotations::ENABLED: "true", annotations::LEASE_DURATION: "soon"}),
            ))
            .map_err(|e| fail("pod", e.to_string()))?;
            let msg = denial_message(pods.create(&PostParams::default(), &bad_pod).await)
                .map_err(|e| fail("a pod with lease-duration \"soon\"", e))?;
            assert!(msg.contains(annotations::LEASE_DURATION) && msg.contains("soon"), "{msg}");

            let bad_deploy: Deployment = serde_json::from_value(deployment_json(
                "bad",
                1,
                None,
                Some(serde_json::json!({annotations::ENABLED: "yes"})),
            ))
            .map_err(|e| fail("deployment", e.to_string()))?;
            let msg = denial_message(deployments.create(&PostParams::default(), &bad_deploy).await)
                .map_err(|e| fail("a Deployment with enabled \"yes\"", e))?;
            assert!(msg.contains(annotations::ENABLED) && msg.contains("yes"), "{msg}");

            assert!(self::pods(cp, &ns).await?.is_empty(), "nothing was created");
            Ok(())
        }
        .await,
        env,
    )
}

fn is_injected(p: &serde_json::Value) -> bool {
    p["metadata"]["annotations"][annotations::STATUS] == annotations::STATUS_INJECTED
}

fn template_hash(p: &serde_json::Value) -> String {
    p["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `kubectl annotate deployment <name> <change>`, as a user does; returns the pod template's
/// annotations afterwards (as kubectl prints them), which the webhook may have changed.
async fn annotate_deployment(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    change: &str,
) -> Result<String> {
    cp.kubectl_annotate(ns, "deployment", name, change).await?;
    cp.kubectl_ok(
        &[
            "get",
            "-n",
            ns,
            "deployment",
            name,
            "-o",
            "jsonpath={.spec.template.metadata.annotations}",
        ],
        None,
    )
    .await
}

/// The pod-template-hash of the ReplicaSet that matches the Deployment's current template.
async fn current_hash(cp: &ControlPlane, ns: &str, name: &str) -> Result<String> {
    let admin = cp.admin_client().await?;
    let d = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(name)
        .await
        .map_err(|e| fail("reading the Deployment", e.to_string()))?;
    let want = d.spec.map(|s| s.template);
    let rss = Api::<ReplicaSet>::namespaced(admin, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| fail("listing ReplicaSets", e.to_string()))?;
    for rs in rss.items {
        let mut t = rs.spec.as_ref().and_then(|s| s.template.clone());
        // The ReplicaSet's template carries the hash label on top of the Deployment's.
        let hash = t
            .as_mut()
            .and_then(|t| t.metadata.as_mut())
            .and_then(|m| m.labels.as_mut())
            .and_then(|l| l.remove("pod-template-hash"));
        if t == want {
            return hash.ok_or_else(|| fail("ReplicaSet", "no pod-template-hash"));
        }
    }
    Err(fail(
        "ReplicaSets",
        "none matches the Deployment's template yet",
    ))
}

#[tokio::test]
async fn annotating_a_deployment_injects_its_new_pods_and_removing_it_stops() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    let ns = cp.create_namespace("webhook-annotate").await?;
    explain(
        async {
            let d: Deployment = serde_json::from_value(deployment_json("web", 1, None, None))
                .map_err(|e| fail("deployment", e.to_string()))?;
            Api::<Deployment>::namespaced(cp.admin_client().await?, &ns)
                .create(&PostParams::default(), &d)
                .await
                .map_err(|e| fail("creating web", e.to_string()))?;
            let first = wait_pods(cp, &ns, 1, "web's first pod", |_| true).await?;
            assert!(first.iter().all(untouched));

            let template =
                annotate_deployment(cp, &ns, "web", &format!("{}=true", annotations::ENABLED))
                    .await?;
            assert!(
                template.contains(annotations::ENABLED)
                    && template.contains(annotations::PROPAGATED),
                "{template}"
            );
            let hash = eventually(
                "a ReplicaSet for the annotated template",
                POD_TIMEOUT,
                || async {
                    current_hash(cp, &ns, "web")
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .await?;
            let injected = wait_pods(cp, &ns, 1, "an injected pod of the new ReplicaSet", |p| {
                template_hash(p) == hash
            })
            .await?;
            let owners = token_owners(cp, &ns).await?;
            for p in &injected {
                let problems = injection_problems(p, "web", &|s| owners.get(s).cloned());
                assert!(problems.is_empty(), "{problems:?}");
            }

            let template =
                annotate_deployment(cp, &ns, "web", &format!("{}-", annotations::ENABLED)).await?;
            assert!(
                !template.contains(annotations::ENABLED),
                "propagated annotation removed: {template}"
            );
            let hash_after = eventually(
                "the ReplicaSet for the restored template",
                POD_TIMEOUT,
                || async {
                    match current_hash(cp, &ns, "web").await {
                        Ok(h) if h != hash => Ok(h),
                        Ok(h) => Err(format!("still {h}")),
                        Err(e) => Err(e.to_string()),
                    }
                },
            )
            .await?;
            let after = wait_pods(cp, &ns, 1, "a pod created after the removal", |p| {
                template_hash(p) == hash_after && p["metadata"]["deletionTimestamp"].is_null()
            })
            .await?;
            // Pods created after the removal are not injected; the earlier plain pod may have been
            // replaced by Recreate, so judge only pods created after the injected ones.
            let injected_names: Vec<&str> = injected
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect();
            for p in after.iter().filter(|p| {
                !injected_names.contains(&p["metadata"]["name"].as_str().unwrap_or_default())
            }) {
                assert!(
                    !is_injected(p) && untouched(p),
                    "pod after removal still injected: {p:#}"
                );
            }
            Ok(())
        }
        .await,
        env,
    )
}

/// `kubectl create --dry-run=server -o json` of `object` (`what` names it in a failure); returns
/// the object as the API server would have stored it.
async fn server_dry_run(
    cp: &ControlPlane,
    ns: &str,
    object: &serde_json::Value,
    what: &str,
) -> Result<serde_json::Value> {
    let out = cp
        .kubectl(
            &[
                "create",
                "-n",
                ns,
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&object.to_string()),
        )
        .await?;
    if !out.success {
        return Err(fail(
            format!("kubectl create --dry-run=server of {what}"),
            out.stderr,
        ));
    }
    serde_json::from_str(&out.stdout).map_err(|e| fail("dry-run output", e.to_string()))
}

#[tokio::test]
async fn a_server_side_dry_run_creates_nothing() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    let ns = cp.create_namespace("webhook-dryrun").await?;
    explain(
        async {
            let pod = pod_json("dry", enabled());
            let returned = server_dry_run(cp, &ns, &pod, "an annotated pod").await?;
            assert!(
                is_injected(&returned),
                "the dry-run shows the injected pod: {returned:#}"
            );

            let d = deployment_json("dry", 1, None, Some(enabled()));
            server_dry_run(cp, &ns, &d, "an annotated Deployment").await?;

            // Give any (wrong) side effect time to land, then check nothing exists.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let admin = cp.admin_client().await?;
            assert!(self::pods(cp, &ns).await?.is_empty(), "no pod");
            assert!(
                Api::<Deployment>::namespaced(admin, &ns)
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| fail("deployments", e.to_string()))?
                    .items
                    .is_empty(),
                "no Deployment"
            );
            assert!(
                !exists::<ServiceAccount>(cp, &ns, contract::SERVICE_ACCOUNT).await?,
                "no ServiceAccount created by a dry-run"
            );
            assert!(
                !exists::<RoleBinding>(cp, &ns, contract::ROLE_BINDING).await?,
                "no RoleBinding created by a dry-run"
            );
            Ok(())
        }
        .await,
        env,
    )
}
