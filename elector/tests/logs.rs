//! The binary's diagnostic log on stderr: plain text when stderr is not a terminal (a pipe here,
//! a file under `kubectl logs`), so no ANSI colour codes reach the logs people read.

use std::process::{Command, Stdio};

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let home = std::env::temp_dir().join(format!("elector-logs-test-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    // No kubeconfig and no in-cluster environment: the elector logs an error and exits.
    let out = Command::new(env!("CARGO_BIN_EXE_elector"))
        .args(["--election=logs-test", "--http=127.0.0.1:0", "--id=me"])
        .env_clear()
        .env("HOME", &home)
        .env("KUBECONFIG", home.join("missing-kubeconfig"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::remove_dir_all(&home).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERROR")
            && stderr.contains("cannot load a Kubernetes client configuration"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}
