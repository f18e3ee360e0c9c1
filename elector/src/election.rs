//! The election as a sans-IO state machine.
//!
//! [`Candidate`] never reads a clock, sleeps or talks to the network: the runner (or the
//! simulation) tells it the time and the results of store operations, and it answers with the next
//! [`Action`]. The same code therefore runs against the real API server and in virtual time.
//!
//! Safety rules (client-go's LeaseLock, tightened):
//! * a record is judged expired by *my* monotonic clock: `observed_at + leaseDurationSeconds`,
//!   where `observed_at` is when I saw the record change; `renewTime` is never compared with any
//!   local clock, so wall-clock skew between nodes cannot matter;
//! * every write is a create or a replace guarded by the resourceVersion I read;
//! * my claim is valid until `start of my last successful renew request + renew_deadline`, and
//!   [`View::is_leader`] evaluates that at the moment it is asked.

use std::time::Duration;

use contract::Timings;
use jiff::Timestamp;

/// A reading of the local monotonic clock (CLOCK_BOOTTIME in production; virtual in tests),
/// as time since an arbitrary epoch. Only differences between readings of the same process mean
/// anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mono(pub Duration);

impl Mono {
    pub const ZERO: Mono = Mono(Duration::ZERO);

    pub fn from_secs_f64(s: f64) -> Self {
        Mono(Duration::from_secs_f64(s.max(0.0)))
    }

    pub fn saturating_sub(self, earlier: Mono) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d))
    }
}

/// "Now" as the candidate sees it: the monotonic reading decides everything; the wall-clock
/// reading is only written into `acquireTime`/`renewTime` and shown to humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Mono,
    pub wall: Timestamp,
}

/// The election fields of a Lease, as client-go's `LeaderElectionRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `None` when holderIdentity is missing or empty: the lease is free.
    pub holder: Option<String>,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl LeaseRecord {
    /// Normalises an empty holder to `None` (client-go treats both as free).
    pub fn normalized(mut self) -> Self {
        if self.holder.as_deref().is_some_and(str::is_empty) {
            self.holder = None;
        }
        self
    }

    /// How long the holder may keep the lease without renewing, as written by the holder.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.lease_duration_seconds).unwrap_or(0))
    }
}

/// A record together with the resourceVersion the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub record: LeaseRecord,
    pub resource_version: String,
}

/// Result of reading the lease: the object if it exists, and the collection's resourceVersion
/// to start a watch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub lease: Option<StoredLease>,
    pub resource_version: String,
}

/// One item of the watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Changed(StoredLease),
    Deleted { resource_version: String },
    Bookmark { resource_version: String },
}

/// How a store operation failed, as far as the election logic cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 409 on a replace: somebody wrote since I read.
    Conflict,
    /// 409 AlreadyExists on a create.
    AlreadyExists,
    /// 404 on a replace: the lease was deleted.
    NotFound,
    /// 410 Gone on a watch: the resourceVersion is too old, re-list.
    Gone,
    /// Worth retrying soon: timeouts, 5xx, 429, connection errors.
    Transient,
    /// Needs a human (RBAC, missing namespace, bad credentials): retried slowly.
    Permanent,
}

/// What the candidate wants done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the lease (and the collection resourceVersion); answer with [`Candidate::on_read`].
    Get,
    /// Create the lease; answer with [`Candidate::on_write`].
    Create(LeaseRecord),
    /// Replace the lease if it is still at `resource_version`; answer with
    /// [`Candidate::on_write`].
    Replace {
        record: LeaseRecord,
        resource_version: String,
    },
    /// (Re)start the watch from `resource_version`, replacing any running one; its items go to
    /// [`Candidate::on_watch`], its end to [`Candidate::on_watch_end`]. Do not wait for it.
    Watch { resource_version: String },
    /// Nothing to do until `until` (if any) unless a response or watch item arrives.
    Sleep { until: Option<Mono> },
    /// Shutting down and nothing left to release: exit.
    Done,
}

/// Notable changes, drained by the runner for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// I wrote the lease as its new holder.
    Acquired { transitions: i32 },
    /// A renew succeeded; `latency` is from request start to response.
    Renewed { latency: Duration },
    /// I stopped claiming leadership.
    SteppedDown(StepDown),
    /// The lease was released on shutdown.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDown {
    /// No renew succeeded within the renew deadline, counted from the start of the last
    /// successful one.
    RenewDeadline { since_last_renew_start: Duration },
    /// The lease shows another holder (or none, or was deleted).
    Superseded { holder: Option<String> },
    /// Shutdown: stop claiming before releasing.
    Shutdown,
}

