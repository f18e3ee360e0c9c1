//! Pure parts of the control plane: where binaries live, the command lines, kubeconfig files.
//! Kept free of I/O so they are table-tested.

use std::path::{Path, PathBuf};

use base64::Engine;

/// Kubernetes version of the cached binaries (tests/testenv/provision.sh builds them from the
/// `k8s.io/kubernetes` Go module; keep the two in step).
pub const KUBERNETES_VERSION: &str = "v1.35.4";
/// etcd built from `go.etcd.io/etcd/server/v3` (the release Kubernetes 1.35's client pairs with).
pub const ETCD_VERSION: &str = "v3.6.5";
/// Environment variable naming the directory with the binaries provision.sh built.
pub const BIN_DIR_ENV: &str = "TESTENV_BIN_DIR";
/// The admin's bearer token; the token file puts it in group system:masters.
pub const ADMIN_USER: &str = "testenv-admin";
/// Service IP range; its first address is the `kubernetes` Service, which kube-proxy routes to
/// the API server on a cluster with a node.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
/// The `kubernetes` Service's ClusterIP (the first address of the range); in the API server's
/// certificate so pods can verify it.
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";
/// Controllers that need nodes, a cloud or volumes: without a node they have nothing to do.
pub const DISABLED_CONTROLLERS: &[&str] = &[
    "node-ipam-controller",
    "node-lifecycle-controller",
    "cloud-node-lifecycle-controller",
    "node-route-controller",
    "service-lb-controller",
    "persistentvolume-attach-detach-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "ephemeral-volume-controller",
];
/// With a node, only the controllers that need a cloud stay off: the node-lifecycle controller
/// must run (it lifts the node's not-ready taint), and so must the volume controllers pods use.
pub const DISABLED_CONTROLLERS_WITH_NODE: &[&str] = &[
    "cloud-node-lifecycle-controller",
    "node-route-controller",
    "service-lb-controller",
];
/// Users the static token file defines for the cluster's components, with their groups. The
/// names are the ones Kubernetes' bootstrap RBAC binds (system:kube-scheduler, system:node:…).
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
pub const PROXY_USER: &str = "system:kube-proxy";
/// The API server's client certificate towards the kubelet; bound to system:kubelet-api-admin.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// Where the control plane listens: on loopback (API server only: many can run at once on free
/// ports), or inside a node's network namespace on the node's address (fixed ports: each
/// namespace has its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Loopback,
    Node { ip: std::net::Ipv4Addr },
}

impl Network {
    /// The address clients (tests on the host, pods through the `kubernetes` Service) use.
    pub fn apiserver_ip(self) -> std::net::Ipv4Addr {
        match self {
            Network::Loopback => std::net::Ipv4Addr::LOCALHOST,
            Network::Node { ip } => ip,
        }
    }
}

/// Where provision.sh caches the binaries: `$TESTENV_BIN_DIR`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/leader-election-testenv/kubernetes-<version>/bin`.
pub fn control_plane_bin_dir(
    bin_dir_env: Option<&str>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
) -> PathBuf {
    if let Some(d) = bin_dir_env.filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = match (xdg_cache_home.filter(|d| !d.is_empty()), home) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => Path::new(h).join(".cache"),
        (None, None) => PathBuf::from("/nonexistent-home/.cache"),
    };
    cache
        .join("leader-election-testenv")
        .join(format!("kubernetes-{KUBERNETES_VERSION}"))
        .join("bin")
}

/// Files of one control plane's directory.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd-data")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens.csv")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join("apiserver-certs")
    }
    pub fn kubelet_client_cert(&self) -> PathBuf {
        self.dir.join("apiserver-kubelet-client.crt")
    }
    pub fn kubelet_client_key(&self) -> PathBuf {
        self.dir.join("apiserver-kubelet-client.key")
    }
    pub fn controller_manager_kubeconfig(&self) -> PathBuf {
        self.dir.join("controller-manager.kubeconfig")
    }
    pub fn scheduler_kubeconfig(&self) -> PathBuf {
        self.dir.join("scheduler.kubeconfig")
    }
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubelet.kubeconfig")
    }
    pub fn proxy_kubeconfig(&self) -> PathBuf {
        self.dir.join("kube-proxy.kubeconfig")
    }
}

