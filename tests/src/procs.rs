//! Child processes that never outlive the test process.
//!
//! Every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`: the
//! kernel sends the signal when the thread that forked the child exits, and cargo's test threads
//! end after each test, so spawning from them would kill a shared control plane early. The
//! spawner thread lives as long as the process, so children die exactly when the test process
//! dies — normally, by panic, or by `kill -9`. Statics are never dropped, so a per-process
//! watchdog (`sh` reading a pipe only this process holds) removes the scratch directory once the
//! process is gone.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // Never joined: the thread must live as long as the process (see the module docs).
        let spawn = std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                // All senders are gone only if the static is gone, i.e. never; keep the
                // thread (and so the children) alive regardless.
                loop {
                    std::thread::park();
                }
            });
        if let Err(e) = spawn {
            // Without the thread nothing can be spawned; spawn_guarded reports the closed channel.
            eprintln!("testenv: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it is SIGKILLed when this process dies.
fn spawn_guarded(mut cmd: Command, what: &str) -> Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe libc
    // functions (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would kill us.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("test process exited during spawn"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let sent = spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))
        .and_then(|s| {
            s.send((cmd, tx))
                .map_err(|_| std::io::Error::other("spawner thread is gone"))
        });
    sent.context(format!("spawning {what}"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))
        .and_then(|r| r)
        .context(format!("spawning {what}"))
}

/// The per-process scratch directory, removed by a watchdog once this process is gone.
pub fn scratch_root() -> Result<&'static Path> {
    static ROOT: OnceLock<std::result::Result<(PathBuf, Mutex<ChildStdin>), String>> =
        OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("testenv-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // The watchdog reads its stdin until EOF, which happens when the last holder of the
        // write end — this process — is gone; then it removes the directory. It runs in its own
        // session so a Ctrl-C on the terminal does not stop it before it cleans up.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                "cat >/dev/null; for i in 1 2 3 4 5; do rm -rf -- \"$1\" 2>/dev/null && \
                 [ ! -e \"$1\" ] && exit 0; sleep 1; done",
            )
            .arg("testenv-watchdog")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting the cleanup watchdog: {e}"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| "the cleanup watchdog has no stdin".to_string())?;
        Ok((dir, Mutex::new(stdin)))
    });
    match root {
        Ok((dir, _)) => Ok(dir),
        Err(e) => Err(Error::Io {
            context: "preparing the scratch directory".into(),
            source: std::io::Error::other(e.clone()),
        }),
    }
}

