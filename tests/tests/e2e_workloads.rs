//! Every kind of workload on the real cluster, annotated at the workload level as a user does:
//! each gets its Lease under its documented name with an ownerReference to it, and the electors
//! in its pods elect on it; a CronJob's Jobs share one Lease and leave none behind; a Deployment
//! and a StatefulSet of one name get two Leases; and a `kubectl apply` that moves `enabled` from
//! the Deployment into its pod template never rolls out pods without the elector. Everything is
//! read back through the API server (`kubectl get -o json`).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use testenv::cluster::{Cluster, pods};
use testenv::e2e::{TIMEOUT, deployed, elected, kubectl_json as json_of};
use testenv::{Result, eventually, fail};

const ENABLED: &str = contract::annotations::ENABLED;

async fn apply(c: &Cluster, ns: &str, objects: Vec<Value>, extra: &[&str]) -> Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    let mut args = vec!["apply", "-n", ns, "-f", "-"];
    args.extend_from_slice(extra);
    c.kubectl_ok(&args, Some(&list)).await.map(|_| ())
}

fn busybox() -> Value {
    pods::busybox_pod("x", "")["spec"]["containers"][0]["image"].clone()
}

/// A pod template labelled `app=<app>` running `sleep`, with `annotations` on the template.
fn template(app: &str, annotations: Value, restart: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}, "annotations": annotations},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": busybox(),
                            "command": ["/bin/busybox", "sh", "-c", "sleep 3600"]}],
        },
    })
}

/// A workload of `kind` named `name` whose pods carry `app=<app>`, annotated at the workload
/// level (`leader-election/enabled: "true"` on its metadata, nothing on its template).
fn workload(kind: &str, name: &str, app: &str) -> Value {
    let on = json!({ENABLED: "true"});
    let selector = json!({"matchLabels": {"app": app}});
    let (api, spec) = match kind {
        "Deployment" | "ReplicaSet" => (
            "apps/v1",
            json!({"replicas": 2, "selector": selector, "template": template(app, json!({}), "Always")}),
        ),
        "StatefulSet" => (
            "apps/v1",
            json!({"replicas": 2, "serviceName": name, "selector": selector,
                   "template": template(app, json!({}), "Always")}),
        ),
        "DaemonSet" => (
            "apps/v1",
            json!({"selector": selector, "template": template(app, json!({}), "Always")}),
        ),
        "Job" => (
            "batch/v1",
            json!({"parallelism": 2, "completions": 2, "backoffLimit": 0,
                   "template": template(app, json!({}), "Never")}),
        ),
        "CronJob" => (
            "batch/v1",
            // Suspended: runs are created below with `kubectl create job --from=cronjob/...`,
            // which the CronJob owns exactly as its scheduled runs.
            json!({"schedule": "0 0 1 1 *", "suspend": true, "concurrencyPolicy": "Allow",
                   "jobTemplate": {"spec": {"backoffLimit": 0,
                       "template": template(app, json!({}), "Never")}}}),
        ),
        other => unreachable!("{other}"),
    };
    json!({"apiVersion": api, "kind": kind,
           "metadata": {"name": name, "annotations": on}, "spec": spec})
}

