//! The leader label on real pods: the example app (3 replicas) annotated
//! `leader-election/leader-label: "true"`, and the leader's elector container (a) killed with
//! SIGKILL through containerd, (b) frozen past the lease duration (`ctr tasks pause`, then
//! resumed), (c) cut off from the API server (iptables DROP in the pod's network namespace,
//! removed afterwards). Each time the Lease must get a new holder and the label must follow it,
//! and watchers on the pods and the Lease record the whole run: never more than one pod labelled
//! `leader` at once. The times from holder change to label moved are printed (run with
//! `--nocapture`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube_runtime::watcher;
use testenv::cluster::{Cluster, node, pods};
use testenv::e2e::{TIMEOUT, deployed};
use testenv::{Result, eventually, fail, workspace_root};

use contract::labels::{ROLE, ROLE_LEADER};

const APP: &str = "my-app";
/// The example's lease duration (the default): a killed, frozen or cut-off leader is replaced
/// about this long after its last renewal.
const LEASE: Duration = Duration::from_secs(15);
/// From a new holder in the Lease to its pod labelled leader, as the watches see them. The
/// controller reacts to the Lease's watch event in well under a second; the margin is for a
/// shared, loaded machine.
const LABEL_BOUND: Duration = Duration::from_secs(10);

/// What the watches saw, each event stamped on arrival.
#[derive(Debug, Default)]
struct Record {
    /// Role label of every pod now (absent key: pod gone).
    roles: BTreeMap<String, Option<String>>,
    /// The most pods labelled leader at once, and when (pod names).
    max_leaders: usize,
    max_at: Vec<String>,
    /// (arrival, pod, role) for every label change seen.
    labels: Vec<(Instant, SystemTime, String, Option<String>)>,
    /// (arrival, holder, acquireTime) for every holder change seen.
    holders: Vec<(Instant, String, Option<SystemTime>)>,
    /// Relist buffer.
    init: Option<BTreeMap<String, Option<String>>>,
}

impl Record {
    fn set(&mut self, pod: String, role: Option<String>) {
        if self.roles.get(&pod) != Some(&role) {
            self.labels
                .push((Instant::now(), SystemTime::now(), pod.clone(), role.clone()));
        }
        self.roles.insert(pod, role);
        self.count();
    }

    fn count(&mut self) {
        let leaders: Vec<String> = self
            .roles
            .iter()
            .filter(|(_, r)| r.as_deref() == Some(ROLE_LEADER))
            .map(|(p, _)| p.clone())
            .collect();
        if leaders.len() > self.max_leaders {
            self.max_leaders = leaders.len();
            self.max_at = leaders;
        }
    }

    fn pod_event(&mut self, ev: watcher::Event<Pod>) {
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
        let role = |p: &Pod| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ROLE).cloned())
        };
        match ev {
            watcher::Event::Apply(p) => self.set(name(&p), role(&p)),
            watcher::Event::Delete(p) => {
                self.roles.remove(&name(&p));
            }
            watcher::Event::Init => self.init = Some(BTreeMap::new()),
            watcher::Event::InitApply(p) => {
                if let Some(b) = self.init.as_mut() {
                    b.insert(name(&p), role(&p));
                }
            }
            watcher::Event::InitDone => {
                let fresh = self.init.take().unwrap_or_default();
                self.roles.retain(|k, _| fresh.contains_key(k));
                for (pod, role) in fresh {
                    self.set(pod, role);
                }
            }
        }
    }

    fn lease_event(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        if self.holders.last().map(|h| &h.1) != Some(&holder) {
            let acquired = spec.acquire_time.map(|t| {
                SystemTime::UNIX_EPOCH + Duration::from_micros(t.0.as_microsecond().max(0) as u64)
            });
            self.holders.push((Instant::now(), holder, acquired));
        }
    }

    fn holder(&self) -> String {
        self.holders.last().map(|h| h.1.clone()).unwrap_or_default()
    }

    fn role(&self, pod: &str) -> Option<String> {
        self.roles.get(pod).cloned().flatten()
    }
}