/// Ports of one control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
}

impl Ports {
    /// The conventional ports, for a control plane alone in its network namespace.
    pub const IN_NAMESPACE: Ports = Ports {
        etcd_client: 2379,
        etcd_peer: 2380,
        apiserver: 6443,
    };
}

/// Bearer tokens of the cluster's users (the static token file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub admin: String,
    pub controller_manager: String,
    pub scheduler: String,
    pub kubelet: String,
    pub proxy: String,
}

/// The node's user name, as the Node authorizer expects it.
pub fn node_user(node: &str) -> String {
    format!("system:node:{node}")
}

pub fn etcd_args(files: &Files, ports: Ports) -> Vec<String> {
    // etcd always listens on loopback: only the API server, beside it, talks to it.
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        "--name=testenv".into(),
        format!("--data-dir={}", files.etcd_data().display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=testenv={peer}"),
        // Tests churn: keep the log quiet and the backend small.
        "--log-level=warn".into(),
        "--auto-compaction-retention=1m".into(),
        // No metrics listener on a fixed port: several clusters may run at once.
        "--listen-metrics-urls=".into(),
    ]
}

pub fn apiserver_args(files: &Files, ports: Ports, network: Network) -> Vec<String> {
    let mut args = vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        format!("--secure-port={}", ports.apiserver),
        format!("--cert-dir={}", files.cert_dir().display()),
        format!("--tls-cert-file={}", files.serving_cert().display()),
        format!("--tls-private-key-file={}", files.serving_key().display()),
        format!("--client-ca-file={}", files.ca().display()),
        format!("--token-auth-file={}", files.tokens().display()),
        format!("--service-account-key-file={}", files.sa_pub().display()),
        format!(
            "--service-account-signing-key-file={}",
            files.sa_key().display()
        ),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
        "--allow-privileged=true".into(),
        "-v=1".into(),
    ];
    match network {
        Network::Loopback => args.extend([
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--authorization-mode=RBAC".into(),
            // No node routes the `kubernetes` Service: skip the endpoint reconciler's churn.
            "--endpoint-reconciler-type=none".into(),
        ]),
        Network::Node { ip } => args.extend([
            // All addresses of the namespace: the node's (tests, kube-proxy's DNAT for pods).
            "--bind-address=0.0.0.0".into(),
            format!("--advertise-address={ip}"),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!(
                "--kubelet-client-certificate={}",
                files.kubelet_client_cert().display()
            ),
            format!(
                "--kubelet-client-key={}",
                files.kubelet_client_key().display()
            ),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]),
    }
    args
}

pub fn controller_manager_args(files: &Files, network: Network) -> Vec<String> {
    let disabled = match network {
        Network::Loopback => DISABLED_CONTROLLERS,
        Network::Node { .. } => DISABLED_CONTROLLERS_WITH_NODE,
    };
    let disabled: Vec<String> = disabled.iter().map(|c| format!("-{c}")).collect();
    vec![
        format!(
            "--kubeconfig={}",
            files.controller_manager_kubeconfig().display()
        ),
        format!(
            "--service-account-private-key-file={}",
            files.sa_key().display()
        ),
        format!("--root-ca-file={}", files.ca().display()),
        "--leader-elect=false".into(),
        format!("--controllers=*,{}", disabled.join(",")),
        // Each controller acts as its own ServiceAccount, as kubeadm sets it up.
        "--use-service-account-credentials=true".into(),
        // No serving: several control planes may run at once and nobody scrapes them.
        "--secure-port=0".into(),
        "-v=1".into(),
    ]
}

