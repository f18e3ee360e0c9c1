//! Claiming a slot (a cluster's network namespace, addresses, cgroup root and state directory)
//! and the watchdog that tears the cluster down when its owner is gone.
//!
//! The watchdog is `flock -n <slot lock> sh …`, started in its own session: holding the lock
//! is what owns the slot, so two test processes never share one, and the lock is released only
//! after the teardown has run. It waits for EOF on a pipe that only this process writes to, so
//! it tears down when the cluster is dropped and also when the test process dies without
//! dropping it (panic, Ctrl-C, kill -9).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use super::config::{self, NodeFiles, Slot};
use crate::error::{Context, Result, fail};

/// How long a teardown may take on a loaded machine (it kills, unmounts and deletes; seconds
/// when the machine is idle).
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// Exit status `flock -n` reports when another process holds the slot.
const SLOT_BUSY: i32 = 75;

pub struct ClaimedSlot {
    pub slot: Slot,
    pub files: NodeFiles,
    watchdog: Child,
    /// Closing it (drop) tells the watchdog to tear down.
    pipe: Option<ChildStdin>,
}

/// The teardown script (tests/testenv/cluster-down.sh).
pub fn teardown_script() -> PathBuf {
    crate::workspace_root().join("tests/testenv/cluster-down.sh")
}

/// Claims the first free slot, removes what a crashed earlier owner left in it, and writes the
/// slot's state.env so the teardown knows what to remove.
pub fn claim() -> Result<ClaimedSlot> {
    std::fs::create_dir_all(config::LOCK_ROOT)
        .context(format!("creating {}", config::LOCK_ROOT))?;
    for index in 0..config::SLOTS {
        let slot = Slot { index };
        if let Some((watchdog, pipe)) = start_watchdog(&slot)? {
            let files = NodeFiles {
                dir: slot.state_dir(),
            };
            run_teardown(&files.dir)?;
            std::fs::create_dir_all(&files.dir)
                .context(format!("creating {}", files.dir.display()))?;
            std::fs::write(files.state_env(), config::state_env(&files, &slot))
                .context(format!("writing {}", files.state_env().display()))?;
            return Ok(ClaimedSlot {
                slot,
                files,
                watchdog,
                pipe: Some(pipe),
            });
        }
    }
    Err(fail(
        "claiming a test-cluster slot",
        format!(
            "all {} slots are in use (locks in {}): too many clusters at once",
            config::SLOTS,
            config::LOCK_ROOT
        ),
    ))
}

/// `Some` when the watchdog got the slot's lock; `None` when the slot is busy.
fn start_watchdog(slot: &Slot) -> Result<Option<(Child, ChildStdin)>> {
    let mut cmd = Command::new("flock");
    cmd.arg("-n")
        .arg("-E")
        .arg(SLOT_BUSY.to_string())
        .arg(slot.lock_file())
        .arg("sh")
        .arg("-c")
        .arg("echo locked; cat >/dev/null; exec \"$0\" \"$1\" >\"$2\" 2>&1")
        .arg(teardown_script())
        .arg(slot.state_dir())
        .arg(teardown_log(slot))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe. Its own session: a Ctrl-C on the terminal must not
    // stop it before it has cleaned up.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("starting the cluster watchdog (flock, from util-linux)")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("starting the cluster watchdog", "no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the cluster watchdog's answer")?;
    if line.trim() == "locked" {
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| fail("starting the cluster watchdog", "no stdin"))?;
        return Ok(Some((child, pipe)));
    }
    let status = child.wait().context("waiting for flock")?;
    if status.code() == Some(SLOT_BUSY) {
        Ok(None)
    } else {
        Err(fail(
            format!("locking {}", slot.lock_file().display()),
            format!("flock exited {status} without taking the lock"),
        ))
    }
}

/// Where the watchdog's teardown writes its output (beside the slot's lock).
pub fn teardown_log(slot: &Slot) -> PathBuf {
    slot.lock_file().with_extension("teardown.log")
}

/// Runs the teardown script on `dir` and waits for it (a no-op when `dir` does not exist).
pub fn run_teardown(dir: &Path) -> Result<()> {
    let out = Command::new("bash")
        .arg(teardown_script())
        .arg(dir)
        .output()
        .context("running tests/testenv/cluster-down.sh")?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            format!("tearing down {}", dir.display()),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl ClaimedSlot {
    /// Tears the cluster down through the watchdog and waits until it has finished (bounded).
    pub fn release(&mut self) -> Result<()> {
        drop(self.pipe.take());
        let deadline = std::time::Instant::now() + TEARDOWN_TIMEOUT;
        loop {
            match self
                .watchdog
                .try_wait()
                .context("waiting for the cluster watchdog")?
            {
                Some(status) if status.success() => return Ok(()),
                Some(status) => {
                    let log = std::fs::read_to_string(teardown_log(&self.slot)).unwrap_or_default();
                    return Err(fail(
                        "tearing down the test cluster",
                        format!("cluster-down.sh exited {status}: {log}"),
                    ));
                }
                None if std::time::Instant::now() > deadline => {
                    return Err(fail(
                        "tearing down the test cluster",
                        format!("cluster-down.sh did not finish within {TEARDOWN_TIMEOUT:?}"),
                    ));
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for ClaimedSlot {
    fn drop(&mut self) {
        if self.pipe.is_some()
            && let Err(e) = self.release()
        {
            eprintln!("testenv: {e}");
        }
    }
}
