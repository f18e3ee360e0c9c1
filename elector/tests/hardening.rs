//! Table tests of the rules added for real-cluster actions: deleted and hand-edited Leases,
//! duplicate identities, metadata-only changes, stale reads, throttling, readiness and the renew
//! interval.

mod common;

use std::time::Duration;

use common::*;
use elector::election::{
    Action, Candidate, Failure, LeaseRecord, Snapshot, StoredLease, WatchItem,
};
use elector::store::LeaseTable;

/// A leader `a` (created at 0) and a watching follower `b` that saw it.
fn leader_and_follower(t: &mut LeaseTable) -> (Candidate, Candidate) {
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, t, 0.0);
    let mut b = Candidate::new("b", timings(), 2);
    settle(&mut b, t, at(0.5, 0));
    assert_eq!(b.leader(secs(0.5)).as_deref(), Some("a"));
    (a, b)
}

#[test]
fn after_a_delete_nobody_claims_for_a_lease_duration_and_transitions_go_up() {
    let mut t = LeaseTable::default();
    let (mut a, mut b) = leader_and_follower(&mut t);
    // A takeover history: transitions 6 before the delete.
    let cur = t.lease().unwrap().record.clone();
    let written = force(
        &mut t,
        LeaseRecord {
            transitions: 6,
            ..cur
        },
    );
    b.on_watch(at(1.0, 0), WatchItem::Changed(written));
    // `kubectl delete lease` at 2 s; b hears it at once, a's watch is held up.
    let Some(WatchItem::Deleted { resource_version }) = t.delete() else {
        panic!()
    };
    b.on_watch(at(2.0, 0), WatchItem::Deleted { resource_version });
    assert_eq!(b.leader(secs(2.0)), None);
    // b re-creates at once, with the highest transitions it saw + 1...
    let Action::Create(r) = b.poll(at(2.0, 0)) else {
        panic!()
    };
    assert_eq!(r.transitions, 7);
    b.on_write(at(2.1, 0), t.create(r).map(|(l, _)| l));
    assert!(
        b.take_notices()
            .contains(&elector::election::Notice::Holding {
                before_claiming: LD
            })
    );
    // ...but holds it for a lease duration from the create's response before claiming, however
    // it renews meanwhile.
    for s in [2.1, 7.0, 12.0, 17.0] {
        settle(&mut b, &mut t, at(s, 0));
        assert!(!b.is_leader(secs(s)), "at {s}");
    }
    assert!(b.is_leader(secs(17.1)));
    // a, still claiming from its own view, tries to renew (7.5 s), gets a conflict, re-reads and
    // stops, never later than its renew deadline (10 s).
    let Action::Replace { .. } = a.poll(at(7.5, 0)) else {
        panic!()
    };
    assert!(a.is_leader(secs(7.5)) && !a.is_leader(secs(10.0)));
    a.on_write(at(7.6, 0), Err(Failure::Conflict));
    a.on_read(at(7.7, 0), Ok(t.get()));
    assert!(!a.is_leader(secs(7.7)));
    assert_eq!(a.leader(secs(7.7)).as_deref(), Some("b"));
}

#[test]
fn a_record_naming_me_that_i_did_not_write_is_another_holders() {
    // A second process with my identity (a StatefulSet pod recreated elsewhere) holds the lease.
    let mut t = LeaseTable::default();
    let mut twin = Candidate::new("a", timings(), 1);
    acquire(&mut twin, &mut t, 0.0);
    let mut a = Candidate::new("a", timings(), 2);
    assert!(
        matches!(settle(&mut a, &mut t, at(1.0, 0)), Action::Sleep { until: Some(u) } if u == secs(16.0))
    );
    assert!(
        !a.is_leader(secs(1.0)),
        "must not renew a record it did not write"
    );
    assert!(
        a.view().leader(secs(1.0)).is_some(),
        "the twin leads as far as a knows"
    );
    assert!(!a.view().is_leader(secs(1.0)));
    // While the twin keeps renewing, a never claims.
    for s in [5.0, 10.0, 15.0, 20.0] {
        settle(&mut twin, &mut t, at(s, 0));
        let renewed = t.lease().unwrap().clone();
        a.on_watch(at(s, 0), WatchItem::Changed(renewed));
        settle(&mut a, &mut t, at(s, 0));
        assert!(twin.is_leader(secs(s)) && !a.is_leader(secs(s)), "at {s}");
    }
    // The twin dies: a takes over after a lease duration, as a new transition (fencing token).
    settle(&mut a, &mut t, at(35.0, 0));
    assert!(a.is_leader(secs(35.0)));
    assert_eq!(t.lease().unwrap().record.transitions, 1);
    // A thawed twin sees a record naming it that it did not write: it does not claim.
    let now_record = t.lease().unwrap().clone();
    twin.on_watch(at(36.0, 0), WatchItem::Changed(now_record));
    assert!(!twin.is_leader(secs(36.0)));
}

