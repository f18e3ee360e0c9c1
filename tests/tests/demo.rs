//! The built `demo` binary end to end on a real cluster: in CI mode it must exit 0 (it fails on
//! any check it makes of what the cluster reports) and leave nothing behind; interrupted by
//! SIGINT mid-run it must exit 130 and leave nothing behind either. Needs what ./test.sh
//! provides: the Kubernetes binaries, the images and `cargo build --bins`.

use std::io::{BufRead, BufReader, Read};

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testenv::cluster::config::Slot;
use testenv::cluster::footprint::Footprint;

/// A whole demo takes a few minutes here (two lease durations, a rolling update); the machine
/// is shared and slow at times.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// One demo at a time: each starts its own cluster.
static SERIAL: Mutex<()> = Mutex::new(());

struct Demo {
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        Demo::spawn(Command::new(env!("CARGO_BIN_EXE_demo")).args(args))
    }

    /// `./demo.sh args…` from the workspace root, as a user runs it.
    fn script(args: &[&str]) -> Demo {
        Demo::spawn(
            Command::new("bash")
                .arg(testenv::workspace_root().join("demo.sh"))
                .args(args)
                .current_dir(testenv::workspace_root()),
        )
    }

    fn spawn(cmd: &mut Command) -> Demo {
        let mut child = cmd
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

/// The cluster slot whose state directory the demo announces.
fn slot(line: &str) -> Slot {
    let dir = line
        .split_once(testenv::demo::STATE_LINE)
        .map(|(_, p)| p.trim())
        .expect("a cluster state line");
    let index = dir
        .rsplit_once("cluster-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("odd state directory {dir:?}"));
    Slot { index }
}

/// Nothing the demo's cluster made is left on the machine (read from /proc, /sys and the
/// filesystem).
fn assert_cleaned_up(slot: &Slot, output: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = Footprint::of(slot);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("after the demo exited: {left:#?}\n{output}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn last_step() -> String {
    let n = testenv::demo::steps::STEPS;
    format!("Step {n}/{n}")
}

fn crash_step() -> String {
    format!("Step 6/{}", testenv::demo::steps::STEPS)
}

#[test]
fn demo_runs_end_to_end_in_ci_mode_and_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut demo = Demo::start(&["--ci"]);
    let slot = slot(&demo.wait_for_line(testenv::demo::STATE_LINE, deadline));
    let code = demo.wait(deadline);
    let output = demo.output();
    // The demo exits non-zero as soon as one of its checks (made from what the cluster reports)
    // fails; the step headings only show how far it got.
    assert_eq!(code, Some(0), "exit code\n{output}");
    assert!(output.contains(&last_step()), "{output}");
    assert_cleaned_up(&slot, &output);
}

#[test]
fn sigint_mid_run_stops_everything() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut demo = Demo::start(&["--ci"]);
    let slot = slot(&demo.wait_for_line(testenv::demo::STATE_LINE, deadline));
    // The crash step waits about a lease duration: webhook, pods and electors all up.
    demo.wait_for_line(&crash_step(), deadline);
    let running = Footprint::of(&slot);
    assert!(
        !running.processes.is_empty() && !running.mounts.is_empty(),
        "nothing running before the interrupt? {running:#?}\n{}",
        demo.output()
    );
    // SAFETY: plain syscall on our own child, not yet reaped.
    let rc = unsafe { libc::kill(demo.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "sending SIGINT");
    let code = demo.wait(Instant::now() + Duration::from_secs(300));
    let output = demo.output();
    assert_eq!(code, Some(130), "exit code after SIGINT\n{output}");
    assert!(
        output.contains(&format!("Interrupted by SIGINT during {}", crash_step())),
        "{output}"
    );
    assert!(!output.contains("== Summary"), "{output}");
    assert_cleaned_up(&slot, &output);
}

/// Runs `./demo.sh down` when dropped, so a failed check never leaves a kept cluster behind.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(testenv::workspace_root().join("demo.sh"))
            .arg("down")
            .current_dir(testenv::workspace_root())
            .status();
    }
}

/// `kubectl args…` with the KUBECONFIG `./demo.sh --keep` printed (never the user's own).
fn kubectl_with(kubeconfig: &str, args: &[&str]) -> std::process::Output {
    Command::new(testenv::control_plane::kubectl_path().expect("kubectl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("running kubectl")
}

#[test]
fn demo_sh_keep_leaves_a_working_cluster_and_down_removes_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // ./demo.sh also runs provision.sh, images/build.sh and cargo build (up to date here).
    let deadline = Instant::now() + RUN_TIMEOUT + Duration::from_secs(600);
    let down = Down;
    let mut demo = Demo::script(&["--keep"]);
    let slot = slot(&demo.wait_for_line(testenv::demo::STATE_LINE, deadline));
    let code = demo.wait(deadline);
    let output = demo.output();
    assert_eq!(code, Some(0), "./demo.sh --keep\n{output}");
    eprintln!("{output}");
    assert!(output.contains(&last_step()), "{output}");
    let kubeconfig = output
        .lines()
        .find_map(|l| l.split_once("export KUBECONFIG=").map(|(_, p)| p.trim()))
        .unwrap_or_else(|| panic!("no KUBECONFIG line\n{output}"))
        .to_string();

    // The script has exited; the cluster still answers, with the demo's pods on it.
    let nodes = kubectl_with(&kubeconfig, &["get", "nodes", "-o", "json"]);
    assert!(
        nodes.status.success(),
        "kubectl get nodes with the printed KUBECONFIG: {}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).expect("nodes JSON");
    let ready = nodes["items"][0]["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "the kept node is not Ready: {nodes:#}");
    let pods = kubectl_with(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-n",
            testenv::demo::steps::NAMESPACE,
            "-l",
            "app=my-app",
            "-o",
            "json",
        ],
    );
    let pods: serde_json::Value = serde_json::from_slice(&pods.stdout).expect("pods JSON");
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 3, "the example's pods on the kept cluster");
    for p in &items {
        assert_eq!(
            testenv::cluster::pods::not_ready(p),
            None,
            "on the kept cluster"
        );
    }
    let lease = kubectl_with(
        &kubeconfig,
        &[
            "get",
            "lease",
            testenv::demo::steps::APP,
            "-n",
            testenv::demo::steps::NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    let holder = String::from_utf8_lossy(&lease.stdout).to_string();
    assert!(
        items
            .iter()
            .any(|p| p["metadata"]["name"] == holder.as_str()),
        "the kept Lease names {holder:?}"
    );
    assert!(
        !Footprint::of(&slot).processes.is_empty(),
        "nothing of the cluster runs after --keep"
    );

    // `./demo.sh down` removes it all.
    let mut down_run = Demo::script(&["down"]);
    let code = down_run.wait(Instant::now() + Duration::from_secs(400));
    let down_output = down_run.output();
    assert_eq!(code, Some(0), "./demo.sh down\n{down_output}");
    assert!(down_output.contains("removed"), "{down_output}");
    assert_cleaned_up(&slot, &format!("{output}\n{down_output}"));
    let gone = kubectl_with(&kubeconfig, &["get", "nodes", "--request-timeout=5s"]);
    assert!(
        !gone.status.success(),
        "the cluster still answers after down"
    );
    // A second `down` has nothing to do.
    let mut again = Demo::script(&["down"]);
    assert_eq!(
        again.wait(Instant::now() + Duration::from_secs(60)),
        Some(0)
    );
    assert!(
        again.output().contains("no kept demo cluster"),
        "{}",
        again.output()
    );
    drop(down);
}
