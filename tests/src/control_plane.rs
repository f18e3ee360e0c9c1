//! One control plane: etcd, kube-apiserver and kube-controller-manager (Kubernetes
//! [`layout::KUBERNETES_VERSION`], built by tests/testenv/provision.sh) in a scratch directory,
//! either on free loopback ports (API-server-only tests; many at once) or inside a node's
//! network namespace with a scheduler (see [`crate::cluster`]). Everything it starts is stopped
//! when it is dropped, and — via the spawner in [`crate::procs`] — when the test process dies.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Context, Error, Result, fail};
use crate::layout::{self, Files, Network, Ports, Tokens};
use crate::pki::Pki;
use crate::procs::{self, Proc};
use crate::wait::{eventually, eventually_while_running};

/// The most a kubectl command may take; commands that wait (rollout status, wait) pass their
/// own, shorter `--timeout`.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a control-plane component may take to become ready on a slow, shared machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub scheduler: PathBuf,
    pub kubelet: PathBuf,
    pub proxy: PathBuf,
    pub kubectl: PathBuf,
}

impl Binaries {
    /// Finds the binaries provision.sh built, failing loudly (never skipping) when any is missing.
    pub fn locate() -> Result<Binaries> {
        let dir = bin_dir();
        let path = |name: &str| dir.join(name);
        let bins = Binaries {
            etcd: path("etcd"),
            apiserver: path("kube-apiserver"),
            controller_manager: path("kube-controller-manager"),
            scheduler: path("kube-scheduler"),
            kubelet: path("kubelet"),
            proxy: path("kube-proxy"),
            kubectl: path("kubectl"),
        };
        let missing: Vec<String> = [
            &bins.etcd,
            &bins.apiserver,
            &bins.controller_manager,
            &bins.scheduler,
            &bins.kubelet,
            &bins.proxy,
            &bins.kubectl,
        ]
        .iter()
        .filter(|p| !is_executable(p))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
        if !missing.is_empty() {
            return Err(Error::ControlPlaneBinariesMissing {
                dir,
                missing: missing.join(", "),
            });
        }
        Ok(bins)
    }
}