#[test]
fn a_hand_edit_naming_a_live_candidate_does_not_let_it_claim_early() {
    let mut t = LeaseTable::default();
    let (mut a, mut b) = leader_and_follower(&mut t);
    let cur = t.lease().unwrap().record.clone();
    let edited = force(
        &mut t,
        LeaseRecord {
            holder: Some("b".into()),
            ..cur
        },
    );
    b.on_watch(at(3.0, 0), WatchItem::Changed(edited.clone()));
    assert!(!b.is_leader(secs(3.0)));
    // a's watch is held up: it still claims until 10 s. b waits until 3 + 15 s.
    assert!(a.is_leader(secs(9.9)));
    assert_eq!(
        b.poll(at(3.0, 0)),
        Action::Sleep {
            until: Some(secs(18.0))
        }
    );
    a.on_watch(at(9.9, 0), WatchItem::Changed(edited));
    assert!(!a.is_leader(secs(9.9)));
}

#[test]
fn a_shortened_lease_duration_does_not_shorten_the_wait() {
    let mut t = LeaseTable::default();
    let (_a, mut b) = leader_and_follower(&mut t);
    let cur = t.lease().unwrap().record.clone();
    let edited = force(
        &mut t,
        LeaseRecord {
            lease_duration_seconds: 1,
            ..cur
        },
    );
    b.on_watch(at(3.0, 0), WatchItem::Changed(edited));
    assert_eq!(
        b.poll(at(3.0, 0)),
        Action::Sleep {
            until: Some(secs(18.0))
        }
    );
}

#[test]
fn metadata_only_changes_do_not_restart_the_expiry_clock() {
    let mut t = LeaseTable::default();
    force(&mut t, record(Some("other"), at(0.0, 0).wall, 0));
    let mut b = Candidate::new("b", timings(), 2);
    settle(&mut b, &mut t, at(0.0, 0));
    // A label written every 10 s (GitOps, a controller): same election fields, new
    // resourceVersion each time.
    let mut lease = t.lease().unwrap().clone();
    for (i, s) in [10.0, 20.0, 30.0].into_iter().enumerate() {
        lease.resource_version = format!("{}", 1000 + i);
        b.on_watch(at(s, 0), WatchItem::Changed(lease.clone()));
        if s < 15.0 {
            assert!(
                matches!(b.poll(at(s, 0)), Action::Sleep { until: Some(u) } if u == secs(15.0))
            );
        }
    }
    // The takeover is guarded by the newest resourceVersion.
    let Action::Replace {
        resource_version, ..
    } = b.poll(at(30.0, 0))
    else {
        panic!()
    };
    assert_eq!(resource_version, "1002");
}

#[test]
fn stale_reads_and_reordered_watch_items_are_ignored() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    let old = t.get();
    settle(&mut a, &mut t, at(5.0, 0));
    let rv = a.view().resource_version;
    // A read served by a lagging API server: older than what a wrote.
    a.on_read(at(5.5, 0), Ok(old.clone()));
    assert_eq!(a.view().resource_version, rv);
    assert!(a.is_leader(secs(5.5)));
    // A stale "absent" read (list resourceVersion older than my view) changes nothing either.
    a.on_read(
        at(5.6, 0),
        Ok(Snapshot {
            lease: None,
            resource_version: "1".into(),
        }),
    );
    assert!(a.is_leader(secs(5.6)));
    // A delete followed by a re-create, then the delete delivered again: ignored.
    let mut b = Candidate::new("b", timings(), 2);
    settle(&mut b, &mut t, at(6.0, 0));
    let Some(WatchItem::Deleted { resource_version }) = t.delete() else {
        panic!()
    };
    b.on_watch(
        at(7.0, 0),
        WatchItem::Deleted {
            resource_version: resource_version.clone(),
        },
    );
    let recreated = t.create(record(Some("c"), at(8.0, 0).wall, 9)).unwrap().0;
    b.on_watch(at(8.0, 0), WatchItem::Changed(recreated.clone()));
    b.on_watch(at(8.1, 0), WatchItem::Deleted { resource_version });
    b.on_watch(at(8.2, 0), WatchItem::Changed(recreated));
    assert_eq!(b.leader(secs(8.2)).as_deref(), Some("c"));
}

