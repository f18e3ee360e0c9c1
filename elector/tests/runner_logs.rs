//! The runner's logs with a watch that always fails (`watch` forbidden): one error line, not one
//! per retry, and readiness that follows the missing view. Its own test binary, so no other test
//! thread shares tracing's per-callsite state with the capturing subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::Timings;
use elector::clock;
use elector::election::Candidate;
use elector::error::StoreError;
use elector::http::Shared;
use elector::runner::Runner;
use elector::store::MemoryStore;
use tokio::sync::mpsc;

const TIMINGS: Timings = Timings {
    lease_duration: Duration::from_secs(2),
    renew_deadline: Duration::from_millis(1500),
    retry_period: Duration::from_millis(300),
};

struct Node {
    shared: Arc<Shared>,
    signal: mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start(id: &str, store: &MemoryStore) -> Node {
    let shared = Shared::new(id, "lease", "ns", clock::mono);
    let (signal, rx) = mpsc::unbounded_channel();
    let runner = Runner::new(
        Candidate::new(id, TIMINGS, 7),
        store.clone(),
        shared.clone(),
        true,
    )
    .with_output(Box::new(std::io::sink()));
    let task = tokio::task::spawn_local(runner.run(rx));
    Node {
        shared,
        signal,
        task,
    }
}

fn leads(n: &Node) -> bool {
    n.shared.view().is_leader(clock::mono())
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
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
async fn a_forbidden_watch_is_logged_once_and_makes_the_elector_not_ready() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let store = MemoryStore::new();
            store.fail_watches(Some(StoreError::Forbidden {
                verb: "watch",
                namespace: "ns".into(),
                message: "watch is forbidden".into(),
            }));
            let a = start("a", &store);
            wait_for("a to read the lease", || a.shared.view().ready).await;
            // Longer than a lease duration (2 s) of a watch that fails every time.
            tokio::time::sleep(TIMINGS.lease_duration + Duration::from_millis(1500)).await;
            assert!(leads(&a), "reads and renewals keep working without a watch");
            assert!(
                !a.shared.view().ready,
                "no working watch for a lease duration: not ready"
            );
            store.fail_watches(None);
            store.close_watches();
            wait_for("ready again once the watch works", || a.shared.view().ready).await;
            a.signal.send(()).unwrap();
            a.task.await.unwrap();
        })
        .await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let errors = text
        .lines()
        .filter(|l| l.contains("watch is forbidden") && !l.contains("works again"))
        .count();
    assert_eq!(
        errors, 1,
        "one line for the forbidden watch, not one per retry:\n{text}"
    );
    assert!(
        !text.contains("API requests succeed again"),
        "a failing watch must not make requests look recovered:\n{text}"
    );
    assert_eq!(text.matches("the watch works again").count(), 1, "{text}");
}
