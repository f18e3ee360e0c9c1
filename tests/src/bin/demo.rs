//! `demo`: the one-command local demo (see `testenv::demo`); `./demo.sh` builds and runs it.

use std::process::ExitCode;

use testenv::demo::{self, Command};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // SAFETY: isatty only inspects the descriptor.
    let stdin_tty = unsafe { libc::isatty(0) } == 1;
    let ci = std::env::var("CI").ok();
    let opts = match demo::parse_args(&args, stdin_tty, ci.as_deref()) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            println!("{}", demo::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e}\n\n{}", demo::USAGE);
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(demo::main(opts));
    // A pending "press Enter" read may still hold a blocking thread; do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
