//! Starts a control plane, prints `{"pids":[…],"scratch":"…"}` on one line and waits forever.
//! The harness test kills it with SIGKILL and checks that nothing it started survives.

use std::io::Write;

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testenv-hold: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let cp = match testenv::ControlPlane::start().await {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("testenv-hold: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let scratch = testenv::procs::scratch_root()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let line = serde_json::json!({"pids": cp.pids(), "scratch": scratch});
        let mut out = std::io::stdout();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return std::process::ExitCode::FAILURE;
        }
        // Held until killed; the control plane must die with this process.
        std::future::pending::<()>().await;
        drop(cp);
        std::process::ExitCode::SUCCESS
    })
}
