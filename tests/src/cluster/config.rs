//! Pure parts of the node: its addresses and the configuration files of containerd, the CNI
//! network, the kubelet and kube-proxy. Free of I/O so they are table-tested.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// How many clusters with a node may run at once (one network namespace, veth pair, cgroup root
/// and state directory each).
pub const SLOTS: u8 = 16;
/// Pod addresses inside the node's namespace (the same in every cluster: namespaces isolate them).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// Where a cluster's state lives (a directory per slot, removed by the teardown).
pub const STATE_ROOT: &str = "/var/lib/leader-election-testenv";
/// Where the slot locks live (tmpfs: a stale lock cannot survive a reboot).
pub const LOCK_ROOT: &str = "/run/leader-election-testenv";
/// Image names the cluster uses (built by tests/testenv/test-images.sh; a non-latest tag, so
/// the kubelet never tries to pull).
pub const PAUSE_IMAGE: &str = "leader-election.local/pause:3.10";
pub const BUSYBOX_IMAGE: &str = "leader-election.local/busybox:1.35";

/// Everything that is named after the slot: addresses, interfaces, directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub index: u8,
}

impl Slot {
    /// `le-testenv-<n>`: the network namespace and the host end of the veth pair (≤ 15 bytes).
    pub fn name(&self) -> String {
        format!("le-testenv-{}", self.index)
    }
    /// The node's address (namespace end of the veth pair): 10.213.<n>.2/30.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 2)
    }
    /// The host end: 10.213.<n>.1/30. Only the host's tests talk to the node through it.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 1)
    }
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.name())
    }
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(format!("cluster-{}", self.index))
    }
    pub fn lock_file(&self) -> PathBuf {
        Path::new(LOCK_ROOT).join(format!("cluster-{}.lock", self.index))
    }
    /// The kubelet's cgroup root, under every cgroup v1 hierarchy.
    pub fn cgroup_root(&self) -> String {
        format!("/leader-election-testenv-{}", self.index)
    }
}

/// Files of one node, under the slot's state directory.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub dir: PathBuf,
}

impl NodeFiles {
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet.json")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
    pub fn proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy.json")
    }
    /// What the teardown script reads to find everything the cluster made.
    pub fn state_env(&self) -> PathBuf {
        self.dir.join("state.env")
    }
}

/// containerd 1.6 (config version 2): everything — root, state, socket, runc state, pod network
/// namespaces — under the node's directory, so the teardown finds it all there.
pub fn containerd_config(files: &NodeFiles) -> String {
    let d = files.dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM withholds CAP_SYS_RESOURCE: lowering a sandbox's oom_score_adj would be denied and
  # every sandbox would fail with runc's "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        sock = files.containerd_socket().display(),
        cni = files.cni_conf_dir().display(),
    )
}

/// A bridge network for the pods, with addresses from host-local (its state under the node's
/// directory). No masquerading: pods only talk to the node and each other.
pub fn cni_conflist(files: &NodeFiles, slot: &Slot) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": slot.name(),
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": files.dir.join("cni/ipam").display().to_string(),
            },
        }],
    })
}

/// The kubelet: cgroupfs driver under the slot's own cgroup root, cgroup v1 allowed (this VM
/// has no v2), authentication by client certificate and authorization through the API server.
pub fn kubelet_config(files: &NodeFiles, slot: &Slot, client_ca: &Path) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": slot.node_ip().to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": client_ca.display().to_string()},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": slot.cgroup_root(),
        // Kubelet >= 1.35 refuses cgroup v1 unless told; this VM only has v1.
        "failCgroupV1": false,
        "failSwapOn": false,
        "containerRuntimeEndpoint": format!("unix://{}", files.containerd_socket().display()),
        "podLogsDir": files.pod_logs().display().to_string(),
        "registerNode": true,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        // A shared test machine: evict nothing for disk or memory pressure, collect no images
        // (they cannot be pulled again: there is no registry).
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 110,
        "serializeImagePulls": false,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
    })
}

/// kube-proxy in iptables mode; leaves the conntrack sysctls alone (they are not per network
/// namespace and the host's are not ours to change).
pub fn proxy_config(kubeconfig: &Path, node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig.display().to_string()},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": node,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    })
}

/// `KEY=value` lines the teardown script reads.
pub fn state_env(files: &NodeFiles, slot: &Slot) -> String {
    format!(
        "STATE_DIR={}\nNETNS={}\nHOST_IF={}\nCGROUP_ROOT={}\nCONTAINERD_SOCKET={}\n",
        files.dir.display(),
        slot.name(),
        slot.name(),
        slot.cgroup_root(),
        files.containerd_socket().display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_and_addresses() {
        for (index, name, node, host) in [
            (0u8, "le-testenv-0", "10.213.0.2", "10.213.0.1"),
            (15, "le-testenv-15", "10.213.15.2", "10.213.15.1"),
        ] {
            let s = Slot { index };
            assert_eq!(s.name(), name);
            assert!(s.name().len() <= 15, "interface names are at most 15 bytes");
            assert_eq!(s.node_ip().to_string(), node);
            assert_eq!(s.host_ip().to_string(), host);
            assert_eq!(s.netns_path(), Path::new("/run/netns").join(name));
        }
    }

    #[test]
    fn everything_containerd_writes_is_under_the_node_dir() {
        let files = NodeFiles {
            dir: PathBuf::from("/n"),
        };
        let c = containerd_config(&files);
        for want in [
            "root = \"/n/containerd/root\"",
            "state = \"/n/containerd/state\"",
            "address = \"/n/containerd/containerd.sock\"",
            "Root = \"/n/runc\"",
            "path = \"/n/containerd/opt\"",
            "conf_dir = \"/n/cni/net.d\"",
            "netns_mounts_under_state_dir = true",
            "restrict_oom_score_adj = true",
            "SystemdCgroup = false",
        ] {
            assert!(c.contains(want), "{want} missing from\n{c}");
        }
        assert!(c.contains(PAUSE_IMAGE));
    }

    #[test]
    fn kubelet_runs_on_cgroup_v1_under_its_slot() {
        let files = NodeFiles {
            dir: PathBuf::from("/n"),
        };
        let k = kubelet_config(&files, &Slot { index: 3 }, Path::new("/c/ca.crt"));
        assert_eq!(k["cgroupDriver"], "cgroupfs");
        assert_eq!(k["cgroupRoot"], "/leader-election-testenv-3");
        assert_eq!(k["failCgroupV1"], false);
        assert_eq!(k["address"], "10.213.3.2");
        assert_eq!(
            k["containerRuntimeEndpoint"],
            "unix:///n/containerd/containerd.sock"
        );
        assert_eq!(k["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(k["authorization"]["mode"], "Webhook");
        assert_eq!(k["podLogsDir"], "/n/pod-logs");
    }

    #[test]
    fn cni_state_and_proxy_settings() {
        let files = NodeFiles {
            dir: PathBuf::from("/n"),
        };
        let c = cni_conflist(&files, &Slot { index: 1 });
        assert_eq!(c["name"], "le-testenv-1");
        assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/n/cni/ipam");
        assert_eq!(c["plugins"][0]["ipMasq"], false);
        let p = proxy_config(Path::new("/k"), "node-a");
        assert_eq!(p["mode"], "iptables");
        assert_eq!(p["conntrack"]["maxPerCore"], 0);
        assert_eq!(p["hostnameOverride"], "node-a");
        let env = state_env(&files, &Slot { index: 1 });
        assert!(env.contains("NETNS=le-testenv-1\n"));
        assert!(env.contains("CGROUP_ROOT=/leader-election-testenv-1\n"));
    }
}