/// What the candidate knows, in a form the HTTP layer can evaluate at any instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub identity: String,
    /// Holder in the last record I saw.
    pub holder: Option<String>,
    /// My monotonic time when that record last changed.
    pub observed_at: Option<Mono>,
    /// Wall time when that record last changed (as I saw it), for humans.
    pub observed_wall: Option<Timestamp>,
    /// leaseDurationSeconds of that record.
    pub lease_duration: Duration,
    /// leaderTransitions of that record: increases on every change of holder, so it works as a
    /// fencing token the app can attach to its writes.
    pub transitions: Option<i32>,
    pub resource_version: Option<String>,
    /// My leadership is valid strictly before this instant (start of my last successful
    /// renew + renew deadline); `None` when I do not claim it.
    pub claim_until: Option<Mono>,
    /// Wall time of my last successful renew.
    pub last_renew_wall: Option<Timestamp>,
    /// The lease has been read or written at least once.
    pub ready: bool,
}

impl View {
    pub fn new(identity: impl Into<String>) -> Self {
        View {
            identity: identity.into(),
            holder: None,
            observed_at: None,
            observed_wall: None,
            lease_duration: Duration::ZERO,
            transitions: None,
            resource_version: None,
            claim_until: None,
            last_renew_wall: None,
            ready: false,
        }
    }

    /// Am I the leader at `now`? Evaluated at the moment of asking, so a process that was frozen
    /// past its renew deadline answers `false` from the first question after it thaws.
    pub fn is_leader(&self, now: Mono) -> bool {
        self.holder.as_deref() == Some(self.identity.as_str())
            && self.claim_until.is_some_and(|until| now < until)
    }

    /// The leader as far as I know at `now`: `None` when the lease is free, released, expired by
    /// my observation, or names me while my own claim has lapsed.
    pub fn leader(&self, now: Mono) -> Option<&str> {
        let holder = self.holder.as_deref()?;
        if holder == self.identity {
            return self.is_leader(now).then_some(holder);
        }
        let observed = self.observed_at?;
        (now < observed + self.lease_duration).then_some(holder)
    }
}