async fn lease_names(c: &Cluster, ns: &str) -> Result<BTreeSet<String>> {
    let l = json_of(c, &["get", "leases", "-n", ns, "-o", "json"]).await?;
    Ok(l["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect())
}

#[tokio::test]
async fn each_kind_elects_on_its_own_lease() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("kinds").await?;
    // A Deployment and a StatefulSet of one name, and one of every other kind.
    apply(
        c,
        &ns,
        vec![
            workload("Deployment", "web", "web-deploy"),
            workload("StatefulSet", "web", "web-sts"),
            workload("DaemonSet", "agent", "agent"),
            workload("ReplicaSet", "bare", "bare-rs"),
            workload("Job", "once", "once"),
        ],
        &[],
    )
    .await?;
    // (Lease, pods' app label, running pods, owner)
    let cases = [
        ("web", "web-deploy", 2, ("Deployment", "web")),
        ("statefulset.web", "web-sts", 2, ("StatefulSet", "web")),
        ("daemonset.agent", "agent", 1, ("DaemonSet", "agent")),
        ("replicaset.bare", "bare-rs", 2, ("ReplicaSet", "bare")),
        ("job.once", "once", 2, ("Job", "once")),
    ];
    for (lease, app, n, owner) in cases {
        let holder = elected(c, &ns, lease, &format!("app={app}"), n, owner).await?;
        eprintln!("{lease}: held by {holder}");
    }
    // Two Leases for one name, and no other (no per-pod or per-ReplicaSet Lease).
    let want: BTreeSet<String> = cases.iter().map(|(l, ..)| l.to_string()).collect();
    assert_eq!(lease_names(c, &ns).await?, want);
    Ok(())
}

#[tokio::test]
async fn a_cronjobs_overlapping_jobs_share_one_lease_and_leave_none() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("cron").await?;
    apply(c, &ns, vec![workload("CronJob", "backup", "backup")], &[]).await?;
    // The CronJob's pod template got the workload's annotation.
    let cj = json_of(c, &["get", "cronjob", "backup", "-n", &ns, "-o", "json"]).await?;
    assert_eq!(
        cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"][ENABLED], "true",
        "{cj}"
    );
    // Two runs at once, owned by the CronJob as its scheduled runs are.
    for run in ["backup-run-1", "backup-run-2"] {
        c.kubectl_ok(
            &["create", "job", "-n", &ns, run, "--from=cronjob/backup"],
            None,
        )
        .await?;
    }
    let holder = elected(
        c,
        &ns,
        "cronjob.backup",
        "app=backup",
        2,
        ("CronJob", "backup"),
    )
    .await?;
    eprintln!("cronjob.backup: held by {holder}");
    let job = json_of(c, &["get", "job", "backup-run-1", "-n", &ns, "-o", "json"]).await?;
    assert_eq!(
        job["spec"]["template"]["metadata"]["annotations"][contract::annotations::LEASE_NAME],
        "cronjob.backup",
        "the webhook pinned the CronJob's Lease on the run: {}",
        job["spec"]["template"]["metadata"]
    );
    assert_eq!(
        lease_names(c, &ns).await?,
        BTreeSet::from(["cronjob.backup".to_string()])
    );
    // Runs end and are deleted: the CronJob's one Lease stays, no Lease per run is left.
    c.kubectl_ok(&["delete", "job", "-n", &ns, "--all", "--wait=true"], None)
        .await?;
    eventually("no backup pods left", TIMEOUT, || async {
        let n = json_of(c, &["get", "pods", "-n", &ns, "-o", "json"])
            .await
            .map_err(|e| e.to_string())?["items"]
            .as_array()
            .map_or(0, Vec::len);
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await?;
    assert_eq!(
        lease_names(c, &ns).await?,
        BTreeSet::from(["cronjob.backup".to_string()])
    );
    Ok(())
}

/// Whether every ReplicaSet the Deployment `name` ever had runs the elector: each revision's
/// template opts in (a revision without it would have rolled out pods without the elector).
async fn every_revision_opts_in(c: &Cluster, ns: &str, app: &str) -> Result<usize> {
    let rs = json_of(
        c,
        &[
            "get",
            "replicasets",
            "-n",
            ns,
            "-l",
            &format!("app={app}"),
            "-o",
            "json",
        ],
    )
    .await?;
    let items = rs["items"].as_array().cloned().unwrap_or_default();
    for r in &items {
        let a = &r["spec"]["template"]["metadata"]["annotations"];
        if a[ENABLED] != "true" {
            return Err(fail(
                "every revision opts in",
                format!(
                    "ReplicaSet {} has template annotations {a}",
                    r["metadata"]["name"]
                ),
            ));
        }
    }
    Ok(items.len())
}

/// Every pod of `app` runs the elector, as the API server reports the pods.
async fn pods_have_elector(c: &Cluster, ns: &str, app: &str) -> Result<usize> {
    let items = testenv::e2e::pods(c, ns, &format!("app={app}")).await?;
    for p in &items {
        let has = p["spec"]["containers"]
            .as_array()
            .into_iter()
            .chain(p["spec"]["initContainers"].as_array())
            .flatten()
            .any(|c| c["name"] == contract::CONTAINER_NAME);
        if !has {
            return Err(fail(
                "pods with the elector",
                format!("{} has none", p["metadata"]["name"]),
            ));
        }
    }
    Ok(items.len())
}

#[tokio::test]
async fn moving_enabled_into_the_template_keeps_the_elector() -> Result<()> {
    let c = deployed().await?;
    let ns = c.create_namespace("move").await?;
    // (app, extra kubectl apply flags): client-side apply, then server-side apply.
    for (app, flags) in [
        ("move-csa", &[][..]),
        ("move-ssa", &["--server-side", "--field-manager=gitops"][..]),
    ] {
        let before = workload("Deployment", app, app);
        apply(c, &ns, vec![before.clone()], flags).await?;
        testenv::e2e::rollout(c, &ns, app).await?;
        assert!(pods_have_elector(c, &ns, app).await? >= 2, "{app}");
        let lease = elected(c, &ns, app, &format!("app={app}"), 2, ("Deployment", app)).await?;
        eprintln!("{app}: {lease} leads before the move");
        // What the webhook copied is not attributed to the applier: an Apply manager owns only
        // what its configuration declares (the webhook relies on it to tell the user's keys).
        let d = json_of(
            c,
            &[
                "get",
                "deployment",
                app,
                "-n",
                &ns,
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )
        .await?;
        for m in d["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if m["operation"] == "Apply" {
                let owned = m["fieldsV1"]
                    .pointer("/f:spec/f:template/f:metadata/f:annotations")
                    .and_then(Value::as_object);
                assert!(
                    !owned
                        .into_iter()
                        .flatten()
                        .any(|(k, _)| k.starts_with("f:leader-election/")),
                    "{app}: {m}"
                );
            }
        }

        // One apply moves `enabled` from the Deployment's metadata into its pod template.
        let mut after = before.clone();
        after["metadata"]["annotations"] = json!({});
        after["spec"]["template"]["metadata"]["annotations"] = json!({ENABLED: "true"});
        apply(c, &ns, vec![after], flags).await?;
        testenv::e2e::rollout(c, &ns, app).await?;
        let d = json_of(c, &["get", "deployment", app, "-n", &ns, "-o", "json"]).await?;
        let t = &d["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            t[ENABLED], "true",
            "{app}: the user's template value stays: {t}"
        );
        assert!(
            t.get(contract::annotations::PROPAGATED).is_none(),
            "{app}: the key is no longer listed as the webhook's: {t}"
        );
        let revisions = every_revision_opts_in(c, &ns, app).await?;
        // Every pod there is, including old ones still terminating, has the elector.
        assert!(pods_have_elector(c, &ns, app).await? >= 2, "{app}");
        eprintln!("{app}: {revisions} revisions, every one with the elector");

        // The same apply again (what the next GitOps sync does) changes nothing.
        let generation = d["metadata"]["generation"].clone();
        let mut again = before.clone();
        again["metadata"]["annotations"] = json!({});
        again["spec"]["template"]["metadata"]["annotations"] = json!({ENABLED: "true"});
        apply(c, &ns, vec![again], flags).await?;
        let d = json_of(c, &["get", "deployment", app, "-n", &ns, "-o", "json"]).await?;
        assert_eq!(
            d["metadata"]["generation"], generation,
            "{app}: a re-sync starts no rollout"
        );
    }
    Ok(())
}
