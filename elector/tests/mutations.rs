//! Mutation check: each known class of election bug, injected into every candidate of the
//! simulation, must be caught (a broken invariant) within the seeds of one ordinary run. A
//! simulation that misses one of them is too weak to vouch for the real code.

mod sim;

use elector::election::Mutation;
use sim::Sim;

/// Seeds tried per mutation (the simulation test runs this many for the real code).
const SEEDS: u64 = 1000;

/// The first seed whose run breaks an invariant, if any.
fn first_caught(mutation: Mutation) -> Option<u64> {
    (0..SEEDS).find(|&seed| {
        std::panic::catch_unwind(|| {
            Sim::new(seed, false, Some(mutation)).run();
        })
        .is_err()
    })
}

#[test]
fn every_known_bug_class_is_caught_by_the_simulation() {
    // The invariant failures are expected here: keep their panic messages out of the output.
    std::panic::set_hook(Box::new(|_| {}));
    let mutations = [
        Mutation::ClaimFromResponse,
        Mutation::NoStepDownBeforeRelease,
        Mutation::ReleaseWithoutResourceVersion,
        Mutation::OwnLeaseDuration,
        Mutation::NoWaitAfterDelete,
    ];
    let mut missed = Vec::new();
    for m in mutations {
        match first_caught(m) {
            Some(seed) => println!("{m:?}: caught by seed {seed}"),
            None => missed.push(m),
        }
    }
    let _ = std::panic::take_hook();
    assert!(
        missed.is_empty(),
        "the simulation did not catch {missed:?} in {SEEDS} seeds"
    );
}
