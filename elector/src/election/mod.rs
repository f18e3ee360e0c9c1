//! The election as a sans-IO state machine.
//!
//! [`Candidate`] never reads a clock, sleeps or talks to the network: the runner (or the
//! simulation) tells it the time and the results of store operations, and it answers with the next
//! [`Action`]. The same code therefore runs against the real API server and in virtual time.
//!
//! Safety rules (client-go's LeaseLock, tightened):
//! * a record is judged expired by *my* monotonic clock: `observed_at + leaseDurationSeconds`,
//!   where `observed_at` is when I saw the election fields change (metadata-only changes such as
//!   labels do not count); `renewTime` is never compared with any local clock, so wall-clock skew
//!   between nodes cannot matter;
//! * every write is a create or a replace guarded by the resourceVersion I read;
//! * my claim is valid until `start of my last successful renew request + renew_deadline`, and
//!   [`View::is_leader`] evaluates that at the moment it is asked;
//! * I only renew a record *this process* wrote (recognised by its exact election fields, which
//!   carry my wall clock to the microsecond): a record naming my identity that I did not write —
//!   a second process with my name, or a hand edit — is another holder's;
//! * any record but a release by its holder (marked as such) is waited out for a full lease
//!   duration from when I saw it change, the longest I have seen for this lease: after a hand
//!   edit (emptied holder, other holder, shortened duration) the previous holder may not have
//!   seen the change and keeps claiming until its renew deadline;
//! * a create cannot be guarded against a delete that happened just before it (the API server
//!   has no precondition for "still absent since I looked"), so whoever creates the lease holds
//!   it for a full lease duration (the longest it has seen) from the create's response before it
//!   claims leadership: any leader of a deleted record has stopped claiming by then;
//! * `leaseTransitions` never decreases while I remember the lease: a takeover or re-create
//!   writes the highest value I have seen + 1.

mod types;

use std::time::Duration;

use contract::Timings;
use jiff::Timestamp;

pub use types::*;

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

/// Known classes of election bugs that the simulation must catch (see `tests/mutations.rs`).
/// Only compiled with the `mutations` feature; the binary never enables it.
#[cfg(feature = "mutations")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Count the claim from the renew response instead of the request start.
    ClaimFromResponse,
    /// Keep claiming while (and after) releasing on shutdown.
    NoStepDownBeforeRelease,
    /// Release with an unconditional update (no resourceVersion).
    ReleaseWithoutResourceVersion,
    /// Judge expiry by my own lease duration instead of the record's.
    OwnLeaseDuration,
    /// Claim a re-created lease at once instead of holding it a lease duration first.
    NoWaitAfterDelete,
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
/// Unconfirmed writes remembered to recognise my own record after a lost response.
const MAX_ATTEMPTS: usize = 8;
/// A Retry-After longer than this is capped, so a confused server cannot silence us for long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

fn exp_backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    min.saturating_mul(1u32 << exp).min(max)
}

