//! Running the project's `webhook` binary against a control plane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use contract::{annotations, deploy};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::error::{Context, Error, Result, fail};
use crate::procs::Proc;
use crate::wait::eventually_while_running;
use crate::{ControlPlane, control_plane, httpc, manifests};

/// `webhook certs --out-dir <dir> --extra-san 127.0.0.1`: the CA and serving certificate for
/// files mode. Returns (ca.crt, tls.crt, tls.key) paths.
pub async fn generate_certs(out_dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let bin = crate::project_binary("webhook")?;
    let out = tokio::process::Command::new(&bin)
        .arg("certs")
        .arg(format!("--out-dir={}", out_dir.display()))
        .arg("--extra-san=127.0.0.1")
        .output()
        .await
        .context("running webhook certs")?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("webhook certs --out-dir={}", out_dir.display()),
            status: crate::procs::describe(out.status),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let files = (
        out_dir.join("ca.crt"),
        out_dir.join("tls.crt"),
        out_dir.join("tls.key"),
    );
    for f in [&files.0, &files.1, &files.2] {
        if !f.is_file() {
            return Err(fail(
                "webhook certs",
                format!("did not write {}", f.display()),
            ));
        }
    }
    Ok(files)
}

/// `https://<addr>/mutate`: where a webhook listening on `addr` is called.
pub fn mutate_url(addr: SocketAddr) -> String {
    format!("https://{addr}{}", deploy::MUTATE_PATH)
}

/// `serve --listen=<addr> <args…>`: the webhook's command line.
pub fn serve_args(addr: SocketAddr, args: &[String]) -> Vec<String> {
    let mut all = vec!["serve".to_string(), format!("--listen={addr}")];
    all.extend(args.iter().cloned());
    all
}

/// A running webhook serving TLS on loopback.
pub struct Webhook {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Webhook {
    /// `webhook serve --listen 127.0.0.1:<free port> <args…>` with `KUBECONFIG=kubeconfig`.
    pub fn spawn(
        kubeconfig: &Path,
        args: &[String],
        name: &str,
        log_dir: &Path,
    ) -> Result<Webhook> {
        let addr = control_plane::free_loopback_addr()?;
        Self::spawn_on(addr, kubeconfig, args, name, log_dir)
    }

