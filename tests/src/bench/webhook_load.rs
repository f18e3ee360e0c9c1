//! The webhook under load: the API server's own AdmissionReview (a fixture captured from the
//! real API server by tests/tests/webhook_extra.rs) replayed over TLS with `hey` at fixed rates
//! and unthrottled, and pods created through the API server with and without the webhook in
//! the path.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::deploy;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde::Serialize;

use super::hey::{HeyRow, hey_workers, parse_hey_csv};
use super::metrics::{
    MetricSample, bucket_delta, histogram_buckets, histogram_quantile, parse_prometheus,
};
use super::options::Options;
use super::procfs::proc_stats;
use super::stats::{latencies_with_missing, percentile};
use crate::error::{Context, Error, Result, fail};
use crate::webhook::Webhook;
use crate::{ControlPlane, control_plane, httpc, procs};

/// The replayed review: a pod its ReplicaSet's controller created, annotated for injection.
pub const FIXTURE: &str = "webhook/tests/fixtures/pod-generatename.json";

/// CPU and memory samples of a process while a future runs.
async fn sampled<T>(pid: u32, fut: impl std::future::Future<Output = T>) -> (T, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = tokio::spawn(async move {
        let mut max = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(s) = proc_stats(pid) {
                max = max.max(s.rss_kib);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max
    });
    let out = fut.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max = sampler.await.unwrap_or(0);
    (out, max)
}

struct HeyRun {
    rows: Vec<HeyRow>,
    wall: Duration,
    hey_cpu_s: f64,
}

/// `hey -z <duration> -c <workers> [-q <per worker>] -m POST -D <body> -o csv <url>`.
async fn run_hey(
    url: &str,
    body: Option<&Path>,
    rate: Option<u32>,
    connections: u32,
    duration: Duration,
    out: &Path,
) -> Result<HeyRun> {
    let hey = control_plane::find_on_path("hey").ok_or_else(|| {
        fail(
            "running hey",
            "hey not found on PATH: apt-get install -y hey (bench.sh does this)",
        )
    })?;
    let (workers, qps) = match rate {
        Some(r) => {
            let (w, q) = hey_workers(r);
            (w, Some(q))
        }
        None => (connections, None),
    };
    // hey sends the URL's `host:port` as the TLS SNI name, which is not a valid server name, and
    // rustls refuses the handshake ("illegal parameter"): -host gives it a plain name.
    let mut args = vec![
        "-host".to_string(),
        "localhost".into(),
        "-z".into(),
        format!("{}ms", duration.as_millis()),
        "-c".into(),
        workers.to_string(),
        "-o".into(),
        "csv".into(),
    ];
    match body {
        Some(b) => args.extend([
            "-m".into(),
            "POST".into(),
            "-T".into(),
            "application/json".into(),
            "-D".into(),
            b.display().to_string(),
        ]),
        None => args.extend(["-m".into(), "GET".into()]),
    }
    if let Some(q) = qps {
        args.extend(["-q".into(), format!("{q}")]);
    }
    args.push(url.to_string());
    let file = std::fs::File::create(out).context(format!("creating {}", out.display()))?;
    let err_path = out.with_extension("err");
    let err =
        std::fs::File::create(&err_path).context(format!("creating {}", err_path.display()))?;
    let start = Instant::now();
    let mut child = tokio::process::Command::new(&hey)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .context("starting hey")?;
    let pid = child.id().unwrap_or(0);
    // hey's own CPU: its last /proc sample before it exits (it competes for the same cores).
    let mut hey_ns = 0;
    let status = loop {
        if let Ok(s) = proc_stats(pid) {
            hey_ns = s.cpu_ns;
        }
        match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
            Ok(s) => break s.context("waiting for hey")?,
            Err(_) if start.elapsed() > duration + Duration::from_secs(120) => {
                let _ = child.kill().await;
                return Err(fail(
                    "running hey",
                    "still running 2 minutes after its duration",
                ));
            }
            Err(_) => {}
        }
    };
    let wall = start.elapsed();
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(Error::Command {
            command: format!("hey {}", args.join(" ")),
            status: procs::describe(status),
            stderr,
        });
    }
    let text = std::fs::read_to_string(out).context(format!("reading {}", out.display()))?;
    let rows = parse_hey_csv(&text).map_err(|e| fail("reading hey's output", e))?;
    if rows.is_empty() {
        // The CSV lists answered requests only: a few more in summary mode say why none was.
        let mut probe: Vec<String> = args.clone();
        probe.retain(|a| a != "-o" && a != "csv");
        if let Some(i) = probe.iter().position(|a| a == "-z") {
            probe.splice(i..i + 2, ["-n".to_string(), "3".into()]);
        }
        let summary = tokio::process::Command::new(&hey)
            .args(&probe)
            .output()
            .await
            .context("running hey")?;
        let text = String::from_utf8_lossy(&summary.stdout);
        let why = text
            .split("Error distribution:")
            .nth(1)
            .unwrap_or(&text)
            .trim()
            .to_string();
        return Err(fail(
            format!("hey {}", args.join(" ")),
            format!("no request was answered: {why}"),
        ));
    }
    Ok(HeyRun {
        rows,
        wall,
        hey_cpu_s: hey_ns as f64 / 1e9,
    })
}

