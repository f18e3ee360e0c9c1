//! A whole simulated run: chaos, then calm, then the liveness checks; and the safety check.

use super::{Ev, Kind, Sim, secs, to_t};

impl Sim {
    fn leader(&self) -> Option<usize> {
        let t = secs(self.now);
        (0..self.procs.len()).find(|&p| matches!(self.procs[p].claim, Some((_, e)) if e > t))
    }

    /// First claim start by another process at or after `since`.
    fn next_claim_after(&self, since: f64, not: usize) -> Option<f64> {
        let closed = self.claims.iter().map(|&(p, s, _)| (p, s));
        let open = self
            .procs
            .iter()
            .enumerate()
            .filter_map(|(p, pr)| pr.claim.map(|(s, _)| (p, s)));
        closed
            .chain(open)
            .filter(|&(p, s)| p != not && s >= since)
            .map(|(_, s)| s)
            .reduce(f64::min)
    }

    /// Another process than `old` claimed leadership within `bound` seconds after `since`.
    fn expect_successor(&self, what: &str, since: f64, old: usize, bound: f64) {
        match self.next_claim_after(since, old) {
            Some(s) if s - since <= bound => {}
            other => {
                eprintln!(
                    "after {what} at {since:.3}s the next leader came at {other:?} \
                     (bound {bound:.3}s)"
                );
                self.fail();
            }
        }
    }

    fn check_safety(&self) {
        let mut all: Vec<(usize, f64, f64)> = self.claims.clone();
        for (p, pr) in self.procs.iter().enumerate() {
            if let Some((s, e)) = pr.claim {
                all.push((p, s, e));
            }
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.0 != b.0 && a.1 < b.2 && b.1 < a.2 {
                    eprintln!(
                        "two leaders: {} claimed [{:.6}, {:.6}) and {} claimed [{:.6}, {:.6})",
                        self.procs[a.0].id, a.1, a.2, self.procs[b.0].id, b.1, b.2
                    );
                    self.fail();
                }
            }
        }
    }

    /// Runs the seed; panics (with the seed to replay) when an invariant breaks. Returns the
    /// number of leadership periods.
    pub fn run(&mut self) -> usize {
        self.schedule_chaos();
        let chaos_end = to_t(self.prm.chaos_end);
        self.run_until(chaos_end);
        self.calm = true;
        for p in 0..self.procs.len() {
            self.procs[p].frozen_until = self.procs[p].frozen_until.min(chaos_end);
            if !self.procs[p].alive {
                self.push(chaos_end, p, Kind::Restart);
            }
        }
        let ld = self.prm.max_lease;
        let lat = self.prm.max_lat;

        // Liveness once faults stop (in-flight stalls may still land during the settle time).
        let crash_at = chaos_end + to_t(self.prm.settle);
        self.run_until(crash_at);
        self.check_safety();
        let Some(old) = self.leader() else {
            eprintln!("no leader {:.1}s after faults stopped", self.prm.settle);
            self.fail();
        };
        self.log(old, || "crashing the leader".into());
        self.handle(Ev {
            t: crash_at,
            seq: 0,
            p: old,
            incarnation: self.procs[old].incarnation,
            kind: Kind::Crash {
                restart_after: None,
            },
        });
        // Followers time the expiry from the last renewal they saw, so the failover takes at most
        // a lease duration plus a round trip, whatever the renew interval (the bound:
        // lease duration + 0.5 s).
        let bound = ld + 0.5;
        // Back as a follower for the graceful handover, after the failover was measured.
        self.push(crash_at + to_t(bound), old, Kind::Restart);
        self.run_until(crash_at + to_t(bound + ld));
        self.expect_successor("the leader crashed", secs(crash_at), old, bound);

        // Graceful handover: release, watch event, takeover.
        let Some(leader) = self.leader() else {
            eprintln!("no leader after failover");
            self.fail();
        };
        let term_at = self.now;
        self.handle(Ev {
            t: term_at,
            seq: 0,
            p: leader,
            incarnation: self.procs[leader].incarnation,
            kind: Kind::Shutdown {
                restart_after: None,
            },
        });
        let grace = 10.0 * lat + 0.001;
        self.run_until(term_at + to_t(grace + ld));
        self.expect_successor("a graceful shutdown", secs(term_at), leader, grace);
        self.check_safety();
        self.claims.len()
    }
}
