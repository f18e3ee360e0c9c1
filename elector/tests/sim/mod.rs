//! Deterministic simulation: several candidates run the real [`Candidate`] state machine in
//! virtual time against a simulated API server (the same [`LeaseTable`] rules) through random,
//! seeded schedules of API latency and stalls, request errors, lost responses, broken, stalled,
//! duplicated and reordered watch items, stale reads from a lagging API server, freezes
//! (SIGSTOP/VM pauses), crashes, graceful shutdowns, `kubectl delete lease` and hand edits of the
//! Lease by outside writers, two live processes with one identity, per-process timings,
//! wall-clock skew and ±1 % monotonic rate drift. It asserts:
//!
//! 1. safety: no two processes claim leadership (`is_leader`) at overlapping true instants;
//! 2. liveness: once faults stop, there is a leader; after it crashes another leads within
//!    lease duration + 0.5 s (the longest lease duration, with mixed timings); after a graceful
//!    shutdown, within a few round trips.
//!
//! Used by `simulation.rs` (`SIM_SEEDS=n` runs n seeds, default 1000; `SIM_SEED=s` runs only
//! seed s and prints a trace) and by `mutations.rs`.

mod chaos;
mod run;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use contract::Timings;
use elector::election::{
    Action, Candidate, Failure, LeaseRecord, Mono, Mutation, Now, Snapshot, StoredLease, WatchItem,
};
use elector::store::LeaseTable;

pub use chaos::Outside;

/// SplitMix64: small, fast and reproducible.
pub struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
}

/// True (simulation) time in microseconds.
type T = u64;

fn to_t(s: f64) -> T {
    (s.max(0.0) * 1e6).ceil() as T
}
fn secs(t: T) -> f64 {
    t as f64 / 1e6
}

enum Op {
    Get,
    Create(LeaseRecord),
    Replace(LeaseRecord, String),
}

enum Out {
    Read(Result<Snapshot, Failure>),
    Write(Result<StoredLease, Failure>),
}

enum WatchMsg {
    Item(WatchItem),
    End(Option<Failure>),
}

enum Kind {
    Wake {
        generation: u64,
    },
    /// The request reaches the API server (happens even if the sender crashed meanwhile).
    Apply {
        req: u64,
        op: Op,
        lost: bool,
    },
    Reply {
        req: u64,
        out: Out,
    },
    Timeout {
        req: u64,
    },
    Watch {
        sub: u64,
        msg: WatchMsg,
    },
    Crash {
        restart_after: Option<f64>,
    },
    Restart,
    Freeze {
        seconds: f64,
    },
    Shutdown {
        restart_after: Option<f64>,
    },
    ShutdownBudget,
    /// The process's watch stops delivering (half-open connection) for a while; items are held.
    WatchStall {
        seconds: f64,
    },
    /// Someone else writes or deletes the Lease.
    Outside(Outside),
}

impl Kind {
    /// Events the process itself handles (deferred while it is frozen, dropped once it died).
    fn for_process(&self) -> bool {
        matches!(
            self,
            Kind::Wake { .. }
                | Kind::Reply { .. }
                | Kind::Timeout { .. }
                | Kind::Watch { .. }
                | Kind::ShutdownBudget
        )
    }
}

