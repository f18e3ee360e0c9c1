//! Unit tests of the election state machine, driven with a virtual clock against the in-memory
//! table that applies the API server's resourceVersion rules.

mod common;

use std::time::Duration;

use common::*;
use contract::Timings;
use elector::election::{Action, Candidate, Failure, LeaseRecord, Notice, StepDown, WatchItem};
use elector::store::LeaseTable;

#[test]
fn acquires_an_absent_lease_with_client_go_fields() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 100.0);
    let now = at(100.0, 0);
    let act = settle(&mut a, &mut t, now);
    assert!(a.is_leader(now.mono));
    assert_eq!(a.leader(now.mono).as_deref(), Some("a"));
    let l = t.lease().unwrap().record.clone();
    assert_eq!(l.holder.as_deref(), Some("a"));
    assert_eq!(l.lease_duration_seconds, 15);
    assert_eq!(l.transitions, 0);
    // Acquired by the create a lease duration earlier, renewed now.
    assert_eq!(l.acquire_time, Some(at(85.0, 0).wall));
    assert_eq!(l.renew_time, Some(now.wall));
    // Next wake-up: the renew, one renew interval (half the lease duration) after the acquire
    // started.
    assert_eq!(
        act,
        Action::Sleep {
            until: Some(secs(100.0 + RI))
        }
    );
    assert!(
        a.take_notices()
            .contains(&Notice::Acquired { transitions: 0 })
    );
}

#[test]
fn empty_or_missing_holder_is_free_and_counts_a_transition() {
    for holder in [None, Some("")] {
        // Released by its holder (the release mark): taken at once.
        let mut t = LeaseTable::default();
        let wall = at(0.0, 0).wall;
        force(
            &mut t,
            LeaseRecord {
                holder: holder.map(str::to_owned),
                released: true,
                ..record(None, wall, 4)
            },
        );
        let mut a = Candidate::new("a", timings(), 1);
        let now = at(1.0, 0);
        settle(&mut a, &mut t, now);
        assert!(a.is_leader(now.mono), "holder {holder:?}");
        assert_eq!(t.lease().unwrap().record.transitions, 5);

        // Emptied by somebody else (a hand edit): it may have been held a moment ago, so it is
        // waited out like a held record.
        let mut t = LeaseTable::default();
        force(
            &mut t,
            LeaseRecord {
                holder: holder.map(str::to_owned),
                ..record(None, wall, 4)
            },
        );
        let mut a = Candidate::new("a", timings(), 1);
        assert_eq!(
            settle(&mut a, &mut t, now),
            Action::Sleep {
                until: Some(secs(16.0))
            }
        );
        settle(&mut a, &mut t, at(16.0, 0));
        assert!(a.is_leader(secs(16.0)), "holder {holder:?}");
        assert_eq!(t.lease().unwrap().record.transitions, 5);
    }
}

#[test]
fn respects_an_unexpired_holder_then_takes_over_by_own_observation_time() {
    // renewTime far in the past, near now, and far in the future (skewed writers): none of it
    // matters, only when *I* saw the record change.
    for renew_skew_s in [-86_400i64, -30, 0, 30, 86_400] {
        let mut t = LeaseTable::default();
        let other_wall = at(0.0, renew_skew_s).wall;
        force(&mut t, record(Some("other"), other_wall, 7));
        let mut b = Candidate::new("b", timings(), 2);
        let seen = 50.0;
        let act = settle(&mut b, &mut t, at(seen, 0));
        assert_eq!(
            act,
            Action::Sleep {
                until: Some(secs(seen) + LD)
            },
            "skew {renew_skew_s}"
        );
        assert!(!b.is_leader(secs(seen)));
        assert_eq!(b.leader(secs(seen)).as_deref(), Some("other"));
        // Just before expiry: still waiting, still "other".
        let before = at(seen + 14.999, 0);
        assert!(matches!(
            settle(&mut b, &mut t, before),
            Action::Sleep { .. }
        ));
        assert_eq!(t.lease().unwrap().record.holder.as_deref(), Some("other"));
        assert_eq!(b.leader(before.mono).as_deref(), Some("other"));
        // At expiry the leader is unknown, and b takes over.
        let expiry = at(seen + 15.0, 0);
        assert_eq!(b.leader(expiry.mono), None);
        settle(&mut b, &mut t, expiry);
        assert!(b.is_leader(expiry.mono), "skew {renew_skew_s}");
        let l = &t.lease().unwrap().record;
        assert_eq!((l.holder.as_deref(), l.transitions), (Some("b"), 8));
    }
}