/// Compares resourceVersions when both are integers (as etcd's are) to drop stale reads and
/// watch items; opaque ones are never considered stale.
fn is_older(candidate: &str, than: &str) -> bool {
    match (candidate.parse::<u64>(), than.parse::<u64>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// The API server stores `renewTime`/`acquireTime` to the microsecond; writing them at that
/// precision lets me recognise my own record exactly when I read it back.
fn to_micros(t: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(t.as_microsecond()).unwrap_or(t)
}

fn earliest(a: Option<Mono>, b: Option<Mono>) -> Option<Mono> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One contender for the lease.
#[derive(Debug, Clone)]
pub struct Candidate {
    id: String,
    timings: Timings,
    /// How long after a successful renew started the leader renews again.
    renew_interval: Duration,
    jitter: Jitter,
    known: Knowledge,
    /// Latest resourceVersion to (re)start the watch from.
    watch_rv: Option<String>,
    watch: WatchState,
    watch_failures: u32,
    /// Since when no watch has worked (ended in error or at once, and delivered nothing).
    watch_down_since: Option<Mono>,
    needs_read: bool,
    pending: Option<Pending>,
    /// No store request before this instant (error backoff).
    retry_at: Option<Mono>,
    transient_failures: u32,
    permanent_failures: u32,
    /// Since when requests have failed without a success in between (readiness).
    failing_since: Option<Mono>,
    claim_until: Option<Mono>,
    /// After a create: my claim begins only at this instant (see the module docs).
    claim_from: Option<Mono>,
    /// The last create I sent, and a lease duration after I first saw it applied (its response,
    /// or the record itself when the response was lost).
    create_attempt: Option<LeaseRecord>,
    hold_until: Option<Mono>,
    /// Longest lease duration seen in any record (and my own).
    max_lease_seen: Duration,
    last_renew_start: Option<Mono>,
    last_renew_wall: Option<Timestamp>,
    /// The last record this process stored, as the store returned it.
    written: Option<LeaseRecord>,
    /// Records sent whose outcome is unknown (lost response, timeout).
    attempts: Vec<LeaseRecord>,
    /// Highest leaseTransitions seen for this lease.
    max_transitions: Option<i32>,
    ready: bool,
    shutting_down: bool,
    release_on_shutdown: bool,
    notices: Vec<Notice>,
    #[cfg(feature = "mutations")]
    mutation: Option<Mutation>,
}

impl Candidate {
    /// `seed` only feeds retry jitter. The renew interval defaults to
    /// [`Timings::default_renew_interval`].
    pub fn new(id: impl Into<String>, timings: Timings, seed: u64) -> Self {
        Candidate {
            id: id.into(),
            timings,
            renew_interval: timings.default_renew_interval(),
            jitter: Jitter(seed),
            known: Knowledge::Unknown,
            watch_rv: None,
            watch: WatchState::Off,
            watch_failures: 0,
            watch_down_since: None,
            needs_read: true,
            pending: None,
            retry_at: None,
            transient_failures: 0,
            permanent_failures: 0,
            failing_since: None,
            claim_until: None,
            claim_from: None,
            create_attempt: None,
            hold_until: None,
            max_lease_seen: timings.lease_duration,
            last_renew_start: None,
            last_renew_wall: None,
            written: None,
            attempts: Vec::new(),
            max_transitions: None,
            ready: false,
            shutting_down: false,
            release_on_shutdown: true,
            notices: Vec::new(),
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    /// Renew this long after the start of the last successful renew (validated by the config:
    /// at most renew deadline − retry period).
    pub fn with_renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = interval;
        self
    }

    #[cfg(feature = "mutations")]
    pub fn with_mutation(mut self, mutation: Mutation) -> Self {
        self.mutation = Some(mutation);
        self
    }

    #[cfg(feature = "mutations")]
    fn mutated(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    pub fn renew_interval(&self) -> Duration {
        self.renew_interval
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
        v.holder_is_mine = self.holder_is_me();
        v.claim_until = self.claim_until;
        v.claim_from = self.claim_from;
        v.last_renew_wall = self.last_renew_wall;
        v.ready = self.ready;
        v
    }

    /// The record names me and this process wrote it.
    fn is_mine(&self, record: &LeaseRecord) -> bool {
        record.holder.as_deref() == Some(self.id.as_str())
            && (self.written.as_ref() == Some(record) || self.attempts.contains(record))
    }

    fn holder_is_me(&self) -> bool {
        matches!(&self.known, Knowledge::Present(o) if self.is_mine(&o.lease.record))
    }

    fn step_down(&mut self, why: StepDown) {
        // `claim_from` stays: it is a "not before" instant, harmless once passed.
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

    /// How long a record stays valid after I observed it: its own leaseDurationSeconds, but
    /// never less than any duration I have seen for this lease (or my own). A record whose
    /// duration someone shortened, or one that follows renewals I missed, may still stand for a
    /// claim made under the longer duration.
    fn validity(&self, record: &LeaseRecord) -> Duration {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::OwnLeaseDuration) {
            return self.timings.lease_duration;
        }
        record.lease_duration().max(self.max_lease_seen)
    }

    fn note_record(&mut self, now: Mono, record: &LeaseRecord) {
        self.note_transitions(record.transitions);
        self.max_lease_seen = self.max_lease_seen.max(record.lease_duration());
        if self.create_attempt.as_ref() == Some(record) {
            // My create applied: hold from the first sight of it.
            if self.hold_until.is_none() {
                self.hold_until = Some(now + self.max_lease_seen);
            }
        }
        // Kept when other records show up meanwhile (a lagging watch may deliver them before my
        // create): a hold that has passed is harmless, a lost one is not.
    }

    fn note_transitions(&mut self, t: i32) {
        self.max_transitions = Some(self.max_transitions.map_or(t, |m| m.max(t)));
    }

    /// Records what the store says the lease is now. `at` stamps a change: a later stamp only
    /// delays my judgement of expiry, so stamping on arrival of the response is the safe choice.
    fn observe(&mut self, now: Now, lease: Option<StoredLease>) {
        match lease {
            None => {
                // No fence: whoever re-creates it waits before claiming (see `on_write`).
                self.known = Knowledge::Absent;
                self.step_down(StepDown::Superseded { holder: None });
            }
            Some(mut lease) => {
                lease.record = lease.record.normalized();
                self.note_record(now.mono, &lease.record);
                let unchanged =
                    matches!(&self.known, Knowledge::Present(o) if o.lease.record == lease.record);
                if unchanged {
                    // Only metadata (or nothing) changed: keep the expiry clock, take the new
                    // resourceVersion for the next guarded write.
                    if let Knowledge::Present(o) = &mut self.known {
                        o.lease.resource_version = lease.resource_version;
                    }
                } else {
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

    fn failed(&mut self, now: Mono) {
        self.failing_since.get_or_insert(now);
    }

    fn succeeded(&mut self) {
        self.failing_since = None;
    }

    fn set_retry(&mut self, now: Mono, failure: Failure) {
        self.failed(now);
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
            Failure::Throttled(after) => {
                self.transient_failures += 1;
                // The server asked: no jitter below it, a little above.
                let after = after.min(MAX_RETRY_AFTER);
                self.retry_at = Some(now + after + self.jitter.scale(after / 10));
                return;
            }
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
        self.succeeded();
    }

    /// Readiness: a view of the lease that is not older than a lease duration of failures.
    fn update_ready(&mut self, now: Mono) {
        let have_view = self.known != Knowledge::Unknown;
        let ld = self.timings.lease_duration;
        let requests_ok = self.failing_since.is_none_or(|s| now < s + ld);
        if let WatchState::Running { since } = self.watch
            && now >= since + WATCH_HEALTHY_AFTER
        {
            self.watch_down_since = None;
        }
        let watch_ok = self.watch_down_since.is_none_or(|s| now < s + ld);
        self.ready = have_view && requests_ok && watch_ok;
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.timings.lease_duration.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX)
    }

    /// The record I write to take or keep the lease.
    fn claim_record(&self, wall: Timestamp) -> LeaseRecord {
        let wall = to_micros(wall);
        let next_transition = |t: i32| t.max(self.max_transitions.unwrap_or(t)).saturating_add(1);
        let (acquire_time, transitions) = match &self.known {
            Knowledge::Present(o) if self.holder_is_me() => (
                o.lease.record.acquire_time.or(Some(wall)),
                o.lease.record.transitions,
            ),
            Knowledge::Present(o) => (Some(wall), next_transition(o.lease.record.transitions)),
            _ => (
                Some(wall),
                self.max_transitions.map_or(0, |m| m.saturating_add(1)),
            ),
        };
        LeaseRecord {
            holder: Some(self.id.clone()),
            lease_duration_seconds: self.lease_duration_seconds(),
            acquire_time,
            renew_time: Some(wall),
            transitions,
            released: false,
        }
    }

    fn start(&mut self, now: Now, op: PendingOp, action: Action) -> Action {
        self.pending = Some(Pending {
            op,
            started: now.mono,
        });
        if let Action::Create(r) | Action::Replace { record: r, .. } = &action
            && r.holder.is_some()
        {
            if let Action::Create(r) = &action {
                self.create_attempt = Some(r.clone());
                self.hold_until = None;
            }
            if self.attempts.len() >= MAX_ATTEMPTS {
                self.attempts.remove(0);
            }
            self.attempts.push(r.clone());
        }
        action
    }

    /// Decides what to do next. Call again after every response, watch item or wake-up.
    pub fn poll(&mut self, now: Now) -> Action {
        let action = self.decide(now);
        self.update_ready(now.mono);
        action
    }

    fn decide(&mut self, now: Now) -> Action {
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
                let expires = o.at + self.validity(&o.lease.record);
                // A free record is taken at once only when its holder released it (the release
                // mark): one emptied by somebody else may have been held a moment ago.
                let released = o.lease.record.holder.is_none() && o.lease.record.released;
                if self.holder_is_me() {
                    // Renew on the renew interval while renewals succeed; after a failure the
                    // retry backoff above decides (at most a retry period for a leader).
                    let next_renew = match (self.claim_until, self.last_renew_start) {
                        (Some(_), Some(start)) => Some(start + self.renew_interval),
                        _ => None,
                    };
                    if let Some(next) = next_renew
                        && now.mono < next
                    {
                        let claim_starts = self.claim_from.filter(|&f| now.mono < f);
                        return sleep(earliest(
                            Some(next),
                            earliest(earliest(self.claim_until, claim_starts), watch_wake),
                        ));
                    }
                } else {
                    if !released && now.mono < expires {
                        return sleep(earliest(Some(expires), watch_wake));
                    }
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
        // A lease I re-created and still hold before claiming must not look released: a leader
        // of the deleted record may still claim, so others wait it out as usual.
        let holding = self.hold_until.is_some_and(|h| now.mono < h);
        match &self.known {
            Knowledge::Present(o) if self.holder_is_me() && !holding => {
                let wall = to_micros(now.wall);
                let record = LeaseRecord {
                    holder: None,
                    lease_duration_seconds: 1,
                    acquire_time: Some(wall),
                    renew_time: Some(wall),
                    transitions: o.lease.record.transitions,
                    released: true,
                };
                #[allow(unused_mut)]
                let mut rv = o.lease.resource_version.clone();
                #[cfg(feature = "mutations")]
                if self.mutated(Mutation::ReleaseWithoutResourceVersion) {
                    rv.clear();
                }
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
                self.clear_failures();
                if self.is_stale(&snapshot) {
                    // An API server behind the one that served my newer view: keep my view.
                } else {
                    self.watch_rv = Some(snapshot.resource_version);
                    self.observe(now, snapshot.lease);
                }
            }
            Err(failure) => self.set_retry(now.mono, failure),
        }
        self.expire_claim(now.mono);
        self.update_ready(now.mono);
    }

    /// A read older than what I already know (from a write or a watch item).
    fn is_stale(&self, snapshot: &Snapshot) -> bool {
        let known_rv = match &self.known {
            Knowledge::Present(o) => Some(o.lease.resource_version.as_str()),
            _ => self.watch_rv.as_deref(),
        };
        let Some(known_rv) = known_rv else {
            return false;
        };
        match &snapshot.lease {
            Some(l) => is_older(&l.resource_version, known_rv),
            None => is_older(&snapshot.resource_version, known_rv),
        }
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
                self.clear_failures();
                self.note_record(now.mono, &stored.record);
                let claimed = stored.record.holder.as_deref() == Some(self.id.as_str());
                if claimed {
                    self.written = Some(stored.record.clone());
                    self.attempts.clear();
                }
                self.known = Knowledge::Present(Observed {
                    lease: stored,
                    at: now.mono,
                    wall: now.wall,
                });
                if release {
                    self.notices.push(Notice::Released);
                } else if claimed && !self.shutting_down {
                    // Valid from the START of this request: the server may have applied it any
                    // time after that, and others time their takeover from when they saw it.
                    #[allow(unused_mut)]
                    let mut from = pending.started;
                    #[cfg(feature = "mutations")]
                    if self.mutated(Mutation::ClaimFromResponse) {
                        from = now.mono;
                    }
                    let until = from + self.timings.renew_deadline;
                    if self.claim_until.is_none() {
                        #[allow(unused_mut)]
                        let mut hold = self.hold_until;
                        #[cfg(feature = "mutations")]
                        if self.mutated(Mutation::NoWaitAfterDelete) {
                            hold = None;
                        }
                        self.claim_from = hold;
                        if let Some(h) = hold.filter(|&h| now.mono < h) {
                            self.notices.push(Notice::Holding {
                                before_claiming: h.saturating_sub(now.mono),
                            });
                        }
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
                    self.last_renew_start = Some(from);
                    self.last_renew_wall = Some(now.wall);
                }
            }
            Err(Failure::Conflict | Failure::AlreadyExists | Failure::NotFound) => {
                // My view is stale: re-read and decide again. The claim (if any) stays valid
                // until its deadline: nobody can legitimately take over before then.
                self.needs_read = true;
                self.retry_at = None;
                self.succeeded();
            }
            Err(failure) => self.set_retry(now.mono, failure),
        }
        self.expire_claim(now.mono);
        self.update_ready(now.mono);
    }

    /// An item from the watch.
    pub fn on_watch(&mut self, now: Now, item: WatchItem) {
        self.watch_failures = 0;
        self.watch_down_since = None;
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
        // Duplicates and reordered items: nothing older than what I know may overwrite it.
        if current.is_some_and(|cur| is_older(&rv, cur)) {
            return;
        }
        self.watch_rv = Some(rv);
        match item {
            WatchItem::Changed(lease) => {
                self.observe(now, Some(lease));
                // Fresh news: a retry scheduled after a transient error need not wait.
                if self.permanent_failures == 0 && self.transient_failures == 0 {
                    self.retry_at = None;
                }
            }
            WatchItem::Deleted { .. } => {
                if self.known != Knowledge::Absent {
                    self.observe(now, None)
                }
            }
            WatchItem::Bookmark { .. } => {}
        }
        self.expire_claim(now.mono);
        self.update_ready(now.mono);
    }

    /// The watch ended; `error` is `None` for a clean close by the server.
    pub fn on_watch_end(&mut self, now: Now, error: Option<Failure>) {
        let lived = match self.watch {
            WatchState::Running { since } => now.mono.saturating_sub(since),
            _ => Duration::ZERO,
        };
        if error.is_none() && lived >= WATCH_HEALTHY_AFTER {
            self.watch_failures = 0;
            self.watch_down_since = None;
            self.watch = WatchState::Off;
            return;
        }
        self.watch_down_since.get_or_insert(now.mono);
        self.watch_failures += 1;
        let mut delay = exp_backoff(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX, self.watch_failures);
        if let Some(Failure::Throttled(after)) = error {
            delay = delay.max(after.min(MAX_RETRY_AFTER));
        }
        self.watch = WatchState::Broken {
            retry_at: now.mono + self.jitter.scale(delay),
        };
        self.update_ready(now.mono);
    }

    /// The runner dropped the in-flight request (shutdown): its outcome is unknown.
    pub fn abandon_pending(&mut self) {
        self.pending = None;
    }

    /// Stop claiming at once; subsequent [`Candidate::poll`]s release the lease if I hold it, then
    /// return [`Action::Done`]. Without `release`, only stops claiming.
    pub fn shutdown(&mut self, release: bool) {
        #[cfg(feature = "mutations")]
        let keep_claim = self.mutated(Mutation::NoStepDownBeforeRelease);
        #[cfg(not(feature = "mutations"))]
        let keep_claim = false;
        if !keep_claim {
            self.step_down(StepDown::Shutdown);
        }
        self.shutting_down = true;
        self.release_on_shutdown = release;
        self.retry_at = None;
    }

    /// Whether the watch is believed to be running (for tests and metrics).
    pub fn watch_running(&self) -> bool {
        matches!(self.watch, WatchState::Running { .. })
    }
}