    /// As [`Self::spawn`], listening on `addr` (chosen earlier, e.g. to point a configuration
    /// at it before the webhook starts).
    pub fn spawn_on(
        addr: SocketAddr,
        kubeconfig: &Path,
        args: &[String],
        name: &str,
        log_dir: &Path,
    ) -> Result<Webhook> {
        let bin = crate::project_binary("webhook")?;
        let proc = Proc::spawn(
            name,
            &bin,
            &serve_args(addr, args),
            &[
                ("KUBECONFIG", kubeconfig.display().to_string()),
                (
                    "RUST_LOG",
                    std::env::var("WEBHOOK_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
                ),
            ],
            log_dir,
        )?;
        Ok(Webhook { addr, proc })
    }

    /// `https://127.0.0.1:<port>/mutate`.
    pub fn url(&self) -> String {
        mutate_url(self.addr)
    }

    /// `e` with the webhook's last output lines, so a failure explains itself.
    pub fn with_output(&self, e: Error) -> Error {
        fail(
            e.to_string(),
            format!("webhook output:\n{}", self.proc.output_tail(40)),
        )
    }

    /// Waits until `GET /readyz` answers 200 over TLS verified with `ca_pem` for 127.0.0.1.
    pub async fn wait_ready(&self, ca_pem: &str, timeout: Duration) -> Result<()> {
        let addr = self.addr;
        let ca = ca_pem.to_string();
        eventually_while_running("the webhook to be ready", timeout, &[&self.proc], || {
            let ca = ca.clone();
            async move {
                match httpc::get_tls(addr, "127.0.0.1", &ca, "/readyz", Duration::from_secs(5))
                    .await
                {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("{} {}", r.status, r.body)),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    /// The API server loads a new configuration asynchronously: waits until a server-side
    /// dry-run of an annotated Deployment comes back mutated (the workload webhook copies the
    /// annotation to the pod template). A dry-run creates nothing.
    pub async fn wait_called(&self, cp: &ControlPlane, timeout: Duration) -> Result<()> {
        // `default` exists on every control plane.
        let deployments = Api::<Deployment>::namespaced(cp.admin_client().await?, "default");
        let probe: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "webhook-probe", "annotations": {annotations::ENABLED: "true"}},
            "spec": {
                "selector": {"matchLabels": {"app": "webhook-probe"}},
                "template": {
                    "metadata": {"labels": {"app": "webhook-probe"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}
                }
            }
        }))
        .map_err(|e| fail("building the probe Deployment", e.to_string()))?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        eventually_while_running(
            "the API server to call the webhook",
            timeout,
            &[&self.proc],
            || async {
                let d = deployments
                    .create(&dry_run, &probe)
                    .await
                    .map_err(|e| e.to_string())?;
                let template = d
                    .spec
                    .and_then(|s| s.template.metadata)
                    .and_then(|m| m.annotations)
                    .unwrap_or_default();
                if template.contains_key(annotations::ENABLED) {
                    Ok(())
                } else {
                    Err(format!(
                        "a dry-run Deployment came back unmutated; template annotations {template:?}"
                    ))
                }
            },
        )
        .await
    }

    /// Waits for the CA a self-provisioning webhook writes into its Secret (`ca.crt` of
    /// `deploy::TLS_SECRET` in `deploy::NAMESPACE`).
    pub async fn wait_self_provisioned_ca(
        &self,
        admin: &Client,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let secrets = Api::<Secret>::namespaced(admin.clone(), deploy::NAMESPACE);
        eventually_while_running(
            "the webhook's Secret with its CA",
            timeout,
            &[&self.proc],
            || async {
                let s = secrets
                    .get_opt(deploy::TLS_SECRET)
                    .await
                    .map_err(|e| e.to_string())?;
                s.and_then(|s| s.data)
                    .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()))
                    .ok_or_else(|| {
                        format!(
                            "no Secret {}/{} with ca.crt yet",
                            deploy::NAMESPACE,
                            deploy::TLS_SECRET
                        )
                    })
            },
        )
        .await
    }
}

/// The caBundle of every entry, if all entries have the same non-empty one.
pub fn ca_bundle(mwc: &MutatingWebhookConfiguration) -> Option<Vec<u8>> {
    let bundles: Vec<Vec<u8>> = mwc
        .webhooks
        .iter()
        .flatten()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone())
                .unwrap_or_default()
        })
        .collect();
    match bundles.first() {
        Some(b) if !b.is_empty() && bundles.iter().all(|x| x == b) => Some(b.clone()),
        _ => None,
    }
}

/// Creates `mwc` (e.g. from [`loopback_webhook_configuration`]) through the API; returns what the
/// API server stored.
pub async fn create_webhook_configuration(
    cp: &ControlPlane,
    mwc: &serde_json::Value,
) -> Result<MutatingWebhookConfiguration> {
    let name = mwc["metadata"]["name"].as_str().unwrap_or_default();
    let typed: MutatingWebhookConfiguration = serde_json::from_value(mwc.clone()).map_err(|e| {
        fail(
            format!("MutatingWebhookConfiguration {name}"),
            e.to_string(),
        )
    })?;
    Api::<MutatingWebhookConfiguration>::all(cp.admin_client().await?)
        .create(&PostParams::default(), &typed)
        .await
        .map_err(|e| {
            fail(
                format!("creating MutatingWebhookConfiguration {name}"),
                e.to_string(),
            )
        })
}

/// The shipped MutatingWebhookConfiguration pointed at `url` instead of the in-cluster
/// Service: every entry gets `clientConfig: {url, caBundle}` (caBundle omitted when `ca_pem`
/// is None, as the self-provisioning webhook writes it). Rules, selectors and policies stay as
/// shipped; `name` renames the object.
pub fn loopback_webhook_configuration(
    shipped: &serde_json::Value,
    name: &str,
    url: &str,
    ca_pem: Option<&str>,
) -> Result<serde_json::Value> {
    let mut mwc = shipped.clone();
    if mwc["kind"] != "MutatingWebhookConfiguration" {
        return Err(fail(
            "adapting the webhook configuration",
            format!("not a MutatingWebhookConfiguration: {}", mwc["kind"]),
        ));
    }
    mwc["metadata"] =
        serde_json::json!({"name": name, "labels": mwc["metadata"]["labels"].clone()});
    let hooks = mwc["webhooks"]
        .as_array_mut()
        .ok_or_else(|| fail("adapting the webhook configuration", "no webhooks list"))?;
    for hook in hooks.iter_mut() {
        let mut cc = serde_json::json!({"url": url});
        if let Some(ca) = ca_pem {
            cc["caBundle"] = base64::engine::general_purpose::STANDARD.encode(ca).into();
        }
        hook["clientConfig"] = cc;
    }
    Ok(mwc)
}