struct Ev {
    t: T,
    seq: u64,
    p: usize,
    incarnation: u32,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

struct Proc {
    id: String,
    timings: Timings,
    request_timeout: f64,
    cand: Candidate,
    incarnation: u32,
    alive: bool,
    frozen_until: T,
    /// local monotonic = offset + true * rate
    offset: f64,
    rate: f64,
    wall_skew: f64,
    /// In-flight request id, and whether it is a read.
    inflight: Option<(u64, bool)>,
    watch_sub: Option<u64>,
    timer_generation: u64,
    shutting_down: bool,
    /// Open leadership claim in true seconds: (start, end).
    claim: Option<(f64, f64)>,
}

struct Sub {
    id: u64,
    p: usize,
    incarnation: u32,
    last_delivery: T,
    /// Nothing is delivered before this instant (a stalled connection).
    stalled_until: T,
}

#[derive(Clone, Copy)]
struct Params {
    /// Longest lease duration among the processes (liveness bounds).
    max_lease: f64,
    n: usize,
    /// Normal one-way latency bound (seconds).
    max_lat: f64,
    /// Chaos phase: faults happen before this true time (seconds).
    chaos_end: f64,
    settle: f64,
    p_fail: f64,
    p_lost: f64,
    p_stall: f64,
    stall_max: f64,
    p_watch_break: f64,
    /// Watch items delivered twice, or out of order.
    p_dup_item: f64,
    p_reorder: f64,
    /// Reads served by a lagging API server, up to `stale_max` seconds behind.
    p_stale_read: f64,
    stale_max: f64,
    mutation: Option<Mutation>,
    /// Lease deletes and shortened durations only where all processes share one set of timings:
    /// a process that never saw the Lease's real duration trusts its *own* lease duration, which
    /// is safe only if that is longer than every other candidate's renew deadline (a documented
    /// limit, see README "Failure behaviour").
    uniform_timings: bool,
}

pub struct Sim {
    seed: u64,
    prm: Params,
    rng: Rng,
    queue: BinaryHeap<Reverse<Ev>>,
    seq: u64,
    next_id: u64,
    table: LeaseTable,
    /// Every state of the table with the instant it began, for stale reads.
    history: Vec<(T, Snapshot)>,
    subs: Vec<Sub>,
    procs: Vec<Proc>,
    now: T,
    calm: bool,
    /// Closed claims: (process, start, end) in true seconds.
    claims: Vec<(usize, f64, f64)>,
    trace: bool,
}

const WALL_EPOCH: i64 = 1_700_000_000;

impl Sim {
    pub fn new(seed: u64, trace: bool, mutation: Option<Mutation>) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
        let pick = |rng: &mut Rng| match rng.below(4) {
            0 | 1 => Timings::default(),
            2 => Timings::from_ttl(std::time::Duration::from_secs(3)),
            _ => Timings {
                lease_duration: std::time::Duration::from_secs(2),
                renew_deadline: std::time::Duration::from_millis(1500),
                retry_period: std::time::Duration::from_millis(300),
            },
        };
        let base = pick(&mut rng);
        // Some runs mix processes configured differently (a rollout changing the timings).
        let mixed = rng.chance(0.3);
        let n = 2 + rng.below(4);
        let timings: Vec<Timings> = (0..n)
            .map(|_| if mixed { pick(&mut rng) } else { base })
            .collect();
        let max_lease = timings
            .iter()
            .map(|t| t.lease_duration.as_secs_f64())
            .fold(0.0, f64::max);
        let min_lease = timings
            .iter()
            .map(|t| t.lease_duration.as_secs_f64())
            .fold(f64::MAX, f64::min);
        let scale = min_lease / 15.0;
        let ld = max_lease;
        let prm = Params {
            max_lease,
            n,
            max_lat: 0.05 * scale.max(0.2),
            chaos_end: ld * 8.0,
            settle: ld * 4.0 + 30.0 * scale.max(0.2),
            p_fail: rng.range(0.0, 0.15),
            p_lost: rng.range(0.0, 0.1),
            p_stall: rng.range(0.0, 0.08),
            stall_max: min_lease * 0.9,
            p_watch_break: rng.range(0.0, 0.1),
            p_dup_item: rng.range(0.0, 0.1),
            p_reorder: rng.range(0.0, 0.1),
            p_stale_read: rng.range(0.0, 0.2),
            stale_max: min_lease * 0.5,
            mutation,
            uniform_timings: !mixed,
        };
        // Some runs have two live processes with one identity (a StatefulSet pod recreated
        // elsewhere while the old one still runs).
        let twin = rng.chance(0.3);
        let mut procs = Vec::new();
        for (i, &t) in timings.iter().enumerate() {
            let id = if twin && i == n - 1 {
                "cand-0".to_owned()
            } else {
                format!("cand-{i}")
            };
            let seed = rng.u64();
            procs.push(Proc {
                cand: candidate(&id, t, seed, mutation),
                id,
                timings: t,
                request_timeout: elector::request_timeout(t).as_secs_f64(),
                incarnation: 0,
                alive: true,
                frozen_until: 0,
                offset: rng.range(0.0, 1e6),
                rate: 1.0 + rng.range(-0.01, 0.01),
                wall_skew: rng.range(-600.0, 600.0),
                inflight: None,
                watch_sub: None,
                timer_generation: 0,
                shutting_down: false,
                claim: None,
            });
        }
        let table = LeaseTable::new(8);
        Sim {
            seed,
            prm,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            next_id: 0,
            history: vec![(0, table.get())],
            table,
            subs: Vec::new(),
            procs,
            now: 0,
            calm: false,
            claims: Vec::new(),
            trace,
        }
    }

