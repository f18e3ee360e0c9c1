//! The one-command local demo (`./demo.sh` → `target/debug/demo`): a real control plane, the
//! webhook injecting the elector into the seed's `my-app` Deployment, one elector process per
//! injected pod (there is no kubelet), then a graceful handover and a crash failover, timed.
//!
//! Everything it starts lives in the harness's scratch directory and dies with this process
//! (see [`crate::procs`]); on SIGINT/SIGTERM/SIGHUP the running step is dropped, which kills and
//! reaps every child, and the scratch directory is removed. Only its own kubeconfig files are
//! used: the user's `~/.kube/config` is never read or written.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use contract::{Timings, deploy, flags};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::elector::{
    Elector, agreed_leader, ask, explain, leader_and_rest, wait_for_agreed_leader, with_output,
};
use crate::error::{Context, Error, Result, fail};
use crate::procs;
use crate::wait::{eventually, eventually_while_running};
use crate::webhook::{
    Webhook, ca_bundle, elector_container, find_webhook_configuration, injection_problems,
    loopback_webhook_configuration, mutate_url, rbac_list, serve_args, shipped_base,
};
use crate::{ControlPlane, control_plane, httpc, manifests};

/// Namespace the example is applied to, as a user following its README would.
pub const APP_NAMESPACE: &str = "default";
/// The example's Deployment, and so the Lease's name.
pub const APP_NAME: &str = "my-app";
const STEPS: usize = 6;
const POD_TIMEOUT: Duration = Duration::from_secs(180);

pub const USAGE: &str = "\
Usage: demo [--ci] [--fast]

Runs the leader-election demo on a local control plane (etcd + kube-apiserver 1.20.2 +
kube-controller-manager), then cleans up everything it started. Run it through ./demo.sh,
which provides the control-plane binaries and builds the project first.

  --ci     no pauses; exit non-zero when a step fails (also when stdin is not a terminal or
           the environment variable CI is set)
  --fast   run the elector processes with short timings (lease 4s, renew 3s, retry 1s)
           instead of the 15s/10s/2s the webhook injects
  -h, --help";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Pause between steps (a person is watching).
    pub interactive: bool,
    /// Override the injected timings for the demo's elector processes.
    pub fast: bool,
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
    let mut fast = false;
    for a in args {
        match a.as_str() {
            "--ci" => ci = true,
            "--fast" => fast = true,
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // CI systems set CI=true; an explicit CI=false or CI=0 means "not CI".
    let ci_env =
        ci_env.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false" | "False" | "FALSE"));
    Ok(Command::Run(Options {
        interactive: !ci && stdin_tty && !ci_env,
        fast,
    }))
}

/// The command line of the demo's elector process for one pod: the injected container's args,
/// with the identity and namespace the downward API would give it, a loopback HTTP address (all
/// "pods" share this machine) and, with `timings`, those timings instead of the injected ones.
pub fn elector_args_for_pod(
    injected: &[String],
    id: &str,
    namespace: &str,
    http: SocketAddr,
    timings: Option<Timings>,
) -> Vec<String> {
    let replaced: &[&str] = &[flags::ID, flags::ELECTION_NAMESPACE, flags::HTTP];
    let timing_flags: &[&str] = &[
        flags::LEASE_DURATION,
        flags::RENEW_DEADLINE,
        flags::RETRY_PERIOD,
        flags::TTL,
    ];
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in injected {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let Some(body) = a.strip_prefix("--") else {
            out.push(a.clone());
            continue;
        };
        let (name, has_value) = match body.split_once('=') {
            Some((n, _)) => (n, true),
            None => (body, false),
        };
        let drop = replaced.contains(&name) || (timings.is_some() && timing_flags.contains(&name));
        if drop {
            // `--flag value`: the value is the next argument (these flags all take one).
            skip_value = !has_value;
            continue;
        }
        out.push(a.clone());
    }
    if let Some(t) = timings {
        out.extend(t.flag_args());
    }
    out.push(format!("--{}={id}", flags::ID));
    out.push(format!("--{}={namespace}", flags::ELECTION_NAMESPACE));
    out.push(format!("--{}={http}", flags::HTTP));
    out
}

/// Timings as the elector will use them given its args (flags win over the defaults).
pub fn timings_from_args(args: &[String]) -> Timings {
    let mut t = Timings::default();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let Some(body) = a.strip_prefix("--") else {
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, it.peek().map(|v| v.to_string())),
        };
        let Some(d) = value.as_deref().and_then(parse_duration) else {
            continue;
        };
        match name {
            n if n == flags::LEASE_DURATION => t.lease_duration = d,
            n if n == flags::RENEW_DEADLINE => t.renew_deadline = d,
            n if n == flags::RETRY_PERIOD => t.retry_period = d,
            n if n == flags::TTL => t = Timings::from_ttl(d),
            _ => {}
        }
    }
    t
}

/// `15s`, `1500ms`, `1m30s`, `2h`: the duration forms the webhook writes and people type.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        total += unit.checked_mul(u32::try_from(n).ok()?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// The `<id> is the leader` lines of an elector's output.
pub fn leader_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.trim_end().ends_with(" is the leader"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `1.23s`.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// A JSON value on one line, YAML flow style: `{drop: [ALL]}`.
pub fn compact(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}: {}", compact(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(compact).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

fn env_line(e: &Value) -> String {
    let name = e["name"].as_str().unwrap_or("?");
    if let Some(v) = e.get("value") {
        return format!("{name}={}", compact(v));
    }
    match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
        Some(path) => format!("{name} <- fieldRef {path}"),
        None => format!("{name} <- {}", compact(&e["valueFrom"])),
    }
}

fn probe_line(p: &Value) -> String {
    let get = &p["httpGet"];
    if get.is_null() {
        return compact(p);
    }
    let mut s = format!(
        "{} :{}{}",
        get["scheme"].as_str().unwrap_or("HTTP"),
        compact(&get["port"]),
        get["path"].as_str().unwrap_or("/")
    );
    for (key, label) in [
        ("periodSeconds", "every"),
        ("timeoutSeconds", "timeout"),
        ("failureThreshold", "failures"),
    ] {
        if let Some(n) = p[key].as_i64() {
            s.push_str(&match label {
                "failures" => format!(", {n} failures"),
                _ => format!(", {label} {n}s"),
            });
        }
    }
    s
}

