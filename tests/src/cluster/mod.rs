//! A real single-node cluster: the control plane of [`crate::control_plane`] plus a node
//! (containerd, runc, the kubelet, kube-proxy, a bridge CNI network), all inside a network
//! namespace of its own that is reached from the host through a veth pair.
//!
//! Every cluster claims a slot ([`slot`]): its namespace, addresses, cgroup root and state
//! directory are the slot's, so clusters can run at once. Everything it made is removed by
//! tests/testenv/cluster-down.sh when it is dropped, and by its watchdog when the test process
//! dies without dropping it; nothing touches `~/.kube/config`.

pub mod config;
pub mod footprint;
pub mod network;
pub mod node;
pub mod pods;
pub mod slot;

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Api;
use kube::api::PostParams;

use crate::control_plane::ControlPlane;
use crate::error::{Context, Result, fail};
use node::Node;
use slot::ClaimedSlot;

/// The images every cluster imports: the sandbox image (required by every pod), the example
/// app's busybox, and the project's elector and webhook.
pub const IMAGE_ARCHIVES: &[&str] = &["pause", "busybox", "elector", "webhook"];

pub struct Cluster {
    // Dropped in this order: the node, the control plane, then the slot (whose watchdog tears
    // down whatever is left and only then releases the slot).
    node: Option<Node>,
    control_plane: Option<ControlPlane>,
    slot: ClaimedSlot,
}

impl Cluster {
    /// Starts a cluster with one node and waits until the node is Ready; imports the images in
    /// [`IMAGE_ARCHIVES`] from `target/images` (built by images/build.sh and
    /// tests/testenv/test-images.sh, which ./test.sh runs).
    pub async fn start() -> Result<Cluster> {
        let archives = image_archives()?;
        let slot = slot::claim()?;
        network::create(&slot.slot)?;
        let cp_dir = slot.files.dir.join("control-plane");
        std::fs::create_dir_all(&cp_dir).context(format!("creating {}", cp_dir.display()))?;
        let control_plane =
            ControlPlane::start_in_namespace(&slot.slot.netns_path(), slot.slot.node_ip(), cp_dir)
                .await?;
        let mut cluster = Cluster {
            node: None,
            control_plane: Some(control_plane),
            slot,
        };
        cluster.authorize_apiserver_to_kubelet().await?;
        let mut node =
            Node::start_containerd(&cluster.slot.slot, &cluster.slot.files, cluster.dir()).await?;
        for archive in &archives {
            Node::import_image(&cluster.slot.files, archive).await?;
        }
        let started = node
            .start_kubelet_and_proxy(&cluster.slot.slot, &cluster.slot.files, &cluster)
            .await;
        cluster.node = Some(node);
        started?;
        Ok(cluster)
    }

    /// The API server reaches the kubelet (logs, exec) with its client certificate; the kubelet
    /// asks the API server whether that user may, as kubeadm sets it up.
    async fn authorize_apiserver_to_kubelet(&self) -> Result<()> {
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "testenv:kube-apiserver-kubelet-client"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": crate::layout::KUBELET_CLIENT_CN}],
        }))
        .map_err(|e| fail("building a ClusterRoleBinding", e.to_string()))?;
        Api::<ClusterRoleBinding>::all(self.admin_client().await?)
            .create(&PostParams::default(), &binding)
            .await
            .context("binding the API server's kubelet client to system:kubelet-api-admin")?;
        Ok(())
    }

    pub fn control_plane(&self) -> &ControlPlane {
        // Only `None` while dropping.
        self.control_plane
            .as_ref()
            .expect("the control plane lives as long as the cluster")
    }

    /// The slot this cluster holds (names, addresses, directories).
    pub fn slot(&self) -> &config::Slot {
        &self.slot.slot
    }

    /// The node's address (the API server's, inside the namespace).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.slot.slot.node_ip()
    }

    /// The host's end of the veth pair: a process on the host listening here (a webhook under
    /// test) is reachable from the API server and from pods.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.slot.slot.host_ip()
    }

    /// The network namespace the cluster's processes run in.
    pub fn netns_path(&self) -> PathBuf {
        self.slot.slot.netns_path()
    }

    /// The cluster's state directory (control plane, node, logs).
    pub fn state_dir(&self) -> &Path {
        &self.slot.files.dir
    }

    /// Imports another OCI archive into the node's containerd.
    pub async fn import_image(&self, archive: &Path) -> Result<()> {
        Node::import_image(&self.slot.files, archive).await
    }

    /// Fails with their output if any process of the cluster has exited.
    pub fn ensure_running(&self) -> Result<()> {
        self.control_plane().ensure_running()?;
        if let Some(node) = &self.node {
            node.procs()
                .try_for_each(crate::procs::Proc::ensure_running)?;
        }
        Ok(())
    }

    /// Pids of every process the harness started for this cluster.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.control_plane().pids();
        if let Some(node) = &self.node {
            pids.extend(node.procs().map(|p| p.pid()));
        }
        pids
    }

    /// Stops the cluster and removes everything it made; fails if the teardown did not finish.
    pub async fn stop(mut self) -> Result<()> {
        drop(self.node.take());
        if let Some(cp) = self.control_plane.take() {
            cp.stop().await?;
        }
        self.slot.release()
    }
}

impl Deref for Cluster {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        self.control_plane()
    }
}

/// The image archives the cluster imports, or which are missing and how to build them.
fn image_archives() -> Result<Vec<PathBuf>> {
    let dir = crate::workspace_root().join("target/images");
    let paths: Vec<PathBuf> = IMAGE_ARCHIVES
        .iter()
        .map(|name| dir.join(format!("{name}.oci.tar")))
        .collect();
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(paths)
    } else {
        Err(fail(
            "starting a test cluster",
            format!(
                "image archives missing: {} — build them with images/build.sh and \
                 tests/testenv/test-images.sh (./test.sh runs both)",
                missing.join(", ")
            ),
        ))
    }
}

/// The cluster shared by all tests of one test binary, started on first use; torn down by its
/// watchdog when the test process exits (statics are never dropped).
pub async fn shared() -> Result<&'static Cluster> {
    static SHARED: tokio::sync::OnceCell<Cluster> = tokio::sync::OnceCell::const_new();
    let cluster = SHARED.get_or_try_init(Cluster::start).await?;
    cluster.ensure_running()?;
    Ok(cluster)
}
