//! The one-command demo on a real single-node cluster (`./demo.sh`): the webhook installed with
//! `kubectl apply -k manifests/`, the example app, who leads, a graceful handover, a crash and a
//! rolling update, each timed and checked from what the cluster reports.

pub mod never;
pub mod steps;
pub mod ui;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::error::Result;
use steps::{Demo, STEPS};
use ui::{Ui, secs};

pub const USAGE: &str = "\
Usage: demo [--ci] [--keep]

Runs the leader-election demo on a real single-node cluster started on this machine, then
removes everything it started. Run it through ./demo.sh, which builds what it needs first.

  --ci     no pauses; exit non-zero when a check fails (also when stdin is not a terminal or
           the environment variable CI is set)
  --keep   leave the cluster running at the end and print the KUBECONFIG to use; the demo
           process holds it until it gets SIGTERM or SIGINT (./demo.sh down)
  -h, --help";

/// Where the cluster keeps its state, announced once it runs (the demo test checks the machine
/// for anything left of it afterwards).
pub const STATE_LINE: &str = "cluster state: ";

/// The line `--keep` prints once the demo is done; ./demo.sh waits for it.
pub const KEEP_MARKER: &str = "cluster kept: export KUBECONFIG=";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Pause between steps (a person is watching).
    pub interactive: bool,
    /// Keep the cluster when done.
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Help,
    Run(Options),
}

