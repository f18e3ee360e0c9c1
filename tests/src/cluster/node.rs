//! The node: containerd, the kubelet and kube-proxy, each inside the cluster's network
//! namespace, with the cgroup root the kubelet needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;

use super::config::{self, NodeFiles, Slot};
use crate::control_plane::{Binaries, ControlPlane, NODE_NAME, in_namespace};
use crate::error::{Context, Result, fail};
use crate::procs::Proc;
use crate::wait::eventually_while_running;

/// How long the node may take to register and become Ready on a slow, shared machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(240);

pub struct Node {
    pub containerd: Proc,
    pub kubelet: Option<Proc>,
    pub proxy: Option<Proc>,
}

impl Node {
    /// Starts containerd and waits for its socket.
    pub async fn start_containerd(slot: &Slot, files: &NodeFiles, log_dir: &Path) -> Result<Node> {
        for dir in [files.cni_conf_dir(), files.kubelet_root(), files.pod_logs()] {
            std::fs::create_dir_all(&dir).context(format!("creating {}", dir.display()))?;
        }
        write_json(
            &files.cni_conf_dir().join("10-bridge.conflist"),
            &config::cni_conflist(files, slot),
        )?;
        std::fs::write(files.containerd_config(), config::containerd_config(files))
            .context("writing containerd's config")?;
        create_cgroup_root(slot)?;

        let containerd = spawn_in(
            slot,
            "containerd",
            &which("containerd")?,
            &[format!("--config={}", files.containerd_config().display())],
            log_dir,
        )?;
        let socket = files.containerd_socket();
        eventually_while_running(
            "containerd to answer on its socket",
            Duration::from_secs(60),
            &[&containerd],
            || {
                let socket = socket.clone();
                async move { ctr(&socket, &["version"]).await.map(|_| ()) }
            },
        )
        .await?;
        Ok(Node {
            containerd,
            kubelet: None,
            proxy: None,
        })
    }

    /// Imports an OCI archive into containerd's `k8s.io` namespace, where the kubelet finds it.
    pub async fn import_image(files: &NodeFiles, archive: &Path) -> Result<()> {
        let archive = archive.display().to_string();
        ctr(
            &files.containerd_socket(),
            &[
                "-n",
                "k8s.io",
                "images",
                "import",
                "--no-unpack=false",
                &archive,
            ],
        )
        .await
        .map(|_| ())
        .map_err(|e| fail(format!("importing {archive} into the node's containerd"), e))
    }

    /// Starts the kubelet and kube-proxy, then waits until the Node is Ready and untainted.
    pub async fn start_kubelet_and_proxy(
        &mut self,
        slot: &Slot,
        files: &NodeFiles,
        cp: &ControlPlane,
    ) -> Result<()> {
        let bins: &Binaries = cp.binaries();
        let cp_files = cp.files();
        write_json(
            &files.kubelet_config(),
            &config::kubelet_config(files, slot, &cp_files.ca()),
        )?;
        write_json(
            &files.proxy_config(),
            &config::proxy_config(&cp_files.proxy_kubeconfig(), NODE_NAME),
        )?;
        self.kubelet = Some(spawn_in(
            slot,
            "kubelet",
            &bins.kubelet,
            &[
                format!("--config={}", files.kubelet_config().display()),
                format!("--kubeconfig={}", cp_files.kubelet_kubeconfig().display()),
                format!("--root-dir={}", files.kubelet_root().display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={}", slot.node_ip()),
                "-v=1".into(),
            ],
            cp.dir(),
        )?);
        self.proxy = Some(spawn_in(
            slot,
            "kube-proxy",
            &bins.proxy,
            &[
                format!("--config={}", files.proxy_config().display()),
                "-v=1".into(),
            ],
            cp.dir(),
        )?);

        let client = cp.admin_client().await?;
        let running: Vec<&Proc> = self.procs().collect();
        eventually_while_running(
            &format!("node {NODE_NAME} to be Ready without taints"),
            READY_TIMEOUT,
            &running,
            || {
                let nodes: Api<NodeObject> = Api::all(client.clone());
                async move { node_ready(&nodes).await }
            },
        )
        .await
    }

    pub fn procs(&self) -> impl Iterator<Item = &Proc> {
        [
            self.kubelet.as_ref(),
            self.proxy.as_ref(),
            Some(&self.containerd),
        ]
        .into_iter()
        .flatten()
    }
}

/// Ready, and none of the taints a new node carries until the node-lifecycle controller has
/// seen it Ready (pods would not be scheduled).
async fn node_ready(nodes: &Api<NodeObject>) -> std::result::Result<(), String> {
    let node = nodes
        .get_opt(NODE_NAME)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("node {NODE_NAME} has not registered yet"))?;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()));
    match ready {
        Some((status, _)) if status == "True" => {}
        Some((status, message)) => return Err(format!("Ready={status}: {message}")),
        None => return Err("no Ready condition yet".into()),
    }
    let taints: Vec<String> = node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    if taints.is_empty() {
        Ok(())
    } else {
        Err(format!("Ready, still tainted {taints:?}"))
    }
}

/// The kubelet's cgroup root in every cgroup v1 hierarchy (it refuses to start without it).
/// cpuset needs its CPUs and memory nodes copied from the parent, or no task can join.
fn create_cgroup_root(slot: &Slot) -> Result<()> {
    let root = slot.cgroup_root();
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").context("listing /sys/fs/cgroup")?;
    for entry in hierarchies.flatten() {
        let path = entry.path();
        if !path.is_dir() || path.is_symlink() {
            continue;
        }
        let dir = path.join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).context(format!("creating cgroup {}", dir.display()))?;
        if entry.file_name() == "cpuset" {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read_to_string(path.join(file))
                    .context(format!("reading {}/{file}", path.display()))?;
                std::fs::write(dir.join(file), value.trim())
                    .context(format!("writing {}/{file}", dir.display()))?;
            }
        }
    }
    Ok(())
}

fn spawn_in(
    slot: &Slot,
    name: &str,
    program: &Path,
    args: &[String],
    log_dir: &Path,
) -> Result<Proc> {
    let (nsenter, args) = in_namespace(&slot.netns_path(), program, args)?;
    Proc::spawn(name, &nsenter, &args, &[], log_dir)
}

fn which(name: &str) -> Result<PathBuf> {
    crate::control_plane::find_on_path(name).ok_or_else(|| {
        fail(
            format!("starting the node's {name}"),
            "not found on PATH: run tests/testenv/provision.sh (it installs Debian's containerd, runc and CNI plugins)",
        )
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, value.to_string()).context(format!("writing {}", path.display()))
}

/// `ctr --address <socket> args…`, its stdout or why it failed.
pub async fn ctr(socket: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("ctr")
            .arg(format!("--address={}", socket.display()))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("ctr {} did not finish within 120 s", args.join(" ")))?
    .map_err(|e| format!("running ctr: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ctr {} exited {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