fn mount_line(m: &Value) -> String {
    let ro = if m["readOnly"] == true {
        " (read-only)"
    } else {
        ""
    };
    format!(
        "{} -> {}{ro}",
        m["name"].as_str().unwrap_or("?"),
        m["mountPath"].as_str().unwrap_or("?")
    )
}

fn volume_line(v: &Value) -> String {
    let name = v["name"].as_str().unwrap_or("?");
    if let Some(sources) = v["projected"]["sources"].as_array() {
        let parts: Vec<String> = sources
            .iter()
            .map(|s| {
                if let Some(t) = s.get("serviceAccountToken") {
                    format!(
                        "serviceAccountToken {} ({}s)",
                        t["path"].as_str().unwrap_or("?"),
                        compact(&t["expirationSeconds"])
                    )
                } else if let Some(c) = s.get("configMap") {
                    format!("configMap {}", c["name"].as_str().unwrap_or("?"))
                } else if let Some(d) = s.get("downwardAPI") {
                    let items: Vec<&str> = d["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["path"].as_str())
                        .collect();
                    format!("downwardAPI {}", items.join(","))
                } else {
                    compact(s)
                }
            })
            .collect();
        return format!("{name}: projected [{}]", parts.join("; "));
    }
    if let Some(secret) = v["secret"]["secretName"].as_str() {
        return format!("{name}: secret {secret}");
    }
    let mut rest = v.clone();
    if let Some(m) = rest.as_object_mut() {
        m.remove("name");
    }
    format!("{name}: {}", compact(&rest))
}

fn by_name<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x["name"] == name)
}

fn names(list: &Value, key: &str) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x[key].as_str().map(str::to_string))
        .collect()
}

/// What the admission chain changed in `pod` compared with the pod `template` it was created
/// from (a Deployment's `spec.template`): ServiceAccount, added annotations, added containers in
/// full, env vars and mounts added to existing containers, added volumes. Fields the API server
/// merely defaults (imagePullPolicy, terminationMessagePath, …) are not compared.
pub fn injection_summary(template: &Value, pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    // Unset means the namespace's `default` ServiceAccount.
    let sa_before = template["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let sa_after = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    if sa_before == sa_after {
        out.push(format!("serviceAccountName: {sa_after} (unchanged)"));
    } else if template["spec"]["serviceAccountName"].is_null() {
        out.push(format!(
            "serviceAccountName: (unset: default) -> {sa_after}"
        ));
    } else {
        out.push(format!("serviceAccountName: {sa_before} -> {sa_after}"));
    }
    let before_ann = &template["metadata"]["annotations"];
    for (k, v) in pod["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if before_ann.get(k) != Some(v) {
            out.push(format!("annotation added: {k}: {}", compact(v)));
        }
    }
    for (kind, label) in [
        ("initContainers", "init container"),
        ("containers", "container"),
    ] {
        for c in pod["spec"][kind].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("?");
            match by_name(&template["spec"][kind], name) {
                None => added_container(&mut out, c, label),
                Some(t) => changed_container(&mut out, t, c, label),
            }
        }
    }
    let before_vols = names(&template["spec"]["volumes"], "name");
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("?");
        if before_vols.contains(name) {
            continue;
        }
        let users: Vec<&str> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
            .filter(|c| {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["name"] == name)
            })
            .filter_map(|c| c["name"].as_str())
            .collect();
        out.push(format!(
            "+ volume {} (mounted by {})",
            volume_line(v),
            if users.is_empty() {
                "none".into()
            } else {
                users.join(", ")
            }
        ));
    }
    out
}

fn added_container(out: &mut Vec<String>, c: &Value, label: &str) {
    let native = if c["restartPolicy"] == "Always" {
        ", restartPolicy Always: a native sidecar"
    } else {
        ""
    };
    out.push(format!(
        "+ {label} {}{native}",
        c["name"].as_str().unwrap_or("?")
    ));
    let image = c["image"].as_str().unwrap_or("?");
    match c["imagePullPolicy"].as_str() {
        Some(p) => out.push(format!("    image:           {image} (pull {p})")),
        None => out.push(format!("    image:           {image}")),
    }
    let args: Vec<String> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(compact)
        .collect();
    if !args.is_empty() {
        out.push(format!("    args:            {}", args.join(" ")));
    }
    let env: Vec<String> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(env_line)
        .collect();
    if !env.is_empty() {
        out.push(format!("    env:             {}", env.join(", ")));
    }
    let ports: Vec<String> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {}/{}",
                p["name"].as_str().unwrap_or("-"),
                compact(&p["containerPort"]),
                p["protocol"].as_str().unwrap_or("TCP")
            )
        })
        .collect();
    if !ports.is_empty() {
        out.push(format!("    ports:           {}", ports.join(", ")));
    }
    for (key, name) in [
        ("startupProbe", "startupProbe"),
        ("livenessProbe", "livenessProbe"),
        ("readinessProbe", "readinessProbe"),
    ] {
        if !c[key].is_null() {
            out.push(format!(
                "    {:<17}{}",
                format!("{name}:"),
                probe_line(&c[key])
            ));
        }
    }
    if !c["resources"].is_null() {
        out.push(format!("    resources:       {}", compact(&c["resources"])));
    }
    if !c["securityContext"].is_null() {
        out.push(format!(
            "    securityContext: {}",
            compact(&c["securityContext"])
        ));
    }
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        out.push(format!("    volumeMount:     {}", mount_line(m)));
    }
}

fn changed_container(out: &mut Vec<String>, before: &Value, after: &Value, label: &str) {
    let name = after["name"].as_str().unwrap_or("?");
    let env_before = names(&before["env"], "name");
    let mounts_before = names(&before["volumeMounts"], "mountPath");
    let env: Vec<String> = after["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"].as_str().is_some_and(|n| !env_before.contains(n)))
        .map(env_line)
        .collect();
    let mounts: Vec<String> = after["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|p| !mounts_before.contains(p))
        })
        .map(mount_line)
        .collect();
    if env.is_empty() && mounts.is_empty() {
        out.push(format!("  {label} {name}: unchanged"));
        return;
    }
    out.push(format!("~ {label} {name}:"));
    for e in env {
        out.push(format!("    env added:       {e}"));
    }
    for m in mounts {
        out.push(format!("    mount added:     {m}"));
    }
}