#[test]
fn retry_after_is_honoured() {
    let mut b = Candidate::new("b", timings(), 3);
    assert_eq!(b.poll(at(0.0, 0)), Action::Get);
    b.on_read(at(0.0, 0), Err(Failure::Throttled(Duration::from_secs(7))));
    let Action::Sleep { until: Some(u) } = b.poll(at(0.0, 0)) else {
        panic!()
    };
    let wait = time_of(u);
    assert!((7.0..7.8).contains(&wait), "{wait}");
}

#[test]
fn readiness_follows_a_working_view_of_the_lease() {
    let mut t = LeaseTable::default();
    let mut b = Candidate::new("b", timings(), 2);
    assert!(!b.is_ready());
    force(&mut t, record(Some("x"), at(0.0, 0).wall, 0));
    settle(&mut b, &mut t, at(0.0, 0));
    assert!(b.is_ready());
    // The watch breaks and every re-list fails from 1 s on.
    b.on_watch_end(at(1.0, 0), Some(Failure::Transient));
    let mut s = 1.0;
    while s < 30.0 {
        if b.poll(at(s, 0)) == Action::Get {
            b.on_read(at(s, 0), Err(Failure::Transient));
        }
        assert_eq!(b.is_ready(), s < 16.0, "at {s}");
        s += 0.5;
    }
    // Requests work again; the new watch counts once it has lived a moment without failing.
    let mut s = 30.0;
    while !b.watch_running() {
        assert!(s < 40.0, "no re-list within a few retry periods");
        settle(&mut b, &mut t, at(s, 0));
        s += 0.5;
    }
    assert!(!b.is_ready(), "the new watch has not proved itself yet");
    s += 1.0;
    b.poll(at(s, 0));
    assert!(b.is_ready());
    // A watch that fails at once every time (e.g. `watch` forbidden) is not a working view.
    let failing_from = s;
    b.on_watch_end(at(s, 0), Some(Failure::Permanent));
    while s < failing_from + 30.0 {
        match b.poll(at(s, 0)) {
            Action::Get => b.on_read(at(s, 0), Ok(t.get())),
            Action::Watch { .. } => b.on_watch_end(at(s + 0.01, 0), Some(Failure::Permanent)),
            _ => {
                assert_eq!(b.is_ready(), s < failing_from + 15.0, "at {s}");
                s += 0.25;
            }
        }
    }
}

#[test]
fn a_leader_writes_8_times_a_minute_with_default_timings() {
    // Before the renew interval existed the leader renewed every retry period: 30 a minute; a
    // third of the lease duration gave 12.
    for (interval, want) in [
        (None, 8),
        (Some(Duration::from_secs(5)), 12),
        (Some(Duration::from_secs(2)), 30),
    ] {
        let mut t = LeaseTable::default();
        let mut a = Candidate::new("a", timings(), 1);
        if let Some(i) = interval {
            a = a.with_renew_interval(i);
        }
        acquire(&mut a, &mut t, 0.0);
        // Counted over the second minute of leadership.
        let mut writes = 0;
        let mut s = 0.0;
        while s < 120.0 {
            match next(&mut a, at(s, 0)) {
                Action::Replace {
                    record,
                    resource_version,
                } => {
                    if s >= 60.0 {
                        writes += 1;
                    }
                    let r = t.replace(record, &resource_version).map(|(l, _)| l);
                    a.on_write(at(s, 0), r);
                }
                Action::Sleep { until: Some(u) } => s = time_of(u).max(s + 0.001),
                other => panic!("{other:?}"),
            }
            assert!(
                a.is_leader(secs(s)),
                "the leader must keep its claim at {s}"
            );
        }
        assert_eq!(writes, want, "renew interval {interval:?}");
    }
}

#[test]
fn own_writes_are_recognised_after_a_lost_response() {
    let mut t = LeaseTable::default();
    let mut a = Candidate::new("a", timings(), 1);
    acquire(&mut a, &mut t, 0.0);
    let Action::Replace {
        record,
        resource_version,
    } = a.poll(at(7.5, 0))
    else {
        panic!()
    };
    let applied: StoredLease = t.replace(record, &resource_version).unwrap().0;
    a.on_write(at(8.0, 0), Err(Failure::Transient));
    a.on_watch(at(8.1, 0), WatchItem::Changed(applied));
    assert!(a.is_leader(secs(8.1)), "still its own record");
    settle(&mut a, &mut t, at(9.0, 0));
    assert!(a.is_leader(secs(18.9)), "renewed from 9 s");
}
