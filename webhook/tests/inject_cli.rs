//! The built `webhook` binary's `inject` and `uninject`: standard input, files, directories,
//! `--in-place`, and failures (exit code, message, nothing written).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn webhook(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_webhook"));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "WEBHOOK_ELECTOR_IMAGE",
        "WEBHOOK_ELECTOR_IMAGE_PULL_POLICY",
        "WEBHOOK_NATIVE_SIDECAR",
        "WEBHOOK_NATIVE_SIDECAR_SUPPORTED",
        "WEBHOOK_INJECT_NAMESPACE",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn elector_count(v: &Value) -> usize {
    let t = &v["spec"]["template"]["spec"];
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| t[k].as_array().cloned().unwrap_or_default())
        .filter(|c| c["name"] == contract::CONTAINER_NAME)
        .count()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// Copies a fixture directory into a fresh temporary one.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn stdin_to_stdout_and_back() {
    let input = read(&fixtures().join("stream.yaml"));
    for args in [&["inject"][..], &["inject", "-"][..]] {
        let out = ok(&webhook(args, Some(&input)));
        let d = docs(&out);
        assert_eq!(d.len(), 3);
        assert_eq!(elector_count(&d[1]), 1);
        let back = ok(&webhook(&["uninject"], Some(&out)));
        assert_eq!(docs(&back), docs(&input));
    }
    // The flags admission learns from the cluster.
    let out = ok(&webhook(
        &[
            "inject",
            "--elector-image=registry.test/elector:9",
            "--elector-image-pull-policy=Always",
            "--native-sidecar-supported=false",
        ],
        Some(&input),
    ));
    let d = docs(&out);
    let c = &d[1]["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(c["name"], contract::CONTAINER_NAME);
    assert_eq!(c["image"], "registry.test/elector:9");
    assert_eq!(c["imagePullPolicy"], "Always");
}

#[test]
fn files_and_directories_to_stdout() {
    let f = fixtures();
    let out = ok(&webhook(
        &[
            "inject",
            f.join("kinds/job.yaml").to_str().unwrap(),
            f.join("tree").to_str().unwrap(),
        ],
        None,
    ));
    // job.yaml, then tree/ in name order: a-deployment.yml, nested/job.yaml, nested/list.json,
    // plain.yaml; notes.txt is not a manifest.
    let d = docs(&out);
    let kinds: Vec<&str> = d.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Job", "Deployment", "Job", "List", "Service"]);
    assert_eq!(elector_count(&d[0]), 1);
    assert_eq!(elector_count(&d[1]), 1);
    assert_eq!(elector_count(&d[3]["items"][1]), 1);
    assert!(!out.contains("ignored by inject"));
    // The untouched file is there as read.
    assert!(out.contains(&read(&f.join("tree/plain.yaml"))));
}

#[test]
fn in_place_rewrites_only_changed_files_and_uninject_restores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    copy_tree(&fixtures().join("tree"), &dir);
    let before: Vec<(PathBuf, String)> = [
        "a-deployment.yml",
        "plain.yaml",
        "nested/job.yaml",
        "nested/list.json",
    ]
    .iter()
    .map(|p| (dir.join(p), read(&dir.join(p))))
    .collect();
    let out = webhook(
        &["inject", "--in-place", "--with-rbac", dir.to_str().unwrap()],
        None,
    );
    assert_eq!(ok(&out), "", "nothing on stdout with --in-place");
    let deployment = read(&dir.join("a-deployment.yml"));
    let d = docs(&deployment);
    assert_eq!(
        d.iter()
            .map(|v| v["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["Deployment", "Lease", "Role", "RoleBinding"]
    );
    assert_eq!(elector_count(&d[0]), 1);
    assert_eq!(
        read(&dir.join("plain.yaml")),
        before[1].1,
        "untouched file rewritten"
    );
    let list: Value = serde_json::from_str(&read(&dir.join("nested/list.json"))).unwrap();
    // The List holds the same Deployment (shop/web): its Lease and RBAC are written once per
    // run, in the first file that needs them.
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(elector_count(&list["items"][1]), 1);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("inject-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    ok(&webhook(
        &["uninject", "-i", "--with-rbac", dir.to_str().unwrap()],
        None,
    ));
    for (p, text) in &before {
        let now = read(p);
        if p.extension().is_some_and(|e| e == "json") {
            let a: Value = serde_json::from_str(&now).unwrap();
            let b: Value = serde_json::from_str(text).unwrap();
            assert_eq!(a.to_string(), b.to_string(), "{}", p.display());
        } else {
            assert_eq!(docs(&now), docs(text), "{}", p.display());
        }
    }
    assert_eq!(read(&dir.join("plain.yaml")), before[1].1);
}

#[test]
fn a_bad_document_fails_the_run_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.yaml");
    let bad = tmp.path().join("deploy.yaml");
    std::fs::copy(fixtures().join("kinds/deployment.yaml"), &good).unwrap();
    std::fs::copy(fixtures().join("bad-duration.yaml"), &bad).unwrap();
    let (good_before, bad_before) = (read(&good), read(&bad));
    let out = webhook(&["inject", "-i", tmp.path().to_str().unwrap()], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}: document 2 (Deployment my-app): spec.template.metadata.annotations.leader-election/lease-duration: annotation leader-election/lease-duration=\"abc\" is invalid",
        bad.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(
        read(&good),
        good_before,
        "a file was written although the run failed"
    );
    assert_eq!(read(&bad), bad_before);
    // Same to stdout: nothing printed.
    let out = webhook(
        &["inject", good.to_str().unwrap(), bad.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["inject", "--in-place"],
            Some("a: 1\n"),
            "--in-place rewrites files",
        ),
        (
            &["inject", "-i", "-"],
            Some("a: 1\n"),
            "--in-place rewrites files",
        ),
        (
            &["inject", "/nonexistent/deploy.yaml"],
            None,
            "/nonexistent/deploy.yaml",
        ),
        (
            &["inject"],
            Some("a: [\n"),
            "<stdin>: document 1: not valid YAML",
        ),
        (
            &["inject", "--native-sidecar", "sometimes"],
            Some(""),
            "sometimes",
        ),
    ];
    for (args, stdin, want) in cases {
        let out = webhook(args, *stdin);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
