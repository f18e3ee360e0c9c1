//! The demo's steps on a real cluster: every step runs the commands a user would, shows their
//! real output, and checks what the cluster reports (never what the program under test printed
//! about itself). Any failed check fails the demo.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::Value;

use super::Summary;
use super::ui::{Ui, secs};
use crate::cluster::{Cluster, pods};
use crate::error::{Result, fail};
use crate::wait::eventually;
use crate::workspace_root;

/// The example's namespace and Deployment (and so its Lease).
pub const NAMESPACE: &str = "demo";
pub const APP: &str = "my-app";
const SYSTEM: &str = contract::deploy::NAMESPACE;
const TIMEOUT: Duration = Duration::from_secs(300);
pub const STEPS: usize = 8;

pub struct Demo<'a> {
    pub c: &'a Cluster,
    pub ui: &'a Ui,
}

impl Demo<'_> {
    /// Runs `kubectl args…`, showing the command and its output; fails on a non-zero exit.
    pub(super) async fn show(&self, args: &[&str]) -> Result<String> {
        self.ui.command(&format!("kubectl {}", args.join(" ")));
        let out = self.c.kubectl(args, None).await?;
        self.ui.block(&out.stdout);
        self.ui.block(&out.stderr);
        if out.success {
            Ok(out.stdout)
        } else {
            Err(fail(
                format!("kubectl {}", args.join(" ")),
                format!("exited {}: {}", out.status, out.stderr.trim()),
            ))
        }
    }

    /// `kubectl … -o json`, not shown: the checks read it.
    pub(super) async fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.c.kubectl_ok(&all, None).await?;
        serde_json::from_str(&out)
            .map_err(|e| fail(format!("kubectl {}", all.join(" ")), e.to_string()))
    }

    async fn app_pods(&self) -> Result<Vec<Value>> {
        let list = self
            .json(&["get", "pods", "-n", NAMESPACE, "-l", "app=my-app"])
            .await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    async fn holder(&self) -> Result<String> {
        let lease = Api::<Lease>::namespaced(self.c.admin_client().await?, NAMESPACE)
            .get_opt(APP)
            .await
            .map_err(|e| fail("reading Lease my-app", e.to_string()))?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .unwrap_or_default())
    }

    /// The elector's answer to `GET /` in pod `pod`, through `kubectl exec` into its app.
    pub(super) async fn answer(&self, pod: &str) -> std::result::Result<String, String> {
        crate::e2e::elector_leader(self.c, NAMESPACE, pod).await
    }

    pub async fn cluster(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(1, "a real single-node cluster", &[
            "Kubernetes built here from Go modules; the node runs pods with containerd and runc.",
        ]);
        self.show(&["get", "nodes", "-o", "wide"]).await?;
        self.ui.say(&format!(
            "cluster ready in {} (API server, node Ready, images imported)",
            secs(s.cluster)
        ));
        self.ui.pause("to install the webhook").await;
        Ok(())
    }

    pub async fn webhook(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(
            2,
            "install the webhook: kubectl apply -k manifests/",
            &["The manifests as shipped: namespace, RBAC, 2 replicas, PDB, webhook configuration."],
        );
        let t = Instant::now();
        let manifests = workspace_root().join("manifests");
        self.show(&["apply", "-k", &manifests.display().to_string()])
            .await?;
        let deploy = format!("deployment/{}", contract::deploy::WEBHOOK_NAME);
        self.show(&["-n", SYSTEM, "rollout", "status", &deploy, "--timeout=240s"])
            .await?;
        self.show(&["-n", SYSTEM, "get", "deployment,pdb,secret"])
            .await?;
        let d = self.json(&["-n", SYSTEM, "get", &deploy]).await?;
        if d["status"]["readyReplicas"] != 2 {
            return Err(fail(
                "the webhook Deployment",
                format!("readyReplicas {}", d["status"]["readyReplicas"]),
            ));
        }
        let mwc = format!(
            "mutatingwebhookconfiguration/{}",
            contract::deploy::WEBHOOK_CONFIGURATION
        );
        eventually("the webhook to write its caBundle", TIMEOUT, || async {
            let m = self.json(&["get", &mwc]).await.map_err(|e| e.to_string())?;
            let bundles: Vec<usize> = m["webhooks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    w["clientConfig"]["caBundle"]
                        .as_str()
                        .unwrap_or_default()
                        .len()
                })
                .collect();
            if !bundles.is_empty() && bundles.iter().all(|l| *l > 100) {
                Ok(())
            } else {
                Err(format!("caBundle lengths {bundles:?}"))
            }
        })
        .await?;
        s.webhook = t.elapsed();
        self.ui.ok(
            "2 replicas ready, PDB in place, self-provisioned certificate in the caBundle",
            t,
        );
        self.ui.pause("to deploy the example app").await;
        Ok(())
    }

    pub async fn app(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(3, "the example app: 3 replicas annotated leader-election/enabled=true", &[
            "manifests/examples/my-app, with the busybox image built here (no registry is reachable).",
        ]);
        let t = Instant::now();
        self.show(&["create", "namespace", NAMESPACE]).await?;
        let app = workspace_root().join("tests/e2e/my-app");
        self.show(&["apply", "-n", NAMESPACE, "-k", &app.display().to_string()])
            .await?;
        self.show(&[
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            "deployment/my-app",
            "--timeout=240s",
        ])
        .await?;
        let pods = eventually("3 pods, every container ready", TIMEOUT, || async {
            let pods = self.app_pods().await.map_err(|e| e.to_string())?;
            if pods.len() != 3 {
                return Err(format!("{} pods", pods.len()));
            }
            match pods.iter().find_map(pods::not_ready) {
                Some(problem) => Err(problem),
                None => Ok(pods),
            }
        })
        .await?;
        self.show(&["-n", NAMESPACE, "get", "pods", "-o", "wide"])
            .await?;
        // Native sidecar: the elector is the first init container, restartPolicy Always, and
        // the app container started once it had.
        let pod = &pods[0];
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let first_init = &pod["spec"]["initContainers"][0];
        if first_init["name"] != contract::CONTAINER_NAME || first_init["restartPolicy"] != "Always"
        {
            return Err(fail(
                "the injected pod",
                format!(
                    "{name}: the elector is not a native sidecar: {}",
                    pod["spec"]
                ),
            ));
        }
        self.show(&["-n", NAMESPACE, "get", "pod", name, "-o",
            "jsonpath={range .status.initContainerStatuses[*]}{.name}: started {.state.running.startedAt}{\"\\n\"}{end}{range .status.containerStatuses[*]}{.name}: started {.state.running.startedAt}{\"\\n\"}{end}"]).await?;
        // The kubelet starts the app only once the sidecar has started (startedAt has second
        // precision, so equal counts).
        let started = |key: &str, container: &str| {
            pod["status"][key]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == container)
                .and_then(|c| c["state"]["running"]["startedAt"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (elector, app) = (
            started("initContainerStatuses", contract::CONTAINER_NAME),
            started("containerStatuses", "app"),
        );
        if elector.is_empty() || app.is_empty() || elector > app {
            return Err(fail(
                "the start order",
                format!("{name}: elector started {elector:?}, app {app:?}"),
            ));
        }
        s.pods = pods
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        self.ui.ok(
            "3 pods Running, 2/2 ready, the elector a native sidecar started first",
            t,
        );
        self.ui.pause("to look at the election").await;
        Ok(())
    }

    pub async fn election(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(
            4,
            "who leads: the Lease, the elector's log, the app, GET localhost:4040",
            &[
                "A new Lease gets its first leader once a lease duration has passed (15 s): no one",
                "can tell a new Lease from one just deleted under a live leader.",
            ],
        );
        let t = Instant::now();
        let names: BTreeSet<String> = s.pods.iter().cloned().collect();
        let holder = eventually("a holder in Lease my-app", TIMEOUT, || async {
            let h = self.holder().await.map_err(|e| e.to_string())?;
            if names.contains(&h) {
                Ok(h)
            } else {
                Err(format!("holder {h:?}"))
            }
        })
        .await?;
        self.show(&["-n", NAMESPACE, "get", "lease", APP, "-o", "yaml"])
            .await?;
        let line = format!("{holder} is the leader");
        eventually("the elector's log line and the app's", TIMEOUT, || async {
            let e = self
                .c
                .kubectl_ok(
                    &[
                        "logs",
                        "-n",
                        NAMESPACE,
                        &holder,
                        "-c",
                        contract::CONTAINER_NAME,
                    ],
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let a = self
                .c
                .kubectl_ok(&["logs", "-n", NAMESPACE, &holder, "-c", "app"], None)
                .await
                .map_err(|e| e.to_string())?;
            (e.contains(&line) && a.contains("leading: doing the work"))
                .then_some(())
                .ok_or_else(|| format!("elector: {e}\napp: {a}"))
        })
        .await?;
        self.show(&[
            "-n",
            NAMESPACE,
            "logs",
            &holder,
            "-c",
            contract::CONTAINER_NAME,
        ])
        .await?;
        self.show(&["-n", NAMESPACE, "logs", &holder, "-c", "app", "--tail=3"])
            .await?;
        let follower = s
            .pods
            .iter()
            .find(|p| **p != holder)
            .cloned()
            .unwrap_or_default();
        self.show(&[
            "-n",
            NAMESPACE,
            "exec",
            &follower,
            "-c",
            "app",
            "--",
            "wget",
            "-qO-",
            "localhost:4040",
        ])
        .await?;
        for pod in &s.pods {
            let answer = self
                .answer(pod)
                .await
                .map_err(|e| fail("GET localhost:4040", e))?;
            if answer != holder {
                return Err(fail(
                    "GET localhost:4040",
                    format!("{pod} says {answer:?}, the Lease says {holder}"),
                ));
            }
        }
        s.first_leader = holder;
        self.ui.ok(
            "one leader; the Lease, its log, its app and every pod's answer agree",
            t,
        );
        self.ui.pause("to delete the leader's pod").await;
        Ok(())
    }

    /// Waits until the Lease names a pod other than `old` that is in `candidates`; the time
    /// from `since`.
    async fn new_holder(&self, old: &str, since: Instant) -> Result<(String, Duration)> {
        let deadline = since + TIMEOUT;
        loop {
            let h = self.holder().await?;
            if !h.is_empty() && h != old {
                return Ok((h, since.elapsed()));
            }
            if Instant::now() > deadline {
                return Err(fail(
                    "a new holder in the Lease",
                    format!("still {h:?} after {TIMEOUT:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running app pod but `gone` answers `holder`; the time from `since`.
    async fn all_answer(&self, holder: &str, gone: &str, since: Instant) -> Result<Duration> {
        eventually(
            &format!("every pod to answer {holder}"),
            TIMEOUT,
            || async {
                let pods = self.app_pods().await.map_err(|e| e.to_string())?;
                for p in pods.iter().filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["metadata"]["deletionTimestamp"].is_null()
                }) {
                    let name = p["metadata"]["name"].as_str().unwrap_or_default();
                    if name == gone {
                        continue;
                    }
                    let a = self.answer(name).await?;
                    if a != holder {
                        return Err(format!("{name} says {a:?}"));
                    }
                }
                Ok(since.elapsed())
            },
        )
        .await
    }

    pub async fn handover(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(5, "graceful handover: kubectl delete pod <leader>", &[
            "The kubelet stops the pod; the elector releases the Lease and a watching follower takes it.",
        ]);
        let old = s.first_leader.clone();
        let t = Instant::now();
        self.show(&["-n", NAMESPACE, "delete", "pod", &old, "--wait=false"])
            .await?;
        let (new, in_lease) = self.new_holder(&old, t).await?;
        let everywhere = self.all_answer(&new, &old, t).await?;
        self.show(&["-n", NAMESPACE, "get", "lease", APP]).await?;
        self.ui.ok(
            &format!(
                "{new} leads: in the Lease after {}, in every pod's answer after {}",
                secs(in_lease),
                secs(everywhere)
            ),
            t,
        );
        s.handover = Some((old, new, in_lease, everywhere));
        self.ui.pause("to crash the leader").await;
        Ok(())
    }

    pub async fn crash(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(
            6,
            "crash: SIGKILL the leader's containers through containerd (no release)",
            &["The followers take over once the Lease has gone unrenewed for a lease duration."],
        );
        let old = s.handover.as_ref().map(|h| h.1.clone()).unwrap_or_default();
        let pod = self.json(&["get", "pod", "-n", NAMESPACE, &old]).await?;
        let ids = pods::container_ids(&pod);
        if ids.is_empty() {
            return Err(fail(
                "the leader's containers",
                format!("{old} reports no container IDs"),
            ));
        }
        let socket = self.c.containerd_socket().display().to_string();
        let t = Instant::now();
        for id in &ids {
            let args = [
                "--address",
                &socket,
                "-n",
                "k8s.io",
                "tasks",
                "kill",
                "--signal",
                "SIGKILL",
                id,
            ];
            self.ui.command(&format!("ctr {}", args.join(" ")));
            let out = tokio::process::Command::new("ctr")
                .args(args)
                .output()
                .await
                .map_err(|e| fail("running ctr", e.to_string()))?;
            if !out.status.success() {
                return Err(fail(
                    "ctr tasks kill",
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        let (new, took) = self.new_holder(&old, t).await?;
        self.show(&["-n", NAMESPACE, "get", "lease", APP]).await?;
        self.ui
            .ok(&format!("{new} leads {} after the kill", secs(took)), t);
        s.failover = Some((old, new, took));
        self.ui.pause("to roll the Deployment").await;
        Ok(())
    }

    pub async fn rollout(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(
            7,
            "kubectl rollout restart deployment/my-app",
            &["Every pod is replaced; each leader that goes hands over on its way out."],
        );
        let t = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = self.c.admin_client().await?;
        let watch = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
                let mut seen: Vec<String> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(Some(l)) = leases.get_opt(APP).await {
                        let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                        if !h.is_empty() && seen.last() != Some(&h) {
                            seen.push(h);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            })
        };
        self.show(&["-n", NAMESPACE, "rollout", "restart", "deployment/my-app"])
            .await?;
        let status = self
            .show(&[
                "-n",
                NAMESPACE,
                "rollout",
                "status",
                "deployment/my-app",
                "--timeout=300s",
            ])
            .await;
        // Settled: a leader among the new pods.
        let settled = eventually("a leader among the new pods", TIMEOUT, || async {
            let pods = self.app_pods().await.map_err(|e| e.to_string())?;
            let names: BTreeSet<String> = pods
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
                .collect();
            let h = self.holder().await.map_err(|e| e.to_string())?;
            (names.len() == 3 && names.contains(&h))
                .then_some(())
                .ok_or_else(|| format!("holder {h:?}, pods {names:?}"))
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = watch
            .await
            .map_err(|e| fail("the Lease watch", e.to_string()))?;
        status?;
        settled?;
        let moves = seen.len().saturating_sub(1);
        self.show(&["-n", NAMESPACE, "get", "pods"]).await?;
        self.ui.ok(
            &format!(
                "leadership moved {moves} time(s) during the rollout: {}",
                seen.join(" -> ")
            ),
            t,
        );
        s.rollout_moves = Some(moves);
        self.ui
            .pause("to run the elector as a regular container")
            .await;
        Ok(())
    }
}
