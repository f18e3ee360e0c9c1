//! Argo Rollouts on the real cluster. The Rollout API is installed first (tests/e2e/rollouts:
//! the group, version and kind Argo serves), then the webhook as shipped, whose controller finds
//! the API when it starts leading. Argo's own controller has no image here, so this test plays
//! its part exactly where the webhook looks: the ReplicaSets of each revision, named
//! `<rollout>-<hash>`, owned by the Rollout and labelled `rollouts-pod-template-hash`. Then only
//! what the cluster reports: the stored Rollout, the pods, the Lease, the Role and every pod's
//! elector answer. The point is the canary: two revisions side by side elect on one Lease,
//! `rollout.<name>`, so there are never two leaders.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use testenv::cluster::{Cluster, config::BUSYBOX_IMAGE, pods};
use testenv::e2e::{TIMEOUT, elected, elector_leader, kubectl_json, ready_pods};
use testenv::{Result, eventually, fail, workspace_root};

const HASH_LABEL: &str = "rollouts-pod-template-hash";

/// The shared cluster with the Rollout API served before the webhook is installed.
async fn cluster_with_rollouts() -> Result<&'static Cluster> {
    static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let c = testenv::cluster::shared().await?;
    READY
        .get_or_try_init(|| async {
            let crd = workspace_root().join("tests/e2e/rollouts/crd.yaml");
            c.kubectl_ok(&["apply", "-f", &crd.display().to_string()], None)
                .await?;
            c.kubectl_ok(
                &[
                    "wait",
                    "--for=condition=Established",
                    "crd/rollouts.argoproj.io",
                    "--timeout=60s",
                ],
                None,
            )
            .await?;
            testenv::e2e::deployed().await.map(|_| ())
        })
        .await?;
    Ok(c)
}

/// What Argo's controller creates for one revision: ReplicaSet `<rollout>-<hash>` with the
/// Rollout's (stored) pod template, the hash label on it and on its pods, owned by the Rollout.
fn revision(rollout: &Value, hash: &str, replicas: u32, env: &str) -> Value {
    let name = rollout["metadata"]["name"].as_str().unwrap_or_default();
    let mut template = rollout["spec"]["template"].clone();
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    template["spec"]["containers"][0]["env"] = json!([{"name": "REVISION", "value": env}]);
    let mut selector = rollout["spec"]["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{name}-{hash}"),
            "labels": {"app": "web", HASH_LABEL: hash},
            "ownerReferences": [{
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Rollout",
                "name": name,
                "uid": rollout["metadata"]["uid"],
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
    })
}

async fn apply(c: &Cluster, ns: &str, object: &Value) -> Result<()> {
    c.kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&object.to_string()))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_canary_elects_on_one_lease_owned_by_the_rollout() -> Result<()> {
    let c = cluster_with_rollouts().await?;
    let ns = c.create_namespace("rollouts").await?;
    let rollout = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web", "annotations": {contract::annotations::ENABLED: "true"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": BUSYBOX_IMAGE,
                                    "command": ["/bin/busybox", "sh", "-c", "sleep 3600"]}],
                },
            },
        },
    });
    apply(c, &ns, &rollout).await?;
    // The webhook admitted the Rollout and the controller grants its pods exactly its Lease,
    // before any pod exists: the Lease name comes from the Rollout, not from a revision.
    let role_name = format!("{}rollout-web", contract::GRANT_PREFIX);
    let role = eventually("the controller's Role for the Rollout", TIMEOUT, || async {
        kubectl_json(c, &["get", "role", &role_name, "-n", &ns, "-o", "json"])
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let names: Vec<&Value> = role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["resourceNames"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(names, [&json!("rollout.web")], "{role:#}");

    // Revision 1, fully rolled out: 2 pods.
    let stored = kubectl_json(c, &["get", "rollout", "web", "-n", &ns, "-o", "json"]).await?;
    apply(c, &ns, &revision(&stored, "5f7d9c8b6", 2, "1")).await?;
    let first = elected(c, &ns, "rollout.web", "app=web", 2, ("Rollout", "web")).await?;

    // The canary step: revision 2 beside it with 1 pod. Its pod joins the same election.
    apply(c, &ns, &revision(&stored, "7c6b5d4f8", 1, "2")).await?;
    let pods = ready_pods(c, &ns, "app=web", 3, pods::not_ready).await?;
    let revisions: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p["metadata"]["labels"][HASH_LABEL].as_str())
        .collect();
    assert_eq!(revisions.len(), 2, "both revisions run");
    let holder = elected(c, &ns, "rollout.web", "app=web", 3, ("Rollout", "web")).await?;
    assert_eq!(holder, first, "the canary's pod did not take over");
    // Every pod of both revisions answers the one leader; no revision got a Lease of its own.
    eventually("every pod answering the one leader", TIMEOUT, || async {
        for p in &pods {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let said = elector_leader(c, &ns, name).await?;
            if said != holder {
                return Err(format!("{name} says {said:?}, the Lease names {holder}"));
            }
        }
        Ok(())
    })
    .await?;
    let leases = kubectl_json(c, &["get", "leases", "-n", &ns, "-o", "json"]).await?;
    let lease_names: Vec<&str> = leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["metadata"]["name"].as_str())
        .collect();
    if lease_names != ["rollout.web"] {
        return Err(fail(
            "one Lease for the Rollout",
            format!("{lease_names:?}"),
        ));
    }
    Ok(())
}
