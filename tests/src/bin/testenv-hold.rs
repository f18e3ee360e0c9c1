//! Starts a control plane (or, with `--node`, a whole cluster), prints
//! `{"pids":[…],"scratch":"…","state":"…","kubeconfig":"…"}` on one line and waits forever.
//! The harness tests kill it with SIGKILL and check that nothing it started survives.

use std::io::Write;

fn main() -> std::process::ExitCode {
    let with_node = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--node") => true,
        Some(other) => {
            eprintln!("testenv-hold: unknown argument {other} (usage: testenv-hold [--node])");
            return std::process::ExitCode::from(2);
        }
    };
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
        let scratch = testenv::procs::scratch_root()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let held: Box<dyn std::any::Any> = if with_node {
            match testenv::cluster::Cluster::start().await {
                Ok(c) => {
                    let line = serde_json::json!({"pids": c.pids(), "scratch": scratch,
                        "state": c.state_dir(), "kubeconfig": c.admin_kubeconfig()});
                    if !print(&line) {
                        return std::process::ExitCode::FAILURE;
                    }
                    Box::new(c)
                }
                Err(e) => {
                    eprintln!("testenv-hold: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        } else {
            match testenv::ControlPlane::start().await {
                Ok(cp) => {
                    let line = serde_json::json!({"pids": cp.pids(), "scratch": scratch,
                        "kubeconfig": cp.admin_kubeconfig()});
                    if !print(&line) {
                        return std::process::ExitCode::FAILURE;
                    }
                    Box::new(cp)
                }
                Err(e) => {
                    eprintln!("testenv-hold: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        };
        // Held until killed; everything must be cleaned up after this process dies.
        std::future::pending::<()>().await;
        drop(held);
        std::process::ExitCode::SUCCESS
    })
}

fn print(line: &serde_json::Value) -> bool {
    let mut out = std::io::stdout();
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}
