//! Command line (every flag also reads a `WEBHOOK_*` environment variable).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use contract::listen::{Listen, parse_listen};

use crate::admission::settings::NativeMode;

#[derive(Debug, Parser)]
#[command(
    name = "webhook",
    version,
    about = "Mutating admission webhook that injects the leader-election elector into annotated pods"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook over TLS.
    Serve(Box<ServeArgs>),
    /// Write a CA and a serving certificate (ca.crt, tls.crt, tls.key) for the webhook's Service.
    Certs(CertsArgs),
    /// Inject the elector into annotated workloads in manifests, offline (GitOps): the patch
    /// the webhook would apply to their pod templates.
    Inject(InjectArgs),
    /// Remove what `inject` added.
    Uninject(UninjectArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    contract::parse_duration(s)
}

/// A period or lifetime: zero would make a timer spin (tokio panics on a zero interval) or a
/// certificate expire at birth.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be greater than zero (e.g. 5s, 10m, 365d)".into()),
        d => Ok(d),
    }
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("webhook-{}", std::process::id()))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve HTTPS on. `:PORT` means every interface, IPv6 and IPv4 (`[::]` with
    /// IPv4 as v4-mapped addresses; `0.0.0.0` alone when the kernel has no IPv6), so the API
    /// server reaches the pod on single-stack IPv4, IPv6 and dual-stack clusters; an address
    /// (`0.0.0.0:8443`, `127.0.0.1:8443`) is used as given.
    #[arg(long, env = "WEBHOOK_LISTEN", value_name = "ADDR",
          default_value_t = Listen::AllInterfaces(contract::deploy::WEBHOOK_PORT),
          value_parser = parse_listen)]
    pub listen: Listen,

    /// Serving certificate (PEM); reloaded when it changes.
    #[arg(
        long,
        env = "WEBHOOK_TLS_CERT_FILE",
        requires = "tls_key_file",
        conflicts_with = "self_provision"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, env = "WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How often the certificate files are checked for changes.
    #[arg(long, env = "WEBHOOK_CERT_RELOAD_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub cert_reload_interval: Duration,

    /// Generate a CA and serving certificate, share them through --tls-secret and keep the
    /// caBundle of --webhook-configuration in sync.
    #[arg(long, env = "WEBHOOK_SELF_PROVISION")]
    pub self_provision: bool,

    /// Namespace of the webhook (its Secret and Service).
    #[arg(long, env = contract::env::POD_NAMESPACE, default_value = contract::deploy::NAMESPACE)]
    pub namespace: String,

    /// The webhook's Service name (certificate SANs).
    #[arg(long, env = "WEBHOOK_SERVICE_NAME", default_value = contract::deploy::WEBHOOK_NAME)]
    pub service_name: String,

    /// Extra SAN (DNS name or IP address) for a self-provisioned certificate; repeatable.
    #[arg(long = "extra-san", env = "WEBHOOK_EXTRA_SANS", value_delimiter = ',')]
    pub extra_sans: Vec<String>,

    /// Secret holding the self-provisioned CA and certificate.
    #[arg(long, env = "WEBHOOK_TLS_SECRET", default_value = contract::deploy::TLS_SECRET)]
    pub tls_secret: String,

    /// MutatingWebhookConfiguration whose caBundle is kept in sync.
    #[arg(long, env = "WEBHOOK_CONFIGURATION", default_value = contract::deploy::WEBHOOK_CONFIGURATION)]
    pub webhook_configuration: String,

    /// Lifetime of a self-provisioned certificate.
    #[arg(long, env = "WEBHOOK_CERT_VALIDITY", default_value = "365d", value_parser = positive_duration)]
    pub cert_validity: Duration,

    /// Regenerate a self-provisioned certificate when less than this is left.
    #[arg(long, env = "WEBHOOK_CERT_RENEW_BEFORE", default_value = "30d", value_parser = duration)]
    pub cert_renew_before: Duration,

    /// Lifetime of a self-provisioned CA (serving certificates are renewed under it).
    #[arg(long, env = "WEBHOOK_CA_VALIDITY", default_value = "1095d", value_parser = positive_duration)]
    pub ca_validity: Duration,

    /// Rotate the self-provisioned CA when less than this is left (must exceed
    /// --cert-renew-before).
    #[arg(long, env = "WEBHOOK_CA_RENEW_BEFORE", default_value = "90d", value_parser = duration)]
    pub ca_renew_before: Duration,

    /// How often the Secret and the caBundle are checked again (an operator may re-apply the
    /// configuration without caBundle; another replica may rotate the certificate).
    #[arg(long, env = "WEBHOOK_RESYNC_INTERVAL", default_value = "30s", value_parser = positive_duration)]
    pub resync_interval: Duration,

    /// Image of the injected elector.
    #[arg(long, env = "WEBHOOK_ELECTOR_IMAGE", default_value = contract::deploy::DEFAULT_ELECTOR_IMAGE)]
    pub elector_image: String,

    /// imagePullPolicy of the injected elector.
    #[arg(long, env = "WEBHOOK_ELECTOR_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub elector_image_pull_policy: String,

    /// Inject as a native sidecar (init container with restartPolicy Always): auto = only
    /// where the API server and every kubelet are at least 1.29.
    #[arg(long, env = "WEBHOOK_NATIVE_SIDECAR", value_enum, default_value_t = NativeMode::Auto)]
    pub native_sidecar: NativeMode,

    /// How often `auto` re-checks the API server and kubelet versions.
    #[arg(long, env = "WEBHOOK_NATIVE_SIDECAR_REFRESH", default_value = "60s", value_parser = positive_duration)]
    pub native_sidecar_refresh: Duration,

    /// Run the controller (Leases, their Roles and RoleBindings, leader labels) when this
    /// replica is elected; `false` serves admission only.
    #[arg(long, env = "WEBHOOK_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    pub controller: bool,

    /// Lease, in --namespace, the replicas elect their one active controller on.
    #[arg(long, env = "WEBHOOK_CONTROLLER_LEASE", default_value = crate::controller::election::CONTROLLER_LEASE)]
    pub controller_lease: String,

    /// This replica's identity in the controller election (the pod name).
    #[arg(long, env = contract::env::POD_NAME, default_value_t = default_identity())]
    pub identity: String,

    /// Largest AdmissionReview accepted; larger bodies get 413.
    #[arg(long, env = "WEBHOOK_MAX_BODY_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// After SIGTERM, keep serving (with /readyz failing) this long so endpoints drop the pod
    /// before the listener closes; replaces a preStop sleep in a shell-less image.
    #[arg(long, env = "WEBHOOK_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration)]
    pub shutdown_delay: Duration,

    /// How long in-flight requests may take to finish once the listener is closed.
    #[arg(long, env = "WEBHOOK_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    #[arg(long, env = "WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// Checks what clap cannot express; the message names the flags to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert_file.is_none() && !self.self_provision {
            return Err(
                "choose a certificate source: --tls-cert-file and --tls-key-file, or \
                 --self-provision"
                    .into(),
            );
        }
        if self.self_provision && self.cert_renew_before >= self.cert_validity {
            return Err(format!(
                "--cert-renew-before ({}) must be shorter than --cert-validity ({}), or every \
                 resync would generate a new certificate",
                humantime::format_duration(self.cert_renew_before),
                humantime::format_duration(self.cert_validity)
            ));
        }
        if self.self_provision
            && (self.ca_renew_before >= self.ca_validity
                || self.ca_renew_before <= self.cert_renew_before)
        {
            return Err(format!(
                "--ca-renew-before ({}) must be shorter than --ca-validity ({}) and longer than \
                 --cert-renew-before ({}), or certificates issued near the CA's end would be \
                 renewed at every resync",
                humantime::format_duration(self.ca_renew_before),
                humantime::format_duration(self.ca_validity),
                humantime::format_duration(self.cert_renew_before)
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long)]
    pub out_dir: PathBuf,

    #[arg(long, env = "WEBHOOK_SERVICE_NAME", default_value = contract::deploy::WEBHOOK_NAME)]
    pub service_name: String,

    #[arg(long, env = contract::env::POD_NAMESPACE, default_value = contract::deploy::NAMESPACE)]
    pub namespace: String,

    /// Extra SAN (DNS name or IP address); repeatable.
    #[arg(long = "extra-san", value_delimiter = ',')]
    pub extra_sans: Vec<String>,

    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub validity_days: u32,

    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// Inputs and outputs of `inject` and `uninject`.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Files or directories (searched recursively for *.yaml, *.yml, *.json); `-` or nothing
    /// reads standard input.
    pub paths: Vec<PathBuf>,

    /// Rewrite the files instead of printing to standard output (only files that change).
    #[arg(long, short = 'i')]
    pub in_place: bool,

    /// inject: also emit the Lease, Role and RoleBinding the controller would create;
    /// uninject: also remove them.
    #[arg(long)]
    pub with_rbac: bool,
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,

    /// Image of the injected elector (as the webhook's --elector-image).
    #[arg(long, env = "WEBHOOK_ELECTOR_IMAGE", default_value = contract::deploy::DEFAULT_ELECTOR_IMAGE)]
    pub elector_image: String,

    /// imagePullPolicy of the injected elector.
    #[arg(long, env = "WEBHOOK_ELECTOR_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub elector_image_pull_policy: String,

    /// The webhook's --native-sidecar mode; a pod annotation overrides it.
    #[arg(long, env = "WEBHOOK_NATIVE_SIDECAR", value_enum, default_value_t = NativeMode::Auto)]
    pub native_sidecar: NativeMode,

    /// What `auto` resolves to: whether the target cluster's API server and every kubelet are
    /// at least 1.29 (the webhook asks the cluster; offline, say it).
    #[arg(long, env = "WEBHOOK_NATIVE_SIDECAR_SUPPORTED", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub native_sidecar_supported: bool,

    /// Namespace of objects that name none (`kubectl apply -n`): excluded namespaces are left
    /// alone, and --with-rbac needs one.
    #[arg(long, short = 'n', env = "WEBHOOK_INJECT_NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct UninjectArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("webhook").chain(args.iter().copied()))
    }

    #[test]
    fn serve_defaults_and_flags() {
        let Command::Serve(s) = parse(&["serve", "--self-provision"]).unwrap().command else {
            panic!("not serve");
        };
        assert_eq!(
            s.listen,
            Listen::AllInterfaces(contract::deploy::WEBHOOK_PORT)
        );
        assert_eq!(s.native_sidecar, NativeMode::Auto);
        assert_eq!(s.elector_image_pull_policy, "IfNotPresent");
        assert_eq!(s.max_body_bytes, 3 * 1024 * 1024);

        let Command::Serve(s) = parse(&[
            "serve",
            "--listen",
            "127.0.0.1:9443",
            "--self-provision",
            "--namespace",
            "ns",
            "--extra-san",
            "127.0.0.1",
            "--extra-san",
            "a.example",
            "--webhook-configuration",
            "w",
            "--native-sidecar",
            "never",
        ])
        .unwrap()
        .command
        else {
            panic!("not serve");
        };
        assert_eq!(s.listen, Listen::Addr("127.0.0.1:9443".parse().unwrap()));
        assert_eq!(s.extra_sans, ["127.0.0.1", "a.example"]);
        assert_eq!(s.namespace, "ns");
        assert_eq!(s.native_sidecar, NativeMode::Never);
    }

    #[test]
    fn bad_combinations_are_refused() {
        assert!(parse(&["serve", "--tls-cert-file", "c"]).is_err());
        assert!(
            parse(&[
                "serve",
                "--tls-cert-file",
                "c",
                "--tls-key-file",
                "k",
                "--self-provision"
            ])
            .is_err()
        );
        assert!(parse(&["serve", "--elector-image-pull-policy", "Sometimes"]).is_err());
        assert!(parse(&["certs"]).is_err());
        assert!(parse(&["certs", "--out-dir", "d", "--validity-days", "0"]).is_err());
        for flag in [
            "--cert-reload-interval",
            "--cert-validity",
            "--resync-interval",
            "--native-sidecar-refresh",
        ] {
            let e = parse(&["serve", "--self-provision", flag, "0s"]).unwrap_err();
            assert!(e.to_string().contains("greater than zero"), "{flag}: {e}");
        }
        assert!(parse(&["serve", "--self-provision", "--shutdown-delay", "0s"]).is_ok());
    }

    #[test]
    fn cross_flag_checks() {
        let serve = |args: &[&str]| match parse(args).unwrap().command {
            Command::Serve(s) => s.validate(),
            _ => panic!("not serve"),
        };
        let e = serve(&["serve"]).unwrap_err();
        assert!(e.contains("--self-provision"), "{e}");
        serve(&["serve", "--self-provision"]).unwrap();
        serve(&["serve", "--tls-cert-file", "c", "--tls-key-file", "k"]).unwrap();
        let e = serve(&["serve", "--self-provision", "--cert-validity", "10d"]).unwrap_err();
        assert!(e.contains("--cert-renew-before (30days)"), "{e}");
    }

    #[test]
    fn inject_flags() {
        let Command::Inject(a) = parse(&["inject"]).unwrap().command else {
            panic!("not inject");
        };
        assert!(a.manifests.paths.is_empty());
        assert!(a.native_sidecar_supported);
        assert_eq!(a.native_sidecar, NativeMode::Auto);
        let Command::Inject(a) = parse(&[
            "inject",
            "-i",
            "a.yaml",
            "dir",
            "--with-rbac",
            "--native-sidecar-supported=false",
            "-n",
            "ns",
        ])
        .unwrap()
        .command
        else {
            panic!("not inject");
        };
        assert_eq!(
            a.manifests.paths,
            [PathBuf::from("a.yaml"), PathBuf::from("dir")]
        );
        assert!(a.manifests.in_place && a.manifests.with_rbac && !a.native_sidecar_supported);
        assert_eq!(a.namespace.as_deref(), Some("ns"));
        assert!(parse(&["inject", "--elector-image-pull-policy", "Sometimes"]).is_err());
        let Command::Uninject(u) = parse(&["uninject", "-"]).unwrap().command else {
            panic!("not uninject");
        };
        assert_eq!(u.manifests.paths, [PathBuf::from("-")]);
    }
}
