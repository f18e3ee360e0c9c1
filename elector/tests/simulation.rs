//! The seeded simulation of the election (see `sim/mod.rs` for what it models and asserts).

mod sim;

use sim::Sim;

#[test]
fn simulation_safety_and_liveness() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.trim().parse().expect("SIM_SEED must be an integer");
        Sim::new(seed, true, None).run();
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1000);
    let mut claims = 0;
    for seed in 0..seeds {
        claims += Sim::new(seed, false, None).run();
    }
    // Guards against a simulation that silently elects nobody.
    assert!(
        claims as u64 >= seeds * 2,
        "only {claims} leadership periods in {seeds} runs"
    );
}
