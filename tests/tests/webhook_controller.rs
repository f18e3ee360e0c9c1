//! The webhook's controller and pure admission on a real control plane: the built `webhook`
//! binary (files mode, TLS on loopback) behind the shipped MutatingWebhookConfiguration, running
//! as its ServiceAccount with exactly the shipped RBAC (so a verb the controller lacks fails
//! here). No kubelet: pods are API objects only, so what a running container would see is checked
//! on the pod spec the API server stores, rights with the ServiceAccount's own token, and the
//! leader label by writing the Lease as an elector would.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use contract::{annotations, deploy};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use testenv::webhook::{
    SA_MOUNT_PATH, Webhook, create_webhook_configuration, elector_container, generate_certs,
    loopback_webhook_configuration, shipped_webhook_configuration,
};
use testenv::{ControlPlane, Result, eventually, fail, procs, shared};
use tokio::sync::OnceCell;

const TIMEOUT: Duration = Duration::from_secs(90);

struct Env {
    cp: &'static ControlPlane,
    webhook: Webhook,
    ca_pem: String,
}

async fn env() -> Result<&'static Env> {
    static ENV: OnceCell<Env> = OnceCell::const_new();
    ENV.get_or_try_init(|| async {
        let cp = shared().await?;
        testenv::webhook::apply_shipped_rbac(cp).await?;
        let certs = procs::scratch_dir("webhook-controller-certs")?;
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
                "--identity=webhook-under-test".to_string(),
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
        Ok(Env {
            cp,
            webhook,
            ca_pem,
        })
    })
    .await
}

fn explain<T>(r: Result<T>, env: &Env) -> Result<T> {
    r.map_err(|e| env.webhook.with_output(e))
}

fn err(what: &str) -> impl Fn(kube::Error) -> testenv::Error + '_ {
    move |e| fail(what, e.to_string())
}

fn deployment(
    name: &str,
    replicas: i32,
    sa: Option<&str>,
    extra: serde_json::Value,
) -> Result<Deployment> {
    let mut ann = serde_json::json!({ annotations::ENABLED: "true" });
    if let (Some(a), Some(e)) = (ann.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": ann},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "nginx:1.25"}]}
            }
        }
    }))
    .map_err(|e| fail("building a Deployment", e.to_string()))
}

async fn injected_pods(cp: &ControlPlane, ns: &str, app: &str, n: usize) -> Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(cp.admin_client().await?, ns);
    eventually(&format!("{n} injected pods of {app}"), TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .map_err(|e| e.to_string())?;
        let got: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| {
                let v = serde_json::to_value(p).unwrap_or_default();
                elector_container(&v).is_some()
            })
            .collect();
        if got.len() >= n {
            Ok(got)
        } else {
            Err(format!("{} so far", got.len()))
        }
    })
    .await
}

/// The Role and RoleBinding the controller keeps for `kind/name`, once they say what `check`
/// wants.
async fn grants(
    cp: &ControlPlane,
    ns: &str,
    kind: &str,
    name: &str,
    check: impl Fn(&Role, &RoleBinding) -> std::result::Result<(), String>,
) -> Result<(Role, RoleBinding)> {
    let admin = cp.admin_client().await?;
    let roles = Api::<Role>::namespaced(admin.clone(), ns);
    let bindings = Api::<RoleBinding>::namespaced(admin, ns);
    let grant = format!("leader-election-{kind}-{name}");
    eventually(
        &format!("Role and RoleBinding {ns}/{grant}"),
        TIMEOUT,
        || async {
            let r = roles
                .get_opt(&grant)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no Role yet")?;
            let b = bindings
                .get_opt(&grant)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no RoleBinding yet")?;
            check(&r, &b)?;
            Ok((r, b))
        },
    )
    .await
}

fn lease_names(r: &Role) -> BTreeSet<String> {
    r.rules
        .iter()
        .flatten()
        .flat_map(|rule| rule.resource_names.iter().flatten().cloned())
        .collect()
}

fn subjects(b: &RoleBinding) -> BTreeSet<String> {
    b.subjects
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect()
}

