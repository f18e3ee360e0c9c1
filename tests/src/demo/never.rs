//! The demo's last step: `leader-election/native-sidecar: never` on a second, small Deployment.
//! The elector is then a regular container next to the app (for clusters or tools that do not
//! handle native sidecars), and it elects all the same.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::Summary;
use super::steps::{Demo, NAMESPACE};
use crate::cluster::config::BUSYBOX_IMAGE;
use crate::cluster::pods;
use crate::error::{Result, fail};
use crate::wait::eventually;

pub const NEVER_APP: &str = "never-app";
const TIMEOUT: Duration = Duration::from_secs(300);

/// Two replicas with shorter timings than the default, so the new Lease gets its first leader
/// after 6 s rather than 15 s.
fn manifest() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {NEVER_APP}
spec:
  replicas: 2
  selector:
    matchLabels:
      app: {NEVER_APP}
  template:
    metadata:
      labels:
        app: {NEVER_APP}
      annotations:
        leader-election/enabled: "true"
        leader-election/native-sidecar: "never"
        leader-election/lease-duration: "6s"
        leader-election/renew-deadline: "4s"
        leader-election/retry-period: "1s"
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: {BUSYBOX_IMAGE}
          command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#
    )
}

impl Demo<'_> {
    pub async fn never(&self, s: &mut Summary) -> Result<()> {
        self.ui.step(
            8,
            "leader-election/native-sidecar: never (the elector as a regular container)",
            &[
                "By default (auto) the elector is a native sidecar: an init container with",
                "restartPolicy Always that the kubelet starts before the app (step 3). With",
                "`never` it is an ordinary container next to the app; it elects all the same.",
            ],
        );
        let t = Instant::now();
        let yaml = manifest();
        self.ui
            .command(&format!("kubectl -n {NAMESPACE} apply -f - <<EOF"));
        self.ui.block(&yaml);
        self.ui.say("EOF");
        let out = self
            .c
            .kubectl(&["-n", NAMESPACE, "apply", "-f", "-"], Some(&yaml))
            .await?;
        self.ui.block(&out.stdout);
        if !out.success {
            return Err(fail("kubectl apply", out.stderr.trim().to_string()));
        }
        let deploy = format!("deployment/{NEVER_APP}");
        self.show(&[
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            &deploy,
            "--timeout=240s",
        ])
        .await?;
        let selector = format!("app={NEVER_APP}");
        let pods = eventually("2 pods, every container ready", TIMEOUT, || async {
            let pods = crate::e2e::live_pods(self.c, NAMESPACE, &selector)
                .await
                .map_err(|e| e.to_string())?;
            if pods.len() != 2 {
                return Err(format!("{} pods", pods.len()));
            }
            match pods.iter().find_map(pods::not_ready) {
                Some(problem) => Err(problem),
                None => Ok(pods),
            }
        })
        .await?;
        self.show(&["-n", NAMESPACE, "get", "pods", "-l", &selector])
            .await?;
        let name = pods[0]["metadata"]["name"].as_str().unwrap_or_default();
        self.show(&[
            "-n",
            NAMESPACE,
            "get",
            "pod",
            name,
            "-o",
            "jsonpath=containers: {.spec.containers[*].name}{\"\\n\"}initContainers: {.spec.initContainers[*].name}{\"\\n\"}",
        ])
        .await?;
        for p in &pods {
            let names = |key: &str| -> Vec<String> {
                p["spec"][key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            };
            let (regular, init) = (names("containers"), names("initContainers"));
            let elector = contract::CONTAINER_NAME.to_string();
            if !regular.contains(&elector) || init.contains(&elector) {
                return Err(fail(
                    "native-sidecar: never",
                    format!(
                        "{}: containers {regular:?}, initContainers {init:?}",
                        p["metadata"]["name"]
                    ),
                ));
            }
        }
        // It elects: the Lease names one of the two pods, and both electors say so.
        let names: BTreeSet<String> = pods
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        let holder = eventually(
            &format!("a holder in Lease {NEVER_APP}"),
            TIMEOUT,
            || async {
                let lease = self
                    .json(&["get", "lease", NEVER_APP, "-n", NAMESPACE])
                    .await
                    .map_err(|e| e.to_string())?;
                let h = lease["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if !names.contains(&h) {
                    return Err(format!("holder {h:?}"));
                }
                for pod in &names {
                    let a = self.answer(pod).await?;
                    if a != h {
                        return Err(format!("{pod} says {a:?}, the Lease {h:?}"));
                    }
                }
                Ok(h)
            },
        )
        .await?;
        self.show(&["-n", NAMESPACE, "get", "lease", NEVER_APP])
            .await?;
        let took = t.elapsed();
        self.ui.ok(
            &format!("the elector is a regular container in both pods; {holder} leads, both agree"),
            t,
        );
        s.never = Some((holder, took));
        Ok(())
    }
}
