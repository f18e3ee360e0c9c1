//! The I/O loop: executes the [`Candidate`]'s actions against a [`LeaseStore`], feeds back the
//! results, watch items and time, and publishes the view to the HTTP API.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::LocalBoxStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::clock;
use crate::election::{
    Action, Candidate, Failure, LeaseRecord, Notice, Snapshot, StepDown, StoredLease, WatchItem,
};
use crate::error::StoreError;
use crate::http::Shared;
use crate::store::LeaseStore;

/// How long a shutting-down leader keeps trying to release before it exits anyway.
pub const RELEASE_BUDGET: Duration = Duration::from_secs(5);

enum Reply {
    Read(Result<Snapshot, StoreError>),
    Write(Result<StoredLease, StoreError>),
}

type Inflight = Pin<Box<dyn Future<Output = Reply>>>;
type WatchStream = LocalBoxStream<'static, Result<WatchItem, StoreError>>;

async fn next_reply(inflight: &mut Option<Inflight>) -> Reply {
    match inflight {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn next_item(watch: &mut Option<WatchStream>) -> Option<Result<WatchItem, StoreError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A signal, or never if the sender is gone (so a dropped sender cannot spin the loop).
async fn next_signal(signals: &mut mpsc::UnboundedReceiver<()>) {
    if signals.recv().await.is_none() {
        std::future::pending::<()>().await;
    }
}

/// Which stream of API calls an error belongs to, for log de-duplication.
#[derive(Clone, Copy)]
enum Channel {
    Request,
    Watch,
}

pub struct Runner<S: LeaseStore> {
    candidate: Candidate,
    store: S,
    shared: Arc<Shared>,
    release_on_cancel: bool,
    role: Option<watch::Sender<bool>>,
    last_leader: Option<String>,
    /// Last request error and last watch error logged, kept apart so that a watch that keeps
    /// failing (e.g. `watch` forbidden) while requests succeed logs once, not once per cycle.
    last_error: Option<String>,
    last_watch_error: Option<String>,
    out: Box<dyn Write>,
}

impl<S: LeaseStore> Runner<S> {
    pub fn new(
        candidate: Candidate,
        store: S,
        shared: Arc<Shared>,
        release_on_cancel: bool,
    ) -> Self {
        Runner {
            candidate,
            store,
            shared,
            release_on_cancel,
            role: None,
            last_leader: None,
            last_error: None,
            last_watch_error: None,
            out: Box::new(std::io::stdout()),
        }
    }

    /// Where the `<id> is the leader` lines go (stdout by default, like leader-elector:0.4).
    pub fn with_output(mut self, out: Box<dyn Write>) -> Self {
        self.out = out;
        self
    }

    /// Receives `true`/`false` whenever this process starts/stops leading.
    pub fn with_role_channel(mut self, role: watch::Sender<bool>) -> Self {
        self.role = Some(role);
        self
    }

    /// Runs until a signal arrives on `signals` and the lease is released (or the release
    /// budget is spent, or a second signal arrives).
    pub async fn run(mut self, mut signals: mpsc::UnboundedReceiver<()>) {
        let mut inflight: Option<Inflight> = None;
        let mut watch: Option<WatchStream> = None;
        let mut release_deadline: Option<tokio::time::Instant> = None;
        info!(
            identity = self.candidate.id(),
            lease = %self.shared.lease_name,
            namespace = %self.shared.namespace,
            "starting election"
        );
        loop {
            let now = clock::now();
            let action = self.candidate.poll(now);
            self.after_step(now);
            let until = match action {
                Action::Get => {
                    let s = self.store.clone();
                    inflight = Some(Box::pin(async move { Reply::Read(s.get().await) }));
                    continue;
                }
                Action::Create(record) => {
                    inflight = Some(self.write(record, None));
                    continue;
                }
                Action::Replace {
                    record,
                    resource_version,
                } => {
                    inflight = Some(self.write(record, Some(resource_version)));
                    continue;
                }
                Action::Watch { resource_version } => {
                    debug!(%resource_version, "watching the lease");
                    watch = Some(self.store.watch(resource_version));
                    continue;
                }
                Action::Done => {
                    info!("nothing left to release; exiting");
                    return;
                }
                Action::Sleep { until } => until,
            };
            tokio::select! {
                reply = next_reply(&mut inflight) => {
                    inflight = None;
                    let now = clock::now();
                    match reply {
                        Reply::Read(r) => {
                            let r = self.check(r, Channel::Request);
                            self.candidate.on_read(now, r);
                        }
                        Reply::Write(r) => {
                            let r = self.check(r, Channel::Request);
                            self.candidate.on_write(now, r);
                        }
                    }
                }
                item = next_item(&mut watch) => {
                    let now = clock::now();
                    match item {
                        Some(Ok(item)) => {
                            let _ = self.check(Ok(()), Channel::Watch);
                            self.candidate.on_watch(now, item)
                        }
                        Some(Err(e)) => {
                            watch = None;
                            let failure = self.check::<()>(Err(e), Channel::Watch).err();
                            self.candidate.on_watch_end(now, failure);
                        }
                        None => {
                            watch = None;
                            debug!("watch closed by the API server");
                            self.candidate.on_watch_end(now, None);
                        }
                    }
                }
                () = sleep_until(until.map(clock::deadline)) => {}
                () = next_signal(&mut signals) => {
                    if release_deadline.is_some() {
                        warn!("second signal: exiting without waiting for the release");
                        return;
                    }
                    info!(release = self.release_on_cancel, "shutting down");
                    if inflight.take().is_some() {
                        self.candidate.abandon_pending();
                    }
                    self.candidate.shutdown(self.release_on_cancel);
                    release_deadline = Some(tokio::time::Instant::now() + RELEASE_BUDGET);
                }
                () = sleep_until(release_deadline) => {
                    warn!(budget = ?RELEASE_BUDGET, "could not release the lease in time; exiting (others take over when it expires)");
                    return;
                }
            }
        }
    }

    fn write(&self, record: LeaseRecord, resource_version: Option<String>) -> Inflight {
        let s = self.store.clone();
        Box::pin(async move {
            Reply::Write(match resource_version {
                None => s.create(record).await,
                Some(rv) => s.replace(record, rv).await,
            })
        })
    }

    /// Logs and counts a store error (once at error level per distinct message) and maps it to
    /// the election's view of it.
    fn check<T>(&mut self, r: Result<T, StoreError>, channel: Channel) -> Result<T, Failure> {
        let last_error = match channel {
            Channel::Request => &mut self.last_error,
            Channel::Watch => &mut self.last_watch_error,
        };
        match r {
            Ok(v) => {
                if let Some(prev) = last_error.take() {
                    match channel {
                        Channel::Request => {
                            info!(previous_error = %prev, "API requests succeed again")
                        }
                        Channel::Watch => info!(previous_error = %prev, "the watch works again"),
                    }
                }
                Ok(v)
            }
            Err(e) => {
                self.shared.metrics.api_error(e.kind());
                let failure = e.failure();
                let line = e.to_string();
                if e.is_expected() {
                    debug!("{line}");
                } else if last_error.as_deref() != Some(line.as_str()) {
                    match failure {
                        Failure::Permanent => error!("{line}"),
                        _ if matches!(e, StoreError::Unreachable { .. }) => error!("{line}"),
                        _ => warn!("{line}"),
                    }
                    *last_error = Some(line);
                } else {
                    debug!("{line}");
                }
                Err(failure)
            }
        }
    }

    fn after_step(&mut self, now: crate::election::Now) {
        for notice in self.candidate.take_notices() {
            match notice {
                Notice::Acquired { transitions } => {
                    info!(leader_transitions = transitions, "acquired the lease")
                }
                Notice::Holding { before_claiming } => info!(
                    ?before_claiming,
                    "created the lease; holding it for a lease duration before claiming \
                     leadership (a leader of a deleted Lease may still be claiming)"
                ),
                Notice::Renewed { latency } => {
                    self.shared.metrics.renewed(latency);
                    debug!(?latency, "renewed the lease");
                }
                Notice::SteppedDown(StepDown::RenewDeadline {
                    since_last_renew_start,
                }) => warn!(
                    ?since_last_renew_start,
                    renew_deadline = ?self.candidate.timings().renew_deadline,
                    "no renew succeeded within the renew deadline: no longer claiming \
                     leadership; rejoining as a candidate"
                ),
                Notice::SteppedDown(StepDown::Superseded { holder }) => warn!(
                    holder = holder.as_deref().unwrap_or(""),
                    "the lease shows another holder: no longer claiming leadership"
                ),
                Notice::SteppedDown(StepDown::Shutdown) => {
                    info!("shutting down: no longer claiming leadership")
                }
                Notice::Released => info!("released the lease"),
            }
        }
        let (state, _) = self.shared.publish(self.candidate.view(), now.mono);
        let leader = (!state.leader.is_empty()).then(|| state.leader.clone());
        if leader != self.last_leader {
            match &leader {
                Some(l) => {
                    // The exact line people grep for, as leader-elector:0.4 printed it.
                    let _ = writeln!(self.out, "{l} is the leader");
                    let _ = self.out.flush();
                    info!(leader = %l, transitions = ?state.transitions, "leader changed");
                }
                None => info!("no leader known"),
            }
            self.shared.metrics.leader_changed();
            self.last_leader = leader;
        }
        if let Some(role) = &self.role {
            role.send_if_modified(|r| {
                let changed = *r != state.is_leader;
                *r = state.is_leader;
                changed
            });
        }
    }
}