/// Watches the namespace's pods and Lease my-app into `rec` until the tasks are aborted.
fn watch(
    client: kube::Client,
    ns: &str,
    rec: Arc<Mutex<Record>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client, ns);
    let r = rec.clone();
    let pod_task = tokio::spawn(async move {
        let mut s = watcher(pods, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(ev) => r.lock().unwrap().pod_event(ev),
                Err(e) => {
                    eprintln!("pod watch: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let lease_task = tokio::spawn(async move {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={APP}"));
        let mut s = watcher(leases, cfg).boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                    rec.lock().unwrap().lease_event(&l)
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("lease watch: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    vec![pod_task, lease_task]
}

/// The example app with the leader label asked for, applied in one go (one rollout).
async fn apply_labelled_example(c: &Cluster, ns: &str) -> Result<()> {
    let dir = workspace_root().join("tests/e2e/my-app");
    let text = c
        .kubectl_ok(
            &[
                "apply",
                "-n",
                ns,
                "-k",
                &dir.display().to_string(),
                "--dry-run=client",
                "-o",
                "json",
            ],
            None,
        )
        .await?;
    let mut deploy: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail("the rendered example", e.to_string()))?;
    if deploy["kind"] == "List" {
        deploy = deploy["items"][0].clone();
    }
    if deploy["kind"] != "Deployment" {
        return Err(fail("the rendered example", format!("{deploy:#}")));
    }
    deploy["spec"]["template"]["metadata"]["annotations"][contract::annotations::LEADER_LABEL] =
        "true".into();
    c.kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&deploy.to_string()))
        .await?;
    testenv::e2e::rollout(c, ns, APP).await
}

async fn pod_list(c: &Cluster, ns: &str) -> Result<Vec<serde_json::Value>> {
    testenv::e2e::live_pods(c, ns, "app=my-app").await
}

/// 3 ready pods, a holder among them in the Lease (as read now), labelled leader and every other
/// pod follower (as the pod watch saw them); every pod's elector answers the holder. Returns the
/// holder's pod.
async fn steady(c: &Cluster, ns: &str, rec: &Arc<Mutex<Record>>) -> Result<serde_json::Value> {
    eventually("a steady leader, labelled", TIMEOUT, || async {
        let pods = pod_list(c, ns).await.map_err(|e| e.to_string())?;
        if pods.len() != 3 {
            return Err(format!("{} pods", pods.len()));
        }
        if let Some(p) = pods.iter().find_map(pods::not_ready) {
            return Err(p);
        }
        let lease = c
            .kubectl_ok(&["get", "lease", APP, "-n", ns, "-o", "json"], None)
            .await
            .map_err(|e| e.to_string())?;
        let lease: serde_json::Value = serde_json::from_str(&lease).map_err(|e| e.to_string())?;
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
        let Some(pod) = pods.iter().find(|p| p["metadata"]["name"] == holder) else {
            return Err(format!("holder {holder:?} is none of the pods"));
        };
        {
            let r = rec.lock().unwrap();
            for p in &pods {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                let want = if name == holder { "leader" } else { "follower" };
                if r.role(name).as_deref() != Some(want) {
                    return Err(format!("{name}: role {:?}, want {want}", r.role(name)));
                }
            }
        }
        for p in &pods {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let says = testenv::e2e::elector_leader(c, ns, name).await?;
            if says != holder {
                return Err(format!(
                    "{name} answers {says:?}, the Lease says {holder:?}"
                ));
            }
        }
        Ok(pod.clone())
    })
    .await
}

async fn ctr(c: &Cluster, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", "k8s.io"];
    all.extend(args);
    node::ctr(&c.containerd_socket(), &all)
        .await
        .map_err(|e| fail("ctr", e))
}

/// The host PID of a running container's task (`ctr tasks ls`: TASK PID STATUS).
async fn task_pid(c: &Cluster, id: &str) -> Result<u32> {
    let list = ctr(c, &["tasks", "ls"]).await?;
    list.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == id).then(|| f.next()?.parse().ok())?
        })
        .next()
        .ok_or_else(|| fail("the elector's task", format!("{id} not in:\n{list}")))
}

/// Where a pod reaches the API server: the `kubernetes` Service (ClusterIP, port) and its
/// endpoints (address, port), as `-d IP --dport PORT` matches. Only those ports: the node's
/// other traffic with the pod (the kubelet's probes) must go on.
async fn api_server_destinations(c: &Cluster) -> Result<Vec<(String, String)>> {
    let svc = c
        .kubectl_ok(
            &[
                "get",
                "service",
                "kubernetes",
                "-n",
                "default",
                "-o",
                "jsonpath={.spec.clusterIP} {.spec.ports[0].port}",
            ],
            None,
        )
        .await?;
    let eps = c
        .kubectl_ok(
            &[
                "get",
                "endpointslices",
                "-n",
                "default",
                "-l",
                "kubernetes.io/service-name=kubernetes",
                "-o",
                "jsonpath={range .items[*]}{.ports[0].port}{range .endpoints[*]} {.addresses[0]}{end}{end}",
            ],
            None,
        )
        .await?;
    let mut all = Vec::new();
    if let [ip, port] = svc.split_whitespace().collect::<Vec<_>>()[..] {
        all.push((ip.to_string(), port.to_string()));
    }
    let mut words = eps.split_whitespace();
    if let Some(port) = words.next() {
        all.extend(words.map(|ip| (ip.to_string(), port.to_string())));
    }
    if all.len() < 2 {
        return Err(fail(
            "the API server's addresses",
            format!("service {svc:?}, endpoints {eps:?}"),
        ));
    }
    Ok(all)
}

