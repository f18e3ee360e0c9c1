//! The real clock. Elapsed time is read from CLOCK_BOOTTIME, which keeps counting while the
//! machine is suspended: CLOCK_MONOTONIC stops, and a leader whose VM was suspended would
//! under-count the time since its last renew and claim leadership it no longer has.

use std::time::Duration;

use crate::election::{Mono, Now};

#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn mono() -> Mono {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0).min(999_999_999);
    Mono(Duration::new(secs, nanos))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn mono() -> Mono {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    Mono(EPOCH.get_or_init(Instant::now).elapsed())
}

pub fn now() -> Now {
    Now {
        mono: mono(),
        wall: jiff::Timestamp::now(),
    }
}

/// Longest single sleep: tokio's timers run on CLOCK_MONOTONIC, so after a suspend a long sleep
/// would fire late; waking at least this often re-checks deadlines against CLOCK_BOOTTIME.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// A tokio deadline for the boot-clock instant `until`.
pub fn deadline(until: Mono) -> tokio::time::Instant {
    let wait = until.saturating_sub(mono()).min(MAX_SLEEP);
    tokio::time::Instant::now() + wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_advances() {
        let a = mono();
        std::thread::sleep(Duration::from_millis(5));
        let b = mono();
        assert!(b.saturating_sub(a) >= Duration::from_millis(5));
    }
}
