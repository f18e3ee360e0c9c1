//! The data the election state machine exchanges with its runner and its store.

use std::time::Duration;

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
    /// Written by its holder as a graceful release (the annotation `leader-election/released`
    /// on the Lease): a free record with this mark may be taken at once, while a free record
    /// without it (an outside edit) is waited out like a held one.
    pub released: bool,
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
    /// Worth retrying soon: timeouts, 5xx, 429 without Retry-After, connection errors.
    Transient,
    /// 429 (or 503) with Retry-After: retry no sooner than this.
    Throttled(Duration),
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
    /// I created the lease and hold it this long before claiming leadership (a leader of a
    /// deleted record may still be claiming).
    Holding { before_claiming: Duration },
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
    /// After I created the lease, my leadership begins only at this instant.
    pub claim_from: Option<Mono>,
    /// Wall time of my last successful renew.
    pub last_renew_wall: Option<Timestamp>,
    /// The holder named in that record is me *and* the record is one this process wrote (a
    /// record naming my identity that another process wrote is another holder's).
    pub holder_is_mine: bool,
    /// I have a working view of the lease: it was read, and neither requests nor the watch have
    /// been failing for longer than a lease duration.
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
            claim_from: None,
            last_renew_wall: None,
            holder_is_mine: false,
            ready: false,
        }
    }

    /// Am I the leader at `now`? Evaluated at the moment of asking, so a process that was frozen
    /// past its renew deadline answers `false` from the first question after it thaws.
    pub fn is_leader(&self, now: Mono) -> bool {
        self.holder_is_mine
            && self.holder.as_deref() == Some(self.identity.as_str())
            && self.claim_from.is_none_or(|from| now >= from)
            && self.claim_until.is_some_and(|until| now < until)
    }

    /// The leader as far as I know at `now`: `None` when the lease is free, released, expired by
    /// my observation, or names me while my own claim has lapsed.
    pub fn leader(&self, now: Mono) -> Option<&str> {
        let holder = self.holder.as_deref()?;
        if self.holder_is_mine {
            return self.is_leader(now).then_some(holder);
        }
        let observed = self.observed_at?;
        (now < observed + self.lease_duration).then_some(holder)
    }
}
