//! The real I/O loop (real clock, tokio) against the in-memory store: election, the exact
//! "is the leader" line, watch-driven handover on SIGTERM, and no follower polling.

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
use tokio::sync::{mpsc, watch};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

const TIMINGS: Timings = Timings {
    lease_duration: Duration::from_secs(2),
    renew_deadline: Duration::from_millis(1500),
    retry_period: Duration::from_millis(300),
};

struct Node {
    shared: Arc<Shared>,
    out: Buf,
    signal: mpsc::UnboundedSender<()>,
    task: tokio::task::JoinHandle<()>,
    /// What the leader-label option would write: `true` while this node leads.
    role: watch::Receiver<bool>,
}

fn start(id: &str, store: &MemoryStore) -> Node {
    let shared = Shared::new(id, "lease", "ns", clock::mono);
    let out = Buf::default();
    let (signal, rx) = mpsc::unbounded_channel();
    let (role_tx, role) = watch::channel(false);
    let runner = Runner::new(
        Candidate::new(id, TIMINGS, id.len() as u64),
        store.clone(),
        shared.clone(),
        true,
    )
    .with_output(Box::new(out.clone()))
    .with_role_channel(role_tx);
    let task = tokio::task::spawn_local(runner.run(rx));
    Node {
        shared,
        out,
        signal,
        task,
        role,
    }
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

fn leads(n: &Node) -> bool {
    n.shared.view().is_leader(clock::mono())
}

#[tokio::test(flavor = "current_thread")]
async fn elects_one_hands_over_on_sigterm_and_followers_do_not_poll() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let store = MemoryStore::new();
            let a = start("a", &store);
            wait_for("a to lead", || leads(&a)).await;
            let b = start("b", &store);
            let c = start("c", &store);
            wait_for("b and c to see a", || {
                b.out.text() == "a is the leader\n" && c.out.text() == "a is the leader\n"
            })
            .await;
            assert_eq!(a.out.text(), "a is the leader\n");
            assert!(!leads(&b) && !leads(&c));
            assert!(*a.role.borrow() && !*b.role.borrow() && !*c.role.borrow());

            // Over six renew intervals, requests come from the leader's renewals only, one per
            // renew interval (not one per retry period).
            let before = store.requests();
            tokio::time::sleep(TIMINGS.default_renew_interval() * 6).await;
            let during = store.requests() - before;
            assert!(
                (5..=7).contains(&during),
                "{during} requests in 6 renew intervals"
            );

            // SIGTERM: a releases and exits; b or c takes over through the watch, fast.
            let t0 = clock::mono();
            a.signal.send(()).unwrap();
            a.task.await.unwrap();
            assert!(!a.shared.view().is_leader(clock::mono()));
            // The runner said "no longer leading" before it ended (the label ends as follower).
            assert!(!*a.role.borrow());
            assert!(a.role.has_changed().is_err(), "role channel closed on exit");
            let lease = store.lease().unwrap();
            assert!(lease.record.holder.as_deref() != Some("a"));
            wait_for("a successor", || leads(&b) || leads(&c)).await;
            let handover = clock::mono().saturating_sub(t0);
            assert!(
                handover < Duration::from_millis(500),
                "handover took {handover:?}"
            );
            let new = if leads(&b) { "b" } else { "c" };
            let new_node = if new == "b" { &b } else { &c };
            wait_for("the successor's role", || *new_node.role.borrow()).await;
            let lease = store.lease().unwrap();
            assert_eq!(lease.record.holder.as_deref(), Some(new));
            assert_eq!(lease.record.transitions, 1);
            let line = format!("a is the leader\n{new} is the leader\n");
            wait_for("both to log the new leader", || {
                b.out.text() == line && c.out.text() == line
            })
            .await;

            for n in [b, c] {
                n.signal.send(()).unwrap();
                n.task.await.unwrap();
            }
            assert_eq!(store.lease().unwrap().record.holder, None);
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn api_errors_are_retried_and_a_watch_close_is_recovered() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let store = MemoryStore::new();
            store.inject(StoreError::Forbidden {
                verb: "list",
                namespace: "ns".into(),
                message: "no".into(),
            });
            store.inject(StoreError::Timeout {
                verb: "list",
                url: "https://x".into(),
                timeout: Duration::from_secs(1),
            });
            let a = start("a", &store);
            wait_for("a to lead despite errors", || leads(&a)).await;
            let b = start("b", &store);
            wait_for("b to see a", || b.out.text() == "a is the leader\n").await;
            // The API server closes watches now and then; b must still hear the release.
            store.close_watches();
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.signal.send(()).unwrap();
            a.task.await.unwrap();
            wait_for("b to take over", || leads(&b)).await;
            b.signal.send(()).unwrap();
            b.task.await.unwrap();
        })
        .await;
}
