//! One active controller among the webhook's replicas, elected with this project's own elector
//! library on a Lease in the webhook's namespace.

use tokio::sync::{mpsc, watch};

use elector::election::Candidate;
use elector::store::KubeStore;

/// The Lease the webhook's replicas elect their controller on.
pub const CONTROLLER_LEASE: &str = "leader-election-webhook-controller";

/// Where and as whom to elect.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    pub timings: contract::Timings,
    /// The API server's URL, for the elector's error messages.
    pub url: String,
}

/// A running election: `leading` says whether this replica is the active controller; `stop`
/// releases the Lease (so another replica takes over at once) and ends it.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    stop: mpsc::UnboundedSender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Election {
    /// Starts electing on a thread of its own: the elector's runner is a single-threaded state
    /// machine (its futures are not `Send`), as in the sidecar. The thread makes its own client
    /// from `config`: a client shared across runtimes pools connections whose tasks live on the
    /// other runtime, and the controller's requests stalled on them.
    pub fn start(config: kube::Config, cfg: ElectionConfig) -> std::io::Result<Self> {
        let (role_tx, leading) = watch::channel(false);
        let (stop, signals) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("controller-election".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "controller election cannot start");
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match kube::Client::try_from(config) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "controller election cannot start");
                            return;
                        }
                    };
                    let store = KubeStore::new(
                        client,
                        cfg.url.clone(),
                        &cfg.namespace,
                        &cfg.lease,
                        elector::request_timeout(cfg.timings),
                    );
                    let seed = elector::clock::mono().0.as_nanos() as u64
                        ^ u64::from(std::process::id()).rotate_left(32);
                    let candidate = Candidate::new(cfg.identity.clone(), cfg.timings, seed);
                    let shared = elector::http::Shared::new(
                        &cfg.identity,
                        &cfg.lease,
                        &cfg.namespace,
                        elector::clock::mono,
                    );
                    elector::runner::Runner::new(candidate, store, shared, true)
                        .with_output(Box::new(std::io::sink()))
                        .with_role_channel(role_tx)
                        .run(signals)
                        .await;
                });
            })?;
        Ok(Self {
            leading,
            stop,
            thread: Some(thread),
        })
    }

    /// Releases the Lease (bounded by the elector's release budget) and waits for the thread.
    pub async fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