/// `manifests/base` rendered by kustomize.
pub async fn shipped_base() -> Result<Vec<serde_json::Value>> {
    manifests::kustomize(&manifests::manifests_dir().join("base")).await
}

/// The MutatingWebhookConfiguration among `docs` (from [`shipped_base`]).
pub fn find_webhook_configuration(docs: &[serde_json::Value]) -> Result<&serde_json::Value> {
    manifests::of_kind(docs, "MutatingWebhookConfiguration")
        .into_iter()
        .find(|d| d["metadata"]["name"] == deploy::WEBHOOK_CONFIGURATION)
        .ok_or_else(|| {
            fail(
                "manifests/base",
                format!(
                    "no MutatingWebhookConfiguration {}",
                    deploy::WEBHOOK_CONFIGURATION
                ),
            )
        })
}

/// The MutatingWebhookConfiguration from the shipped base.
pub async fn shipped_webhook_configuration() -> Result<serde_json::Value> {
    find_webhook_configuration(&shipped_base().await?).cloned()
}

/// Kinds of the shipped base applied for real by the webhook tests (the webhook itself runs as a
/// process instead of the Deployment; the MutatingWebhookConfiguration is adapted to loopback).
pub const RBAC_KINDS: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// The Namespace and RBAC among `docs` (from [`shipped_base`]) and then `extra`, as one `List`
/// for `kubectl apply`.
pub fn rbac_list(docs: &[serde_json::Value], extra: &[&serde_json::Value]) -> serde_json::Value {
    let mut items: Vec<&serde_json::Value> = RBAC_KINDS
        .iter()
        .flat_map(|k| manifests::of_kind(docs, k))
        .collect();
    items.extend(extra);
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Applies the namespace and RBAC of manifests/base as shipped.
pub async fn apply_shipped_rbac(cp: &ControlPlane) -> Result<()> {
    let list = rbac_list(&shipped_base().await?, &[]);
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&list.to_string()))
        .await?;
    Ok(())
}

/// Where the elector's API credentials must be mounted.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn env_value<'a>(c: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    c["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
}

/// The injected elector container of `pod` (a regular or an init container).
pub fn elector_container(pod: &serde_json::Value) -> Option<&serde_json::Value> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == contract::CONTAINER_NAME)
}

