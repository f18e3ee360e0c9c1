//! Leader-election sidecar: holds a coordination.k8s.io/v1 Lease with client-go-grade safety,
//! hands over through a watch instead of polling, and serves the classic leader-elector HTTP API.
//!
//! Layout: [`election`] is the sans-IO state machine (all the rules), [`store`] the Lease
//! storage (API server or memory), [`runner`] the I/O loop, [`http`] the API, [`listen`] its
//! socket, [`config`] the command line.

pub mod clock;
pub mod config;
pub mod election;
pub mod error;
pub mod http;
pub mod listen;
pub mod runner;
pub mod store;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::level_filters::LevelFilter;
use tracing::{Level, error, info, warn};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    let spec = std::env::var("RUST_LOG").ok();
    let (filter, bad) = match log_filter(spec.as_deref()) {
        Ok(f) => (f, None),
        Err(e) => (default_log_filter(), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(LevelFilter::TRACE);
    match format {
        LogFormat::Plain => builder.finish().with(filter).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .init(),
    }
    if let Some(e) = bad {
        warn!("{e}");
    }
}

/// kube's request tracing logs every failed request at error level as a bare "client error
/// (Connect)"; the elector logs one line with the cause and the fix instead.
const KUBE_REQUEST_TRACE: &str = "kube_client::client::builder";

/// `RUST_LOG` as `level` or `target=level,…` (no span or field filters: the regex engine they
/// need would make up a sizeable part of this small binary's resident memory). Unset or empty
/// means `info`. kube's per-request error lines stay off unless `RUST_LOG` names `kube_client`
/// or asks for debug.
pub fn log_filter(spec: Option<&str>) -> Result<Targets, String> {
    let Some(s) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(default_log_filter());
    };
    let targets = s.parse::<Targets>().map_err(|e| {
        format!(
            "ignoring RUST_LOG={s:?} ({e}); logging at info. Use a level (e.g. debug) or \
             target=level pairs (e.g. info,elector=debug)"
        )
    })?;
    if s.contains("kube_client") || targets.would_enable(KUBE_REQUEST_TRACE, &Level::DEBUG) {
        Ok(targets)
    } else {
        Ok(targets.with_target(KUBE_REQUEST_TRACE, LevelFilter::OFF))
    }
}

fn default_log_filter() -> Targets {
    Targets::new()
        .with_default(Level::INFO)
        .with_target(KUBE_REQUEST_TRACE, LevelFilter::OFF)
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
    let listener = listen::bind(config.http)?;
    let http_addr = listener
        .local_addr()
        .map_or_else(|_| config.http.to_string(), |a| a.to_string());

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
        http = %http_addr,
        lease_duration = ?config.timings.lease_duration,
        renew_deadline = ?config.timings.renew_deadline,
        retry_period = ?config.timings.retry_period,
        renew_interval = ?config.renew_interval,
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
        client,
        url,
        &config.namespace,
        &config.election,
        request_timeout(config.timings),
    );
    let seed = clock::mono().0.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    let candidate = Candidate::new(config.id.clone(), config.timings, seed)
        .with_renew_interval(config.renew_interval);
    let runner = runner::Runner::new(candidate, store, shared, config.release_on_cancel);
    // Returns after the release.
    runner.run(signals).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_levels_and_targets() {
        let cases: &[(Option<&str>, &str, LevelFilter)] = &[
            (None, "elector", LevelFilter::INFO),
            (None, "kube_client::client::builder", LevelFilter::OFF),
            (
                Some("debug"),
                "kube_client::client::builder",
                LevelFilter::DEBUG,
            ),
            (Some(""), "kube", LevelFilter::INFO),
            (Some("info"), "elector", LevelFilter::INFO),
            (
                Some("info"),
                "kube_client::client::builder",
                LevelFilter::OFF,
            ),
            (
                Some("info,kube_client=error"),
                "kube_client::client::builder",
                LevelFilter::ERROR,
            ),
            (Some("debug"), "kube", LevelFilter::DEBUG),
            (
                Some("warn,elector=trace"),
                "elector::runner",
                LevelFilter::TRACE,
            ),
            (Some("warn,elector=trace"), "kube_client", LevelFilter::WARN),
            (Some("elector=off"), "elector", LevelFilter::OFF),
        ];
        for &(spec, target, want) in cases {
            let f = log_filter(spec).unwrap();
            let got = [
                LevelFilter::TRACE,
                LevelFilter::DEBUG,
                LevelFilter::INFO,
                LevelFilter::WARN,
                LevelFilter::ERROR,
            ]
            .into_iter()
            .find(|l| l.into_level().is_some_and(|l| f.would_enable(target, &l)))
            .unwrap_or(LevelFilter::OFF);
            assert_eq!(got, want, "{spec:?} for {target}");
        }
        let e = log_filter(Some("elector=loud")).unwrap_err();
        assert!(e.contains("RUST_LOG") && e.contains("info"), "{e}");
    }
}