    fn push(&mut self, t: T, p: usize, kind: Kind) {
        let incarnation = self.procs[p].incarnation;
        self.push_inc(t, p, incarnation, kind);
    }

    fn push_inc(&mut self, t: T, p: usize, incarnation: u32, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Ev {
            t,
            seq: self.seq,
            p,
            incarnation,
            kind,
        }));
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn local(&self, p: usize, t: T) -> Now {
        let pr = &self.procs[p];
        let s = secs(t);
        let wall_ns = ((s + pr.wall_skew) * 1e9) as i128 + i128::from(WALL_EPOCH) * 1_000_000_000;
        Now {
            mono: Mono::from_secs_f64(pr.offset + s * pr.rate),
            wall: jiff::Timestamp::from_nanosecond(wall_ns).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn true_of(&self, p: usize, m: Mono) -> f64 {
        let pr = &self.procs[p];
        (m.0.as_secs_f64() - pr.offset) / pr.rate
    }

    /// One-way latency; in the chaos phase sometimes a long stall.
    fn latency(&mut self) -> T {
        let mut l = self.rng.range(0.0005, self.prm.max_lat);
        if !self.calm && self.rng.chance(self.prm.p_stall) {
            l += self.rng.range(0.5, self.prm.stall_max);
        }
        to_t(l)
    }

    fn fail(&self) -> ! {
        let mutation = self
            .prm
            .mutation
            .map(|m| format!(" (mutation {m:?})"))
            .unwrap_or_default();
        panic!(
            "simulation invariant broken with seed {}{mutation} — rerun with SIM_SEED={} cargo \
             test -p elector --test simulation -- --nocapture",
            self.seed, self.seed
        )
    }

    fn log(&self, p: usize, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>12.6} {} {}", secs(self.now), self.procs[p].id, what());
        }
    }

    /// The runner loop for one process: execute actions until it sleeps.
    fn drive(&mut self, p: usize) {
        let t = self.now;
        for _ in 0..64 {
            if !self.procs[p].alive {
                return;
            }
            let now = self.local(p, t);
            let action = self.procs[p].cand.poll(now);
            match action {
                Action::Get => self.send(p, Op::Get),
                Action::Create(r) => self.send(p, Op::Create(r)),
                Action::Replace {
                    record,
                    resource_version,
                } => self.send(p, Op::Replace(record, resource_version)),
                Action::Watch { resource_version } => self.subscribe(p, &resource_version),
                Action::Sleep { until } => {
                    self.log(p, || {
                        format!(
                            "sleeps until {:?}",
                            until.map(|u| secs(to_t(self.true_of(p, u))))
                        )
                    });
                    self.procs[p].timer_generation += 1;
                    if let Some(u) = until {
                        let wake = to_t(self.true_of(p, u)).max(t + 1);
                        let generation = self.procs[p].timer_generation;
                        self.push(wake, p, Kind::Wake { generation });
                    }
                    self.track(p);
                    return;
                }
                Action::Done => {
                    self.log(p, || "released; exits".into());
                    self.exit(p);
                    return;
                }
            }
        }
        self.fail();
    }

    fn send(&mut self, p: usize, op: Op) {
        let req = self.id();
        self.procs[p].inflight = Some((req, matches!(op, Op::Get)));
        let t = self.now;
        let label = match &op {
            Op::Get => "GET".to_string(),
            Op::Create(r) => format!("CREATE {:?} transitions={}", r.holder, r.transitions),
            Op::Replace(r, rv) => format!("REPLACE rv={rv} holder={:?}", r.holder),
        };
        self.log(p, || label);
        let timeout = self.procs[p].request_timeout;
        self.push(t + to_t(timeout), p, Kind::Timeout { req });
        if !self.calm && self.rng.chance(self.prm.p_fail) {
            let back = t + self.latency();
            let out = match op {
                Op::Get => Out::Read(Err(Failure::Transient)),
                _ => Out::Write(Err(Failure::Transient)),
            };
            self.push(back, p, Kind::Reply { req, out });
            return;
        }
        let lost = !self.calm && self.rng.chance(self.prm.p_lost);
        let arrive = t + self.latency();
        self.push(arrive, p, Kind::Apply { req, op, lost });
    }

    fn subscribe(&mut self, p: usize, rv: &str) {
        let t = self.now;
        let sub = self.id();
        self.procs[p].watch_sub = Some(sub);
        let incarnation = self.procs[p].incarnation;
        let mut at = t + self.latency();
        match self.table.since(rv) {
            Err(f) => {
                self.push(
                    at,
                    p,
                    Kind::Watch {
                        sub,
                        msg: WatchMsg::End(Some(f)),
                    },
                );
            }
            Ok(items) => {
                for item in items {
                    self.push(
                        at,
                        p,
                        Kind::Watch {
                            sub,
                            msg: WatchMsg::Item(item),
                        },
                    );
                }
                at += 1;
                self.subs.push(Sub {
                    id: sub,
                    p,
                    incarnation,
                    last_delivery: at,
                    stalled_until: 0,
                });
            }
        }
    }

    fn broadcast(&mut self, item: WatchItem) {
        let subs = std::mem::take(&mut self.subs);
        let mut keep = Vec::new();
        for mut s in subs {
            let mut at = (self.now + self.latency()).max(s.stalled_until);
            if self.calm || !self.rng.chance(self.prm.p_reorder) {
                at = at.max(s.last_delivery + 1);
            }
            s.last_delivery = s.last_delivery.max(at);
            let broken = !self.calm && self.rng.chance(self.prm.p_watch_break);
            let msg = if broken {
                WatchMsg::End(self.rng.chance(0.5).then_some(Failure::Transient))
            } else {
                WatchMsg::Item(item.clone())
            };
            if !broken && !self.calm && self.rng.chance(self.prm.p_dup_item) {
                let again = at + self.latency();
                let msg = WatchMsg::Item(item.clone());
                self.push_inc(again, s.p, s.incarnation, Kind::Watch { sub: s.id, msg });
            }
            self.push_inc(at, s.p, s.incarnation, Kind::Watch { sub: s.id, msg });
            if !broken {
                keep.push(s);
            }
        }
        self.subs = keep;
    }

    /// Updates p's claim record and checks that `is_leader` agrees with it.
    fn track(&mut self, p: usize) {
        let t = secs(self.now);
        let now = self.local(p, self.now);
        let leading = self.procs[p].alive && self.procs[p].cand.is_leader(now.mono);
        let end = self.procs[p]
            .cand
            .claim_until()
            .map(|u| self.true_of(p, u))
            .unwrap_or(t);
        match (self.procs[p].claim, leading) {
            (None, true) => {
                self.log(p, || format!("LEADS until {end:.6}"));
                self.procs[p].claim = Some((t, end));
            }
            (Some((s, e)), true) if e <= t => {
                self.claims.push((p, s, e));
                self.procs[p].claim = Some((t, end));
            }
            (Some((s, _)), true) => self.procs[p].claim = Some((s, end)),
            (Some((s, e)), false) => {
                self.log(p, || "stops leading".into());
                self.claims.push((p, s, e.min(t)));
                self.procs[p].claim = None;
            }
            (None, false) => {}
        }
    }

    fn exit(&mut self, p: usize) {
        let pr = &mut self.procs[p];
        pr.alive = false;
        pr.incarnation += 1;
        pr.inflight = None;
        pr.watch_sub = None;
        pr.shutting_down = false;
        pr.frozen_until = 0;
        let t = secs(self.now);
        if let Some((s, e)) = pr.claim.take() {
            self.claims.push((p, s, e.min(t)));
        }
    }

    fn restart(&mut self, p: usize) {
        if self.procs[p].alive {
            return;
        }
        self.log(p, || "restarts".into());
        let seed = self.rng.u64();
        let pr = &mut self.procs[p];
        pr.cand = candidate(&pr.id, pr.timings, seed, self.prm.mutation);
        pr.alive = true;
        self.drive(p);
    }

    fn handle(&mut self, ev: Ev) {
        let p = ev.p;
        if ev.kind.for_process() {
            if !self.procs[p].alive || ev.incarnation != self.procs[p].incarnation {
                return;
            }
            if self.procs[p].frozen_until > ev.t {
                let until = self.procs[p].frozen_until;
                self.push_inc(until, p, ev.incarnation, ev.kind);
                return;
            }
        }
        match ev.kind {
            Kind::Wake { generation } => {
                if generation == self.procs[p].timer_generation {
                    self.drive(p);
                }
            }
            Kind::Apply { req, op, lost } => {
                let out = match op {
                    Op::Get => Out::Read(Ok(self.read())),
                    Op::Create(r) => Out::Write(match self.table.create(r) {
                        Ok((stored, item)) => {
                            self.changed();
                            self.broadcast(item);
                            Ok(stored)
                        }
                        Err(f) => Err(f),
                    }),
                    Op::Replace(r, rv) => Out::Write(match self.table.replace(r, &rv) {
                        Ok((stored, item)) => {
                            if let Some(item) = item {
                                self.changed();
                                self.broadcast(item);
                            }
                            Ok(stored)
                        }
                        Err(f) => Err(f),
                    }),
                };
                if !lost {
                    let back = self.now + self.latency();
                    self.push_inc(back, p, ev.incarnation, Kind::Reply { req, out });
                }
            }
            Kind::Reply { req, out } => {
                if self.procs[p].inflight.map(|f| f.0) != Some(req) {
                    return;
                }
                self.procs[p].inflight = None;
                let now = self.local(p, self.now);
                match out {
                    Out::Read(r) => {
                        self.log(p, || {
                            format!(
                                "read {:?}",
                                r.as_ref().map(|s| s.lease.as_ref().map(|l| (
                                    l.record.holder.clone(),
                                    l.resource_version.clone()
                                )))
                            )
                        });
                        self.procs[p].cand.on_read(now, r)
                    }
                    Out::Write(r) => {
                        self.log(p, || {
                            format!("wrote {:?}", r.as_ref().map(|l| l.resource_version.clone()))
                        });
                        self.procs[p].cand.on_write(now, r)
                    }
                }
                self.track(p);
                self.drive(p);
            }
            Kind::Timeout { req } => {
                let Some((id, read)) = self.procs[p].inflight else {
                    return;
                };
                if id != req {
                    return;
                }
                self.procs[p].inflight = None;
                let now = self.local(p, self.now);
                self.log(p, || "request timed out".into());
                if read {
                    self.procs[p].cand.on_read(now, Err(Failure::Transient));
                } else {
                    self.procs[p].cand.on_write(now, Err(Failure::Transient));
                }
                self.track(p);
                self.drive(p);
            }
            Kind::Watch { sub, msg } => {
                if self.procs[p].watch_sub != Some(sub) {
                    return;
                }
                let now = self.local(p, self.now);
                match msg {
                    WatchMsg::Item(item) => {
                        self.log(p, || format!("watch {item:?}"));
                        self.procs[p].cand.on_watch(now, item)
                    }
                    WatchMsg::End(err) => {
                        self.procs[p].watch_sub = None;
                        self.subs.retain(|s| s.id != sub);
                        self.procs[p].cand.on_watch_end(now, err);
                    }
                }
                self.track(p);
                self.drive(p);
            }
            Kind::Crash { restart_after } => {
                if !self.procs[p].alive {
                    return;
                }
                self.log(p, || "CRASH".into());
                self.exit(p);
                if let Some(d) = restart_after {
                    let at = self.now + to_t(d);
                    self.push(at, p, Kind::Restart);
                }
            }
            Kind::Restart => self.restart(p),
            Kind::Freeze { seconds } => {
                if self.procs[p].alive {
                    self.log(p, || format!("FREEZE {seconds:.3}s"));
                    let until = self.now + to_t(seconds);
                    self.procs[p].frozen_until = self.procs[p].frozen_until.max(until);
                }
            }
            Kind::Shutdown { restart_after } => {
                if !self.procs[p].alive || self.procs[p].shutting_down {
                    return;
                }
                self.log(p, || "SIGTERM".into());
                if self.procs[p].frozen_until > self.now {
                    // Signals are delivered after the thaw.
                    let until = self.procs[p].frozen_until;
                    self.push(until, p, Kind::Shutdown { restart_after });
                    return;
                }
                let pr = &mut self.procs[p];
                pr.shutting_down = true;
                if pr.inflight.take().is_some() {
                    pr.cand.abandon_pending();
                }
                pr.cand.shutdown(true);
                let budget = self.now + to_t(elector::runner::RELEASE_BUDGET.as_secs_f64());
                self.push(budget, p, Kind::ShutdownBudget);
                if let Some(d) = restart_after {
                    let at = self.now + to_t(d.max(6.0));
                    self.push(at, p, Kind::Restart);
                }
                self.track(p);
                self.drive(p);
            }
            Kind::ShutdownBudget => {
                if self.procs[p].shutting_down {
                    self.exit(p);
                }
            }
            Kind::WatchStall { seconds } => {
                let until = self.now + to_t(seconds);
                if let Some(sub) = self.procs[p].watch_sub
                    && let Some(s) = self.subs.iter_mut().find(|s| s.id == sub)
                {
                    s.stalled_until = s.stalled_until.max(until);
                    self.log(p, || format!("WATCH STALLS {seconds:.3}s"));
                }
            }
            Kind::Outside(action) => self.outside(action),
        }
    }

    /// Records a new state of the table (for stale reads).
    fn changed(&mut self) {
        let snapshot = self.table.get();
        self.history.push((self.now, snapshot));
    }

    /// A read, sometimes served by an API server lagging behind.
    fn read(&mut self) -> Snapshot {
        if !self.calm && self.rng.chance(self.prm.p_stale_read) {
            let lag = to_t(self.rng.range(0.0, self.prm.stale_max));
            let as_of = self.now.saturating_sub(lag);
            if let Some((_, s)) = self.history.iter().rev().find(|(t, _)| *t <= as_of) {
                return s.clone();
            }
        }
        self.table.get()
    }

    fn run_until(&mut self, until: T) {
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.t > until {
                break;
            }
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            self.now = ev.t;
            self.handle(ev);
        }
        self.now = until;
        for p in 0..self.procs.len() {
            if self.procs[p].alive && self.procs[p].frozen_until <= self.now {
                self.track(p);
            }
        }
    }
}

fn candidate(id: &str, timings: Timings, seed: u64, mutation: Option<Mutation>) -> Candidate {
    let c = Candidate::new(id, timings, seed);
    match mutation {
        Some(m) => c.with_mutation(m),
        None => c,
    }
}