/// What is wrong with a pod the API server stored after the webhook injected it (empty = fine):
/// the sidecar (regular container on a 1.20 server), its args and env, the app containers' env,
/// the status annotation, and a token mount for the pod's own ServiceAccount in the elector only (`token_secret_owner` maps a Secret name to the ServiceAccount it belongs to).
pub fn injection_problems(
    pod: &serde_json::Value,
    lease: &str,
    token_secret_owner: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let ann = &pod["metadata"]["annotations"];
    check(
        ann[contract::annotations::STATUS] == contract::annotations::STATUS_INJECTED,
        format!(
            "annotation {} is {}",
            contract::annotations::STATUS,
            ann[contract::annotations::STATUS]
        ),
    );
    // The pod keeps the ServiceAccount its owner chose (the webhook never changes it).
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let init = pod["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let electors: Vec<&serde_json::Value> = containers
        .iter()
        .chain(init.iter())
        .filter(|c| c["name"] == contract::CONTAINER_NAME)
        .collect();
    check(
        electors.len() == 1,
        format!("{} {} containers", electors.len(), contract::CONTAINER_NAME),
    );
    check(
        !init.iter().any(|c| c["name"] == contract::CONTAINER_NAME),
        "the elector is an init container, which a 1.20 server runs to completion first".into(),
    );
    if let Some(e) = electors.first() {
        let args: Vec<&str> = e["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        check(
            args.contains(&format!("--{}={lease}", contract::flags::ELECTION).as_str()),
            format!("elector args {args:?} lack --election={lease}"),
        );
        for (name, path) in [
            (contract::env::POD_NAME, "metadata.name"),
            (contract::env::POD_NAMESPACE, "metadata.namespace"),
        ] {
            check(
                env_value(e, name).map(|v| &v["valueFrom"]["fieldRef"]["fieldPath"])
                    == Some(&path.into()),
                format!("elector env {name} is not the downward API {path}"),
            );
        }
        // Credentials: a mount at the standard path, for the pod's final ServiceAccount.
        let mount = e["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == SA_MOUNT_PATH);
        match mount {
            None => check(
                false,
                format!("the elector has no volume mounted at {SA_MOUNT_PATH}"),
            ),
            Some(m) => {
                let vol_name = m["name"].as_str().unwrap_or_default();
                let vol = pod["spec"]["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == vol_name);
                let projected_token = vol.is_some_and(|v| {
                    v["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s.get("serviceAccountToken").is_some())
                });
                let secret_owner = vol
                    .and_then(|v| v["secret"]["secretName"].as_str())
                    .and_then(token_secret_owner);
                check(
                    projected_token || secret_owner.as_deref() == Some(sa.as_str()),
                    format!(
                        "volume {vol_name} mounted at {SA_MOUNT_PATH} carries no token for ServiceAccount {sa:?} \
                         (projected serviceAccountToken: {projected_token}, token Secret of: {secret_owner:?})"
                    ),
                );
                // The elector's own token stays in the elector's container.
                let others: Vec<&str> = containers
                    .iter()
                    .chain(init.iter())
                    .filter(|c| c["name"] != contract::CONTAINER_NAME)
                    .filter(|c| {
                        c["volumeMounts"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|m| m["name"] == vol_name)
                    })
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                check(
                    !projected_token || others.is_empty(),
                    format!("containers {others:?} mount the elector's token volume {vol_name}"),
                );
            }
        }
    }
    for c in containers
        .iter()
        .filter(|c| c["name"] != contract::CONTAINER_NAME)
    {
        let name = c["name"].as_str().unwrap_or_default();
        let url = contract::http::local_url(contract::http::DEFAULT_PORT);
        check(
            env_value(c, contract::env::APP_URL).map(|v| &v["value"]) == Some(&url.clone().into()),
            format!("container {name}: {} is not {url}", contract::env::APP_URL),
        );
        check(
            env_value(c, contract::env::APP_LEASE_NAME).map(|v| &v["value"]) == Some(&lease.into()),
            format!(
                "container {name}: {} is not {lease}",
                contract::env::APP_LEASE_NAME
            ),
        );
        check(
            env_value(c, contract::env::APP_IDENTITY)
                .map(|v| &v["valueFrom"]["fieldRef"]["fieldPath"])
                == Some(&"metadata.name".into()),
            format!(
                "container {name}: {} is not the pod name",
                contract::env::APP_IDENTITY
            ),
        );
    }
    problems
}

/// True when nothing of the webhook is in the pod.
pub fn untouched(pod: &serde_json::Value) -> bool {
    let has_elector = elector_container(pod).is_some();
    let has_env = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| env_value(c, contract::env::APP_URL).is_some());
    let has_status = pod["metadata"]["annotations"]
        .get(contract::annotations::STATUS)
        .is_some();
    !has_elector && !has_env && !has_status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "leader-election-webhook", "labels": {"a": "b"}, "annotations": {"x": "y"}},
            "webhooks": [
                {"name": "pods.x", "clientConfig": {"service": {"name": "s", "namespace": "n"}}, "rules": [{"resources": ["pods"]}]},
                {"name": "workloads.x", "clientConfig": {"service": {"name": "s", "namespace": "n"}}, "failurePolicy": "Fail"},
            ]
        })
    }

    fn injected_pod() -> serde_json::Value {
        serde_json::json!({
            "metadata": {"annotations": {"leader-election/status": "injected"}},
            "spec": {
                "serviceAccountName": "my-app-sa",
                "containers": [
                    {"name": "nginx", "env": [
                        {"name": "LEADER_ELECTION_URL", "value": "http://127.0.0.1:4040"},
                        {"name": "LEADER_ELECTION_LEASE_NAME", "value": "my-app"},
                        {"name": "LEADER_ELECTION_IDENTITY", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    ], "volumeMounts": [{"name": "default-token-abc", "mountPath": SA_MOUNT_PATH}]},
                    {"name": "leader-elector", "args": ["--election=my-app", "--http=0.0.0.0:4040"], "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    ], "volumeMounts": [{"name": "leader-elector-api-access", "mountPath": SA_MOUNT_PATH, "readOnly": true}]},
                ],
                "volumes": [
                    {"name": "default-token-abc", "secret": {"secretName": "default-token-abc"}},
                    {"name": "leader-elector-api-access", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    ]}},
                ],
            }
        })
    }

    fn owner(secret: &str) -> Option<String> {
        secret.strip_suffix("-token-abc").map(str::to_string)
    }

    #[test]
    fn injection_checks_table() {
        let ok = injected_pod();
        assert_eq!(
            injection_problems(&ok, "my-app", &owner),
            Vec::<String>::new()
        );
        assert!(!untouched(&ok));

        type Mutation = fn(&mut serde_json::Value);
        let cases: &[(&str, Mutation, &str)] = &[
            (
                "an app container mounts the elector's token",
                |p| {
                    p["spec"]["containers"][0]["volumeMounts"] = serde_json::json!([
                        {"name": "leader-elector-api-access", "mountPath": "/x"}
                    ])
                },
                "mount the elector's token volume",
            ),
            (
                "no status",
                |p| p["metadata"]["annotations"] = serde_json::json!({}),
                "leader-election/status",
            ),
            (
                "elector mounts the default SA's token",
                |p| {
                    p["spec"]["containers"][1]["volumeMounts"][0]["name"] =
                        "default-token-abc".into()
                },
                "token Secret of: Some(\"default\")",
            ),
            (
                "no mount",
                |p| p["spec"]["containers"][1]["volumeMounts"] = serde_json::json!([]),
                "no volume mounted",
            ),
            (
                "wrong lease",
                |p| p["spec"]["containers"][1]["args"][0] = "--election=x".into(),
                "--election=my-app",
            ),
            (
                "missing app env",
                |p| p["spec"]["containers"][0]["env"] = serde_json::json!([]),
                "LEADER_ELECTION_URL",
            ),
            (
                "init container",
                |p| {
                    let c = p["spec"]["containers"][1].clone();
                    p["spec"]["initContainers"] = serde_json::json!([c]);
                    if let Some(a) = p["spec"]["containers"].as_array_mut() {
                        a.truncate(1);
                    }
                },
                "init container",
            ),
        ];
        for (name, mutate, want) in cases {
            let mut pod = injected_pod();
            mutate(&mut pod);
            let problems = injection_problems(&pod, "my-app", &owner);
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{name}: {problems:?}"
            );
        }
        let plain = serde_json::json!({"spec": {"containers": [{"name": "nginx"}]}});
        assert!(untouched(&plain));
    }

    #[test]
    fn points_every_entry_at_the_url_and_keeps_the_rest() -> Result<()> {
        let m = loopback_webhook_configuration(
            &shipped(),
            "t1",
            "https://127.0.0.1:1/mutate",
            Some("PEM"),
        )?;
        assert_eq!(
            m["metadata"],
            serde_json::json!({"name": "t1", "labels": {"a": "b"}})
        );
        for hook in m["webhooks"].as_array().into_iter().flatten() {
            assert_eq!(
                hook["clientConfig"],
                serde_json::json!({"url": "https://127.0.0.1:1/mutate", "caBundle": "UEVN"})
            );
        }
        assert_eq!(m["webhooks"][0]["rules"][0]["resources"][0], "pods");
        assert_eq!(m["webhooks"][1]["failurePolicy"], "Fail");
        let m = loopback_webhook_configuration(&shipped(), "t2", "https://x/mutate", None)?;
        assert!(m["webhooks"][0]["clientConfig"].get("caBundle").is_none());
        assert!(
            loopback_webhook_configuration(&serde_json::json!({"kind": "Pod"}), "t", "u", None)
                .is_err()
        );
        Ok(())
    }
}