/// The directory provision.sh put the binaries in.
pub fn bin_dir() -> PathBuf {
    layout::control_plane_bin_dir(
        std::env::var(layout::BIN_DIR_ENV).ok().as_deref(),
        std::env::var("XDG_CACHE_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
    )
}

/// The kubectl matching the cluster's version (provision.sh builds it beside the server).
pub fn kubectl_path() -> Result<PathBuf> {
    let path = bin_dir().join("kubectl");
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::KubectlMissing { path })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `which name`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Ports handed out by [`free_port`] start here.
const LISTEN_PORTS_FROM: u16 = 10_000;

/// A free loopback port for a process under test to listen on, bound and released. It lies
/// below the kernel's ephemeral range: a port from `bind(:0)` can be taken meanwhile by any
/// outgoing connection (a bench fleet of 150 API clients did take one), while ports below the
/// range are never given to connections. Each port is handed out once per process, from a start
/// that differs between processes.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let below = ephemeral_low().unwrap_or(32_768);
    if below <= LISTEN_PORTS_FROM + 1_000 {
        // An unusual ephemeral range: take what the kernel gives.
        let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
        return Ok(l.local_addr().context("reading the bound port")?.port());
    }
    let span = u32::from(below - LISTEN_PORTS_FROM);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = LISTEN_PORTS_FROM + n as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(fail(
        "finding a free loopback port",
        format!("every port from {LISTEN_PORTS_FROM} to {below} is in use"),
    ))
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `127.0.0.1:<free port>`: where a process under test (elector, webhook) listens.
pub fn free_loopback_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Random hex from /dev/urandom (a bearer token for the admin).
fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes through a temporary file and a rename, so a process reading `path` (a kubeconfig
/// rewritten while an elector starts) never sees it half-written.
fn write(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, content)
        .and_then(|()| std::fs::rename(&tmp, path))
        .context(format!("writing {}", path.display()))
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

pub struct ControlPlane {
    bins: Binaries,
    files: Files,
    ports: Ports,
    network: Network,
    /// `nsenter --net=<path>` prefix for processes in a node's network namespace.
    netns: Option<PathBuf>,
    pki: Pki,
    tokens: Tokens,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    controller_manager: Option<Proc>,
    scheduler: Option<Proc>,
}

/// The node's name: one node per cluster, so every cluster can use the same one.
pub const NODE_NAME: &str = "testenv-node";

impl ControlPlane {
    /// An API-server-only control plane on free loopback ports: etcd, the API server (waits for
    /// /readyz) and the controller-manager (waits until it has created the `default`
    /// ServiceAccount).
    pub async fn start() -> Result<ControlPlane> {
        Self::start_with(
            Network::Loopback,
            None,
            procs::scratch_dir("control-plane")?,
        )
        .await
    }

    /// A control plane inside the network namespace at `netns`, on the node's address `ip`
    /// with the conventional ports, plus a scheduler; the caller adds the node.
    pub async fn start_in_namespace(
        netns: &Path,
        ip: std::net::Ipv4Addr,
        dir: PathBuf,
    ) -> Result<ControlPlane> {
        Self::start_with(Network::Node { ip }, Some(netns.to_path_buf()), dir).await
    }

    async fn start_with(
        network: Network,
        netns: Option<PathBuf>,
        dir: PathBuf,
    ) -> Result<ControlPlane> {
        let bins = Binaries::locate()?;
        let files = Files { dir };
        let ports = match network {
            Network::Loopback => Ports {
                etcd_client: free_port()?,
                etcd_peer: free_port()?,
                apiserver: free_port()?,
            },
            Network::Node { .. } => Ports::IN_NAMESPACE,
        };
        let extra_ips: Vec<std::net::Ipv4Addr> = match network {
            Network::Loopback => vec![],
            Network::Node { ip } => vec![ip],
        };
        let pki = Pki::generate(&extra_ips)?;
        let tokens = Tokens {
            admin: random_hex(24)?,
            controller_manager: random_hex(24)?,
            scheduler: random_hex(24)?,
            kubelet: random_hex(24)?,
            proxy: random_hex(24)?,
        };
        std::fs::create_dir_all(files.cert_dir()).context("creating the cert dir")?;
        write(&files.ca(), &pki.ca_pem)?;
        write(&files.serving_cert(), &pki.serving_cert_pem)?;
        write(&files.serving_key(), &pki.serving_key_pem)?;
        write(&files.kubelet_client_cert(), &pki.kubelet_client_cert_pem)?;
        write(&files.kubelet_client_key(), &pki.kubelet_client_key_pem)?;
        write(&files.sa_key(), &pki.sa_key_pem)?;
        write(&files.sa_pub(), &pki.sa_pub_pem)?;
        write(&files.tokens(), &layout::token_file(&tokens, NODE_NAME))?;
        let mut cp = ControlPlane {
            bins,
            files,
            ports,
            network,
            netns,
            pki,
            tokens,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            scheduler: None,
        };
        let server = cp.server_url();
        let kubeconfigs = [
            (
                cp.files.admin_kubeconfig(),
                layout::ADMIN_USER.to_string(),
                cp.tokens.admin.clone(),
            ),
            (
                cp.files.controller_manager_kubeconfig(),
                layout::CONTROLLER_MANAGER_USER.to_string(),
                cp.tokens.controller_manager.clone(),
            ),
            (
                cp.files.scheduler_kubeconfig(),
                layout::SCHEDULER_USER.to_string(),
                cp.tokens.scheduler.clone(),
            ),
            (
                cp.files.kubelet_kubeconfig(),
                layout::node_user(NODE_NAME),
                cp.tokens.kubelet.clone(),
            ),
            (
                cp.files.proxy_kubeconfig(),
                layout::PROXY_USER.to_string(),
                cp.tokens.proxy.clone(),
            ),
        ];
        for (path, user, token) in kubeconfigs {
            let kc = layout::kubeconfig(&server, &cp.pki.ca_pem, &user, &token, "default");
            write(&path, &kc.to_string())?;
        }

        cp.start_etcd().await?;
        cp.start_apiserver().await?;
        cp.start_controller_manager().await?;
        if matches!(network, Network::Node { .. }) {
            cp.start_scheduler()?;
        }
        Ok(cp)
    }

    /// Spawns a component, inside the node's network namespace when there is one.
    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Result<Proc> {
        match &self.netns {
            None => Proc::spawn(name, program, args, &[], &self.files.dir),
            Some(netns) => {
                let (nsenter, args) = in_namespace(netns, program, args)?;
                Proc::spawn(name, &nsenter, &args, &[], &self.files.dir)
            }
        }
    }

    async fn start_etcd(&mut self) -> Result<()> {
        let etcd = self.spawn(
            "etcd",
            &self.bins.etcd,
            &layout::etcd_args(&self.files, self.ports),
        )?;
        // etcd listens on the namespace's loopback; its health shows through the API server's
        // /readyz (etcd check) when it is not reachable from here.
        if self.netns.is_none() {
            let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.etcd_client));
            eventually_while_running("etcd /health", STARTUP_TIMEOUT, &[&etcd], || async move {
                match crate::httpc::get(addr, "/health", Duration::from_secs(5)).await {
                    Ok(r) if r.status == 200 && r.body.contains("true") => Ok(()),
                    Ok(r) => Err(format!("{} {}", r.status, r.body)),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await?;
        }
        self.etcd = Some(etcd);
        Ok(())
    }

    /// Starts the API server (again, after [`Self::stop_apiserver`]) and waits for /readyz.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let apiserver = self.spawn(
            "kube-apiserver",
            &self.bins.apiserver,
            &layout::apiserver_args(&self.files, self.ports, self.network),
        )?;
        let client = self.admin_client().await?;
        eventually_while_running(
            "kube-apiserver /readyz",
            STARTUP_TIMEOUT,
            &[&apiserver],
            || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    match client.request_text(req).await {
                        Ok(body) if body.trim() == "ok" => Ok(()),
                        Ok(body) => Err(body),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await?;
        self.apiserver = Some(apiserver);
        Ok(())
    }

    /// Stops the API server (SIGTERM, SIGKILL after 30 s); etcd and the controller-manager keep
    /// running, so [`Self::start_apiserver`] brings the same cluster back.
    pub async fn stop_apiserver(&mut self) -> Result<()> {
        if let Some(p) = self.apiserver.take() {
            p.stop(Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    /// Kills the API server at once (SIGKILL): a crisp outage starting now, where a graceful
    /// stop drains for up to ~30 s first.
    pub fn kill_apiserver(&mut self) -> Result<()> {
        if let Some(p) = self.apiserver.take() {
            p.kill_and_reap()?;
        }
        Ok(())
    }

    async fn start_controller_manager(&mut self) -> Result<()> {
        let kcm = self.spawn(
            "kube-controller-manager",
            &self.bins.controller_manager,
            &layout::controller_manager_args(&self.files, self.network),
        )?;
        let client = self.admin_client().await?;
        // The ServiceAccount controller creating `default` proves the controller-manager works.
        eventually_while_running(
            "the controller-manager to create the default ServiceAccount",
            STARTUP_TIMEOUT,
            &[&kcm],
            || {
                let client = client.clone();
                async move { service_account_exists(&client, "default", "default").await }
            },
        )
        .await?;
        self.controller_manager = Some(kcm);
        Ok(())
    }

    fn start_scheduler(&mut self) -> Result<()> {
        self.scheduler = Some(self.spawn(
            "kube-scheduler",
            &self.bins.scheduler,
            &layout::scheduler_args(&self.files),
        )?);
        Ok(())
    }

    /// The binaries this control plane runs (the node uses the same build).
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    pub fn server_url(&self) -> String {
        format!(
            "https://{}:{}",
            self.network.apiserver_ip(),
            self.ports.apiserver
        )
    }

    pub fn apiserver_addr(&self) -> SocketAddr {
        SocketAddr::from((self.network.apiserver_ip(), self.ports.apiserver))
    }

    /// The CA (PEM) that signed the API server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The control plane's scratch directory (logs, kubeconfigs, certificates).
    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.files.admin_kubeconfig()
    }

    /// Pids of the running components (for the process-cleanup test).
    pub fn pids(&self) -> Vec<u32> {
        self.procs().map(|p| p.pid()).collect()
    }

    /// Fails with their output if any component has exited.
    pub fn ensure_running(&self) -> Result<()> {
        self.procs().try_for_each(Proc::ensure_running)
    }

    /// The last lines of each component's output, for failure messages.
    pub fn logs_tail(&self, n: usize) -> String {
        self.procs()
            .map(|p| p.output_tail(n))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn procs(&self) -> impl Iterator<Item = &Proc> {
        [
            &self.etcd,
            &self.apiserver,
            &self.controller_manager,
            &self.scheduler,
        ]
        .into_iter()
        .flatten()
    }

    /// A client authenticated as the admin (group system:masters), bound to the calling runtime.
    pub async fn admin_client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.files.admin_kubeconfig()).await
    }

    /// Creates a namespace `<prefix>-<random>` and waits until pods can be created in it (its
    /// `default` ServiceAccount exists: the ServiceAccount admission plugin needs it).
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        let name = format!("{prefix}-{}", procs::rand_suffix());
        let client = self.admin_client().await?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))
        .map_err(|e| fail("building a Namespace", e.to_string()))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .context(format!("creating namespace {name}"))?;
        let ns = name.clone();
        eventually(
            &format!("ServiceAccount {name}/default"),
            Duration::from_secs(120),
            || {
                let (client, ns) = (client.clone(), ns.clone());
                async move { service_account_exists(&client, &ns, "default").await }
            },
        )
        .await?;
        Ok(name)
    }

    /// Creates ServiceAccount `name` in `namespace` (AlreadyExists is fine).
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> Result<()> {
        let client = self.admin_client().await?;
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace}
        }))
        .map_err(|e| fail("building a ServiceAccount", e.to_string()))?;
        match Api::<ServiceAccount>::namespaced(client, namespace)
            .create(&PostParams::default(), &sa)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e).context(format!("creating ServiceAccount {namespace}/{name}")),
        }
    }

    /// A token of a ServiceAccount from the TokenRequest API (an hour's validity), as the
    /// kubelet gets one for a pod; waits until the ServiceAccount exists.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let client = self.admin_client().await?;
        let (ns, sa) = (namespace.to_string(), name.to_string());
        eventually(
            &format!("a token for ServiceAccount {namespace}/{name}"),
            Duration::from_secs(120),
            || {
                let (client, ns, sa) = (client.clone(), ns.clone(), sa.clone());
                async move { request_token(&client, &ns, &sa).await }
            },
        )
        .await
    }

    /// Writes a kubeconfig authenticating as ServiceAccount `namespace/name` (token from its
    /// Secret) and returns its path; binaries under test run with `KUBECONFIG=<path>`.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.service_account_token(namespace, name).await?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let kc = layout::kubeconfig(
            &self.server_url(),
            &self.pki.ca_pem,
            &user,
            &token,
            namespace,
        );
        let path = self
            .files
            .dir
            .join(format!("kubeconfig-{namespace}-{name}"));
        write(&path, &kc.to_string())?;
        Ok(path)
    }

    /// A client authenticated as ServiceAccount `namespace/name`, so RBAC applies for real.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        let path = self.service_account_kubeconfig(namespace, name).await?;
        client_from_kubeconfig(&path).await
    }

    /// Runs `kubectl --kubeconfig <admin> args…` with optional stdin.
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<CmdOutput> {
        let kubectl = kubectl_path()?;
        let kubeconfig = self.files.admin_kubeconfig();
        let mut cmd = tokio::process::Command::new(kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let command = format!("kubectl {}", args.join(" "));
        let mut child = cmd.spawn().context(format!("running {command}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            pipe.write_all(input.as_bytes())
                .await
                .context(format!("writing stdin of {command}"))?;
        }
        let out = tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(&command, format!("no exit within {KUBECTL_TIMEOUT:?}")))?
            .context(format!("running {command}"))?;
        Ok(CmdOutput {
            success: out.status.success(),
            status: procs::describe(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// As [`Self::kubectl`], failing with stderr unless it exits 0; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl(args, stdin).await?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(Error::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: out.status,
                stderr: out.stderr,
            })
        }
    }

    /// `kubectl annotate -n <namespace> <resource> <name> <change>`, as a user annotates an object
    /// (`key=value` sets, `key-` removes).
    pub async fn kubectl_annotate(
        &self,
        namespace: &str,
        resource: &str,
        name: &str,
        change: &str,
    ) -> Result<()> {
        self.kubectl_ok(&["annotate", "-n", namespace, resource, name, change], None)
            .await?;
        Ok(())
    }

    /// Stops everything (scheduler, controller-manager, API server, etcd) and removes the
    /// directory.
    pub async fn stop(mut self) -> Result<()> {
        for p in [
            self.scheduler.take(),
            self.controller_manager.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            p.stop(Duration::from_secs(20)).await?;
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Dependants first; Proc's own Drop SIGKILLs and reaps.
        drop(self.scheduler.take());
        drop(self.controller_manager.take());
        drop(self.apiserver.take());
        drop(self.etcd.take());
        let _ = std::fs::remove_dir_all(&self.files.dir);
    }
}

/// A client from a kubeconfig file, bound to the calling runtime.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let context = format!("loading kubeconfig {}", path.display());
    let kc = Kubeconfig::read_from(path).map_err(|e| fail(&context, e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(&context, e.to_string()))?;
    Client::try_from(config).context(context)
}

/// `Ok` once ServiceAccount `namespace/name` exists, else why not.
async fn service_account_exists(
    client: &Client,
    namespace: &str,
    name: &str,
) -> std::result::Result<(), String> {
    match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "ServiceAccount {namespace}/{name} does not exist yet"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A fresh token for `namespace/name` (TokenRequest), or why there is none.
async fn request_token(
    client: &Client,
    namespace: &str,
    name: &str,
) -> std::result::Result<String, String> {
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))
    .map_err(|e| e.to_string())?;
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(|e| e.to_string())?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| format!("the TokenRequest for {namespace}/{name} came back without a token"))
}

