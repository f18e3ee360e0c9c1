//! The leader label: `leader-election/role=leader` on the pod holding a Lease, `follower` on the
//! other pods electing on it that asked for the label. Kept by the controller from the Leases it
//! watches, so electors need no pods permission.
//!
//! Rules, so that at most one pod carries `leader` at any time as far as this controller writes:
//! - demote before promote: every `leader` that is not the valid holder is rewritten first, and
//!   the holder is promoted only once all of them succeeded;
//! - a holder counts as valid only while its Lease was renewed within its duration by the
//!   controller's own (monotonic) clock: the last change of the Lease's renewTime is timed on
//!   arrival, never trusted from the holder's timestamps, so a frozen or cut-off leader loses
//!   the label when its lease expires even though it cannot remove it itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;

use contract::labels::{ROLE, ROLE_FOLLOWER, ROLE_LEADER};

/// One label write, in the order they must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub pod: String,
    pub value: &'static str,
}

/// Pods electing on a Lease that asked for the label: (name, current role label).
pub type Candidates = Vec<(String, Option<String>)>;

/// The label writes that bring `pods` in line with `leader` (the valid holder, if any): first
/// every demotion, then the one promotion. Pods already right are left alone.
pub fn plan(leader: Option<&str>, pods: &Candidates) -> Vec<Change> {
    let mut demote = Vec::new();
    let mut promote = Vec::new();
    for (name, current) in pods {
        let want = if Some(name.as_str()) == leader {
            ROLE_LEADER
        } else {
            ROLE_FOLLOWER
        };
        if current.as_deref() == Some(want) {
            continue;
        }
        let c = Change {
            pod: name.clone(),
            value: want,
        };
        if want == ROLE_LEADER {
            promote.push(c);
        } else {
            demote.push(c);
        }
    }
    demote.extend(promote);
    demote
}

/// The pod's current role label.
pub fn role_of(pod: &Pod) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(ROLE).cloned()
}

/// Whether a pod asked for the leader label (annotation `leader-election/leader-label: "true"`).
pub fn wants_label(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::annotations::LEADER_LABEL))
        .is_some_and(|v| v == "true")
}

#[derive(Debug, Clone)]
struct Seen {
    holder: String,
    renew: Option<String>,
    at: Instant,
}

/// When each Lease was last seen renewed, by this process's monotonic clock.
#[derive(Debug, Default)]
pub struct Renewals(Mutex<HashMap<(String, String), Seen>>);

/// The holder if its lease is still valid, and how long it stays valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: Option<String>,
    /// When to look again (expiry of the current holder), if there is one.
    pub valid_for: Option<Duration>,
}

impl Renewals {
    /// Records the Lease as seen now and tells who validly holds it.
    pub fn observe(&self, namespace: &str, lease: &Lease, now: Instant) -> Holder {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        let renew = spec.renew_time.map(|t| format!("{:?}", t.0));
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let key = (
            namespace.to_string(),
            lease.metadata.name.clone().unwrap_or_default(),
        );
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(key).or_insert_with(|| Seen {
            holder: holder.clone(),
            renew: renew.clone(),
            at: now,
        });
        if entry.holder != holder || entry.renew != renew {
            *entry = Seen {
                holder: holder.clone(),
                renew,
                at: now,
            };
        }
        let age = now.saturating_duration_since(entry.at);
        if holder.is_empty() || age >= duration {
            return Holder {
                name: None,
                valid_for: None,
            };
        }
        Holder {
            name: Some(holder),
            valid_for: Some(duration - age),
        }
    }

    pub fn forget(&self, namespace: &str, lease: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.remove(&(namespace.to_string(), lease.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    fn pods(list: &[(&str, Option<&str>)]) -> Candidates {
        list.iter()
            .map(|(n, l)| (n.to_string(), l.map(str::to_string)))
            .collect()
    }

    fn ch(pod: &str, value: &'static str) -> Change {
        Change {
            pod: pod.into(),
            value,
        }
    }

    #[test]
    fn demotes_before_promoting() {
        let p = pods(&[("a", Some("leader")), ("b", Some("follower")), ("c", None)]);
        assert_eq!(
            plan(Some("b"), &p),
            vec![
                ch("a", ROLE_FOLLOWER),
                ch("c", ROLE_FOLLOWER),
                ch("b", ROLE_LEADER)
            ]
        );
    }

    #[test]
    fn no_valid_holder_means_no_leader() {
        let p = pods(&[("a", Some("leader")), ("b", Some("follower"))]);
        assert_eq!(plan(None, &p), vec![ch("a", ROLE_FOLLOWER)]);
        // A holder that is not among the labelled pods leaves them all followers.
        assert_eq!(plan(Some("zz"), &p), vec![ch("a", ROLE_FOLLOWER)]);
    }

    #[test]
    fn steady_state_writes_nothing() {
        let p = pods(&[("a", Some("leader")), ("b", Some("follower"))]);
        assert!(plan(Some("a"), &p).is_empty());
    }

    #[test]
    fn at_most_one_leader_after_any_prefix_of_the_plan() {
        // Whatever subset of pods starts as leader, applying the plan's writes in order never
        // has more than one leader at once beyond those it started with, and ends with <= 1.
        let names = ["a", "b", "c", "d"];
        for mask in 0u32..16 {
            let p: Candidates = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let l = if mask & (1 << i) != 0 {
                        "leader"
                    } else {
                        "follower"
                    };
                    (n.to_string(), Some(l.to_string()))
                })
                .collect();
            let start = p
                .iter()
                .filter(|(_, l)| l.as_deref() == Some("leader"))
                .count();
            for holder in [None, Some("a"), Some("c")] {
                let mut state: HashMap<String, String> = p
                    .iter()
                    .map(|(n, l)| (n.clone(), l.clone().unwrap()))
                    .collect();
                for c in plan(holder, &p) {
                    state.insert(c.pod.clone(), c.value.to_string());
                    let leaders = state.values().filter(|v| *v == "leader").count();
                    assert!(leaders <= start.max(1), "{mask} {holder:?}");
                }
                let leaders = state.values().filter(|v| *v == "leader").count();
                assert!(leaders <= 1);
            }
        }
    }

    fn lease(holder: &str, renew_secs: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::from_second(renew_secs).unwrap(),
                )),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn expiry_is_timed_by_the_controllers_clock() {
        let r = Renewals::default();
        let t0 = Instant::now();
        let h = r.observe("ns", &lease("a", 100, 10), t0);
        assert_eq!(h.name.as_deref(), Some("a"));
        assert_eq!(h.valid_for, Some(Duration::from_secs(10)));
        // Same renewTime seen again later: still counted from the first sighting.
        let h = r.observe("ns", &lease("a", 100, 10), t0 + Duration::from_secs(9));
        assert_eq!(h.valid_for, Some(Duration::from_secs(1)));
        let h = r.observe("ns", &lease("a", 100, 10), t0 + Duration::from_secs(10));
        assert_eq!(h.name, None, "expired: a frozen leader loses the label");
        // A renewal restarts the clock, whatever its timestamp says.
        let h = r.observe("ns", &lease("a", 50, 10), t0 + Duration::from_secs(11));
        assert_eq!(h.name.as_deref(), Some("a"));
        // Released.
        let h = r.observe("ns", &lease("", 60, 10), t0 + Duration::from_secs(12));
        assert_eq!(h.name, None);
    }
}