/// Console output a person can follow: numbered steps with timings, indented details.
pub struct Ui {
    interactive: bool,
    color: bool,
    current: Mutex<String>,
}

impl Ui {
    pub fn new(opts: &Options) -> Ui {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(1) } == 1;
        Ui {
            interactive: opts.interactive,
            color: tty && std::env::var_os("NO_COLOR").is_none(),
            current: Mutex::new("starting".into()),
        }
    }

    fn style(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// The step being run, for failure messages.
    pub fn current_step(&self) -> String {
        self.current.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn step(&self, n: usize, title: &str, why: &[&str]) {
        let head = format!("Step {n}/{STEPS}: {title}");
        if let Ok(mut c) = self.current.lock() {
            *c = head.clone();
        }
        println!("\n{}", self.style("1;36", &format!("== {head}")));
        for line in why {
            println!("   {line}");
        }
    }

    pub fn say(&self, text: &str) {
        println!("   {text}");
    }

    pub fn ok(&self, text: &str, since: Instant) {
        println!(
            "   {} {text} ({})",
            self.style("32", "ok"),
            secs(since.elapsed())
        );
    }

    /// Indented block (command output, YAML).
    pub fn block(&self, text: &str) {
        for line in text.trim_end().lines() {
            println!("      {line}");
        }
    }

    pub fn command(&self, cmd: &str) {
        println!("   {}", self.style("2", &format!("$ {cmd}")));
    }

    /// Waits for Enter when a person is watching.
    pub async fn pause(&self, what: &str) {
        if !self.interactive {
            return;
        }
        print!(
            "\n   {}",
            self.style(
                "33",
                &format!("Press Enter {what} (Ctrl-C stops the demo and cleans up) ")
            )
        );
        let _ = std::io::stdout().flush();
        // A blocking read on its own thread: the pause stays cancellable by Ctrl-C.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await;
    }
}

/// Results shown in the final summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub control_plane: Duration,
    pub webhook: Duration,
    pub pods: Vec<String>,
    pub timings: Option<Timings>,
    pub first_leader: String,
    pub handover: Option<(String, String, Duration)>,
    pub failover: Option<(String, String, Duration)>,
}

/// Runs the demo to the end, handling SIGINT/SIGTERM/SIGHUP: the running step is dropped (which
/// kills and reaps every child) and the scratch directory is removed. Returns the exit code.
pub async fn main(opts: Options) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let ui = Ui::new(&opts);
    // Registered first, so a Ctrl-C during start-up is ours to handle too.
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
    let mut outcome = tokio::select! {
        biased;
        _ = int.recv() => Err(("SIGINT", 130u8)),
        _ = term.recv() => Err(("SIGTERM", 143)),
        _ = hup.recv() => Err(("SIGHUP", 129)),
        r = run(opts, &ui) => Ok(r),
    };
    // A Ctrl-C in a terminal signals our children too; one dying can fail the run before our own
    // signal is seen. A signal that arrived meanwhile is still pending: report the interruption.
    if matches!(outcome, Ok(Err(_))) {
        let pending = tokio::time::timeout(Duration::from_millis(300), async {
            tokio::select! {
                _ = int.recv() => ("SIGINT", 130u8),
                _ = term.recv() => ("SIGTERM", 143),
                _ = hup.recv() => ("SIGHUP", 129),
            }
        })
        .await;
        if let Ok(sig) = pending {
            outcome = Err(sig);
        }
    }
    // Every process of the run has been stopped or killed by now (Proc and ControlPlane drop).
    let scratch = procs::scratch_root().ok().map(Path::to_path_buf);
    let removed = scratch
        .as_ref()
        .map(|d| std::fs::remove_dir_all(d).is_ok() || !d.exists());
    let cleanup = match (&scratch, removed) {
        (Some(d), Some(true)) => format!("all processes stopped, {} removed", d.display()),
        (Some(d), _) => format!(
            "all processes stopped; {} is removed once this process exits",
            d.display()
        ),
        (None, _) => "all processes stopped".to_string(),
    };
    match outcome {
        Err((sig, code)) => {
            println!(
                "\n{}",
                ui.style(
                    "33",
                    &format!("Interrupted by {sig} during {}.", ui.current_step())
                )
            );
            println!("   cleaned up: {cleanup}");
            ExitCode::from(code)
        }
        Ok(Err(e)) => {
            eprintln!(
                "\n{}",
                ui.style("1;31", &format!("FAILED during {}:", ui.current_step()))
            );
            eprintln!("{e}");
            eprintln!("   cleaned up: {cleanup}");
            ExitCode::FAILURE
        }
        Ok(Ok(s)) => {
            print_summary(&ui, &s, started.elapsed(), &cleanup);
            ExitCode::SUCCESS
        }
    }
}

fn print_summary(ui: &Ui, s: &Summary, total: Duration, cleanup: &str) {
    println!("\n{}", ui.style("1;36", "== Summary"));
    println!(
        "   control plane ready in {}; webhook ready in {}",
        secs(s.control_plane),
        secs(s.webhook)
    );
    println!(
        "   {} pods injected by the webhook: {}",
        s.pods.len(),
        s.pods.join(", ")
    );
    if let Some(t) = s.timings {
        println!(
            "   elector timings: lease {}, renew deadline {}, retry period {}",
            contract::format_duration(t.lease_duration),
            contract::format_duration(t.renew_deadline),
            contract::format_duration(t.retry_period)
        );
    }
    println!("   first leader: {}", s.first_leader);
    if let Some((from, to, d)) = &s.handover {
        println!(
            "   graceful handover: {} (SIGTERM to {from}; {to} leads)",
            secs(*d)
        );
    }
    if let Some((from, to, d)) = &s.failover {
        println!(
            "   crash failover:    {} (SIGKILL to {from}; {to} leads)",
            secs(*d)
        );
    }
    println!("   cleaned up: {cleanup}");
    println!("   demo finished in {}", secs(total));
}