/// A fresh directory under the scratch root.
pub fn scratch_dir(prefix: &str) -> Result<PathBuf> {
    let dir = scratch_root()?.join(format!("{prefix}-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).context(format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A short random suffix for names (namespaces, directories).
pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Mix pid, time and a counter: unique within the process and unlikely to collide across.
    let x = (u64::from(std::process::id()) << 32) ^ u64::from(nanos) ^ (n << 20) ^ n;
    let mut s = String::new();
    let mut v = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..6 {
        let d = (v % 36) as u8;
        s.push(if d < 10 {
            (b'0' + d) as char
        } else {
            (b'a' + d - 10) as char
        });
        v /= 36;
    }
    s
}

/// A running child process whose stdout and stderr go to files.
pub struct Proc {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Spawns `program args…` with `envs`, logging to `<log_dir>/<name>.{out,err}`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log_dir: &Path,
    ) -> Result<Proc> {
        let stdout = log_dir.join(format!("{name}.out"));
        let stderr = log_dir.join(format!("{name}.err"));
        let out = File::create(&stdout).context(format!("creating {}", stdout.display()))?;
        let err = File::create(&stderr).context(format!("creating {}", stderr.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = spawn_guarded(cmd, &format!("{name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            status: Mutex::new(None),
            stdout,
            stderr,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, if the process has exited (reaps it).
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(s)) = child.try_wait() {
                *status = Some(s);
            }
        }
        *status
    }

    /// Fails with the output tail if the process has exited.
    pub fn ensure_running(&self) -> Result<()> {
        match self.try_status() {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                name: self.name.clone(),
                status: describe(status),
                log: self.output_tail(40),
            }),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) unless the process was already reaped.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        if self.try_status().is_some() {
            return Ok(());
        }
        // SAFETY: plain syscall; the pid is ours and not yet reaped, so it cannot be reused.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        if rc != 0 {
            return Err(Error::Io {
                context: format!(
                    "sending signal {signal} to {} (pid {})",
                    self.name, self.pid
                ),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    pub async fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(s) = self.wait_exit(grace).await {
            return Ok(s);
        }
        self.kill_and_reap()
    }

    /// SIGKILL and reap, blocking (used by Drop too).
    pub fn kill_and_reap(&self) -> Result<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Ok(s);
        }
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let s = child
            .wait()
            .context(format!("reaping {} (pid {})", self.name, self.pid))?;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        Ok(s)
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last `n` lines of stdout and of stderr, labelled, for failure messages.
    pub fn output_tail(&self, n: usize) -> String {
        format!(
            "--- {} stdout ({}) ---\n{}\n--- {} stderr ({}) ---\n{}",
            self.name,
            self.stdout.display(),
            tail_of(&self.stdout, n),
            self.name,
            self.stderr.display(),
            tail_of(&self.stderr, n)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill_and_reap();
    }
}

/// "exit code 0" / "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The last `n` lines of a file, reading at most its last 64 KiB.
fn tail_of(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    last_lines(&String::from_utf8_lossy(&buf), n)
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `testenv-hold` (`bin`, with `args`) and waits up to `timeout` for the one JSON line it
/// prints once what it holds runs; returns the child (for the caller to kill) and that line.
pub async fn start_hold(
    bin: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<(Child, serde_json::Value)> {
    let what = format!("testenv-hold {}", args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| crate::fail(format!("starting {what}"), e.to_string()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| crate::fail(&what, "no stdout"))?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let line = tokio::time::timeout(timeout, line)
        .await
        .map_err(|_| crate::fail(&what, format!("nothing held within {timeout:?}")))?
        .map_err(|e| crate::fail(&what, e.to_string()))?
        .map_err(|e| crate::fail(format!("reading {what}'s stdout"), e.to_string()))?;
    let info = serde_json::from_str(&line)
        .map_err(|e| crate::fail(format!("{what}'s line"), format!("{e}: {line:?}")))?;
    Ok((child, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_table() {
        let cases = [
            ("", 3, ""),
            ("a", 3, "a"),
            ("a\nb\nc\nd", 2, "c\nd"),
            ("a\nb\n", 5, "a\nb"),
            ("a\nb\nc", 0, ""),
        ];
        for (text, n, want) in cases {
            assert_eq!(last_lines(text, n), want, "last_lines({text:?}, {n})");
        }
    }

    #[test]
    fn suffixes_are_dns_safe_and_distinct() {
        let a = rand_suffix();
        let b = rand_suffix();
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.len(), 6);
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{s}"
            );
        }
    }

    #[tokio::test]
    async fn proc_captures_output_and_reports_exit() -> Result<()> {
        let dir = scratch_dir("proc-test")?;
        let p = Proc::spawn(
            "echo",
            Path::new("/bin/sh"),
            &["-c".into(), "echo out; echo err >&2; exit 3".into()],
            &[],
            &dir,
        )?;
        let status = p.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        assert_eq!(p.stdout_text(), "out\n");
        assert_eq!(p.stderr_text(), "err\n");
        let e = p.ensure_running().unwrap_err().to_string();
        assert!(e.contains("exit code 3") && e.contains("err"), "{e}");
        Ok(())
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill() -> Result<()> {
        let dir = scratch_dir("proc-test")?;
        let p = Proc::spawn(
            "stubborn",
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "trap '' TERM; while :; do sleep 0.1; done".into(),
            ],
            &[],
            &dir,
        )?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = p.stop(Duration::from_millis(300)).await?;
        assert_eq!(s.signal(), Some(libc::SIGKILL));
        Ok(())
    }
}
