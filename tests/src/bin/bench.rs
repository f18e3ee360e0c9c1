//! `bench`: measures the release elector and webhook on a real control plane (issue 7).
//! `./bench.sh` installs what it needs, builds the release binaries and runs this.

use std::io::Write;
use std::process::ExitCode;

use testenv::bench::{self, Command};

fn main() -> ExitCode {
    let opts = match bench::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(o)) => *o,
        Ok(Command::Help) => {
            print!("{}", bench::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match rt.block_on(bench::run(&opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = bench::render_report(&report);
    let mut out = std::io::stdout();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let path = opts
        .out
        .clone()
        .unwrap_or_else(|| testenv::workspace_root().join("target/bench/latest.json"));
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bench: serializing the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&path, json + "\n"));
    if let Err(e) = written {
        eprintln!("bench: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("bench: wrote {}", path.display());
    // The replayed AdmissionReview, beside the report: reproducible, and usable as a fixture.
    if let Some(w) = &report.webhook {
        let review = path.with_file_name("admission-review.json");
        match std::fs::write(&review, &w.review_json) {
            Ok(()) => eprintln!("bench: wrote {}", review.display()),
            Err(e) => eprintln!("bench: writing {}: {e}", review.display()),
        }
    }
    // Scenario failures are in the report; they still make the run fail.
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