pub fn scheduler_args(files: &Files) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", files.scheduler_kubeconfig().display()),
        "--leader-elect=false".into(),
        "--secure-port=0".into(),
        "-v=1".into(),
    ]
}

/// `token,user,uid,"groups"` lines for --token-auth-file.
pub fn token_file(tokens: &Tokens, node: &str) -> String {
    let node_user = node_user(node);
    let rows = [
        (&tokens.admin, ADMIN_USER, "system:masters"),
        (&tokens.controller_manager, CONTROLLER_MANAGER_USER, ""),
        (&tokens.scheduler, SCHEDULER_USER, ""),
        (&tokens.kubelet, node_user.as_str(), "system:nodes"),
        (&tokens.proxy, PROXY_USER, ""),
    ];
    rows.iter()
        .map(|(token, user, groups)| format!("{token},{user},{user},\"{groups}\"\n"))
        .collect()
}

/// A kubeconfig (JSON, which is YAML) for `server` trusting `ca_pem`, authenticating with
/// `token`, defaulting to `namespace`.
pub fn kubeconfig(
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
    namespace: &str,
) -> serde_json::Value {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": server,
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "testenv", "context": {
            "cluster": "testenv",
            "user": user,
            "namespace": namespace,
        }}],
        "current-context": "testenv",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_resolution() {
        let v = KUBERNETES_VERSION;
        type Case = (
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            String,
        );
        let cases: &[Case] = &[
            (
                Some("/opt/k8s"),
                Some("/x"),
                Some("/home/u"),
                "/opt/k8s".into(),
            ),
            (
                Some(""),
                None,
                Some("/home/u"),
                format!("/home/u/.cache/leader-election-testenv/kubernetes-{v}/bin"),
            ),
            (
                None,
                Some("/xdg"),
                Some("/home/u"),
                format!("/xdg/leader-election-testenv/kubernetes-{v}/bin"),
            ),
            (
                None,
                Some(""),
                Some("/root"),
                format!("/root/.cache/leader-election-testenv/kubernetes-{v}/bin"),
            ),
        ];
        for (env, xdg, home, want) in cases {
            assert_eq!(
                control_plane_bin_dir(*env, *xdg, *home),
                PathBuf::from(want),
                "env={env:?} xdg={xdg:?} home={home:?}"
            );
        }
    }

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        let prefix = format!("--{name}=");
        args.iter().find_map(|a| a.strip_prefix(&prefix))
    }

    #[test]
    fn apiserver_flags_wire_the_files_and_ports() {
        let files = Files {
            dir: PathBuf::from("/t"),
        };
        let ports = Ports {
            etcd_client: 1,
            etcd_peer: 2,
            apiserver: 3,
        };
        let node = Network::Node {
            ip: std::net::Ipv4Addr::new(10, 9, 8, 7),
        };
        for network in [Network::Loopback, node] {
            let a = apiserver_args(&files, ports, network);
            let cases = [
                ("etcd-servers", "http://127.0.0.1:1"),
                ("secure-port", "3"),
                ("token-auth-file", "/t/tokens.csv"),
                ("service-account-key-file", "/t/sa.pub"),
                ("service-account-signing-key-file", "/t/sa.key"),
                ("client-ca-file", "/t/ca.crt"),
                ("service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE),
            ];
            for (name, want) in cases {
                assert_eq!(flag(&a, name), Some(want), "--{name} ({network:?})");
            }
        }
        let a = apiserver_args(&files, ports, Network::Loopback);
        assert_eq!(flag(&a, "bind-address"), Some("127.0.0.1"));
        assert_eq!(flag(&a, "authorization-mode"), Some("RBAC"));
        assert_eq!(flag(&a, "endpoint-reconciler-type"), Some("none"));
        let a = apiserver_args(&files, ports, node);
        // Pods reach it through the `kubernetes` Service: the endpoint reconciler must run.
        assert_eq!(flag(&a, "endpoint-reconciler-type"), None);
        assert_eq!(flag(&a, "advertise-address"), Some("10.9.8.7"));
        assert_eq!(flag(&a, "authorization-mode"), Some("Node,RBAC"));
        assert_eq!(
            flag(&a, "enable-admission-plugins"),
            Some("NodeRestriction")
        );
        assert_eq!(
            flag(&a, "kubelet-client-certificate"),
            Some("/t/apiserver-kubelet-client.crt")
        );
    }

    #[test]
    fn controller_manager_disables_node_controllers_only_without_a_node() {
        let files = Files {
            dir: PathBuf::from("/t"),
        };
        let controllers = |network| -> Vec<String> {
            let a = controller_manager_args(&files, network);
            assert_eq!(flag(&a, "leader-elect"), Some("false"));
            assert_eq!(
                flag(&a, "service-account-private-key-file"),
                Some("/t/sa.key")
            );
            assert_eq!(flag(&a, "root-ca-file"), Some("/t/ca.crt"));
            assert_eq!(
                flag(&a, "kubeconfig"),
                Some("/t/controller-manager.kubeconfig")
            );
            let c: Vec<String> = flag(&a, "controllers")
                .unwrap_or_default()
                .split(',')
                .map(String::from)
                .collect();
            assert_eq!(c[0], "*");
            c
        };
        let disabled = |c: &[String], name: &str| c.contains(&format!("-{name}"));
        let alone = controllers(Network::Loopback);
        let with_node = controllers(Network::Node {
            ip: std::net::Ipv4Addr::new(10, 0, 0, 9),
        });
        for needed in [
            "replicaset-controller",
            "deployment-controller",
            "serviceaccount-controller",
            "namespace-controller",
            "garbage-collector-controller",
        ] {
            assert!(!disabled(&alone, needed), "{needed} disabled");
            assert!(!disabled(&with_node, needed), "{needed} disabled");
        }
        assert!(disabled(&alone, "node-lifecycle-controller"));
        // It lifts a new node's not-ready taint: without it no pod is ever scheduled.
        assert!(!disabled(&with_node, "node-lifecycle-controller"));
    }

    #[test]
    fn etcd_uses_only_its_own_ports() {
        let files = Files {
            dir: PathBuf::from("/t"),
        };
        let a = etcd_args(
            &files,
            Ports {
                etcd_client: 11,
                etcd_peer: 12,
                apiserver: 13,
            },
        );
        assert_eq!(flag(&a, "listen-client-urls"), Some("http://127.0.0.1:11"));
        assert_eq!(flag(&a, "listen-peer-urls"), Some("http://127.0.0.1:12"));
        assert_eq!(flag(&a, "data-dir"), Some("/t/etcd-data"));
    }

    #[test]
    fn token_file_names_each_component_as_bootstrap_rbac_expects() {
        let tokens = Tokens {
            admin: "a".into(),
            controller_manager: "c".into(),
            scheduler: "s".into(),
            kubelet: "k".into(),
            proxy: "p".into(),
        };
        assert_eq!(
            token_file(&tokens, "n1"),
            "a,testenv-admin,testenv-admin,\"system:masters\"\n\
             c,system:kube-controller-manager,system:kube-controller-manager,\"\"\n\
             s,system:kube-scheduler,system:kube-scheduler,\"\"\n\
             k,system:node:n1,system:node:n1,\"system:nodes\"\n\
             p,system:kube-proxy,system:kube-proxy,\"\"\n"
        );
    }

    #[test]
    fn kubeconfig_is_loadable_by_kube() {
        let v = kubeconfig("https://127.0.0.1:6443", "PEM", "me", "tok", "ns1");
        let kc = kube::config::Kubeconfig::from_yaml(&v.to_string()).expect("kube parses it");
        assert_eq!(kc.current_context.as_deref(), Some("testenv"));
        let ctx = kc.contexts[0].context.as_ref().expect("context");
        assert_eq!(ctx.namespace.as_deref(), Some("ns1"));
        let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("UEVN"));
    }
}
