//! Mutating admission webhook that injects the leader-election elector into annotated pods and
//! propagates `leader-election/*` annotations from Deployments and StatefulSets to their pod
//! templates.
//!
//! Pure logic lives in [`admission`] (settings, the pod patch, propagation; it answers one
//! review); API calls go through [`cluster::Cluster`]; [`server`] serves the routes over TLS.

pub mod admission;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod error;
pub mod fake;
pub mod inject;
pub mod metrics;
pub mod provision;
pub mod rbac;
pub mod server;
pub mod tls;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine;
use clap::Parser;

use crate::admission::settings::NativeMode;
use crate::admission::{AppState, InjectConfig};
use crate::cluster::KubeCluster;
use crate::config::{CertsArgs, Cli, Command, InjectArgs, LogFormat, ManifestArgs, ServeArgs};
use crate::controller::ControllerConfig;
use crate::controller::election::{Election, ElectionConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::provision::ReplicaCerts;
use crate::tls::{CertResolver, FileSource};

/// Entry point of the `webhook` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = matches!(cli.command, Command::Serve(_));
    let result = match cli.command {
        Command::Certs(args) => certs_command(&args),
        Command::Inject(args) => inject_command(&args),
        Command::Uninject(args) => {
            let with_rbac = args.manifests.with_rbac;
            manifests_command(&args.manifests, &|doc| inject::uninject(doc, with_rbac))
        }
        Command::Serve(args) => {
            init_logging(args.log_format);
            match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(serve(*args)),
                Err(e) => Err(Error::Server(format!("cannot start the runtime: {e}"))),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if logging {
                tracing::error!(error = %e, "webhook failed");
            } else {
                eprintln!("webhook: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: `kubectl logs` shows them raw.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn certs_command(args: &CertsArgs) -> Result<()> {
    let sans = certs::service_sans(&args.service_name, &args.namespace, &args.extra_sans);
    let validity = std::time::Duration::from_secs(u64::from(args.validity_days) * 86_400);
    let bundle = certs::generate(&sans, validity)?;
    let written = certs::write_files(&args.out_dir, &bundle, args.force)?;
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!("SANs: {}", sans.join(", "));
    println!("valid for {} days", args.validity_days);
    println!(
        "caBundle (base64 of ca.crt, for the MutatingWebhookConfiguration's clientConfig.caBundle):"
    );
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(bundle.ca_pem.as_bytes())
    );
    Ok(())
}

fn inject_command(args: &InjectArgs) -> Result<()> {
    let opts = inject::Options {
        image: args.elector_image.clone(),
        image_pull_policy: args.elector_image_pull_policy.clone(),
        native_mode: args.native_sidecar,
        native_supported: args.native_sidecar_supported,
        namespace: args.namespace.clone(),
        with_rbac: args.manifests.with_rbac,
    };
    manifests_command(&args.manifests, &|doc| inject::inject(doc, &opts))
}

/// Reads, rewrites (all or nothing), then writes: `inject` and `uninject`.
fn manifests_command(
    args: &ManifestArgs,
    rewrite: &dyn Fn(&mut serde_json::Value) -> std::result::Result<inject::Edit, inject::Problem>,
) -> Result<()> {
    let stdin_read = args.paths.is_empty() || args.paths.iter().any(|p| p.as_os_str() == "-");
    if args.in_place && stdin_read {
        return Err(Error::Config(
            "--in-place rewrites files: give file or directory paths, not standard input".into(),
        ));
    }
    let sources = inject::files::read(&args.paths, &mut std::io::stdin().lock())?;
    let outputs = inject::files::rewrite_all(&sources, rewrite)?;
    inject::files::write(&outputs, args.in_place, &mut std::io::stdout().lock())
}

async fn serve(args: ServeArgs) -> Result<()> {
    // kube and the server must agree on one rustls crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    args.validate().map_err(Error::Config)?;
    let kube_config = kube::Config::infer().await.map_err(|e| {
        Error::Config(format!(
            "cannot find the Kubernetes API (in-cluster config or KUBECONFIG): {e}"
        ))
    })?;
    let url = kube_config.cluster_url.to_string();
    let client = kube::Client::try_from(kube_config.clone()).map_err(Error::Client)?;
    let cluster = Arc::new(KubeCluster::new(client.clone()));
    let metrics = Arc::new(Metrics::new());
    let resolver = Arc::new(CertResolver::default());
    let inject = InjectConfig {
        image: args.elector_image.clone(),
        image_pull_policy: args.elector_image_pull_policy.clone(),
        native_mode: args.native_sidecar,
    };
    let state = Arc::new(AppState::new(
        cluster.clone(),
        inject,
        metrics.clone(),
        resolver.clone(),
    ));
    let mut tasks = Vec::new();

    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        let mut source = FileSource::new(cert, key);
        source.reload(&resolver)?;
        metrics.cert_loaded();
        tracing::info!(cert = %cert.display(), "serving certificate loaded from files");
        tasks.push(tokio::spawn(source.watch(
            resolver.clone(),
            args.cert_reload_interval,
            metrics.clone(),
        )));
    } else {
        // Self-provisioned: the active controller owns the certificate (controller::certs);
        // every replica serves what the Secret holds and reports which CA issued it.
        let p = ReplicaCerts {
            namespace: args.namespace.clone(),
            secret: args.tls_secret.clone(),
            report: format!("{}-replica-{}", args.controller_lease, args.identity),
            identity: args.identity.clone(),
            every: args.resync_interval,
        };
        tasks.push(tokio::spawn(provision::serve_from_secret(
            cluster.clone(),
            p,
            resolver.clone(),
            metrics.clone(),
        )));
    }

    // Probed whatever --native-sidecar says: a pod annotated `native-sidecar: auto` relies on it
    // even when the webhook's own default is `always` or `never`.
    if let Err(e) = state.native.refresh(cluster.as_ref()).await {
        let until_known = if args.native_sidecar == NativeMode::Auto {
            "injecting regular containers until known"
        } else {
            "pods annotated native-sidecar=auto get regular containers until known"
        };
        tracing::warn!(error = %e, "cannot tell whether native sidecars are supported; {until_known}");
    }
    let (native, probe_cluster, every) = (
        state.native.clone(),
        cluster.clone(),
        args.native_sidecar_refresh,
    );
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = native.refresh(probe_cluster.as_ref()).await {
                tracing::warn!(error = %e, "native sidecar support not refreshed");
            }
        }
    }));

    // The controller runs beside admission, never in its way: admission answers whether or not
    // this replica leads.
    let election = if args.controller {
        let identity = args.identity.clone();
        let e = Election::start(
            kube_config.clone(),
            ElectionConfig {
                namespace: args.namespace.clone(),
                lease: args.controller_lease.clone(),
                identity: identity.clone(),
                timings: contract::Timings::default(),
                url,
            },
        )
        .map_err(|e| Error::Server(format!("cannot start the controller election: {e}")))?;
        let certs = (args.tls_cert_file.is_none()).then(|| controller::certs::CertPolicy {
            namespace: args.namespace.clone(),
            secret: args.tls_secret.clone(),
            webhook_configuration: args.webhook_configuration.clone(),
            sans: certs::service_sans(&args.service_name, &args.namespace, &args.extra_sans),
            ca_validity: args.ca_validity,
            ca_renew_before: args.ca_renew_before,
            validity: args.cert_validity,
            renew_before: args.cert_renew_before,
            settle: controller::certs::TRUST_SETTLE,
        });
        tasks.push(tokio::spawn(lead(
            client.clone(),
            e.leading.clone(),
            ControllerConfig {
                identity,
                certs,
                resync: args.resync_interval,
            },
        )));
        Some(e)
    } else {
        tracing::info!(
            "controller disabled (--controller=false): Leases, RBAC and leader labels are not managed by this replica"
        );
        None
    };

    let tls_config = Arc::new(tls::server_config(resolver.clone())?);
    let listener = server::bind(args.listen)?;
    let listening = listener
        .local_addr()
        .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
    tracing::info!(listen = %listening, "webhook serving");
    let router = server::router(state.clone(), args.max_body_bytes);
    let draining = state.clone();
    let delay = args.shutdown_delay;
    let shutdown = async move {
        server::termination_signal().await;
        draining.draining.store(true, Ordering::Relaxed);
        tracing::info!(?delay, "termination requested; draining");
        tokio::time::sleep(delay).await;
    };
    let result = server::serve_tls(
        listener,
        router,
        tls_config,
        shutdown,
        args.shutdown_timeout,
    )
    .await;
    for t in tasks {
        t.abort();
    }
    if let Some(e) = election {
        // Releasing the Lease lets a standby take over at once instead of after its expiry.
        e.stop().await;
    }
    result
}

/// Runs the controller while this replica leads, and stops it as soon as it does not.
async fn lead(
    client: kube::Client,
    mut leading: tokio::sync::watch::Receiver<bool>,
    cfg: ControllerConfig,
) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tracing::info!("this replica leads: controller starting");
        tokio::select! {
            () = controller::run(client.clone(), cfg.clone()) => {}
            r = leading.wait_for(|l| !*l) => {
                if r.is_err() {
                    return;
                }
                tracing::info!("leadership lost: controller stopped");
            }
        }
    }
}
