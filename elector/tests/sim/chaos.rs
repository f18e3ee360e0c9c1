//! The fault schedule of a simulated run, and writers of the Lease other than the candidates.

use elector::election::{LeaseRecord, WatchItem};

use super::{Kind, Sim, to_t};

/// What an outside writer does to the Lease.
#[derive(Debug, Clone, Copy)]
pub enum Outside {
    /// `kubectl delete lease`.
    Delete,
    /// A hand edit of holderIdentity: to "" (free), to a made-up name, or to a candidate's
    /// identity (which must not make that candidate claim). `shorten` also sets
    /// leaseDurationSeconds to 1.
    Edit { holder: EditedHolder, shorten: bool },
}

#[derive(Debug, Clone, Copy)]
pub enum EditedHolder {
    Nobody,
    Stranger,
    Candidate(usize),
}

impl Sim {
    pub(super) fn schedule_chaos(&mut self) {
        let ld = self.prm.max_lease;
        let end = self.prm.chaos_end;
        for p in 0..self.prm.n {
            // Start times spread a little.
            let start = to_t(self.rng.range(0.0, 0.5));
            self.push(start, p, Kind::Wake { generation: 0 });
            let faults = self.rng.below(7);
            for _ in 0..faults {
                let at = self.rng.range(0.0, end - ld * 2.0);
                let kind = match self.rng.below(4) {
                    0 => Kind::Freeze {
                        seconds: self.rng.range(0.05, ld * 2.0),
                    },
                    1 => Kind::Crash {
                        restart_after: Some(self.rng.range(0.1, ld)),
                    },
                    2 => Kind::Shutdown {
                        restart_after: Some(self.rng.range(0.1, ld)),
                    },
                    _ => Kind::WatchStall {
                        seconds: self.rng.range(0.1, ld * 2.0),
                    },
                };
                self.push(to_t(at), p, kind);
            }
        }
        let outside = self.rng.below(5);
        for _ in 0..outside {
            let at = self.rng.range(0.0, end - ld * 2.0);
            let uniform = self.prm.uniform_timings;
            let action = if uniform && self.rng.chance(0.5) {
                Outside::Delete
            } else {
                let holder = match self.rng.below(3) {
                    0 => EditedHolder::Nobody,
                    1 => EditedHolder::Stranger,
                    _ => EditedHolder::Candidate(self.rng.below(self.prm.n)),
                };
                Outside::Edit {
                    holder,
                    shorten: uniform && self.rng.chance(0.3),
                }
            };
            self.push(to_t(at), 0, Kind::Outside(action));
        }
    }

    /// Applies an outside write, unconditionally, as `kubectl` would.
    pub(super) fn outside(&mut self, action: Outside) {
        if self.trace {
            println!("{:>12.6} OUTSIDE {action:?}", super::secs(self.now));
        }
        let item = match action {
            Outside::Delete => self.table.delete(),
            Outside::Edit { holder, shorten } => {
                let Some(current) = self.table.lease().map(|l| l.record.clone()) else {
                    return;
                };
                let holder = match holder {
                    EditedHolder::Nobody => None,
                    EditedHolder::Stranger => Some("someone-else".to_owned()),
                    EditedHolder::Candidate(p) => Some(self.procs[p].id.clone()),
                };
                // A hand edit keeps the transitions and, unless told, the duration.
                let record = LeaseRecord {
                    holder,
                    lease_duration_seconds: if shorten {
                        1
                    } else {
                        current.lease_duration_seconds
                    },
                    ..current
                };
                match self.table.replace(record, "") {
                    Ok((_, item)) => item,
                    Err(_) => None,
                }
            }
        };
        if let Some(item) = item {
            let is_change = matches!(item, WatchItem::Changed(_) | WatchItem::Deleted { .. });
            if is_change {
                self.changed();
            }
            self.broadcast(item);
        }
    }
}