#[test]
fn a_record_seen_again_unchanged_does_not_restart_the_expiry_clock() {
    let mut t = LeaseTable::default();
    force(&mut t, record(Some("other"), at(0.0, 0).wall, 0));
    let mut b = Candidate::new("b", timings(), 2);
    settle(&mut b, &mut t, at(10.0, 0));
    // Same record re-read (e.g. after a watch re-list) at t=20: expiry still 25.
    b.on_read(at(20.0, 0), Ok(t.get()));
    assert_eq!(
        b.poll(at(20.0, 0)),
        Action::Sleep {
            until: Some(secs(25.0))
        }
    );
}

#[test]
fn conflict_means_reread_and_redecide() {
    let mut t = LeaseTable::default();
    force(&mut t, record(Some("other"), at(0.0, 0).wall, 1));
    let mut b = Candidate::new("b", timings(), 3);
    settle(&mut b, &mut t, at(0.0, 0));
    // At expiry b wants to take over with the resourceVersion it read...
    let Action::Replace {
        record: r,
        resource_version,
    } = b.poll(at(15.0, 0))
    else {
        panic!("expected a takeover attempt")
    };
    // ...but "other" renewed in between.
    force(&mut t, record(Some("other"), at(14.9, 0).wall, 1));
    let res = t.replace(r, &resource_version).map(|(s, _)| s);
    assert_eq!(res.clone().unwrap_err(), Failure::Conflict);
    b.on_write(at(15.1, 0), res);
    assert_eq!(b.poll(at(15.1, 0)), Action::Get);
    b.on_read(at(15.2, 0), Ok(t.get()));
    // The change restarts the clock from when b saw it.
    assert_eq!(
        b.poll(at(15.2, 0)),
        Action::Sleep {
            until: Some(secs(30.2))
        }
    );
    assert!(!b.is_leader(secs(15.2)));
}

#[test]
fn already_exists_on_create_means_reread() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    let mut b = Candidate::new("b", timings(), 2);
    let now = at(0.0, 0);
    assert_eq!(a.poll(now), Action::Get);
    assert_eq!(b.poll(now), Action::Get);
    a.on_read(now, Ok(t.get()));
    b.on_read(now, Ok(t.get()));
    let Action::Create(ra) = next(&mut a, now) else {
        panic!()
    };
    let Action::Create(rb) = next(&mut b, now) else {
        panic!()
    };
    a.on_write(now, t.create(ra).map(|(s, _)| s));
    let res = t.create(rb).map(|(s, _)| s);
    assert_eq!(res.clone().unwrap_err(), Failure::AlreadyExists);
    b.on_write(now, res);
    assert_eq!(b.poll(now), Action::Get);
    b.on_read(now, Ok(t.get()));
    assert!(!b.is_leader(now.mono));
    assert_eq!(b.leader(now.mono).as_deref(), Some("a"));
    // a holds the lease it created, and claims a lease duration after the create.
    assert!(!a.is_leader(now.mono));
    assert_eq!(a.view().claim_from, Some(secs(15.0)));
}

#[test]
fn claim_counts_from_renew_start_not_completion() {
    let mut t = LeaseTable::default();
    force(
        &mut t,
        LeaseRecord {
            released: true,
            ..record(None, at(-1.0, 0).wall, 0)
        },
    );
    let mut a = Candidate::new("a", timings(), 1);
    // The takeover request starts at 0 and its response arrives 3 s later.
    assert_eq!(a.poll(at(0.0, 0)), Action::Get);
    a.on_read(at(0.0, 0), Ok(t.get()));
    let Action::Replace {
        record: r,
        resource_version,
    } = next(&mut a, at(0.0, 0))
    else {
        panic!()
    };
    a.on_write(at(3.0, 0), t.replace(r, &resource_version).map(|(s, _)| s));
    assert_eq!(a.claim_until(), Some(secs(0.0) + RD));
    assert!(a.is_leader(secs(9.999)));
    assert!(!a.is_leader(secs(10.0)));
    // The renew is due one renew interval after the acquire started.
    assert_eq!(
        a.poll(at(3.0, 0)),
        Action::Sleep {
            until: Some(secs(RI))
        }
    );
    // A renew started at 7.5 s and answered at 9.5 s extends the claim to 17.5 s, not 19.5 s.
    let Action::Replace {
        record,
        resource_version,
    } = a.poll(at(RI, 0))
    else {
        panic!()
    };
    let r = t.replace(record, &resource_version).map(|(s, _)| s);
    a.on_write(at(RI + 2.0, 0), r);
    assert_eq!(a.claim_until(), Some(secs(RI) + RD));
}

