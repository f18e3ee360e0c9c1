//! Pure parts of the control plane: where binaries live, the command lines, kubeconfig files.
//! Kept free of I/O so they are table-tested.

use std::path::{Path, PathBuf};

use base64::Engine;

/// Kubernetes version of the cached control-plane binaries (see tests/testenv/provision.sh).
pub const KUBERNETES_VERSION: &str = "1.20.2";
/// Environment variable naming the directory with kube-apiserver and kube-controller-manager.
pub const BIN_DIR_ENV: &str = "TESTENV_BIN_DIR";
/// The admin's bearer token; the token file puts it in group system:masters.
pub const ADMIN_USER: &str = "testenv-admin";
/// Service IP range; nothing routes it (there are no nodes), the API server just needs one.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
/// Controllers that need nodes, a cloud or volumes: nothing for them to do without nodes.
pub const DISABLED_CONTROLLERS: &[&str] = &[
    "nodeipam",
    "nodelifecycle",
    "cloud-node-lifecycle",
    "route",
    "service",
    "attachdetach",
    "persistentvolume-binder",
    "persistentvolume-expander",
    "pv-protection",
    "pvc-protection",
    "ephemeral-volume",
];

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
}

/// Ports of one control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
}

pub fn etcd_args(files: &Files, ports: Ports) -> Vec<String> {
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
    ]
}

pub fn apiserver_args(files: &Files, ports: Ports) -> Vec<String> {
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.apiserver),
        format!("--cert-dir={}", files.cert_dir().display()),
        format!("--tls-cert-file={}", files.serving_cert().display()),
        format!("--tls-private-key-file={}", files.serving_key().display()),
        format!("--client-ca-file={}", files.ca().display()),
        format!("--token-auth-file={}", files.tokens().display()),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-key-file={}", files.sa_pub().display()),
        format!("--service-account-signing-key-file={}", files.sa_key().display()),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
        "--enable-admission-plugins=ServiceAccount,NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook".into(),
        "--allow-privileged=true".into(),
        // One API server, no HA: skip the lease-based endpoint reconciler's churn.
        "--endpoint-reconciler-type=none".into(),
        "-v=1".into(),
    ]
}

pub fn controller_manager_args(files: &Files) -> Vec<String> {
    let disabled: Vec<String> = DISABLED_CONTROLLERS
        .iter()
        .map(|c| format!("-{c}"))
        .collect();
    vec![
        format!("--kubeconfig={}", files.admin_kubeconfig().display()),
        format!(
            "--service-account-private-key-file={}",
            files.sa_key().display()
        ),
        format!("--root-ca-file={}", files.ca().display()),
        "--leader-elect=false".into(),
        format!("--controllers=*,{}", disabled.join(",")),
        // No serving: several control planes may run at once and nobody scrapes them.
        "--port=0".into(),
        "--secure-port=0".into(),
        "--use-service-account-credentials=false".into(),
        "-v=1".into(),
    ]
}

/// `token,user,uid,"groups"` for --token-auth-file.
pub fn token_file(admin_token: &str) -> String {
    format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n")
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
        let a = apiserver_args(&files, ports);
        let cases = [
            ("etcd-servers", "http://127.0.0.1:1"),
            ("secure-port", "3"),
            ("bind-address", "127.0.0.1"),
            ("authorization-mode", "RBAC"),
            ("token-auth-file", "/t/tokens.csv"),
            ("service-account-key-file", "/t/sa.pub"),
            ("service-account-signing-key-file", "/t/sa.key"),
            ("client-ca-file", "/t/ca.crt"),
            ("service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE),
        ];
        for (name, want) in cases {
            assert_eq!(flag(&a, name), Some(want), "--{name}");
        }
        let plugins = flag(&a, "enable-admission-plugins").unwrap_or_default();
        for p in [
            "ServiceAccount",
            "NamespaceLifecycle",
            "MutatingAdmissionWebhook",
            "ValidatingAdmissionWebhook",
        ] {
            assert!(
                plugins.split(',').any(|x| x == p),
                "{p} missing from {plugins}"
            );
        }
    }

    #[test]
    fn controller_manager_disables_node_controllers_only() {
        let files = Files {
            dir: PathBuf::from("/t"),
        };
        let a = controller_manager_args(&files);
        assert_eq!(flag(&a, "leader-elect"), Some("false"));
        assert_eq!(
            flag(&a, "service-account-private-key-file"),
            Some("/t/sa.key")
        );
        assert_eq!(flag(&a, "root-ca-file"), Some("/t/ca.crt"));
        let controllers: Vec<&str> = flag(&a, "controllers")
            .unwrap_or_default()
            .split(',')
            .collect();
        assert_eq!(controllers[0], "*");
        for needed in [
            "replicaset",
            "deployment",
            "serviceaccount",
            "serviceaccount-token",
            "namespace",
            "garbagecollector",
        ] {
            assert!(
                !controllers.contains(&format!("-{needed}").as_str()),
                "{needed} disabled"
            );
        }
        for c in ["nodelifecycle", "route", "service", "attachdetach"] {
            assert!(
                controllers.contains(&format!("-{c}").as_str()),
                "{c} not disabled"
            );
        }
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
    fn token_file_grants_system_masters() {
        assert_eq!(
            token_file("abc"),
            "abc,testenv-admin,testenv-admin,\"system:masters\"\n"
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
