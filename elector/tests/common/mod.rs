//! Helpers shared by the state-machine tests: a virtual clock and zero-latency execution of
//! actions against the in-memory table.
#![allow(dead_code)]

use std::time::Duration;

use contract::Timings;
use elector::election::{Action, Candidate, LeaseRecord, Mono, Now, StoredLease};
use elector::store::LeaseTable;
use jiff::Timestamp;

pub const LD: Duration = Duration::from_secs(15);
pub const RD: Duration = Duration::from_secs(10);
pub const RP: Duration = Duration::from_secs(2);
/// The default renew interval with these timings (half the lease duration).
pub const RI: f64 = 7.5;

pub fn timings() -> Timings {
    Timings::default()
}

/// Test time `s` on the monotonic clock; tests may start before 0 (see [`acquire`]).
pub const EPOCH: f64 = 100.0;

pub fn secs(s: f64) -> Mono {
    Mono::from_secs_f64(EPOCH + s)
}

/// Test time of a monotonic reading.
pub fn time_of(m: Mono) -> f64 {
    m.0.as_secs_f64() - EPOCH
}

/// Wall clock = a fixed epoch + test time + `skew_s`.
pub fn at(s: f64, skew_s: i64) -> Now {
    let wall = Timestamp::from_second(1_700_000_000 + skew_s)
        .unwrap()
        .checked_add(jiff::SignedDuration::from_secs_f64(s))
        .unwrap();
    Now {
        mono: secs(s),
        wall,
    }
}

/// A candidate creates an absent lease a lease duration before `s` and renews it; it leads from
/// `s` on (a creator cannot know whether the lease was deleted a moment ago under a leader that
/// still claims, so it holds the lease a lease duration before claiming).
pub fn acquire(c: &mut Candidate, t: &mut LeaseTable, s: f64) {
    let ld = LD.as_secs_f64();
    let create = at(s - ld, 0);
    settle(c, t, create);
    assert_eq!(
        t.lease().and_then(|l| l.record.holder.clone()).as_deref(),
        Some(c.id())
    );
    assert!(
        !c.is_leader(create.mono),
        "a creator holds before it claims"
    );
    // It renews on its renew interval while it holds before claiming; the last renew is at `s`.
    let interval = c.renew_interval().as_secs_f64();
    let mut renew = s - ld + interval;
    while renew < s - 1e-9 {
        settle(c, t, at(renew, 0));
        assert!(!c.is_leader(secs(renew)));
        renew += interval;
    }
    assert!(c.is_leader(secs(s)));
    settle(c, t, at(s, 0));
    assert!(c.is_leader(secs(s)));
}

pub fn record(holder: Option<&str>, renew: Timestamp, transitions: i32) -> LeaseRecord {
    LeaseRecord {
        holder: holder.map(str::to_owned),
        lease_duration_seconds: 15,
        acquire_time: Some(renew),
        renew_time: Some(renew),
        transitions,
        released: false,
    }
}

/// Executes actions against `table` with zero latency until the candidate sleeps or is done.
/// Watch actions are acknowledged but not delivered (tests feed watch items explicitly).
pub fn settle(c: &mut Candidate, table: &mut LeaseTable, now: Now) -> Action {
    for _ in 0..20 {
        match c.poll(now) {
            Action::Get => c.on_read(now, Ok(table.get())),
            Action::Create(r) => {
                let res = table.create(r).map(|(s, _)| s);
                c.on_write(now, res)
            }
            Action::Replace {
                record,
                resource_version,
            } => {
                let res = table.replace(record, &resource_version).map(|(s, _)| s);
                c.on_write(now, res)
            }
            Action::Watch { .. } => {}
            other => return other,
        }
    }
    panic!("candidate did not settle");
}

/// The next action other than starting the watch.
pub fn next(c: &mut Candidate, now: Now) -> Action {
    loop {
        match c.poll(now) {
            Action::Watch { .. } => {}
            other => return other,
        }
    }
}

pub fn force(table: &mut LeaseTable, r: LeaseRecord) -> StoredLease {
    match table.lease() {
        None => table.create(r).unwrap().0,
        Some(_) => table.replace(r, "").unwrap().0,
    }
}