/// Small deterministic PRNG (SplitMix64) for jitter, so the simulation stays reproducible.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform factor in [0.5, 1.0): "equal jitter", never zero so retries cannot hot-loop.
    fn scale(&mut self, d: Duration) -> Duration {
        let f = 0.5 + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        d.mul_f64(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Knowledge {
    Unknown,
    Absent,
    Present(Observed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    lease: StoredLease,
    at: Mono,
    wall: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PendingOp {
    Read,
    Write { release: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    op: PendingOp,
    started: Mono,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    /// Not running; start one as soon as a resourceVersion is known.
    Off,
    Running {
        since: Mono,
    },
    /// Broke: re-list at `retry_at`, then watch again.
    Broken {
        retry_at: Mono,
    },
}

/// Backoff bounds.
const PERMANENT_BACKOFF_MIN: Duration = Duration::from_secs(1);
const PERMANENT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A watch that ends cleanly after living this long is simply restarted (the API server closes
/// watches every few minutes); a shorter one counts as broken, to avoid hot loops.
const WATCH_HEALTHY_AFTER: Duration = Duration::from_secs(1);
const SHUTDOWN_RETRY: Duration = Duration::from_millis(100);

fn exp_backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    min.saturating_mul(1u32 << exp).min(max)
}

/// Compares resourceVersions when both are integers (as etcd's are) to drop stale watch items;
/// opaque ones are never considered stale.
fn is_older(candidate: &str, than: &str) -> bool {
    match (candidate.parse::<u64>(), than.parse::<u64>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// One contender for the lease.
#[derive(Debug, Clone)]
pub struct Candidate {
    id: String,
    timings: Timings,
    jitter: Jitter,
    known: Knowledge,
    /// Latest resourceVersion to (re)start the watch from.
    watch_rv: Option<String>,
    watch: WatchState,
    watch_failures: u32,
    needs_read: bool,
    pending: Option<Pending>,
    /// No store request before this instant (error backoff).
    retry_at: Option<Mono>,
    transient_failures: u32,
    permanent_failures: u32,
    claim_until: Option<Mono>,
    last_renew_start: Option<Mono>,
    last_renew_wall: Option<Timestamp>,
    ready: bool,
    shutting_down: bool,
    release_on_shutdown: bool,
    notices: Vec<Notice>,
}

impl Candidate {
    /// `seed` only feeds retry jitter.
    pub fn new(id: impl Into<String>, timings: Timings, seed: u64) -> Self {
        Candidate {
            id: id.into(),
            timings,
            jitter: Jitter(seed),
            known: Knowledge::Unknown,
            watch_rv: None,
            watch: WatchState::Off,
            watch_failures: 0,
            needs_read: true,
            pending: None,
            retry_at: None,
            transient_failures: 0,
            permanent_failures: 0,
            claim_until: None,
            last_renew_start: None,
            last_renew_wall: None,
            ready: false,
            shutting_down: false,
            release_on_shutdown: true,
            notices: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// My claim's end, if I claim leadership (see [`View::claim_until`]).
    pub fn claim_until(&self) -> Option<Mono> {
        self.claim_until
    }

    pub fn is_leader(&self, now: Mono) -> bool {
        self.view().is_leader(now)
    }

    pub fn leader(&self, now: Mono) -> Option<String> {
        self.view().leader(now).map(str::to_owned)
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub fn view(&self) -> View {
        let mut v = View::new(self.id.clone());
        if let Knowledge::Present(o) = &self.known {
            v.holder = o.lease.record.holder.clone();
            v.observed_at = Some(o.at);
            v.observed_wall = Some(o.wall);
            v.lease_duration = o.lease.record.lease_duration();
            v.transitions = Some(o.lease.record.transitions);
            v.resource_version = Some(o.lease.resource_version.clone());
        }
        v.claim_until = self.claim_until;
        v.last_renew_wall = self.last_renew_wall;
        v.ready = self.ready;
        v
    }

    fn holder_is_me(&self) -> bool {
        matches!(&self.known, Knowledge::Present(o) if o.lease.record.holder.as_deref() == Some(self.id.as_str()))
    }

    fn step_down(&mut self, why: StepDown) {
        if self.claim_until.take().is_some() {
            self.notices.push(Notice::SteppedDown(why));
        }
    }

    /// Drops a claim whose renew deadline has passed.
    fn expire_claim(&mut self, now: Mono) {
        if let Some(until) = self.claim_until
            && now >= until
        {
            let since = self
                .last_renew_start
                .map_or(Duration::ZERO, |s| now.saturating_sub(s));
            self.step_down(StepDown::RenewDeadline {
                since_last_renew_start: since,
            });
        }
    }

    /// Records what the store says the lease is now. `at` stamps a change: a later stamp only
    /// delays my judgement of expiry, so stamping on arrival of the response is the safe choice.
    fn observe(&mut self, now: Now, lease: Option<StoredLease>) {
        match lease {
            None => {
                self.known = Knowledge::Absent;
                self.step_down(StepDown::Superseded { holder: None });
            }
            Some(mut lease) => {
                lease.record = lease.record.normalized();
                let unchanged = matches!(&self.known, Knowledge::Present(o)
                    if o.lease.resource_version == lease.resource_version && o.lease.record == lease.record);
                if !unchanged {
                    self.known = Knowledge::Present(Observed {
                        lease,
                        at: now.mono,
                        wall: now.wall,
                    });
                }
                if !self.holder_is_me() {
                    let holder = match &self.known {
                        Knowledge::Present(o) => o.lease.record.holder.clone(),
                        _ => None,
                    };
                    self.step_down(StepDown::Superseded { holder });
                }
            }
        }
    }

    fn set_retry(&mut self, now: Mono, failure: Failure) {
        let delay = match failure {
            Failure::Permanent => {
                self.permanent_failures += 1;
                exp_backoff(
                    PERMANENT_BACKOFF_MIN,
                    PERMANENT_BACKOFF_MAX,
                    self.permanent_failures,
                )
            }
            _ if self.shutting_down => SHUTDOWN_RETRY,
            _ => {
                self.transient_failures += 1;
                // A leader keeps retrying at least every retry period until its deadline; a
                // follower backs off further, but not past a few retry periods.
                let max = if self.claim_until.is_some() {
                    self.timings.retry_period
                } else {
                    self.timings.retry_period.saturating_mul(4)
                };
                exp_backoff(self.timings.retry_period / 4, max, self.transient_failures)
            }
        };
        self.retry_at = Some(now + self.jitter.scale(delay));
    }

    fn clear_failures(&mut self) {
        self.transient_failures = 0;
        self.permanent_failures = 0;
        self.retry_at = None;
    }

    /// The record I write to take or keep the lease.
    fn claim_record(&self, wall: Timestamp) -> LeaseRecord {
        let lease_duration_seconds =
            i32::try_from(self.timings.lease_duration.as_secs_f64().ceil() as u64)
                .unwrap_or(i32::MAX);
        match &self.known {
            Knowledge::Present(o) if self.holder_is_me() => LeaseRecord {
                holder: Some(self.id.clone()),
                lease_duration_seconds,
                acquire_time: o.lease.record.acquire_time.or(Some(wall)),
                renew_time: Some(wall),
                transitions: o.lease.record.transitions,
            },
            Knowledge::Present(o) => LeaseRecord {
                holder: Some(self.id.clone()),
                lease_duration_seconds,
                acquire_time: Some(wall),
                renew_time: Some(wall),
                transitions: o.lease.record.transitions.saturating_add(1),
            },
            _ => LeaseRecord {
                holder: Some(self.id.clone()),
                lease_duration_seconds,
                acquire_time: Some(wall),
                renew_time: Some(wall),
                transitions: 0,
            },
        }
    }

    fn start(&mut self, now: Now, op: PendingOp, action: Action) -> Action {
        self.pending = Some(Pending {
            op,
            started: now.mono,
        });
        action
    }

    /// Decides what to do next. Call again after every response, watch item or wake-up.
    pub fn poll(&mut self, now: Now) -> Action {
        self.expire_claim(now.mono);
        let sleep = |until: Option<Mono>| Action::Sleep { until };

        if self.pending.is_some() {
            // Still wake at the claim's end so the step-down is noticed while a request hangs.
            return sleep(self.claim_until);
        }
        if self.shutting_down {
            return self.poll_shutdown(now);
        }

        // The watch runs alongside everything else.
        if let WatchState::Broken { retry_at } = self.watch
            && now.mono >= retry_at
        {
            self.needs_read = true;
            self.watch = WatchState::Off;
        }
        if self.watch == WatchState::Off
            && !self.needs_read
            && let Some(rv) = self.watch_rv.clone()
        {
            self.watch = WatchState::Running { since: now.mono };
            return Action::Watch {
                resource_version: rv,
            };
        }
        let watch_wake = match self.watch {
            WatchState::Broken { retry_at } => Some(retry_at),
            _ => None,
        };
        let earliest = |a: Option<Mono>, b: Option<Mono>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        if let Some(retry_at) = self.retry_at {
            if now.mono < retry_at {
                return sleep(earliest(
                    Some(retry_at),
                    earliest(self.claim_until, watch_wake),
                ));
            }
            self.retry_at = None;
        }

        if self.needs_read || self.known == Knowledge::Unknown {
            return self.start(now, PendingOp::Read, Action::Get);
        }

        match &self.known {
            Knowledge::Unknown => self.start(now, PendingOp::Read, Action::Get),
            Knowledge::Absent => {
                let record = self.claim_record(now.wall);
                self.start(
                    now,
                    PendingOp::Write { release: false },
                    Action::Create(record),
                )
            }
            Knowledge::Present(o) => {
                let rv = o.lease.resource_version.clone();
                let expires = o.at + o.lease.record.lease_duration();
                let free = o.lease.record.holder.is_none();
                if self.holder_is_me() {
                    let next_renew = match (self.claim_until, self.last_renew_start) {
                        (Some(_), Some(start)) => Some(start + self.timings.retry_period),
                        _ => None,
                    };
                    if let Some(next) = next_renew
                        && now.mono < next
                    {
                        return sleep(earliest(Some(next), earliest(self.claim_until, watch_wake)));
                    }
                } else if !free && now.mono < expires {
                    return sleep(earliest(Some(expires), watch_wake));
                }
                let record = self.claim_record(now.wall);
                self.start(
                    now,
                    PendingOp::Write { release: false },
                    Action::Replace {
                        record,
                        resource_version: rv,
                    },
                )
            }
        }
    }

    fn poll_shutdown(&mut self, now: Now) -> Action {
        // Nothing to release without the option, or when the lease was never even read.
        if !self.release_on_shutdown || self.known == Knowledge::Unknown {
            return Action::Done;
        }
        if let Some(retry_at) = self.retry_at
            && now.mono < retry_at
        {
            return Action::Sleep {
                until: Some(retry_at),
            };
        }
        if self.needs_read {
            return self.start(now, PendingOp::Read, Action::Get);
        }
        match &self.known {
            Knowledge::Present(o) if self.holder_is_me() => {
                let record = LeaseRecord {
                    holder: None,
                    lease_duration_seconds: 1,
                    acquire_time: Some(now.wall),
                    renew_time: Some(now.wall),
                    transitions: o.lease.record.transitions,
                };
                let rv = o.lease.resource_version.clone();
                self.start(
                    now,
                    PendingOp::Write { release: true },
                    Action::Replace {
                        record,
                        resource_version: rv,
                    },
                )
            }
            _ => Action::Done,
        }
    }

    /// Answer to [`Action::Get`].
    pub fn on_read(&mut self, now: Now, result: Result<Snapshot, Failure>) {
        self.pending = None;
        match result {
            Ok(snapshot) => {
                self.needs_read = false;
                self.ready = true;
                self.clear_failures();
                self.watch_rv = Some(snapshot.resource_version);
                self.observe(now, snapshot.lease);
            }
            Err(failure) => self.set_retry(now.mono, failure),
        }
        self.expire_claim(now.mono);
    }

    /// Answer to [`Action::Create`] or [`Action::Replace`].
    pub fn on_write(&mut self, now: Now, result: Result<StoredLease, Failure>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let release = matches!(pending.op, PendingOp::Write { release: true });
        match result {
            Ok(mut stored) => {
                stored.record = stored.record.normalized();
                self.ready = true;
                self.clear_failures();
                let mine = stored.record.holder.as_deref() == Some(self.id.as_str());
                self.known = Knowledge::Present(Observed {
                    lease: stored,
                    at: now.mono,
                    wall: now.wall,
                });
                if release {
                    self.notices.push(Notice::Released);
                } else if mine && !self.shutting_down {
                    // Valid from the START of this request: the server may have applied it any
                    // time after that, and others time their takeover from when they saw it.
                    let until = pending.started + self.timings.renew_deadline;
                    if self.claim_until.is_none() {
                        let transitions = match &self.known {
                            Knowledge::Present(o) => o.lease.record.transitions,
                            _ => 0,
                        };
                        self.notices.push(Notice::Acquired { transitions });
                    } else {
                        self.notices.push(Notice::Renewed {
                            latency: now.mono.saturating_sub(pending.started),
                        });
                    }
                    self.claim_until = Some(self.claim_until.map_or(until, |u| u.max(until)));
                    self.last_renew_start = Some(pending.started);
                    self.last_renew_wall = Some(now.wall);
                }
            }
            Err(Failure::Conflict | Failure::AlreadyExists | Failure::NotFound) => {
                // My view is stale: re-read and decide again. The claim (if any) stays valid
                // until its deadline: nobody can legitimately take over before then.
                self.needs_read = true;
                self.retry_at = None;
            }
            Err(failure) => self.set_retry(now.mono, failure),
        }
        self.expire_claim(now.mono);
    }

    /// An item from the watch.
    pub fn on_watch(&mut self, now: Now, item: WatchItem) {
        self.watch_failures = 0;
        let rv = match &item {
            WatchItem::Changed(l) => l.resource_version.clone(),
            WatchItem::Deleted { resource_version } | WatchItem::Bookmark { resource_version } => {
                resource_version.clone()
            }
        };
        let current = match &self.known {
            Knowledge::Present(o) => Some(o.lease.resource_version.as_str()),
            _ => self.watch_rv.as_deref(),
        };
        if current.is_some_and(|cur| is_older(&rv, cur)) {
            return;
        }
        self.watch_rv = Some(rv);
        match item {
            WatchItem::Changed(lease) => {
                self.observe(now, Some(lease));
                // Fresh news: a retry scheduled after a transient error need not wait.
                if self.permanent_failures == 0 {
                    self.retry_at = None;
                }
            }
            WatchItem::Deleted { .. } => self.observe(now, None),
            WatchItem::Bookmark { .. } => {}
        }
        self.expire_claim(now.mono);
    }

    /// The watch ended; `error` is `None` for a clean close by the server.
    pub fn on_watch_end(&mut self, now: Now, error: Option<Failure>) {
        let lived = match self.watch {
            WatchState::Running { since } => now.mono.saturating_sub(since),
            _ => Duration::ZERO,
        };
        if error.is_none() && lived >= WATCH_HEALTHY_AFTER {
            self.watch_failures = 0;
            self.watch = WatchState::Off;
            return;
        }
        self.watch_failures += 1;
        let delay = exp_backoff(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX, self.watch_failures);
        self.watch = WatchState::Broken {
            retry_at: now.mono + self.jitter.scale(delay),
        };
    }

    /// The runner dropped the in-flight request (shutdown): its outcome is unknown.
    pub fn abandon_pending(&mut self) {
        self.pending = None;
    }

    /// Stop claiming at once; subsequent [`Candidate::poll`]s release the lease if I hold it, then
    /// return [`Action::Done`]. Without `release`, only stops claiming.
    pub fn shutdown(&mut self, release: bool) {
        self.step_down(StepDown::Shutdown);
        self.shutting_down = true;
        self.release_on_shutdown = release;
        self.retry_at = None;
    }

    /// Whether the watch is believed to be running (for tests and metrics).
    pub fn watch_running(&self) -> bool {
        matches!(self.watch, WatchState::Running { .. })
    }
}
