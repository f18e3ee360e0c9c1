//! The built `demo` binary end to end: in CI mode with short elector timings it must exit 0,
//! show the injected pod, the "is the leader" lines, a handover and a failover, and leave nothing
//! behind; interrupted by SIGINT mid-run it must exit 130 and leave nothing behind either.
//! Needs the control-plane binaries (tests/testenv/provision.sh) and `cargo build --bins`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A whole demo takes well under a minute here; the machine is shared and slow at times.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// One demo at a time: each starts its own control plane.
static SERIAL: Mutex<()> = Mutex::new(());

struct Demo {
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
            .args(args)
            .env_remove("CI")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the demo binary");
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let all = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                all.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let all_err = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            all_err.lock().unwrap().push_str(&s);
        });
        Demo {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn wait_for_line(&mut self, needle: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("no line containing {needle:?}\n{}", self.output());
                }
            }
        }
    }

    /// Waits for exit (killing it after `deadline`); returns the exit code.
    fn wait(&mut self, deadline: Instant) -> Option<i32> {
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the demo") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(200));
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the demo did not finish in time\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The scratch directory the demo announces.
fn scratch_dir(line: &str) -> PathBuf {
    let path = line
        .split_once("(removed on exit): ")
        .map(|(_, p)| p.trim())
        .expect("a scratch directory line");
    assert!(
        path.starts_with('/') && path.contains("testenv-"),
        "odd scratch path {path:?}"
    );
    PathBuf::from(path)
}

/// Processes (other than this one) whose command line or environment mention `dir`: every
/// component the demo starts has it in one of them (arguments or KUBECONFIG).
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        for file in ["cmdline", "environ"] {
            let Ok(bytes) = std::fs::read(e.path().join(file)) else {
                continue;
            };
            if String::from_utf8_lossy(&bytes).contains(&needle) {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                found.push(format!("{pid}: {cmd}"));
                break;
            }
        }
    }
    found
}

/// Nothing the demo started survives it, and its scratch directory is gone.
fn assert_cleaned_up(dir: &Path, output: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_using(dir);
        if left.is_empty() && !dir.exists() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "after the demo exited: processes still using {}: {left:?}; directory exists: {}\n{output}",
                dir.display(),
                dir.exists()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn demo_runs_end_to_end_in_ci_mode_and_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut demo = Demo::start(&["--ci", "--fast"]);
    let dir = scratch_dir(&demo.wait_for_line("scratch directory", deadline));
    let code = demo.wait(deadline);
    let output = demo.output();
    assert_eq!(code, Some(0), "exit code\n{output}");

    let stdout = demo.stdout.lock().unwrap().join("\n");
    for want in [
        "Step 1/6",
        "Step 2/6",
        "Step 3/6",
        "Step 4/6",
        "Step 5/6",
        "Step 6/6",
        // The injected pod, as the API server stored it.
        "annotation added: leader-election/status: injected",
        "+ container leader-elector",
        "args:            --election=my-app --http=0.0.0.0:4040 --lease-duration=15s",
        "securityContext: {",
        "env added:       LEADER_ELECTION_URL=http://127.0.0.1:4040",
        "+ volume leader-elector-api-access: projected [serviceAccountToken",
        "holderIdentity: my-app-",
        "is the leader",
        "graceful handover: my-app-",
        "crash failover: my-app-",
        "== Summary",
    ] {
        assert!(stdout.contains(want), "missing {want:?}\n{output}");
    }
    // The electors ran with --fast timings; the injected pod keeps the defaults.
    assert!(
        stdout.contains("elector timings: lease 4s, renew deadline 3s, retry period 1s"),
        "{output}"
    );
    // Three pods, each answering GET / with the same leader.
    let answers: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("GET / -> {\"name\":\"my-app-"))
        .collect();
    assert_eq!(answers.len(), 3, "{output}");
    assert_eq!(
        answers
            .iter()
            .filter(|l| l.ends_with("is_leader: true"))
            .count(),
        1,
        "{output}"
    );
    // Three different leaders over the run: first, after the handover, after the failover.
    let summary = stdout.split("== Summary").nth(1).unwrap_or_default();
    let summary_line = |p: &str| {
        summary
            .lines()
            .find(|l| l.trim_start().starts_with(p))
            .unwrap_or_else(|| panic!("no {p:?} line\n{output}"))
            .to_string()
    };
    let first = summary_line("first leader: ");
    let handover = summary_line("graceful handover: ");
    let failover = summary_line("crash failover:    ");
    let first = first
        .trim()
        .trim_start_matches("first leader: ")
        .to_string();
    assert!(
        handover.contains(&format!("SIGTERM to {first};")),
        "{handover}\n{output}"
    );
    assert!(!failover.contains(&first), "{failover}\n{output}");
    assert_cleaned_up(&dir, &output);
}

#[test]
fn sigint_mid_run_stops_everything() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut demo = Demo::start(&["--ci", "--fast"]);
    let dir = scratch_dir(&demo.wait_for_line("scratch directory", deadline));
    // The failover wait (about a lease duration): control plane, webhook and electors all up.
    demo.wait_for_line("SIGKILL -> ", deadline);
    assert!(
        !processes_using(&dir).is_empty(),
        "nothing running before the interrupt?\n{}",
        demo.output()
    );
    // SAFETY: plain syscall on our own child, not yet reaped.
    let rc = unsafe { libc::kill(demo.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "sending SIGINT");
    let code = demo.wait(Instant::now() + Duration::from_secs(60));
    let output = demo.output();
    assert_eq!(code, Some(130), "exit code after SIGINT\n{output}");
    assert!(
        output.contains("Interrupted by SIGINT during Step 5/6"),
        "{output}"
    );
    assert!(!output.contains("== Summary"), "{output}");
    assert_cleaned_up(&dir, &output);
}
