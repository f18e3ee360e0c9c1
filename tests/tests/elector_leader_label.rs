//! The elector's leader-label option (`--leader-label`) against a real API server: each candidate
//! keeps `leader-election/role` on its own pod (named by `$POD_NAME`) in line with who leads, a
//! SIGTERM'd leader's pod ends as `follower`, and missing pods RBAC is one clear line that does
//! not stop the election. The pods are plain API objects (nothing schedules them); the electors
//! run as local processes with the pods' names.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use testenv::elector::{Elector, ElectorSpec, explain, leader_and_rest, wait_for_agreed_leader};
use testenv::{ControlPlane, Result, eventually, fail, manifests, procs, shared};

const LEASE: &str = "labelled-app";
const TIMEOUT: Duration = Duration::from_secs(90);

/// A namespace with ServiceAccount `leader-elector` bound to the Lease ClusterRole and, if
/// `label_rbac`, to the leader-label ClusterRole, as the webhook binds them.
async fn election(cp: &ControlPlane, prefix: &str, label_rbac: bool) -> Result<ElectorSpec> {
    let mut spec = testenv::elector::election(cp, prefix, LEASE).await?;
    if label_rbac {
        manifests::bind_cluster_role(
            cp,
            &spec.namespace,
            contract::SERVICE_ACCOUNT,
            contract::ROLE_BINDING_LEADER_LABEL,
            contract::CLUSTER_ROLE_LEADER_LABEL,
        )
        .await?;
    }
    spec.extra_args = vec![format!("--{}", contract::flags::LEADER_LABEL)];
    Ok(spec)
}

/// Pod `name` (never scheduled: only its labels matter here).
async fn create_pod(client: &Client, ns: &str, name: &str) -> Result<()> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .map_err(|e| fail("building a Pod", e.to_string()))?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| fail(format!("creating pod {ns}/{name}"), e.to_string()))?;
    Ok(())
}

/// An elector whose identity and `$POD_NAME` are `pod`.
fn spawn(spec: &ElectorSpec, pod: &str, dir: &Path) -> Result<Elector> {
    Elector::spawn_with_env(
        spec,
        pod,
        &[(contract::env::POD_NAME, pod.to_string())],
        dir,
    )
}

/// The role label of each pod, e.g. `[("a", "leader"), ("b", "follower")]` ("" when unset).
async fn roles(
    client: &Client,
    ns: &str,
    pods: &[&str],
) -> std::result::Result<Vec<String>, String> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for name in pods {
        let pod = api.get(name).await.map_err(|e| e.to_string())?;
        let role = pod
            .metadata
            .labels
            .and_then(|l| l.get(contract::labels::ROLE).cloned())
            .unwrap_or_default();
        out.push(role);
    }
    Ok(out)
}

/// Waits until the pods' role labels are `want` (in `pods` order).
async fn expect_roles(client: &Client, ns: &str, pods: &[&str], want: &[&str]) -> Result<()> {
    eventually(
        &format!("role labels {want:?} on pods {pods:?}"),
        TIMEOUT,
        || async {
            let got = roles(client, ns, pods).await?;
            if got == want {
                Ok(())
            } else {
                Err(format!("labels are {got:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_leader_pod_is_labelled_leader_and_handover_moves_the_label() -> Result<()> {
    let cp = shared().await?;
    let spec = election(cp, "elector-label", true).await?;
    let admin = cp.admin_client().await?;
    let ns = spec.namespace.clone();
    let pods = ["cand-a", "cand-b"];
    for p in pods {
        create_pod(&admin, &ns, p).await?;
    }
    let dir = procs::scratch_dir("electors")?;
    let electors = pods
        .iter()
        .map(|p| spawn(&spec, p, &dir))
        .collect::<Result<Vec<_>>>()?;
    explain(
        async {
            let all: Vec<&Elector> = electors.iter().collect();
            let leader = wait_for_agreed_leader(&all, TIMEOUT).await?;
            let want: Vec<&str> = pods
                .iter()
                .map(|p| if *p == leader { "leader" } else { "follower" })
                .collect();
            expect_roles(&admin, &ns, &pods, &want).await?;

            // SIGTERM: the leader releases, its pod ends as follower, the successor's as leader.
            let (old, rest) = leader_and_rest(&electors, &leader)?;
            old.proc.signal(libc::SIGTERM)?;
            let status = old
                .proc
                .wait_exit(Duration::from_secs(20))
                .await
                .ok_or_else(|| fail("the SIGTERM'd leader", "did not exit within 20s"))?;
            if !status.success() {
                return Err(fail(
                    "the SIGTERM'd leader",
                    format!("exited with {status}"),
                ));
            }
            let new = wait_for_agreed_leader(&rest, TIMEOUT).await?;
            let want: Vec<&str> = pods
                .iter()
                .map(|p| if *p == new { "leader" } else { "follower" })
                .collect();
            expect_roles(&admin, &ns, &pods, &want).await
        }
        .await,
        &electors,
    )
}

#[tokio::test]
async fn without_pods_rbac_the_label_error_is_one_clear_line_and_the_election_goes_on() -> Result<()>
{
    let cp = shared().await?;
    let spec = election(cp, "elector-label-norbac", false).await?;
    let admin = cp.admin_client().await?;
    create_pod(&admin, &spec.namespace, "cand-x").await?;
    let dir = procs::scratch_dir("electors")?;
    let electors = vec![spawn(&spec, "cand-x", &dir)?];
    let e = &electors[0];
    explain(
        async {
            let line = eventually("a clear error about labelling the pod", TIMEOUT, || async {
                e.proc
                    .stderr_text()
                    .lines()
                    .find(|l| l.contains("cannot label pod"))
                    .map(str::to_string)
                    .ok_or_else(|| procs::last_lines(&e.proc.stderr_text(), 5))
            })
            .await?;
            for want in [
                "forbidden",
                contract::CLUSTER_ROLE_LEADER_LABEL,
                spec.namespace.as_str(),
                "cand-x",
            ] {
                if !line.contains(want) {
                    return Err(fail(
                        "the label error line",
                        format!("{want:?} missing: {line}"),
                    ));
                }
            }
            // Labelling is best effort: the elector still leads.
            wait_for_agreed_leader(&[e], TIMEOUT).await?;
            let got = roles(&admin, &spec.namespace, &["cand-x"])
                .await
                .map_err(|m| fail("reading the pod", m))?;
            if got != [""] {
                return Err(fail(
                    "the pod",
                    format!("was labelled without RBAC: {got:?}"),
                ));
            }
            Ok(())
        }
        .await,
        &electors,
    )
}