#[tokio::test]
async fn a_forged_review_sent_straight_to_the_webhook_creates_nothing() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    explain(
        async {
            // Positive control: the controller is running and acts on a real pod.
            let real = cp.create_namespace("forged-control").await?;
            let admin = cp.admin_client().await?;
            Api::<Deployment>::namespaced(admin.clone(), &real)
                .create(&PostParams::default(), &deployment("real", 1, None, serde_json::json!({}))?)
                .await
                .map_err(err("creating Deployment real"))?;
            grants(cp, &real, "deployment", "real", |_, _| Ok(())).await?;

            // The forgery: what anyone reaching the port can send. Not a dry run, another
            // namespace, a ServiceAccount of the sender's choice, leader label on.
            let victim = cp.create_namespace("forged-victim").await?;
            let review = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "0d9b4c5e-0000-4000-8000-000000000001",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "operation": "CREATE",
                    "namespace": victim,
                    "dryRun": false,
                    "userInfo": {"username": "system:admin"},
                    "object": {
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "forged", "namespace": victim, "labels": {"app": "forged"},
                            "annotations": {annotations::ENABLED: "true", annotations::LEADER_LABEL: "true"}},
                        "spec": {"serviceAccountName": "attacker", "containers": [{"name": "c", "image": "x"}]}
                    }
                }
            });
            let resp = testenv::httpc::post_tls(
                env.webhook.addr,
                "127.0.0.1",
                &env.ca_pem,
                deploy::MUTATE_PATH,
                &review.to_string(),
                Duration::from_secs(5),
            )
            .await?;
            assert_eq!(resp.status, 200, "{}", resp.body);
            assert!(resp.body.contains("\"allowed\":true"), "{}", resp.body);
            // Give the controller time to (wrongly) act, then check nothing exists.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let roles = Api::<Role>::namespaced(admin.clone(), &victim)
                .list(&ListParams::default())
                .await
                .map_err(err("listing Roles"))?;
            let bindings = Api::<RoleBinding>::namespaced(admin.clone(), &victim)
                .list(&ListParams::default())
                .await
                .map_err(err("listing RoleBindings"))?;
            let leases = Api::<Lease>::namespaced(admin.clone(), &victim)
                .list(&ListParams::default())
                .await
                .map_err(err("listing Leases"))?;
            let sas = Api::<ServiceAccount>::namespaced(admin, &victim)
                .list(&ListParams::default())
                .await
                .map_err(err("listing ServiceAccounts"))?;
            assert!(roles.items.is_empty(), "{:?}", roles.items);
            assert!(bindings.items.is_empty(), "{:?}", bindings.items);
            assert!(leases.items.is_empty(), "{:?}", leases.items);
            let sa_names: Vec<String> = sas.items.into_iter().filter_map(|s| s.metadata.name).collect();
            assert!(
                sa_names.iter().all(|n| n == "default"),
                "ServiceAccounts {sa_names:?}"
            );
            Ok(())
        }
        .await,
        env,
    )
}

