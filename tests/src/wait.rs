//! Polling with a deadline. Timeouts are generous: the machine is slow and shared, and these
//! tests assert behaviour, never speed.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::procs::Proc;

/// Default poll interval.
pub const POLL: Duration = Duration::from_millis(200);

/// Polls `check` until it returns `Ok`, or fails after `timeout` with the last reason it gave.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    eventually_while_running(what, timeout, &[], check).await
}

/// As [`eventually`], but fails at once (with their output) if any of `procs` exits meanwhile.
pub async fn eventually_while_running<T, F, Fut>(
    what: &str,
    timeout: Duration,
    procs: &[&Proc],
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(reason) => last = reason,
        }
        for p in procs {
            if let Err(e) = p.ensure_running() {
                return Err(Error::Check {
                    context: format!("while waiting for {what} (last observation: {last})"),
                    message: e.to_string(),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                timeout,
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success() -> Result<()> {
        let mut n = 0;
        let v = eventually("n reaches 3", Duration::from_secs(10), || {
            n += 1;
            let now = n;
            async move {
                if now >= 3 {
                    Ok(now)
                } else {
                    Err(format!("n={now}"))
                }
            }
        })
        .await?;
        assert_eq!(v, 3);
        Ok(())
    }

    #[tokio::test]
    async fn times_out_with_the_last_reason() {
        let e = eventually("never", Duration::from_millis(300), || async {
            Err::<(), _>("still no".to_string())
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("never") && e.contains("still no"), "{e}");
    }
}