/// The demo proper; its processes are stopped gracefully at the end, or killed when the future
/// is dropped (failure, interruption).
pub async fn run(opts: Options, ui: &Ui) -> Result<Summary> {
    let mut summary = Summary::default();
    // Both binaries up front: a missing one fails before anything is started.
    crate::project_binary("elector")?;
    crate::project_binary("webhook")?;

    ui.step(1, "start a local control plane", &[
        "etcd + kube-apiserver 1.20.2 + kube-controller-manager on free loopback ports. There is no",
        "kubelet and no node: the controller-manager creates pods, they stay Pending, and this demo",
        "plays the kubelet's part by running one elector process per pod.",
    ]);
    let t = Instant::now();
    let cp = ControlPlane::start().await?;
    summary.control_plane = t.elapsed();
    ui.ok(&format!("API server at {}", cp.server_url()), t);
    ui.say(&format!(
        "scratch directory (removed on exit): {}",
        procs::scratch_root()?.display()
    ));
    ui.say(&format!(
        "admin kubeconfig (your ~/.kube/config is not used): {}",
        cp.admin_kubeconfig().display()
    ));
    ui.pause("to start the webhook").await;

    let (webhook, webhook_kubeconfig) = start_webhook(&cp, ui, &mut summary).await?;
    ui.pause("to deploy my-app").await;

    let pods = deploy_app(&cp, ui, &mut summary).await?;
    ui.pause("to start one elector per pod").await;

    let electors = start_electors(&cp, &pods, opts, ui, &mut summary).await?;
    ui.pause("to stop the leader (SIGTERM)").await;

    handover_and_failover(&cp, &electors, ui, &mut summary).await?;
    if ui.interactive {
        ui.say("Everything is still running; look around in another terminal:");
        ui.say(&format!(
            "  kubectl --kubeconfig {} get pods,lease",
            cp.admin_kubeconfig().display()
        ));
        if let Some(e) = electors.iter().find(|e| e.proc.try_status().is_none()) {
            ui.say(&format!("  curl http://{}/status", e.addr));
        }
        ui.pause("to clean up").await;
    }

    ui.step(6, "clean up", &["SIGTERM to every process started (SIGKILL after a grace period), scratch files removed."]);
    let t = Instant::now();
    let mut stopped = 0;
    for e in &electors {
        if e.proc.try_status().is_none() {
            e.proc.stop(Duration::from_secs(10)).await?;
            stopped += 1;
        }
    }
    webhook.proc.stop(Duration::from_secs(25)).await?;
    let components = cp.pids().len();
    cp.stop().await?;
    let _ = std::fs::remove_file(&webhook_kubeconfig);
    ui.ok(&format!("stopped the {stopped} remaining elector(s), the webhook and {components} control-plane processes"), t);
    Ok(summary)
}

async fn start_webhook(
    cp: &ControlPlane,
    ui: &Ui,
    summary: &mut Summary,
) -> Result<(Webhook, PathBuf)> {
    ui.step(2, "start the webhook with self-provisioned TLS", &[
        "The webhook runs as a process on loopback instead of the Deployment. Applied from",
        "`kubectl kustomize manifests/base`: the Namespace and RBAC as shipped, and the",
        "MutatingWebhookConfiguration with its clientConfig pointed at https://127.0.0.1:<port>/mutate",
        "(service dropped, no caBundle: the webhook writes it, as in a cluster).",
    ]);
    let t = Instant::now();
    let docs = shipped_base().await?;
    let addr = control_plane::free_loopback_addr()?;
    let url = mutate_url(addr);
    let mwc = loopback_webhook_configuration(
        find_webhook_configuration(&docs)?,
        deploy::WEBHOOK_CONFIGURATION,
        &url,
        None,
    )?;
    let list = rbac_list(&docs, &[&mwc]);
    ui.command("kubectl kustomize manifests/base | <adapt the MutatingWebhookConfiguration> | kubectl apply --validate=false -f -");
    ui.say("(--validate=false: kubectl's schema of this 1.20 server rejects the webhooks' matchConditions,");
    ui.say(" a 1.28+ field; the 1.20 server drops it, so every pod is sent to the webhook, which skips");
    ui.say(" those without the annotation itself.)");
    ui.block(
        &cp.kubectl_ok(
            &["apply", "--validate=false", "-f", "-"],
            Some(&list.to_string()),
        )
        .await?,
    );

    // The webhook's own ServiceAccount, bound by the shipped RBAC: least privilege, as in a cluster.
    let kubeconfig = cp
        .service_account_kubeconfig(deploy::NAMESPACE, deploy::WEBHOOK_NAME)
        .await?;
    let args = vec![
        "--self-provision".into(),
        format!("--namespace={}", deploy::NAMESPACE),
        "--extra-san=127.0.0.1".into(),
        format!("--webhook-configuration={}", deploy::WEBHOOK_CONFIGURATION),
    ];
    ui.say(&format!(
        "credentials: ServiceAccount {}/{} (bound by the shipped RBAC), via its own kubeconfig",
        deploy::NAMESPACE,
        deploy::WEBHOOK_NAME
    ));
    ui.command(&format!(
        "KUBECONFIG={} webhook {}",
        kubeconfig.display(),
        serve_args(addr, &args).join(" ")
    ));
    let log_dir = procs::scratch_dir("webhook")?;
    let webhook = Webhook::spawn_on(addr, &kubeconfig, &args, "webhook", &log_dir)?;
    let with_log = |e: Error| webhook.with_output(e);

    let admin = cp.admin_client().await?;
    let ca = webhook
        .wait_self_provisioned_ca(&admin, Duration::from_secs(90))
        .await
        .map_err(with_log)?;
    let ca_pem =
        String::from_utf8(ca).map_err(|_| fail("the webhook's ca.crt", "not UTF-8 PEM"))?;
    ui.ok(
        &format!(
            "CA and serving certificate generated into Secret {}/{}",
            deploy::NAMESPACE,
            deploy::TLS_SECRET
        ),
        t,
    );

    let mwcs = Api::<MutatingWebhookConfiguration>::all(admin.clone());
    let ca = ca_pem.as_bytes().to_vec();
    eventually_while_running(
        "the caBundle to be written",
        Duration::from_secs(90),
        &[&webhook.proc],
        || async {
            let m = mwcs
                .get(deploy::WEBHOOK_CONFIGURATION)
                .await
                .map_err(|e| e.to_string())?;
            if ca_bundle(&m).as_ref() == Some(&ca) {
                Ok(())
            } else {
                Err("caBundle not yet the Secret's CA on every entry".to_string())
            }
        },
    )
    .await
    .map_err(with_log)?;
    ui.ok(
        &format!(
            "caBundle of MutatingWebhookConfiguration {} set to that CA",
            deploy::WEBHOOK_CONFIGURATION
        ),
        t,
    );

    webhook
        .wait_ready(&ca_pem, Duration::from_secs(60))
        .await
        .map_err(with_log)?;
    webhook
        .wait_called(cp, Duration::from_secs(90))
        .await
        .map_err(with_log)?;
    summary.webhook = t.elapsed();
    ui.ok(
        &format!("webhook serving {url}; the API server trusts its certificate and calls it"),
        t,
    );
    Ok((webhook, kubeconfig))
}

