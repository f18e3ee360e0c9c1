//! Leader-election sidecar: holds a coordination.k8s.io/v1 Lease with client-go-grade safety,
//! hands over through a watch instead of polling, and serves the classic leader-elector HTTP API.
//!
//! Layout: [`election`] is the sans-IO state machine (all the rules), [`store`] the Lease
//! storage (API server or memory), [`runner`] the I/O loop, [`http`] the API, [`config`] the
//! command line.

pub mod clock;
pub mod config;
pub mod election;
pub mod error;
pub mod http;
pub mod runner;
pub mod store;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::config::{Ambient, Args, Config, LogFormat};
use crate::election::Candidate;
use crate::error::{Error, error_chain};
use crate::store::KubeStore;

/// Entry point of the `elector` binary.
pub fn main() -> ExitCode {
    let argv =
        config::normalize_args(std::env::args_os().map(|a| a.to_string_lossy().into_owned()));
    let args = match <Args as clap::Parser>::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let config = match Config::resolve(args, &Ambient::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("elector: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("{}", Error::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Per-request timeout: long enough for a slow API server, short enough that a leader gets a
/// second try before its renew deadline.
pub fn request_timeout(t: contract::Timings) -> Duration {
    (t.renew_deadline / 2).max(t.retry_period)
}

/// SIGTERM and SIGINT, as a channel of "a signal arrived".
fn signals() -> Result<mpsc::UnboundedReceiver<()>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                s = term.recv() => if s.is_none() { return },
                s = int.recv() => if s.is_none() { return },
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

async fn run(config: Config) -> Result<(), Error> {
    let signals = signals()?;
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| Error::Bind {
            addr: config.http,
            source,
        })?;

    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| Error::KubeConfig(error_chain(&e)))?;
    let url = kube_config.cluster_url.to_string();
    let client =
        kube::Client::try_from(kube_config).map_err(|e| Error::KubeClient(error_chain(&e)))?;
    info!(
        api_server = %url,
        identity = %config.id,
        lease = %config.election,
        namespace = %config.namespace,
        http = %config.http,
        lease_duration = ?config.timings.lease_duration,
        renew_deadline = ?config.timings.renew_deadline,
        retry_period = ?config.timings.retry_period,
        "elector starting"
    );

    let shared = http::Shared::new(&config.id, &config.election, &config.namespace, clock::mono);
    let app = http::router(shared.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("{}", Error::Http(e));
        }
    });

    let store = KubeStore::new(
        client.clone(),
        url,
        &config.namespace,
        &config.election,
        request_timeout(config.timings),
    );
    let seed = clock::mono().0.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    let candidate = Candidate::new(config.id.clone(), config.timings, seed);
    let mut runner = runner::Runner::new(candidate, store, shared, config.release_on_cancel);
    if let Some(pod) = config.leader_label_pod.clone() {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(runner::label_pod(client, config.namespace.clone(), pod, rx));
        runner = runner.with_role_channel(tx);
    }
    runner.run(signals).await;
    Ok(())
}