async fn webhook_metrics(addr: SocketAddr, ca_pem: &str) -> Result<Vec<MetricSample>> {
    let r = httpc::get_tls(
        addr,
        "127.0.0.1",
        ca_pem,
        contract::http::METRICS_PATH,
        Duration::from_secs(10),
    )
    .await?;
    if r.status != 200 {
        return Err(fail(
            "GET /metrics of the webhook",
            format!("status {}", r.status),
        ));
    }
    Ok(parse_prometheus(&r.body))
}

const WH_PREFIX: &str = "leader_election_webhook";

#[derive(Debug, Clone, Serialize)]
pub struct LoadStep {
    /// `/mutate`, or `/healthz` for the TLS + HTTP floor without admission work.
    pub path: String,
    /// Requested rate (req/s); None for the unthrottled step.
    pub rate: Option<u32>,
    pub connections: u32,
    pub duration_s: f64,
    /// Requests a fixed-rate step was scheduled to send (rate × duration); hey's rows otherwise.
    pub expected: usize,
    /// Answered with 200 (others count as failed, with the unanswered ones).
    pub ok: usize,
    pub failed: usize,
    pub achieved_rate: f64,
    /// Over `expected` requests, failed and unanswered ones counted as infinitely slow.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Inside the webhook (its histogram, bucket upper bound): without TLS, HTTP and queueing.
    pub server_p99_ms: Option<f64>,
    pub webhook_rss_max_kib: u64,
    /// Webhook CPU per admission (all threads, TLS included).
    pub webhook_cpu_us_per_request: f64,
    pub webhook_cpu_cores: f64,
    pub hey_cpu_cores: f64,
    /// Every latency hey reported, in ms (status 200 or not).
    pub latencies_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodCreations {
    /// Seconds per pod create through the API server, in a namespace the webhook is called for.
    pub with_webhook_s: Vec<f64>,
    /// The same pods in a namespace the configuration excludes.
    pub without_webhook_s: Vec<f64>,
    /// Pods created through the webhook that came back with the elector.
    pub injected: usize,
    pub with_p50_ms: f64,
    pub with_p99_ms: f64,
    pub without_p50_ms: f64,
    pub without_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookResult {
    pub review_source: String,
    pub review_bytes: usize,
    pub first_admission_ms: f64,
    pub idle_rss_kib: u64,
    pub hwm_kib: u64,
    pub steps: Vec<LoadStep>,
    pub pods: Option<PodCreations>,
}

/// The step's figures from hey's rows: failures and never-sent requests of a fixed-rate step
/// count as infinitely slow, so a server that drops requests cannot look fast.
pub fn step_latencies(rows: &[HeyRow], expected: usize) -> (usize, usize, Vec<f64>) {
    let ok: Vec<f64> = rows
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.latency * 1000.0)
        .collect();
    let expected = expected.max(rows.len());
    let failed = expected - ok.len();
    (ok.len(), failed, latencies_with_missing(&ok, expected))
}

/// A pod like the fixture's (owner, labels, the injection annotation), for creating through
/// the API server.
pub fn pod_from_review(review: &serde_json::Value) -> Result<serde_json::Value> {
    let o = &review["request"]["object"];
    let m = &o["metadata"];
    if !m["generateName"].is_string() || !o["spec"]["containers"].is_array() {
        return Err(fail(
            format!("the fixture {FIXTURE}"),
            "request.object is not a pod with generateName and containers",
        ));
    }
    // The token volume the API server added is not part of what a controller sends: without
    // it, the mounts referring to it go too (ServiceAccount admission adds them again).
    let mut containers = o["spec"]["containers"].clone();
    for c in containers.as_array_mut().into_iter().flatten() {
        if let Some(obj) = c.as_object_mut() {
            obj.remove("volumeMounts");
        }
    }
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": m["generateName"],
            "labels": m["labels"],
            "annotations": m["annotations"],
            "ownerReferences": m["ownerReferences"],
        },
        "spec": {"containers": containers},
    }))
}