#[tokio::test]
async fn an_injected_pod_keeps_its_service_account_and_its_app_gets_no_token() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    explain(
        async {
            let ns = cp.create_namespace("no-token").await?;
            let admin = cp.admin_client().await?;
            // `default` with automount off, as a cautious namespace has it.
            let sas = Api::<ServiceAccount>::namespaced(admin.clone(), &ns);
            eventually("ServiceAccount default", TIMEOUT, || async {
                sas.get_opt("default")
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("not yet".to_string())
            })
            .await?;
            sas.patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"automountServiceAccountToken": false})),
            )
            .await
            .map_err(err("turning automount off"))?;
            Api::<Deployment>::namespaced(admin.clone(), &ns)
                .create(
                    &PostParams::default(),
                    &deployment("web", 2, None, serde_json::json!({}))?,
                )
                .await
                .map_err(err("creating Deployment web"))?;
            let pods = injected_pods(cp, &ns, "web", 2).await?;
            for p in &pods {
                let v = serde_json::to_value(p).map_err(|e| fail("pod", e.to_string()))?;
                let spec = &v["spec"];
                assert_eq!(spec["serviceAccountName"], "default", "kept: {v:#}");
                let app = spec["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == "app")
                    .ok_or_else(|| fail("app container", v.to_string()))?;
                let app_mounts: Vec<&serde_json::Value> = app["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .collect();
                assert!(
                    !app_mounts.iter().any(|m| m["mountPath"] == SA_MOUNT_PATH),
                    "the app container has a token mount: {app_mounts:?}"
                );
                let e = elector_container(&v).ok_or_else(|| fail("elector", v.to_string()))?;
                let mount = e["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["mountPath"] == SA_MOUNT_PATH)
                    .ok_or_else(|| fail("elector token mount", e.to_string()))?;
                let vol = spec["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["name"] == mount["name"])
                    .ok_or_else(|| fail("elector token volume", v.to_string()))?;
                assert!(
                    vol["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s.get("serviceAccountToken").is_some()),
                    "{vol}"
                );
                // Only the elector mounts that volume.
                let users = ["containers", "initContainers"]
                    .iter()
                    .flat_map(|k| spec[*k].as_array().into_iter().flatten())
                    .filter(|c| {
                        c["volumeMounts"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|m| m["name"] == mount["name"])
                    })
                    .count();
                assert_eq!(users, 1, "{v:#}");
            }
            // Lease created ahead, owned by the Deployment; the Role names it; bound to default.
            let lease = Api::<Lease>::namespaced(admin, &ns)
                .get("web")
                .await
                .map_err(err("Lease web"))?;
            let owners = lease.metadata.owner_references.unwrap_or_default();
            assert_eq!(owners.len(), 1);
            assert_eq!(
                (owners[0].kind.as_str(), owners[0].name.as_str()),
                ("Deployment", "web")
            );
            grants(cp, &ns, "deployment", "web", |r, b| {
                if lease_names(r) != BTreeSet::from(["web".to_string()]) {
                    return Err(format!("Role names {:?}", lease_names(r)));
                }
                if subjects(b) != BTreeSet::from(["default".to_string()]) {
                    return Err(format!("RoleBinding subjects {:?}", subjects(b)));
                }
                Ok(())
            })
            .await?;
            Ok(())
        }
        .await,
        env,
    )
}

/// The HTTP status of a failed call, or 200.
fn status<T>(r: std::result::Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_apps_token_updates_its_own_lease_and_nothing_else() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    explain(
        async {
            let ns = cp.create_namespace("rights").await?;
            let admin = cp.admin_client().await?;
            cp.create_service_account(&ns, "app-sa").await?;
            Api::<Deployment>::namespaced(admin.clone(), &ns)
                .create(
                    &PostParams::default(),
                    &deployment("mine", 1, Some("app-sa"), serde_json::json!({}))?,
                )
                .await
                .map_err(err("creating Deployment mine"))?;
            injected_pods(cp, &ns, "mine", 1).await?;
            grants(cp, &ns, "deployment", "mine", |_, b| {
                if subjects(b).contains("app-sa") {
                    Ok(())
                } else {
                    Err(format!("{:?}", subjects(b)))
                }
            })
            .await?;
            // Another workload's lock in the same namespace, made by someone else.
            let leases_admin = Api::<Lease>::namespaced(admin.clone(), &ns);
            let other: Lease = serde_json::from_value(
                serde_json::json!({"metadata": {"name": "other-controller-lock"}}),
            )
            .map_err(|e| fail("Lease", e.to_string()))?;
            leases_admin
                .create(&PostParams::default(), &other)
                .await
                .map_err(err("creating the other Lease"))?;

            let app = cp.service_account_client(&ns, "app-sa").await?;
            let leases = Api::<Lease>::namespaced(app.clone(), &ns);
            // Its own Lease: get, list and watch by name, update.
            let mut own = leases.get("mine").await.map_err(err("get own Lease"))?;
            own.spec
                .get_or_insert_with(Default::default)
                .holder_identity = Some("me".into());
            own.metadata.managed_fields = None;
            assert_eq!(
                status(leases.replace("mine", &PostParams::default(), &own).await),
                200
            );
            let by_name = ListParams::default().fields("metadata.name=mine");
            assert_eq!(status(leases.list(&by_name).await), 200);
            let wp = WatchParams::default()
                .fields("metadata.name=mine")
                .timeout(1);
            assert_eq!(status(leases.watch(&wp, "0").await.map(|_| ())), 200);
            // Nothing else: another Lease, all Leases, creating one, deleting its own, pods.
            let mut theirs = leases_admin
                .get("other-controller-lock")
                .await
                .map_err(err("get other"))?;
            theirs
                .spec
                .get_or_insert_with(Default::default)
                .holder_identity = Some("me".into());
            theirs.metadata.managed_fields = None;
            let denied = [
                (
                    "get other Lease",
                    status(leases.get("other-controller-lock").await),
                ),
                (
                    "update other Lease",
                    status(
                        leases
                            .replace("other-controller-lock", &PostParams::default(), &theirs)
                            .await,
                    ),
                ),
                (
                    "list all Leases",
                    status(leases.list(&ListParams::default()).await),
                ),
                (
                    "create a Lease",
                    status(
                        leases
                            .create(
                                &PostParams::default(),
                                &serde_json::from_value::<Lease>(
                                    serde_json::json!({"metadata": {"name": "new"}}),
                                )
                                .unwrap(),
                            )
                            .await,
                    ),
                ),
                (
                    "delete own Lease",
                    status(leases.delete("mine", &Default::default()).await),
                ),
                (
                    "list pods",
                    status(
                        Api::<Pod>::namespaced(app.clone(), &ns)
                            .list(&ListParams::default())
                            .await,
                    ),
                ),
                (
                    "patch a pod",
                    status(
                        Api::<Pod>::namespaced(app.clone(), &ns)
                            .patch(
                                "x",
                                &PatchParams::default(),
                                &Patch::Merge(
                                    serde_json::json!({"metadata": {"labels": {"a": "b"}}}),
                                ),
                            )
                            .await,
                    ),
                ),
            ];
            println!("the app's token: {denied:?}");
            for (what, code) in denied {
                assert_eq!(code, 403, "{what}");
            }
            Ok(())
        }
        .await,
        env,
    )
}

#[tokio::test]
async fn a_lease_made_by_someone_else_is_never_granted() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    explain(
        async {
            let ns = cp.create_namespace("foreign").await?;
            let admin = cp.admin_client().await?;
            let lock: Lease =
                serde_json::from_value(serde_json::json!({"metadata": {"name": "kube-lock"}}))
                    .map_err(|e| fail("Lease", e.to_string()))?;
            Api::<Lease>::namespaced(admin.clone(), &ns)
                .create(&PostParams::default(), &lock)
                .await
                .map_err(err("creating kube-lock"))?;
            let d = deployment(
                "thief",
                1,
                None,
                serde_json::json!({annotations::LEASE_NAME: "kube-lock"}),
            )?;
            Api::<Deployment>::namespaced(admin.clone(), &ns)
                .create(&PostParams::default(), &d)
                .await
                .map_err(err("creating Deployment thief"))?;
            injected_pods(cp, &ns, "thief", 1).await?;
            // The controller saw it (an event says why) and granted nothing on kube-lock.
            let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &ns);
            eventually("a LeaseNotManaged event", TIMEOUT, || async {
                let list = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                if list
                    .items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("LeaseNotManaged"))
                {
                    Ok(())
                } else {
                    Err(format!("{} events", list.items.len()))
                }
            })
            .await?;
            let role = Api::<Role>::namespaced(admin, &ns)
                .get_opt("leader-election-deployment-thief")
                .await
                .map_err(err("Role"))?;
            if let Some(r) = role {
                assert!(!lease_names(&r).contains("kube-lock"), "{r:?}");
            }
            Ok(())
        }
        .await,
        env,
    )
}

