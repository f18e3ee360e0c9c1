//! Log fields, in a test binary of its own: tracing caches callsite interest process-wide, so a
//! scoped subscriber racing other tests' threads could miss events.

mod support;

use std::sync::Arc;

use serde_json::Value;
use support::{admit, app, fixture_json};

/// A `MakeWriter` collecting log output in memory.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn logs_carry_uid_namespace_and_workload() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = app();
    admit(&app, "pod-generatename.json").await;
    admit(&app, "deployment-annotate.json").await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let find = |msg: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} line in {text}"))
    };
    let pod_uid = fixture_json("pod-generatename.json")["request"]["uid"].clone();
    let injected = find("elector injected");
    assert_eq!(injected["span"]["uid"], pod_uid, "{injected}");
    assert_eq!(injected["span"]["namespace"], "apps");
    assert_eq!(injected["span"]["workload"], "Deployment/my-app");
    let propagated = find("workload annotations propagated to the pod template");
    assert_eq!(propagated["span"]["workload"], "Deployment/web");
    assert_eq!(
        propagated["span"]["uid"],
        fixture_json("deployment-annotate.json")["request"]["uid"]
    );
}