pub async fn webhook_scenario(cp: &ControlPlane, opts: &Options) -> Result<WebhookResult> {
    crate::webhook::apply_shipped_rbac(cp).await?;
    let dir = procs::scratch_dir("bench-webhook")?;
    let (ca, cert, key) = crate::webhook::generate_certs(&dir).await?;
    let ca_pem = std::fs::read_to_string(&ca).context(format!("reading {}", ca.display()))?;
    let kubeconfig = cp
        .service_account_kubeconfig(deploy::NAMESPACE, deploy::WEBHOOK_NAME)
        .await?;
    let webhook = Webhook::spawn(
        &kubeconfig,
        &[
            format!("--tls-cert-file={}", cert.display()),
            format!("--tls-key-file={}", key.display()),
            format!("--namespace={}", deploy::NAMESPACE),
        ],
        "webhook",
        &dir,
    )?;
    let r = run_webhook(cp, &webhook, &dir, &ca_pem, opts).await;
    let r = r.map_err(|e| webhook.with_output(e));
    let _ = webhook.proc.stop(Duration::from_secs(25)).await;
    r
}

async fn run_webhook(
    cp: &ControlPlane,
    webhook: &Webhook,
    dir: &Path,
    ca_pem: &str,
    opts: &Options,
) -> Result<WebhookResult> {
    webhook.wait_ready(ca_pem, Duration::from_secs(60)).await?;
    let fixture = crate::workspace_root().join(FIXTURE);
    let body =
        std::fs::read_to_string(&fixture).context(format!("reading {}", fixture.display()))?;
    let review: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| fail(format!("parsing {}", fixture.display()), e.to_string()))?;

    let t = Instant::now();
    let first = httpc::post_tls(
        webhook.addr,
        "127.0.0.1",
        ca_pem,
        deploy::MUTATE_PATH,
        &body,
        Duration::from_secs(30),
    )
    .await?;
    let first_admission_ms = t.elapsed().as_secs_f64() * 1000.0;
    let answer: serde_json::Value = serde_json::from_str(&first.body).map_err(|e| {
        fail(
            "the first admission's answer",
            format!("{e}: {}", first.body),
        )
    })?;
    if first.status != 200
        || answer["response"]["allowed"] != true
        || !answer["response"]["patch"].is_string()
    {
        return Err(fail(
            "the first admission",
            format!(
                "expected an allowed answer with a patch, got {} {}",
                first.status, first.body
            ),
        ));
    }
    let idle = proc_stats(webhook.proc.pid())?;
    let mut steps = Vec::new();
    // Fixed rates and unthrottled on /mutate, then unthrottled GET /healthz: the same TLS and
    // HTTP work without the admission, which splits the cost between transport and handler.
    let mutate = deploy::MUTATE_PATH;
    let healthz = contract::http::HEALTHZ_PATH;
    let plan: Vec<(Option<u32>, &str)> = opts
        .rates
        .iter()
        .map(|r| (Some(*r), mutate))
        .chain([(None, mutate), (None, healthz)])
        .collect();
    for (i, (rate, path)) in plan.into_iter().enumerate() {
        let url = format!("https://{}{path}", webhook.addr);
        let body = (path == mutate).then_some(fixture.as_path());
        let before = webhook_metrics(webhook.addr, ca_pem).await?;
        let cpu0 = proc_stats(webhook.proc.pid())?.cpu_ns;
        let out = dir.join(format!("hey-{i}.csv"));
        let (run, rss_max) = sampled(
            webhook.proc.pid(),
            run_hey(
                &url,
                body,
                rate,
                opts.max_connections,
                opts.load_duration,
                &out,
            ),
        )
        .await;
        let run = run?;
        let cpu1 = proc_stats(webhook.proc.pid())?.cpu_ns;
        let after = webhook_metrics(webhook.addr, ca_pem).await?;
        let hist = format!("{WH_PREFIX}_admission_duration_seconds");
        let buckets = bucket_delta(
            &histogram_buckets(&before, &hist),
            &histogram_buckets(&after, &hist),
        );
        let secs = opts.load_duration.as_secs_f64();
        let expected = rate.map_or(0, |r| (f64::from(r) * secs).round() as usize);
        // hey's CSV lists every response (non-200 ones count as infinitely slow) but not its
        // connection errors; the shortfall against the schedule is reported beside.
        let (ok, failed, lat) = step_latencies(&run.rows, run.rows.len());
        let cpu_s = cpu1.saturating_sub(cpu0) as f64 / 1e9;
        let step = LoadStep {
            path: path.to_string(),
            rate,
            connections: rate
                .map(|r| hey_workers(r).0)
                .unwrap_or(opts.max_connections),
            duration_s: secs,
            expected: expected.max(run.rows.len()),
            ok,
            failed,
            achieved_rate: ok as f64 / secs,
            p50_ms: percentile(&lat, 0.5).unwrap_or(f64::NAN),
            p99_ms: percentile(&lat, 0.99).unwrap_or(f64::NAN),
            max_ms: lat.last().copied().unwrap_or(f64::NAN),
            server_p99_ms: histogram_quantile(&buckets, 0.99).map(|s| s * 1000.0),
            webhook_rss_max_kib: rss_max,
            webhook_cpu_us_per_request: if ok > 0 {
                cpu_s / ok as f64 * 1e6
            } else {
                f64::NAN
            },
            webhook_cpu_cores: cpu_s / run.wall.as_secs_f64(),
            hey_cpu_cores: run.hey_cpu_s / run.wall.as_secs_f64(),
            latencies_ms: run.rows.iter().map(|r| r.latency * 1000.0).collect(),
        };
        eprintln!(
            "bench:   load {path} {}: {} ok, {} failed ({:.0}/s), p50 {:.2} ms p99 {:.2} ms, webhook {:.2} cores, hey {:.2} cores",
            rate.map(|r| format!("{r} req/s"))
                .unwrap_or_else(|| format!("unthrottled x{}", opts.max_connections)),
            step.ok,
            step.failed,
            step.achieved_rate,
            step.p50_ms,
            step.p99_ms,
            step.webhook_cpu_cores,
            step.hey_cpu_cores,
        );
        steps.push(step);
    }
    let pods = if opts.pod_creations > 0 {
        Some(pod_creations(cp, webhook, ca_pem, &review, opts.pod_creations).await?)
    } else {
        None
    };
    let end = proc_stats(webhook.proc.pid())?;
    Ok(WebhookResult {
        review_source: format!("{FIXTURE} (captured from the real API server)"),
        review_bytes: body.len(),
        first_admission_ms,
        idle_rss_kib: idle.rss_kib,
        hwm_kib: end.hwm_kib,
        steps,
        pods,
    })
}