fn drop_rule(op: &str, (ip, port): &(String, String)) -> Vec<String> {
    [
        op, "OUTPUT", "-p", "tcp", "-d", ip, "--dport", port, "-j", "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The containerd ID of one of the pod's containers, by name.
fn container_id(pod: &serde_json::Value, name: &str) -> Result<String> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][*k].as_array().into_iter().flatten())
        .find(|s| s["name"] == name)
        .and_then(|s| s["containerID"].as_str())
        .and_then(|id| id.strip_prefix("containerd://"))
        .map(String::from)
        .ok_or_else(|| {
            fail(
                format!("container {name}'s ID"),
                format!("{:#}", pod["status"]),
            )
        })
}

/// iptables in a process's network namespace.
fn iptables_in(pid: u32, args: &[String]) -> std::result::Result<(), String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("running nsenter iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {} in pid {pid}'s netns: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// How to undo a fault.
enum Fix {
    /// `ctr tasks resume <id>` (containerd socket, id).
    Resume(std::path::PathBuf, String),
    /// Delete these DROP rules from pid's netns.
    Unblock(u32, Vec<(String, String)>),
}

impl Fix {
    fn apply(&self) -> std::result::Result<(), String> {
        match self {
            Fix::Resume(socket, id) => {
                let out = std::process::Command::new("ctr")
                    .arg(format!("--address={}", socket.display()))
                    .args(["-n", "k8s.io", "tasks", "resume", id])
                    .output()
                    .map_err(|e| format!("running ctr: {e}"))?;
                out.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
            }
            Fix::Unblock(pid, dests) => dests
                .iter()
                .try_for_each(|d| iptables_in(*pid, &drop_rule("-D", d))),
        }
    }
}

/// Undoes the fault once: when asked, or when dropped (the test failed half-way).
#[derive(Default)]
struct Undo(Option<Fix>);

impl Undo {
    fn run(&mut self) -> std::result::Result<(), String> {
        self.0.take().map_or(Ok(()), |f| f.apply())
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Err(e) = self.run() {
            eprintln!("undoing the fault: {e}");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Freeze,
    CutOff,
}

/// What one case measured.
#[derive(Debug)]
struct Moved {
    fault: Fault,
    from: String,
    to: String,
    /// Fault to the new holder in the Lease's watch.
    holder_after: Duration,
    /// New holder in the Lease's watch to its pod labelled leader in the pods' watch.
    label_after: Duration,
    /// The Lease's acquireTime (the new holder's clock) to the label seen (the test's clock;
    /// same machine).
    label_after_acquire: Option<Duration>,
    /// Old holder's label gone leader → follower, relative to the new holder's appearance in the
    /// Lease (negative: before).
    demoted_vs_holder: f64,
}

async fn break_leader(
    c: &Cluster,
    ns: &str,
    rec: &Arc<Mutex<Record>>,
    fault: Fault,
) -> Result<Moved> {
    let pod = Box::pin(steady(c, ns, rec)).await?;
    let old = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = container_id(&pod, contract::CONTAINER_NAME)?;
    let t0 = Instant::now();
    let mut undo = Undo::default();
    match fault {
        Fault::Kill => {
            ctr(c, &["tasks", "kill", "--signal", "SIGKILL", &id]).await?;
        }
        Fault::Freeze => {
            ctr(c, &["tasks", "pause", &id]).await?;
            undo = Undo(Some(Fix::Resume(c.containerd_socket(), id.clone())));
        }
        Fault::CutOff => {
            // The app container shares the pod's network namespace and is left alone, so its
            // pid still names the namespace if the elector restarts meanwhile.
            let pid = task_pid(c, &container_id(&pod, "app")?).await?;
            let dests = api_server_destinations(c).await?;
            undo = Undo(Some(Fix::Unblock(pid, Vec::new())));
            for d in &dests {
                iptables_in(pid, &drop_rule("-I", d))
                    .map_err(|e| fail("cutting the leader off", e))?;
                if let Some(Fix::Unblock(_, added)) = &mut undo.0 {
                    added.push(d.clone());
                }
            }
            eprintln!("{old}: TCP to the API server {dests:?} dropped in its network namespace");
        }
    }
    // A new holder in the Lease, labelled leader; the old one no longer leader.
    let to = eventually(
        &format!("{fault:?}: a new holder labelled leader, {old} not"),
        LEASE * 4 + TIMEOUT / 4,
        || async {
            let r = rec.lock().unwrap();
            let h = r.holder();
            if h.is_empty() || h == old {
                return Err(format!("holder {h:?}"));
            }
            if r.role(&h).as_deref() != Some(ROLE_LEADER)
                || r.role(&old).as_deref() == Some(ROLE_LEADER)
            {
                return Err(format!(
                    "holder {h}: {:?}, {old}: {:?}",
                    r.role(&h),
                    r.role(&old)
                ));
            }
            Ok(h)
        },
    )
    .await?;
    let moved = {
        let r = rec.lock().unwrap();
        let (held, acquired) = r
            .holders
            .iter()
            .find(|(at, h, _)| *at >= t0 && *h == to)
            .map(|(at, _, acq)| (*at, *acq))
            .ok_or_else(|| fail("the Lease watch", format!("no event naming {to}")))?;
        let (labelled, labelled_wall) = r
            .labels
            .iter()
            .find(|(at, _, p, role)| *at >= t0 && *p == to && role.as_deref() == Some(ROLE_LEADER))
            .map(|(at, wall, ..)| (*at, *wall))
            .ok_or_else(|| fail("the pod watch", format!("no event labelling {to} leader")))?;
        let demoted = r
            .labels
            .iter()
            .find(|(at, _, p, role)| *at >= t0 && *p == old && role.as_deref() != Some(ROLE_LEADER))
            .map(|(at, ..)| *at)
            .ok_or_else(|| fail("the pod watch", format!("no event demoting {old}")))?;
        let signed = |a: Instant, b: Instant| {
            if a >= b {
                a.duration_since(b).as_secs_f64()
            } else {
                -b.duration_since(a).as_secs_f64()
            }
        };
        Moved {
            fault,
            from: old.clone(),
            to: to.clone(),
            holder_after: held.duration_since(t0),
            label_after: labelled.saturating_duration_since(held),
            label_after_acquire: acquired.and_then(|a| labelled_wall.duration_since(a).ok()),
            demoted_vs_holder: signed(demoted, held),
        }
    };
    undo.run().map_err(|e| fail("undoing the fault", e))?;
    // The old leader's elector is back (restarted, thawed or reconnected) and follows.
    eventually(&format!("{old} back, answering {to}"), TIMEOUT, || async {
        let says = testenv::e2e::elector_leader(c, ns, &old).await?;
        (says == to)
            .then_some(())
            .ok_or_else(|| format!("{old} answers {says:?}"))
    })
    .await?;
    Ok(moved)
}

#[tokio::test]
async fn the_leader_label_follows_a_killed_frozen_or_cut_off_leader() -> Result<()> {
    let c = Box::pin(deployed()).await?;
    let ns = c.create_namespace("label").await?;
    let rec = Arc::new(Mutex::new(Record::default()));
    let tasks = watch(c.admin_client().await?, &ns, rec.clone());
    Box::pin(apply_labelled_example(c, &ns)).await?;
    let mut results = Vec::new();
    for fault in [Fault::Kill, Fault::Freeze, Fault::CutOff] {
        let m = Box::pin(break_leader(c, &ns, &rec, fault)).await?;
        eprintln!(
            "{:?}: {} -> {}: new holder {:.2}s after the fault; labelled leader {:.3}s after the \
             holder change (watch events), {} after its acquireTime; old holder demoted {:+.3}s \
             from the holder change",
            m.fault,
            m.from,
            m.to,
            m.holder_after.as_secs_f64(),
            m.label_after.as_secs_f64(),
            m.label_after_acquire
                .map_or("?".into(), |d| format!("{:.3}s", d.as_secs_f64())),
            m.demoted_vs_holder,
        );
        results.push(m);
    }
    // Back to steady with all three pods after the last fault.
    Box::pin(steady(c, &ns, &rec)).await?;
    for t in tasks {
        t.abort();
    }
    let r = rec.lock().unwrap();
    eprintln!(
        "label changes seen: {}; holders: {:?}; most pods labelled leader at once: {} ({:?})",
        r.labels.len(),
        r.holders.iter().map(|h| h.1.as_str()).collect::<Vec<_>>(),
        r.max_leaders,
        r.max_at
    );
    assert_eq!(
        r.max_leaders, 1,
        "pods labelled leader at once over the run: {:?}",
        r.max_at
    );
    for m in &results {
        assert!(
            m.label_after <= LABEL_BOUND,
            "{:?}: the label took {:?} to follow the holder",
            m.fault,
            m.label_after
        );
        // Killed, frozen or cut off: no release, so the holder changes only once the lease has
        // expired (not before a lease duration less the renew interval).
        assert!(
            m.holder_after >= LEASE / 2,
            "{:?}: the holder changed {:?} after the fault: was the old leader really stopped?",
            m.fault,
            m.holder_after
        );
    }
    Ok(())
}