/// `nsenter --net=<netns> -- program args…`: the process joins the node's network namespace and
/// execs `program` (same pid, so signals and exit statuses are the component's own). `ip netns
/// exec` would also remount /sys, which hides the cgroup mounts from the kubelet.
pub fn in_namespace(
    netns: &Path,
    program: &Path,
    args: &[String],
) -> Result<(PathBuf, Vec<String>)> {
    let nsenter = find_on_path("nsenter").ok_or_else(|| {
        fail(
            "entering the cluster's network namespace",
            "nsenter not found on PATH: install Debian's util-linux",
        )
    })?;
    let mut all = vec![
        format!("--net={}", netns.display()),
        "--".to_string(),
        program.display().to_string(),
    ];
    all.extend(args.iter().cloned());
    Ok((nsenter, all))
}

/// The control plane shared by all tests of one test binary, started on first use. It is never
/// dropped (statics are not): its processes die with the test process (see [`crate::procs`]).
pub async fn shared() -> Result<&'static ControlPlane> {
    static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();
    let cp = SHARED.get_or_try_init(ControlPlane::start).await?;
    cp.ensure_running()?;
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let below = ephemeral_low().unwrap_or(32_768);
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if below > LISTEN_PORTS_FROM + 1_000 {
            assert!(
                ports.iter().all(|p| (LISTEN_PORTS_FROM..below).contains(p)),
                "{ports:?} not in {LISTEN_PORTS_FROM}..{below}"
            );
        }
        // Each is free: it can be bound now.
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