#[test]
fn steps_down_at_the_renew_deadline_and_rejoins() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    a.take_notices();
    // Every renew from now on fails.
    let mut now = 2.0;
    while now < 12.0 {
        if let Action::Replace { .. } = a.poll(at(now, 0)) {
            a.on_write(at(now + 0.1, 0), Err(Failure::Transient));
        }
        now += 0.25;
    }
    assert!(!a.is_leader(secs(10.0)));
    let notices = a.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::SteppedDown(StepDown::RenewDeadline { .. }))),
        "{notices:?}"
    );
    // The record still names a; a rejoins and renews its own lease once the API works again.
    let back = at(20.0, 0);
    settle(&mut a, &mut t, back);
    assert!(a.is_leader(back.mono));
}

#[test]
fn a_leader_frozen_past_its_deadline_never_answers_leader_after_thawing() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    let view = a.view();
    // Frozen from 1 s to 30 s: the very first question after thawing, before any poll.
    for thaw in [10.0, 10.5, 30.0] {
        assert!(!a.is_leader(secs(thaw)));
        assert!(!view.is_leader(secs(thaw)));
        assert_eq!(view.leader(secs(thaw)), None, "own id must not be reported");
    }
    // The lease meanwhile went to b: a learns it and does not claim.
    force(&mut t, record(Some("b"), at(20.0, 0).wall, 1));
    settle(&mut a, &mut t, at(30.0, 0));
    assert!(!a.is_leader(secs(30.0)));
    assert_eq!(a.leader(secs(30.0)).as_deref(), Some("b"));
}

#[test]
fn release_stops_claiming_before_sending_and_keeps_transitions() {
    let mut t = LeaseTable::default();
    force(&mut t, record(Some("x"), at(0.0, 0).wall, 3));
    let mut a = Candidate::new("a", timings(), 1);
    settle(&mut a, &mut t, at(0.0, 0));
    settle(&mut a, &mut t, at(15.0, 0));
    assert!(a.is_leader(secs(15.0)));
    let now = at(16.0, 0);
    a.shutdown(true);
    assert!(
        !a.is_leader(now.mono),
        "claim dropped before the release is sent"
    );
    let Action::Replace {
        record: r,
        resource_version,
    } = a.poll(now)
    else {
        panic!()
    };
    assert_eq!(r.holder, None);
    assert_eq!(r.lease_duration_seconds, 1);
    assert_eq!(r.renew_time, Some(now.wall));
    assert_eq!(r.transitions, 4);
    a.on_write(now, t.replace(r, &resource_version).map(|(s, _)| s));
    assert_eq!(a.poll(now), Action::Done);
    assert!(a.take_notices().contains(&Notice::Released));
}

#[test]
fn release_retries_after_conflict_and_skips_when_not_holder() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    // A renew committed but its response was lost: a's resourceVersion is stale, and a still
    // recognises the record as its own write.
    let Action::Replace {
        record: renew,
        resource_version,
    } = a.poll(at(RI, 0))
    else {
        panic!()
    };
    t.replace(renew, &resource_version).unwrap();
    a.on_write(at(RI + 0.5, 0), Err(Failure::Transient));
    a.shutdown(true);
    let now = at(RI + 1.0, 0);
    assert_eq!(settle(&mut a, &mut t, now), Action::Done);
    assert_eq!(t.lease().unwrap().record.holder, None);

    // Not the holder: nothing to release.
    let mut b = Candidate::new("b", timings(), 2);
    force(&mut t, record(Some("c"), now.wall, 9));
    settle(&mut b, &mut t, now);
    b.shutdown(true);
    assert_eq!(b.poll(now), Action::Done);
    // Without release: done at once.
    let mut c = Candidate::new("c", timings(), 3);
    settle(&mut c, &mut t, at(100.0, 0));
    c.shutdown(false);
    assert_eq!(c.poll(at(100.0, 0)), Action::Done);
}