async fn deploy_app(cp: &ControlPlane, ui: &Ui, summary: &mut Summary) -> Result<Vec<Value>> {
    ui.step(3, "deploy manifests/examples/my-app", &[
        "The seed's scenario: Deployment my-app, 3 replicas of nginx:1.25, whose pod template",
        "carries leader-election/enabled: \"true\". The controller-manager creates the pods; the",
        "API server sends each to the webhook, which injects the elector.",
    ]);
    let t = Instant::now();
    let dir = manifests::manifests_dir().join("examples").join(APP_NAME);
    let dir_arg = dir.display().to_string();
    ui.command(&format!(
        "kubectl apply -k manifests/examples/{APP_NAME} -n {APP_NAMESPACE}"
    ));
    ui.block(
        &cp.kubectl_ok(&["apply", "-k", &dir_arg, "-n", APP_NAMESPACE], None)
            .await?,
    );

    let admin = cp.admin_client().await?;
    let deployment = Api::<Deployment>::namespaced(admin.clone(), APP_NAMESPACE)
        .get(APP_NAME)
        .await
        .context(format!("reading Deployment {APP_NAMESPACE}/{APP_NAME}"))?;
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let replicas = usize::try_from(replicas).unwrap_or(0);
    let template = serde_json::to_value(deployment.spec.as_ref().map(|s| &s.template))
        .map_err(|e| fail("reading the pod template", e.to_string()))?;

    let pods_api = Api::<Pod>::namespaced(admin.clone(), APP_NAMESPACE);
    let lp = ListParams::default().labels(&format!("app={APP_NAME}"));
    let pods = eventually(
        &format!("{replicas} pods of {APP_NAME}"),
        POD_TIMEOUT,
        || async {
            let list = pods_api.list(&lp).await.map_err(|e| e.to_string())?;
            let mut pods: Vec<Value> = list
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect();
            pods.sort_by(|a, b| {
                a["metadata"]["name"]
                    .as_str()
                    .cmp(&b["metadata"]["name"].as_str())
            });
            if pods.len() == replicas && replicas > 0 {
                Ok(pods)
            } else {
                Err(format!("{} of {replicas} pods so far", pods.len()))
            }
        },
    )
    .await?;
    // The harness's own checks of an injected pod, so the demo never shows a broken injection.
    for p in &pods {
        let problems = injection_problems(p, APP_NAME, &|_| None);
        if !problems.is_empty() {
            return Err(fail(
                format!(
                    "pod {} is not injected correctly",
                    p["metadata"]["name"].as_str().unwrap_or("?")
                ),
                problems.join("; "),
            ));
        }
    }
    summary.pods = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    ui.ok(
        &format!(
            "{} pods created by the controller-manager, each injected: {}",
            pods.len(),
            summary.pods.join(", ")
        ),
        t,
    );
    ui.command(&format!(
        "kubectl get pods -n {APP_NAMESPACE} -l app={APP_NAME}"
    ));
    ui.block(
        &cp.kubectl_ok(
            &[
                "get",
                "pods",
                "-n",
                APP_NAMESPACE,
                "-l",
                &format!("app={APP_NAME}"),
            ],
            None,
        )
        .await?,
    );
    ui.say("(Pending: no node will ever run them; READY 0/2 counts the nginx and leader-elector containers.)");

    let first = pods
        .first()
        .ok_or_else(|| fail("deploying my-app", "no pods"))?;
    ui.say("");
    ui.say(&format!(
        "Pod {} as the API server stored it, compared with the Deployment's pod template",
        first["metadata"]["name"].as_str().unwrap_or("?")
    ));
    ui.say("(+ added by admission, ~ changed; API-server defaults not shown):");
    ui.block(&injection_summary(&template, first).join("\n"));
    ui.say("");
    let grant = "leader-election-deployment-my-app";
    let ns_objects = format!("lease/my-app role/{grant} rolebinding/{grant}");
    // The controller acts on the Deployment and its pods as the API server holds them.
    eventually(
        "the controller's Lease, Role and RoleBinding",
        Duration::from_secs(60),
        || async {
            let mut args = vec!["get"];
            args.extend(ns_objects.split(' '));
            args.extend(["-n", APP_NAMESPACE]);
            cp.kubectl_ok(&args, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    ui.say("The webhook's controller created the Lease ahead and a Role on exactly that Lease,");
    ui.say("bound to the pods' own ServiceAccount (admission itself wrote nothing):");
    ui.command(&format!("kubectl get {ns_objects} -n {APP_NAMESPACE}"));
    let mut args = vec!["get"];
    args.extend(ns_objects.split(' '));
    args.extend(["-n", APP_NAMESPACE]);
    ui.block(&cp.kubectl_ok(&args, None).await?);
    Ok(pods)
}

fn injected_args(pod: &Value) -> Result<Vec<String>> {
    elector_container(pod)
        .map(|c| {
            c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .ok_or_else(|| {
            fail(
                "reading the injected container",
                format!("no {} container", contract::CONTAINER_NAME),
            )
        })
}

async fn start_electors(
    cp: &ControlPlane,
    pods: &[Value],
    opts: Options,
    ui: &Ui,
    summary: &mut Summary,
) -> Result<Vec<Elector>> {
    ui.step(4, "run one elector per pod (standing in for the kubelet)", &[
        "Each process gets its pod's name as --id and its namespace (the downward API's job in a",
        "cluster), the token of the pod's ServiceAccount (the RBAC the webhook set up is what lets it",
        "touch the Lease) and the injected container's args, with HTTP on a distinct loopback port",
        "instead of the pod IP's :4040.",
    ]);
    let t = Instant::now();
    let log_dir = procs::scratch_dir("electors")?;
    let fast = opts.fast.then_some(crate::elector::FAST);
    let mut electors = Vec::new();
    // One kubeconfig per ServiceAccount: writing it again while an elector reads it would hand
    // that elector a half-written file.
    let mut kubeconfigs: HashMap<String, PathBuf> = HashMap::new();
    for pod in pods {
        let id = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let sa = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let kubeconfig = match kubeconfigs.get(sa) {
            Some(k) => k.clone(),
            None => {
                let k = cp.service_account_kubeconfig(APP_NAMESPACE, sa).await?;
                kubeconfigs.insert(sa.to_string(), k.clone());
                k
            }
        };
        let addr = control_plane::free_loopback_addr()?;
        let args = elector_args_for_pod(&injected_args(pod)?, &id, APP_NAMESPACE, addr, fast);
        if electors.is_empty() {
            ui.say(&format!(
                "credentials: ServiceAccount {APP_NAMESPACE}/{sa}, via its own kubeconfig {}",
                kubeconfig.display()
            ));
            summary.timings = Some(timings_from_args(&args));
            if opts.fast {
                ui.say("--fast: short timings instead of the injected 15s/10s/2s defaults");
            }
        }
        ui.command(&format!("elector {}", args.join(" ")));
        let env = [
            (contract::env::POD_NAME, id.clone()),
            (contract::env::POD_NAMESPACE, APP_NAMESPACE.to_string()),
        ];
        electors.push(Elector::start(
            &id,
            addr,
            &args,
            &kubeconfig,
            &env,
            &log_dir,
        )?);
    }
    for e in &electors {
        explain(e.wait_ready(Duration::from_secs(60)).await, [e])?;
    }
    let refs: Vec<&Elector> = electors.iter().collect();
    let timings = summary.timings.unwrap_or_default();
    let leader =
        wait_for_agreed_leader(&refs, timings.lease_duration * 2 + Duration::from_secs(60)).await?;
    summary.first_leader = leader.clone();
    ui.ok(
        &format!(
            "{} electors running; {leader} is the leader",
            electors.len()
        ),
        t,
    );

    show_lease_yaml(cp, ui).await?;
    ui.say("Each replica's answer to GET / (the classic leader-elector:0.4 API) and is_leader from GET /status:");
    for e in &electors {
        let r = httpc::get(
            e.addr,
            contract::http::LEADER_PATH,
            crate::elector::PROBE_TIMEOUT,
        )
        .await?;
        let is_leader = e.is_leader().await?;
        ui.block(&format!(
            "{:<28} GET / -> {}   is_leader: {is_leader}",
            e.id, r.body
        ));
    }
    ui.say("The \"is the leader\" lines each elector logged:");
    show_new_leader_lines(ui, &refs, &vec![0; refs.len()]);
    Ok(electors)
}

/// How many `is the leader` lines each elector has logged so far.
fn leader_line_counts(electors: &[&Elector]) -> Vec<usize> {
    electors
        .iter()
        .map(|e| leader_lines(&e.output()).len())
        .collect()
}

/// Prints the `is the leader` lines logged since `before` (from [`leader_line_counts`]).
fn show_new_leader_lines(ui: &Ui, electors: &[&Elector], before: &[usize]) {
    for (e, skip) in electors.iter().zip(before) {
        for l in leader_lines(&e.output()).into_iter().skip(*skip) {
            ui.block(&format!("[{}] {l}", e.id));
        }
    }
}

async fn show_lease_yaml(cp: &ControlPlane, ui: &Ui) -> Result<()> {
    ui.command(&format!(
        "kubectl get lease {APP_NAME} -n {APP_NAMESPACE} -o yaml"
    ));
    ui.block(
        &cp.kubectl_ok(
            &["get", "lease", APP_NAME, "-n", APP_NAMESPACE, "-o", "yaml"],
            None,
        )
        .await?,
    );
    Ok(())
}

async fn show_lease_row(cp: &ControlPlane, ui: &Ui) -> Result<()> {
    let columns = "HOLDER:.spec.holderIdentity,TRANSITIONS:.spec.leaseTransitions,\
                   DURATION:.spec.leaseDurationSeconds,RENEWED:.spec.renewTime";
    let columns = format!("custom-columns={columns}");
    ui.command(&format!(
        "kubectl get lease {APP_NAME} -n {APP_NAMESPACE} -o {columns}"
    ));
    let out = cp
        .kubectl_ok(
            &[
                "get",
                "lease",
                APP_NAME,
                "-n",
                APP_NAMESPACE,
                "-o",
                &columns,
            ],
            None,
        )
        .await?;
    ui.block(&out);
    Ok(())
}

/// Polls the `candidates` tightly until one answers `is_leader: true` on /status; returns its
/// id and when it answered.
async fn first_to_lead(candidates: &[&Elector], timeout: Duration) -> Result<(String, Instant)> {
    let deadline = Instant::now() + timeout;
    loop {
        let answers = futures::future::join_all(
            candidates
                .iter()
                .enumerate()
                .map(|(i, e)| ask(i, e.addr, Duration::from_secs(2))),
        )
        .await;
        if let Some(s) = answers
            .iter()
            .filter(|s| s.leader == Some(true))
            .min_by_key(|s| s.answered)
        {
            return Ok((candidates[s.who].id.clone(), s.answered));
        }
        if Instant::now() >= deadline {
            let ids: Vec<&str> = candidates.iter().map(|e| e.id.as_str()).collect();
            return Err(Error::Timeout {
                what: format!("one of {ids:?} to lead"),
                timeout,
                last: format!("{answers:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn handover_and_failover(
    cp: &ControlPlane,
    electors: &[Elector],
    ui: &Ui,
    summary: &mut Summary,
) -> Result<()> {
    let timings = summary.timings.unwrap_or_default();
    let wait = timings.lease_duration * 2 + timings.retry_period * 2 + Duration::from_secs(30);
    ui.step(5, "handover and failover", &[
        "SIGTERM is what Kubernetes sends a pod being deleted or rolled: the leader releases the",
        "Lease on its way out and a standby (watching the Lease) takes over at once. SIGKILL is a",
        "crash or a lost node: nothing is released, so the standbys wait for the Lease to expire.",
    ]);
    let leader_id = summary.first_leader.clone();
    let (leader, survivors) = leader_and_rest(electors, &leader_id)?;

    ui.say(&format!("SIGTERM -> {leader_id} (the leader)"));
    let seen = leader_line_counts(&survivors);
    let t0 = Instant::now();
    leader.proc.signal(libc::SIGTERM)?;
    let (next, at) = first_to_lead(&survivors, wait).await?;
    let handover = at.saturating_duration_since(t0);
    println!(
        "   graceful handover: {next} leads {} after SIGTERM to {leader_id}",
        secs(handover)
    );
    let status = leader.proc.wait_exit(Duration::from_secs(30)).await;
    match status {
        Some(s) if s.success() => ui.say(&format!("{leader_id} released the Lease and exited 0")),
        Some(s) => {
            return Err(with_output(
                fail(
                    "the old leader",
                    format!("exited with {}", procs::describe(s)),
                ),
                [leader],
            ));
        }
        None => {
            return Err(with_output(
                fail("the old leader", "still running 30s after SIGTERM"),
                [leader],
            ));
        }
    }
    let survivor_refs: Vec<&Elector> = survivors.to_vec();
    let agreed = wait_for_agreed_leader(&survivor_refs, wait).await?;
    if agreed != next {
        return Err(fail(
            "after the handover",
            format!("{next} claimed the lead first, but the survivors agree on {agreed}"),
        ));
    }
    show_lease_row(cp, ui).await?;
    ui.say("New \"is the leader\" lines:");
    show_new_leader_lines(ui, &survivors, &seen);
    summary.handover = Some((leader_id.clone(), next.clone(), handover));
    ui.pause("to kill the new leader (SIGKILL)").await;

    let (new_leader, last) = leader_and_rest(survivors.iter().copied(), &next)?;
    ui.say(&format!(
        "SIGKILL -> {next} (the new leader); expect about the lease duration ({}) before a survivor leads",
        contract::format_duration(timings.lease_duration)
    ));
    let seen = leader_line_counts(&last);
    let t1 = Instant::now();
    new_leader.proc.signal(libc::SIGKILL)?;
    let (third, at) = first_to_lead(&last, wait).await?;
    let failover = at.saturating_duration_since(t1);
    println!(
        "   crash failover: {third} leads {} after SIGKILL to {next} (lease duration {})",
        secs(failover),
        contract::format_duration(timings.lease_duration)
    );
    ui.say(
        "(The standbys count the lease duration from the last renew they saw, which came up to one",
    );
    ui.say(" retry period before the kill: so a little under the lease duration, plus their reaction time.)");
    let _ = new_leader.proc.wait_exit(Duration::from_secs(5)).await;
    agreed_leader(&last)
        .await
        .map_err(|e| fail("after the failover", e))?;
    show_lease_row(cp, ui).await?;
    ui.say("New \"is the leader\" lines:");
    show_new_leader_lines(ui, &last, &seen);
    summary.failover = Some((next, third, failover));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parse_args_table() {
        let run = |interactive, fast| Ok(Command::Run(Options { interactive, fast }));
        type Case = (
            &'static [&'static str],
            bool,
            Option<&'static str>,
            std::result::Result<Command, String>,
        );
        let cases: &[Case] = &[
            (&[], true, None, run(true, false)),
            (&["--fast"], true, None, run(true, true)),
            (&["--ci"], true, None, run(false, false)),
            (&[], false, None, run(false, false)),
            (&[], true, Some("true"), run(false, false)),
            (&[], true, Some("1"), run(false, false)),
            (&[], true, Some("false"), run(true, false)),
            (&[], true, Some(""), run(true, false)),
            (&["--ci", "--fast"], true, None, run(false, true)),
            (&["--fast", "-h"], true, None, Ok(Command::Help)),
            (&["--help"], false, None, Ok(Command::Help)),
            (
                &["--slow"],
                true,
                None,
                Err("unknown argument \"--slow\"".into()),
            ),
        ];
        for (args, tty, ci, want) in cases {
            assert_eq!(
                &parse_args(&s(args), *tty, *ci),
                want,
                "{args:?} tty={tty} CI={ci:?}"
            );
        }
    }

    #[test]
    fn elector_args_keep_the_injected_ones_and_set_identity() {
        let injected = s(&[
            "--election=my-app",
            "--http=0.0.0.0:4040",
            "--lease-duration=15s",
            "--renew-deadline=10s",
            "--retry-period=2s",
            "--leader-label",
        ]);
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let got = elector_args_for_pod(&injected, "my-app-x", "default", addr, None);
        assert_eq!(
            got,
            s(&[
                "--election=my-app",
                "--lease-duration=15s",
                "--renew-deadline=10s",
                "--retry-period=2s",
                "--leader-label",
                "--id=my-app-x",
                "--election-namespace=default",
                "--http=127.0.0.1:5000",
            ])
        );
        let fast = elector_args_for_pod(&injected, "p", "ns", addr, Some(crate::elector::FAST));
        assert_eq!(
            fast,
            s(&[
                "--election=my-app",
                "--leader-label",
                "--lease-duration=4s",
                "--renew-deadline=3s",
                "--retry-period=1s",
                "--id=p",
                "--election-namespace=ns",
                "--http=127.0.0.1:5000",
            ])
        );
        // Space-separated values and flags the demo sets itself are replaced, not duplicated.
        let spaced = s(&[
            "--election",
            "e",
            "--http",
            ":4040",
            "--id",
            "x",
            "--ttl",
            "9s",
        ]);
        let got = elector_args_for_pod(&spaced, "p", "ns", addr, Some(crate::elector::FAST));
        assert_eq!(got[..2], s(&["--election", "e"])[..]);
        assert!(
            !got.iter()
                .any(|a| a == ":4040" || a == "x" || a == "9s" || a.starts_with("--ttl")),
            "{got:?}"
        );
        assert_eq!(got.iter().filter(|a| a.starts_with("--http")).count(), 1);
    }

    #[test]
    fn timings_follow_the_args() {
        let d = Duration::from_secs;
        assert_eq!(timings_from_args(&s(&["--election=x"])), Timings::default());
        let t = timings_from_args(&s(&[
            "--lease-duration=4s",
            "--renew-deadline",
            "3s",
            "--retry-period=1s",
        ]));
        assert_eq!(t, crate::elector::FAST);
        assert_eq!(
            timings_from_args(&s(&["--ttl=30s"])),
            Timings::from_ttl(d(30))
        );
        assert_eq!(
            timings_from_args(&s(&["--lease-duration=oops"])),
            Timings::default()
        );
    }

    #[test]
    fn parse_duration_table() {
        let d = Duration::from_millis;
        let cases: &[(&str, Option<Duration>)] = &[
            ("15s", Some(d(15_000))),
            ("1500ms", Some(d(1500))),
            ("1m30s", Some(d(90_000))),
            ("2h", Some(d(7_200_000))),
            ("0s", Some(d(0))),
            ("", None),
            ("15", None),
            ("s", None),
            ("1x", None),
            ("-1s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), *want, "{text:?}");
        }
    }

    #[test]
    fn leader_lines_only_match_the_log_line() {
        let out = "2024 INFO starting\nmy-app-a is the leader\n  my-app-b is the leader  \nx: is the leader yet?\n";
        assert_eq!(
            leader_lines(out),
            s(&["my-app-a is the leader", "my-app-b is the leader"])
        );
        assert!(leader_lines("").is_empty());
    }

    #[test]
    fn compact_renders_flow_style() {
        let v = serde_json::json!({"capabilities": {"drop": ["ALL"]}, "runAsUser": 65532, "ro": true, "n": null});
        assert_eq!(
            compact(&v),
            "{capabilities: {drop: [ALL]}, n: null, ro: true, runAsUser: 65532}"
        );
    }

    fn template() -> Value {
        serde_json::json!({
            "metadata": {"labels": {"app": "my-app"}, "annotations": {"leader-election/enabled": "true"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}
        })
    }

    fn injected() -> Value {
        serde_json::json!({
            "metadata": {"name": "my-app-1", "annotations": {"leader-election/enabled": "true", "leader-election/status": "injected"}},
            "spec": {
                "serviceAccountName": "leader-elector",
                "containers": [
                    {"name": "nginx", "image": "nginx:1.25", "imagePullPolicy": "IfNotPresent",
                     "env": [
                        {"name": "LEADER_ELECTION_URL", "value": "http://127.0.0.1:4040"},
                        {"name": "LEADER_ELECTION_IDENTITY", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                     "volumeMounts": [{"name": "default-token-abc", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                    {"name": "leader-elector", "image": "ghcr.io/x/elector:1", "imagePullPolicy": "IfNotPresent",
                     "args": ["--election=my-app", "--http=0.0.0.0:4040"],
                     "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                     "ports": [{"name": "elector", "containerPort": 4040, "protocol": "TCP"}],
                     "livenessProbe": {"httpGet": {"path": "/healthz", "port": 4040, "scheme": "HTTP"}, "periodSeconds": 10, "failureThreshold": 3},
                     "securityContext": {"runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
                     "volumeMounts": [{"name": "leader-elector-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}
                ],
                "volumes": [
                    {"name": "default-token-abc", "secret": {"secretName": "default-token-abc", "defaultMode": 420}},
                    {"name": "leader-elector-api-access", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                        {"configMap": {"name": "kube-root-ca.crt"}},
                        {"downwardAPI": {"items": [{"path": "namespace"}]}}]}}
                ]
            }
        })
    }

    #[test]
    fn summary_shows_what_admission_changed() {
        let lines = injection_summary(&template(), &injected());
        let text = lines.join("\n");
        let want = [
            "serviceAccountName: (unset: default) -> leader-elector",
            "annotation added: leader-election/status: injected",
            "~ container nginx:",
            "    env added:       LEADER_ELECTION_URL=http://127.0.0.1:4040",
            "    env added:       LEADER_ELECTION_IDENTITY <- fieldRef metadata.name",
            "    mount added:     default-token-abc -> /var/run/secrets/kubernetes.io/serviceaccount (read-only)",
            "+ container leader-elector",
            "    image:           ghcr.io/x/elector:1 (pull IfNotPresent)",
            "    args:            --election=my-app --http=0.0.0.0:4040",
            "    env:             POD_NAME <- fieldRef metadata.name",
            "    ports:           elector 4040/TCP",
            "    livenessProbe:   HTTP :4040/healthz, every 10s, 3 failures",
            "    securityContext: {capabilities: {drop: [ALL]}, runAsNonRoot: true}",
            "    volumeMount:     leader-elector-api-access -> /var/run/secrets/kubernetes.io/serviceaccount (read-only)",
            "+ volume default-token-abc: secret default-token-abc (mounted by nginx)",
            "+ volume leader-elector-api-access: projected [serviceAccountToken token (3607s); configMap kube-root-ca.crt; \
             downwardAPI namespace] (mounted by leader-elector)",
        ];
        for w in want {
            assert!(lines.iter().any(|l| l == w), "missing {w:?} in:\n{text}");
        }
        // Unchanged things (the enabled annotation, nginx's image) are not reported as changes.
        assert!(!text.contains("enabled"), "{text}");
        assert!(!text.contains("nginx:1.25"), "{text}");
    }

    #[test]
    fn summary_of_an_untouched_pod_says_so() {
        let mut pod = template();
        pod["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent".into();
        assert_eq!(
            injection_summary(&template(), &pod),
            s(&[
                "serviceAccountName: default (unchanged)",
                "  container nginx: unchanged"
            ])
        );
        let mut own_sa = template();
        own_sa["spec"]["serviceAccountName"] = "mine".into();
        assert_eq!(
            injection_summary(&own_sa, &own_sa)[0],
            "serviceAccountName: mine (unchanged)"
        );
    }

    #[test]
    fn native_sidecar_is_labelled() {
        let mut pod = template();
        pod["spec"]["initContainers"] = serde_json::json!([{"name": "leader-elector", "image": "e", "restartPolicy": "Always"}]);
        let lines = injection_summary(&template(), &pod);
        assert!(
            lines
                .iter()
                .any(|l| l
                    == "+ init container leader-elector, restartPolicy Always: a native sidecar"),
            "{lines:?}"
        );
    }
}