/// Role labels of the pods in `ns` with `app=<app>`.
async fn roles_of(pods: &Api<Pod>, app: &str) -> Result<BTreeMap<String, String>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map_err(err("listing pods"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let role = p
                .metadata
                .labels
                .as_ref()?
                .get(contract::labels::ROLE)?
                .clone();
            Some((p.metadata.name?, role))
        })
        .collect())
}

/// Writes the Lease as its elector would.
async fn hold(leases: &Api<Lease>, name: &str, holder: &str, duration: i32) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let body = serde_json::json!({"spec": {
        "holderIdentity": holder,
        "leaseDurationSeconds": duration,
        "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
    }});
    leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(err("writing the Lease"))?;
    Ok(())
}

#[tokio::test]
async fn the_leader_label_follows_the_lease_and_never_names_two_pods() -> Result<()> {
    let env = env().await?;
    let cp = env.cp;
    explain(
        async {
            let ns = cp.create_namespace("label").await?;
            let admin = cp.admin_client().await?;
            let d = deployment("lbl", 3, None, serde_json::json!({annotations::LEADER_LABEL: "true"}))?;
            Api::<Deployment>::namespaced(admin.clone(), &ns)
                .create(&PostParams::default(), &d)
                .await
                .map_err(err("creating Deployment lbl"))?;
            let names: Vec<String> = injected_pods(cp, &ns, "lbl", 3)
                .await?
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
            let leases = Api::<Lease>::namespaced(admin.clone(), &ns);
            eventually("Lease lbl created ahead", TIMEOUT, || async {
                leases.get_opt("lbl").await.map_err(|e| e.to_string())?.ok_or("not yet".to_string())
            })
            .await?;

            // Count leaders over the whole run from a watch on the pods.
            let max_leaders = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let watcher = {
                let pods = pods.clone();
                let max = max_leaders.clone();
                let list = pods.list(&ListParams::default().labels("app=lbl")).await.map_err(err("list"))?;
                let rv = list.metadata.resource_version.unwrap_or_default();
                let mut roles: BTreeMap<String, String> = BTreeMap::new();
                tokio::spawn(async move {
                    let wp = WatchParams::default().labels("app=lbl").timeout(290);
                    let Ok(stream) = pods.watch(&wp, &rv).await else { return };
                    let mut stream = stream.boxed();
                    while let Some(Ok(ev)) = stream.next().await {
                        if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
                            let role = p.metadata.labels.as_ref().and_then(|l| l.get(contract::labels::ROLE)).cloned().unwrap_or_default();
                            roles.insert(p.metadata.name.unwrap_or_default(), role);
                            let n = roles.values().filter(|r| *r == "leader").count();
                            max.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                })
            };

            let mut moves = Vec::new();
            let wait_for = |holder: Option<String>| {
                let pods = pods.clone();
                let names = names.clone();
                async move {
                    eventually("labels to follow the Lease", TIMEOUT, || async {
                        let roles = roles_of(&pods, "lbl").await.map_err(|e| e.to_string())?;
                        let ok = names.iter().all(|n| {
                            let want = if Some(n) == holder.as_ref() { "leader" } else { "follower" };
                            roles.get(n).map(String::as_str) == Some(want)
                        });
                        if ok { Ok(()) } else { Err(format!("{roles:?}, holder {holder:?}")) }
                    })
                    .await
                }
            };
            // Elected, then two changes of holder.
            for holder in [&names[0], &names[1], &names[2]] {
                let t = Instant::now();
                hold(&leases, "lbl", holder, 30).await?;
                wait_for(Some(holder.clone())).await?;
                moves.push(t.elapsed());
            }
            // The holder stops renewing (frozen, crashed, cut off): the label goes at expiry by
            // the controller's clock.
            let t = Instant::now();
            hold(&leases, "lbl", &names[0], 3).await?;
            wait_for(Some(names[0].clone())).await?;
            wait_for(None).await?;
            let expiry = t.elapsed();
            watcher.abort();
            let max = max_leaders.load(std::sync::atomic::Ordering::SeqCst);
            println!(
                "leader label: moved after {moves:?}; removed {expiry:?} after the last renewal of a \
                 3 s lease; most pods labelled leader at once: {max}"
            );
            assert!(max <= 1, "{max} pods labelled leader at once");
            assert!(expiry >= Duration::from_secs(3), "{expiry:?}: removed before expiry");
            assert!(expiry < Duration::from_secs(10), "{expiry:?}");
            for m in &moves {
                assert!(*m < Duration::from_secs(10), "{moves:?}");
            }
            Ok(())
        }
        .await,
        env,
    )
}