#[test]
fn transitions_count_every_change_of_holder() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    let mut b = Candidate::new("b", timings(), 2);
    acquire(&mut a, &mut t, 0.0); // a creates: 0
    settle(&mut b, &mut t, at(0.0, 0));
    for s in [2.0, 4.0] {
        settle(&mut a, &mut t, at(s, 0)); // renewals keep 0
    }
    assert_eq!(t.lease().unwrap().record.transitions, 0);
    a.shutdown(true);
    settle(&mut a, &mut t, at(5.0, 0)); // release keeps 0
    assert_eq!(t.lease().unwrap().record.transitions, 0);
    settle(&mut b, &mut t, at(5.0, 0)); // b sees the free lease only after reading it
    b.on_read(at(5.0, 0), Ok(t.get()));
    settle(&mut b, &mut t, at(5.0, 0));
    assert_eq!(t.lease().unwrap().record.holder.as_deref(), Some("b"));
    assert_eq!(t.lease().unwrap().record.transitions, 1);
    let mut c = Candidate::new("c", timings(), 3);
    settle(&mut c, &mut t, at(6.0, 0));
    settle(&mut c, &mut t, at(21.0, 0)); // b stopped renewing: c takes over after 15 s
    assert_eq!(t.lease().unwrap().record.transitions, 2);
}

#[test]
fn watch_starts_after_the_first_read_and_delivers_release_at_once() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    let mut b = Candidate::new("b", timings(), 2);
    acquire(&mut a, &mut t, 0.0);
    let now = at(0.5, 0);
    assert_eq!(b.poll(now), Action::Get);
    let snap = t.get();
    let rv = snap.resource_version.clone();
    b.on_read(now, Ok(snap));
    assert_eq!(
        b.poll(now),
        Action::Watch {
            resource_version: rv
        }
    );
    assert!(b.watch_running());
    assert_eq!(
        b.poll(now),
        Action::Sleep {
            until: Some(secs(0.5) + LD)
        }
    );
    // a releases; b hears it through the watch and acts immediately (no polling, no wait).
    a.shutdown(true);
    settle(&mut a, &mut t, at(1.0, 0));
    let released = t.lease().unwrap().clone();
    b.on_watch(at(1.01, 0), WatchItem::Changed(released));
    let Action::Replace { record: r, .. } = b.poll(at(1.01, 0)) else {
        panic!()
    };
    assert_eq!(r.holder.as_deref(), Some("b"));
}

#[test]
fn watch_items_older_than_what_is_known_are_ignored() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    let first = t.lease().unwrap().clone();
    settle(&mut a, &mut t, at(5.0, 0));
    a.on_watch(at(5.1, 0), WatchItem::Changed(first));
    assert!(a.is_leader(secs(5.1)));
    assert_eq!(
        a.view().resource_version,
        t.lease().map(|l| l.resource_version.clone())
    );
}

#[test]
fn a_broken_watch_relists_with_bounded_backoff() {
    let mut t = LeaseTable::default();
    let long = LeaseRecord {
        lease_duration_seconds: 100_000,
        ..record(Some("x"), at(0.0, 0).wall, 0)
    };
    force(&mut t, long);
    let mut b = Candidate::new("b", timings(), 5);
    settle(&mut b, &mut t, at(0.0, 0));
    assert!(b.watch_running());
    let mut now = 0.0;
    let mut delays = Vec::new();
    for _ in 0..12 {
        b.on_watch_end(at(now, 0), Some(Failure::Gone));
        let Action::Sleep { until: Some(until) } = b.poll(at(now, 0)) else {
            panic!()
        };
        let d = until.saturating_sub(secs(now)).as_secs_f64();
        delays.push(d);
        now += d;
        assert_eq!(
            b.poll(at(now, 0)),
            Action::Get,
            "re-list before re-watching"
        );
        b.on_read(at(now, 0), Ok(t.get()));
        assert!(matches!(b.poll(at(now, 0)), Action::Watch { .. }));
    }
    assert!(delays[0] >= 0.125 && delays[0] < 0.25, "{delays:?}");
    assert!(
        delays.windows(2).take(5).all(|w| w[1] > w[0] * 0.9),
        "{delays:?}"
    );
    assert!(delays.iter().all(|&d| d <= 30.0), "{delays:?}");
    // A clean close after a healthy life re-watches at once, without a re-list.
    b.on_watch_end(at(now + 100.0, 0), None);
    assert!(matches!(b.poll(at(now + 100.0, 0)), Action::Watch { .. }));
}