/// Creates `n` pods through the API server with the webhook called and `n` without (in a
/// namespace the shipped configuration excludes), alternating, and times each create.
async fn pod_creations(
    cp: &ControlPlane,
    webhook: &Webhook,
    ca_pem: &str,
    review: &serde_json::Value,
    n: usize,
) -> Result<PodCreations> {
    let pod: Pod = serde_json::from_value(pod_from_review(review)?)
        .map_err(|e| fail("the pod to create", e.to_string()))?;
    let shipped = crate::webhook::shipped_webhook_configuration().await?;
    let name = format!("bench-{}", procs::rand_suffix());
    let mwc = crate::webhook::loopback_webhook_configuration(
        &shipped,
        &name,
        &webhook.url(),
        Some(ca_pem),
    )?;
    crate::webhook::create_webhook_configuration(cp, &mwc).await?;
    let r = async {
        webhook.wait_called(cp, Duration::from_secs(60)).await?;
        let on = cp.create_namespace("bench-pods").await?;
        let off = cp.create_namespace("bench-pods-off").await?;
        cp.kubectl_ok(
            &["label", "namespace", &off, "leader-election/injection=disabled"],
            None,
        )
        .await?;
        let admin = cp.admin_client().await?;
        let (api_on, api_off) = (
            Api::<Pod>::namespaced(admin.clone(), &on),
            Api::<Pod>::namespaced(admin.clone(), &off),
        );
        let (mut with, mut without, mut injected) = (Vec::new(), Vec::new(), 0);
        for _ in 0..n {
            let t = Instant::now();
            let created = api_on
                .create(&PostParams::default(), &pod)
                .await
                .context(format!("creating a pod in {on}"))?;
            with.push(t.elapsed().as_secs_f64());
            let containers = created.spec.map(|s| s.containers).unwrap_or_default();
            if containers.iter().any(|c| c.name == contract::CONTAINER_NAME) {
                injected += 1;
            }
            let t = Instant::now();
            api_off
                .create(&PostParams::default(), &pod)
                .await
                .context(format!("creating a pod in {off}"))?;
            without.push(t.elapsed().as_secs_f64());
        }
        let ms = |v: &[f64], q: f64| {
            let mut s: Vec<f64> = v.iter().map(|x| x * 1000.0).collect();
            s.sort_by(f64::total_cmp);
            percentile(&s, q).unwrap_or(f64::NAN)
        };
        eprintln!(
            "bench:   {n} pods through the API server: with the webhook p50 {:.1} p99 {:.1} ms ({injected} injected), without p50 {:.1} p99 {:.1} ms",
            ms(&with, 0.5),
            ms(&with, 0.99),
            ms(&without, 0.5),
            ms(&without, 0.99)
        );
        Ok(PodCreations {
            with_p50_ms: ms(&with, 0.5),
            with_p99_ms: ms(&with, 0.99),
            without_p50_ms: ms(&without, 0.5),
            without_p99_ms: ms(&without, 0.99),
            with_webhook_s: with,
            without_webhook_s: without,
            injected,
        })
    }
    .await;
    let _ = cp
        .kubectl(&["delete", "mutatingwebhookconfiguration", &name], None)
        .await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_and_missing_requests_count_against_latency() {
        let row = |ms: f64, status: u16| HeyRow {
            latency: ms / 1000.0,
            status,
        };
        let rows: Vec<HeyRow> = (0..97)
            .map(|i| row(1.0 + f64::from(i) / 100.0, 200))
            .chain([row(0.5, 500)])
            .collect();
        // 100 expected at the fixed rate: 97 ok, 1 failed, 2 never answered.
        let (ok, failed, lat) = step_latencies(&rows, 100);
        assert_eq!((ok, failed, lat.len()), (97, 3, 100));
        assert_eq!(percentile(&lat, 0.99), Some(f64::INFINITY));
        assert!(percentile(&lat, 0.5).is_some_and(|p| p < 2.0));
        // Unthrottled: nothing expected beyond what hey sent.
        let (ok, failed, lat) = step_latencies(&rows, 0);
        assert_eq!((ok, failed, lat.len()), (97, 1, 98));
    }

    #[test]
    fn the_fixture_makes_a_pod() {
        let text = std::fs::read_to_string(crate::workspace_root().join(FIXTURE)).expect("fixture");
        let review: serde_json::Value = serde_json::from_str(&text).expect("json");
        let pod = pod_from_review(&review).expect("pod");
        let _: Pod = serde_json::from_value(pod.clone()).expect("a valid Pod");
        assert_eq!(
            pod["metadata"]["annotations"][contract::annotations::ENABLED],
            "true"
        );
        assert!(pod["metadata"]["generateName"].is_string());
        assert!(pod["spec"]["containers"][0].get("volumeMounts").is_none());
        assert!(pod_from_review(&serde_json::json!({"request": {}})).is_err());
    }
}
