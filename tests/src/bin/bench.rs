//! `bench`: the release elector beside client-go's leaderelection, and the webhook, on a real
//! control plane (issue 14). `./bench.sh` installs what it needs, builds, and runs this.
//! Exits 1 when a figure misses its target or a scenario fails, 2 on bad arguments.

use std::io::Write;
use std::process::ExitCode;

use testenv::bench::{self, Command, report};

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
    let mut out = std::io::stdout();
    if out
        .write_all(bench::render_report(&report).as_bytes())
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
    let markdown = path.with_file_name("performance.md");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&path, json + "\n"))
        .and_then(|_| std::fs::write(&markdown, bench::render_readme(&report)));
    if let Err(e) = written {
        eprintln!("bench: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "bench: wrote {} (every sample) and {} (the README's tables)",
        path.display(),
        markdown.display()
    );
    let misses = report::misses(&report.rows).len();
    if misses == 0 && report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "bench: {misses} figure(s) missed their target, {} scenario(s) failed",
            report.errors.len()
        );
        ExitCode::FAILURE
    }
}