#[test]
fn error_retries_carry_jitter_and_back_off() {
    let mut first_delays = Vec::new();
    for seed in 0..20 {
        let mut b = Candidate::new("b", timings(), seed);
        assert_eq!(b.poll(at(0.0, 0)), Action::Get);
        b.on_read(at(0.0, 0), Err(Failure::Transient));
        let Action::Sleep { until: Some(u) } = b.poll(at(0.0, 0)) else {
            panic!()
        };
        first_delays.push(u.saturating_sub(secs(0.0)));
        // Permanent errors (RBAC, namespace) back off from 1 s up to 30 s.
        let mut p = Candidate::new("p", timings(), seed);
        let mut now = 0.0;
        let mut last = 0.0;
        for _ in 0..10 {
            assert_eq!(p.poll(at(now, 0)), Action::Get);
            p.on_read(at(now, 0), Err(Failure::Permanent));
            let Action::Sleep { until: Some(u) } = p.poll(at(now, 0)) else {
                panic!()
            };
            last = u.saturating_sub(secs(now)).as_secs_f64();
            now += last;
        }
        assert!((15.0..=30.0).contains(&last), "{last}");
    }
    // Base retry_period/4 = 0.5 s, scaled into [0.25, 0.5).
    assert!(
        first_delays.iter().all(|d| *d >= RP / 8 && *d < RP / 4),
        "{first_delays:?}"
    );
    first_delays.dedup();
    assert!(
        first_delays.len() > 10,
        "jitter must vary between candidates"
    );
}

#[test]
fn renew_failures_keep_the_claim_until_the_deadline_only() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    let Action::Replace { .. } = a.poll(at(RI, 0)) else {
        panic!()
    };
    a.on_write(at(RI + 0.5, 0), Err(Failure::Transient));
    assert!(a.is_leader(secs(9.9)));
    // A retry is scheduled well before the deadline, at most a retry period later.
    let Action::Sleep { until: Some(u) } = a.poll(at(RI + 0.5, 0)) else {
        panic!()
    };
    assert!(u <= secs(RI + 0.5) + RP, "{u:?}");
    // A conflict keeps the (still valid) claim and re-reads.
    let Action::Replace { .. } = a.poll(at(time_of(u), 0)) else {
        panic!()
    };
    let now = at(time_of(u), 0);
    a.on_write(now, Err(Failure::Conflict));
    assert!(a.is_leader(now.mono));
    assert_eq!(a.poll(now), Action::Get);
}

#[test]
fn seeing_another_holder_drops_the_claim_immediately() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    let other = force(&mut t, record(Some("intruder"), at(1.0, 0).wall, 1));
    a.on_watch(at(1.0, 0), WatchItem::Changed(other));
    assert!(!a.is_leader(secs(1.0)));
    assert_eq!(a.leader(secs(1.0)).as_deref(), Some("intruder"));
    let mut t2 = LeaseTable::default();
    let mut d = Candidate::new("d", timings(), 1);
    acquire(&mut d, &mut t2, 0.0);
    d.on_watch(
        at(1.0, 0),
        WatchItem::Deleted {
            resource_version: "999".into(),
        },
    );
    assert!(!d.is_leader(secs(1.0)));
}

#[test]
fn lease_duration_is_written_rounded_up_to_whole_seconds() {
    let t = Timings {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1200),
        retry_period: Duration::from_millis(300),
    };
    let mut table = LeaseTable::default();
    let mut a = Candidate::new("a", t, 1);
    settle(&mut a, &mut table, at(0.0, 0));
    settle(&mut a, &mut table, at(1.5, 0));
    // Writing 1 s would let others take over before a's 1.2 s deadline.
    assert_eq!(table.lease().unwrap().record.lease_duration_seconds, 2);
}

#[test]
fn shutdown_before_the_lease_was_ever_read_exits_at_once() {
    let mut a = Candidate::new("a", timings(), 1);
    assert_eq!(a.poll(at(0.0, 0)), Action::Get);
    a.on_read(at(0.1, 0), Err(Failure::Permanent));
    a.shutdown(true);
    assert_eq!(a.poll(at(0.2, 0)), Action::Done);
}