/// Parses the command line. `stdin_tty` and `ci_env` (the value of `CI`) decide whether the
/// run may pause for a person.
pub fn parse_args(
    args: &[String],
    stdin_tty: bool,
    ci_env: Option<&str>,
) -> std::result::Result<Command, String> {
    let mut ci = false;
    let mut keep = false;
    for a in args {
        match a.as_str() {
            "--ci" => ci = true,
            "--keep" => keep = true,
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // CI systems set CI=true; an explicit CI=false or CI=0 means "not CI".
    let ci_env =
        ci_env.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false" | "False" | "FALSE"));
    Ok(Command::Run(Options {
        interactive: !ci && stdin_tty && !ci_env,
        keep,
    }))
}

/// What the summary reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub cluster: Duration,
    pub webhook: Duration,
    pub pods: Vec<String>,
    pub first_leader: String,
    /// From, to, time until the Lease named `to`, time until every pod answered `to`.
    pub handover: Option<(String, String, Duration, Duration)>,
    /// From, to, time until the Lease named `to`.
    pub failover: Option<(String, String, Duration)>,
    pub rollout_moves: Option<usize>,
    /// `native-sidecar: never`: who leads, time from apply to every pod agreeing.
    pub never: Option<(String, Duration)>,
}

/// Runs the demo, handling SIGINT/SIGTERM/SIGHUP at any step: the cluster is dropped, which
/// tears down everything it made. Returns the exit code.
pub async fn main(opts: Options) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let ui = Ui::new(opts.interactive, STEPS);
    let (mut int, mut term, mut hup) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        _ => {
            eprintln!(
                "demo: cannot install signal handlers; not starting (nothing could be cleaned up on Ctrl-C)"
            );
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut cluster: Option<Cluster> = None;
    let outcome = tokio::select! {
        biased;
        _ = int.recv() => Err(("SIGINT", 130u8)),
        _ = term.recv() => Err(("SIGTERM", 143)),
        _ = hup.recv() => Err(("SIGHUP", 129)),
        r = run(&ui, &mut cluster) => Ok(r),
    };
    let code = match outcome {
        Err((sig, code)) => {
            println!(
                "\n{}",
                ui.style(
                    "33",
                    &format!("Interrupted by {sig} during {}.", ui.current_step())
                )
            );
            ExitCode::from(code)
        }
        Ok(Err(e)) => {
            eprintln!(
                "\n{}",
                ui.style("1;31", &format!("FAILED during {}:", ui.current_step()))
            );
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Ok(Ok(s)) => {
            print_summary(&s, started.elapsed());
            if opts.keep
                && let Some(c) = &cluster
            {
                println!("\n{}{}", KEEP_MARKER, c.admin_kubeconfig().display());
                println!(
                    "   the cluster runs until ./demo.sh down (or SIGTERM to pid {})",
                    std::process::id()
                );
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
            ExitCode::SUCCESS
        }
    };
    let teardown = Instant::now();
    let cleaned = match cluster.take() {
        Some(c) => c
            .stop()
            .await
            .map(|()| "the cluster and everything it made are removed".to_string()),
        None => Ok("nothing was left running".to_string()),
    };
    match cleaned {
        Ok(what) => println!("   cleaned up in {}: {what}", secs(teardown.elapsed())),
        Err(e) => {
            eprintln!("   clean-up failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    code
}

async fn run(ui: &Ui, cluster: &mut Option<Cluster>) -> Result<Summary> {
    let mut s = Summary::default();
    println!(
        "{}",
        ui.style(
            "1",
            "leader-election demo: a real single-node Kubernetes cluster on this machine"
        )
    );
    let t = Instant::now();
    *cluster = Some(Cluster::start().await?);
    s.cluster = t.elapsed();
    let Some(c) = cluster.as_ref() else {
        unreachable!("just started");
    };
    ui.say(&format!("{STATE_LINE}{}", c.state_dir().display()));
    let demo = Demo { c, ui };
    demo.cluster(&mut s).await?;
    demo.webhook(&mut s).await?;
    demo.app(&mut s).await?;
    demo.election(&mut s).await?;
    demo.handover(&mut s).await?;
    demo.crash(&mut s).await?;
    demo.rollout(&mut s).await?;
    demo.never(&mut s).await?;
    Ok(s)
}

fn print_summary(s: &Summary, total: Duration) {
    println!("\n== Summary");
    println!(
        "   cluster ready in {}; webhook installed and ready in {}",
        secs(s.cluster),
        secs(s.webhook)
    );
    println!("   pods: {}", s.pods.join(", "));
    println!("   first leader: {}", s.first_leader);
    if let Some((from, to, lease, all)) = &s.handover {
        println!(
            "   kubectl delete pod {from}: {to} in the Lease after {}, in every pod's answer after {}",
            secs(*lease),
            secs(*all)
        );
    }
    if let Some((from, to, d)) = &s.failover {
        println!(
            "   SIGKILL of {from}'s containers: {to} leads after {}",
            secs(*d)
        );
    }
    if let Some(m) = s.rollout_moves {
        println!("   rollout restart of 3 replicas: leadership moved {m} time(s)");
    }
    if let Some((holder, d)) = &s.never {
        println!(
            "   native-sidecar: never: the elector a regular container, {holder} leads {} after the apply",
            secs(*d)
        );
    }
    println!("   demo finished in {}", secs(total));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments, stdin is a terminal, `CI`, expected outcome.
    type Case = (
        Vec<String>,
        bool,
        Option<&'static str>,
        std::result::Result<Command, String>,
    );

    #[test]
    fn parse_args_table() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let run = |interactive, keep| Ok(Command::Run(Options { interactive, keep }));
        let cases: Vec<Case> = vec![
            (args(&[]), true, None, run(true, false)),
            (args(&["--ci"]), true, None, run(false, false)),
            (args(&[]), false, None, run(false, false)),
            (args(&[]), true, Some("true"), run(false, false)),
            (args(&[]), true, Some("false"), run(true, false)),
            (args(&["--keep"]), true, None, run(true, true)),
            (args(&["--help"]), true, None, Ok(Command::Help)),
            (
                args(&["--fast"]),
                true,
                None,
                Err("unknown argument \"--fast\"".into()),
            ),
        ];
        for (a, tty, ci, want) in cases {
            assert_eq!(parse_args(&a, tty, ci), want, "{a:?} tty={tty} CI={ci:?}");
        }
    }
}
