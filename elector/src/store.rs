//! Where the Lease lives: the API server ([`KubeStore`]) or memory ([`MemoryStore`], with the
//! API server's optimistic-concurrency rules, for tests and the simulation).

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::LocalBoxStream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

use crate::election::{Failure, LeaseRecord, Snapshot, StoredLease, WatchItem};
use crate::error::StoreError;

/// Operations on one named Lease.
#[allow(async_fn_in_trait)]
pub trait LeaseStore: Clone + 'static {
    /// The lease (if it exists) and a resourceVersion to watch from.
    async fn get(&self) -> Result<Snapshot, StoreError>;
    /// Creates the lease; `AlreadyExists` if it exists.
    async fn create(&self, record: LeaseRecord) -> Result<StoredLease, StoreError>;
    /// Replaces the lease if it is still at `resource_version`; `Conflict` otherwise.
    async fn replace(
        &self,
        record: LeaseRecord,
        resource_version: String,
    ) -> Result<StoredLease, StoreError>;
    /// Changes after `resource_version`, until the stream ends or yields an error.
    fn watch(
        &self,
        resource_version: String,
    ) -> LocalBoxStream<'static, Result<WatchItem, StoreError>>;
}

// ---------------------------------------------------------------------------------------------
// In memory

/// The API server's rules for one object, without I/O: resourceVersions increase on every
/// change; a replace carrying a stale resourceVersion is a conflict; a create of an existing
/// object is AlreadyExists; an update that changes nothing keeps the resourceVersion; a watch
/// from a resourceVersion older than the retained history is Gone.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    lease: Option<StoredLease>,
    revision: u64,
    history: VecDeque<(u64, WatchItem)>,
    history_cap: usize,
    /// Oldest revision a watch may start from.
    compacted: u64,
}

impl Default for LeaseTable {
    fn default() -> Self {
        Self::new(64)
    }
}

impl LeaseTable {
    pub fn new(history_cap: usize) -> Self {
        LeaseTable {
            lease: None,
            revision: 1,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 1,
        }
    }

    pub fn lease(&self) -> Option<&StoredLease> {
        self.lease.as_ref()
    }

    pub fn get(&self) -> Snapshot {
        Snapshot {
            lease: self.lease.clone(),
            resource_version: self.revision.to_string(),
        }
    }

    fn commit(&mut self, item: WatchItem) -> WatchItem {
        self.history.push_back((self.revision, item.clone()));
        while self.history.len() > self.history_cap {
            if let Some((rev, _)) = self.history.pop_front() {
                self.compacted = rev;
            }
        }
        item
    }

    /// Returns the stored lease and the watch item to broadcast.
    pub fn create(&mut self, record: LeaseRecord) -> Result<(StoredLease, WatchItem), Failure> {
        if self.lease.is_some() {
            return Err(Failure::AlreadyExists);
        }
        Ok(self.store(record))
    }

    /// Stores `record` at a new resourceVersion.
    fn store(&mut self, record: LeaseRecord) -> (StoredLease, WatchItem) {
        self.revision += 1;
        let stored = StoredLease {
            record,
            resource_version: self.revision.to_string(),
        };
        self.lease = Some(stored.clone());
        let item = self.commit(WatchItem::Changed(stored.clone()));
        (stored, item)
    }

    /// `None` as the item when nothing changed (no new resourceVersion, no event), as the API
    /// server does. An empty `resource_version` is an unconditional update, as for the API server.
    pub fn replace(
        &mut self,
        record: LeaseRecord,
        resource_version: &str,
    ) -> Result<(StoredLease, Option<WatchItem>), Failure> {
        let current = self.lease.as_ref().ok_or(Failure::NotFound)?;
        if !resource_version.is_empty() && current.resource_version != resource_version {
            return Err(Failure::Conflict);
        }
        if current.record == record {
            return Ok((current.clone(), None));
        }
        let (stored, item) = self.store(record);
        Ok((stored, Some(item)))
    }

    pub fn delete(&mut self) -> Option<WatchItem> {
        self.lease.take()?;
        self.revision += 1;
        Some(self.commit(WatchItem::Deleted {
            resource_version: self.revision.to_string(),
        }))
    }

    /// Items after `resource_version`, or Gone when it is older than the retained history.
    pub fn since(&self, resource_version: &str) -> Result<Vec<WatchItem>, Failure> {
        let from: u64 = resource_version.parse().map_err(|_| Failure::Gone)?;
        if from < self.compacted {
            return Err(Failure::Gone);
        }
        Ok(self
            .history
            .iter()
            .filter(|(rev, _)| *rev > from)
            .map(|(_, item)| item.clone())
            .collect())
    }
}

type Subscriber = tokio::sync::mpsc::UnboundedSender<Result<WatchItem, StoreError>>;

#[derive(Default)]
struct MemoryInner {
    table: LeaseTable,
    subscribers: Vec<Subscriber>,
    /// Errors returned by the next requests, in order (fault injection for tests).
    faults: VecDeque<StoreError>,
    /// Every watch fails at once with this error (e.g. `watch` forbidden).
    watch_fault: Option<StoreError>,
    requests: u64,
}

/// A [`LeaseTable`] behind async [`LeaseStore`] methods, with live watches.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        // A panicking test thread must not hide the state from the others.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stored lease, for assertions.
    pub fn lease(&self) -> Option<StoredLease> {
        self.lock().table.lease().cloned()
    }

    /// Number of get/create/replace requests served (watches excluded).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Makes the next request fail with `err`.
    pub fn inject(&self, err: StoreError) {
        self.lock().faults.push_back(err);
    }

    /// Makes every watch fail at once with `err` (or work again with `None`).
    pub fn fail_watches(&self, err: Option<StoreError>) {
        self.lock().watch_fault = err;
    }

    /// Ends every open watch (as the API server does every few minutes).
    pub fn close_watches(&self) {
        self.lock().subscribers.clear();
    }

    /// Writes a record directly, as another client would (unconditional).
    pub fn force(&self, record: LeaseRecord) -> StoredLease {
        let mut inner = self.lock();
        let result = match inner.table.lease() {
            None => inner.table.create(record).map(|(s, i)| (s, Some(i))),
            Some(_) => inner.table.replace(record, ""),
        };
        match result {
            Ok((stored, item)) => {
                if let Some(item) = item {
                    broadcast(&mut inner.subscribers, item);
                }
                stored
            }
            // Unreachable by construction (create on absent, unconditional replace on present),
            // but never panic: report the current state.
            Err(_) => inner.table.lease().cloned().unwrap_or(StoredLease {
                record: LeaseRecord {
                    holder: None,
                    lease_duration_seconds: 0,
                    acquire_time: None,
                    renew_time: None,
                    transitions: 0,
                    released: false,
                },
                resource_version: String::new(),
            }),
        }
    }

    pub fn delete(&self) {
        let mut inner = self.lock();
        if let Some(item) = inner.table.delete() {
            broadcast(&mut inner.subscribers, item);
        }
    }

    fn begin(&self) -> Result<MutexGuard<'_, MemoryInner>, StoreError> {
        let mut inner = self.lock();
        inner.requests += 1;
        match inner.faults.pop_front() {
            Some(err) => Err(err),
            None => Ok(inner),
        }
    }
}

fn broadcast(subscribers: &mut Vec<Subscriber>, item: WatchItem) {
    subscribers.retain(|s| s.send(Ok(item.clone())).is_ok());
}

fn memory_error(failure: Failure, verb: &'static str) -> StoreError {
    match failure {
        Failure::Conflict => StoreError::Conflict { verb },
        Failure::AlreadyExists => StoreError::AlreadyExists,
        Failure::NotFound => StoreError::NotFound { verb },
        Failure::Gone => StoreError::Gone,
        Failure::Transient | Failure::Throttled(_) | Failure::Permanent => StoreError::Other {
            verb,
            message: format!("{failure:?}"),
        },
    }
}

impl LeaseStore for MemoryStore {
    async fn get(&self) -> Result<Snapshot, StoreError> {
        Ok(self.begin()?.table.get())
    }

    async fn create(&self, record: LeaseRecord) -> Result<StoredLease, StoreError> {
        let mut inner = self.begin()?;
        let (stored, item) = inner
            .table
            .create(record)
            .map_err(|f| memory_error(f, "create"))?;
        broadcast(&mut inner.subscribers, item);
        Ok(stored)
    }

    async fn replace(
        &self,
        record: LeaseRecord,
        resource_version: String,
    ) -> Result<StoredLease, StoreError> {
        let mut inner = self.begin()?;
        let (stored, item) = inner
            .table
            .replace(record, &resource_version)
            .map_err(|f| memory_error(f, "update"))?;
        if let Some(item) = item {
            broadcast(&mut inner.subscribers, item);
        }
        Ok(stored)
    }

    fn watch(
        &self,
        resource_version: String,
    ) -> LocalBoxStream<'static, Result<WatchItem, StoreError>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let mut inner = self.lock();
            if let Some(err) = inner.watch_fault.clone() {
                let _ = tx.send(Err(err));
                drop(tx);
                return futures::stream::unfold(rx, |mut rx| async move {
                    let item = rx.recv().await?;
                    Some((item, rx))
                })
                .boxed_local();
            }
            match inner.table.since(&resource_version) {
                Ok(items) => {
                    for item in items {
                        let _ = tx.send(Ok(item));
                    }
                    inner.subscribers.push(tx);
                }
                Err(f) => {
                    let _ = tx.send(Err(memory_error(f, "watch")));
                }
            }
        }
        futures::stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item, rx))
        })
        .boxed_local()
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// The Lease `name` in `namespace` on the API server.
#[derive(Clone)]
pub struct KubeStore {
    api: Api<Lease>,
    name: String,
    namespace: String,
    url: String,
    timeout: Duration,
    /// The last few objects seen, by resourceVersion: a replace starts from the exact object it
    /// is guarded on, so labels, annotations and ownerReferences written by others survive, and
    /// a lagging watch item cannot stand in for a newer object.
    seen: Arc<Mutex<VecDeque<Lease>>>,
}

/// Objects kept in [`KubeStore::seen`].
const SEEN_OBJECTS: usize = 8;

/// Annotation on the Lease marking a free record as a graceful release by its holder (see
/// [`LeaseRecord::released`]); every claim removes it.
pub const RELEASED_ANNOTATION: &str = "leader-election/released";

/// Server-side watch timeout; the API server closes the watch after it and we re-watch.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// No item (not even a bookmark) for this long means the connection is dead.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 15);

impl KubeStore {
    /// `timeout` bounds each get/create/replace.
    pub fn new(
        client: kube::Client,
        url: String,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Self {
        KubeStore {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            url,
            timeout,
            seen: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    fn remember(&self, lease: &Lease) {
        let Some(rv) = lease.metadata.resource_version.as_deref() else {
            return;
        };
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen
            .iter()
            .any(|l| l.metadata.resource_version.as_deref() == Some(rv))
        {
            return;
        }
        if seen.len() >= SEEN_OBJECTS {
            seen.pop_front();
        }
        seen.push_back(lease.clone());
    }

    fn seen_at(&self, resource_version: &str) -> Option<Lease> {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.iter()
            .find(|l| l.metadata.resource_version.as_deref() == Some(resource_version))
            .cloned()
    }

    /// The object at `resource_version`, from memory or else read; Conflict when the Lease has
    /// moved on (as the update would be answered), NotFound when it is gone.
    async fn object_at(&self, resource_version: &str) -> Result<Lease, StoreError> {
        if let Some(l) = self.seen_at(resource_version) {
            return Ok(l);
        }
        let current = self.bounded("get", self.api.get(&self.name)).await?;
        self.remember(&current);
        if !resource_version.is_empty()
            && current.metadata.resource_version.as_deref() != Some(resource_version)
        {
            return Err(StoreError::Conflict { verb: "update" });
        }
        Ok(current)
    }

    fn field_selector(&self) -> String {
        format!("metadata.name={}", self.name)
    }

    fn err(&self, e: kube::Error, verb: &'static str) -> StoreError {
        StoreError::from_kube(e, verb, &self.namespace, &self.url)
    }

    async fn bounded<T>(
        &self,
        verb: &'static str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| self.err(e, verb)),
            Err(_) => Err(StoreError::Timeout {
                verb,
                url: self.url.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// A new Lease carrying `record`.
    fn object(&self, record: &LeaseRecord) -> Lease {
        let annotations = record
            .released
            .then(|| BTreeMap::from([(RELEASED_ANNOTATION.to_owned(), "true".to_owned())]));
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                annotations,
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                // client-go writes "" (not null) when releasing; readers treat both as free.
                holder_identity: Some(record.holder.clone().unwrap_or_default()),
                lease_duration_seconds: Some(record.lease_duration_seconds),
                acquire_time: record.acquire_time.map(MicroTime),
                renew_time: record.renew_time.map(MicroTime),
                lease_transitions: Some(record.transitions),
                ..LeaseSpec::default()
            }),
        }
    }
}

/// `base` with the election fields (and the release mark) of `record`, guarded by
/// `resource_version` (empty: unconditional). Everything else — labels, other annotations,
/// ownerReferences, spec fields we do not manage — is kept as `base` has it.
pub fn updated_object(base: &Lease, record: &LeaseRecord, resource_version: &str) -> Lease {
    let mut lease = base.clone();
    lease.metadata.resource_version =
        (!resource_version.is_empty()).then(|| resource_version.to_owned());
    lease.metadata.managed_fields = None;
    if record.released {
        lease
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(RELEASED_ANNOTATION.to_owned(), "true".to_owned());
    } else if let Some(a) = lease.metadata.annotations.as_mut() {
        a.remove(RELEASED_ANNOTATION);
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    // client-go writes "" (not null) when releasing; readers treat both as free.
    spec.holder_identity = Some(record.holder.clone().unwrap_or_default());
    spec.lease_duration_seconds = Some(record.lease_duration_seconds);
    spec.acquire_time = record.acquire_time.map(MicroTime);
    spec.renew_time = record.renew_time.map(MicroTime);
    spec.lease_transitions = Some(record.transitions);
    lease
}

/// The election fields of a Lease object.
pub fn to_stored(lease: &Lease) -> StoredLease {
    let spec = lease.spec.clone().unwrap_or_default();
    StoredLease {
        record: LeaseRecord {
            holder: spec.holder_identity,
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            released: lease
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.get(RELEASED_ANNOTATION).is_some_and(|v| v == "true")),
        }
        .normalized(),
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

impl LeaseStore for KubeStore {
    async fn get(&self) -> Result<Snapshot, StoreError> {
        // A list filtered to the one name also yields a resourceVersion when the lease does
        // not exist, so the watch can start without a gap.
        let lp = ListParams::default().fields(&self.field_selector());
        let list = self.bounded("list", self.api.list(&lp)).await?;
        let lease = list
            .items
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(self.name.as_str()));
        if let Some(l) = lease {
            self.remember(l);
        }
        Ok(Snapshot {
            lease: lease.map(to_stored),
            resource_version: list.metadata.resource_version.unwrap_or_default(),
        })
    }

    async fn create(&self, record: LeaseRecord) -> Result<StoredLease, StoreError> {
        let obj = self.object(&record);
        let created = self
            .bounded("create", self.api.create(&PostParams::default(), &obj))
            .await?;
        self.remember(&created);
        Ok(to_stored(&created))
    }

    async fn replace(
        &self,
        record: LeaseRecord,
        resource_version: String,
    ) -> Result<StoredLease, StoreError> {
        let base = self.object_at(&resource_version).await?;
        let obj = updated_object(&base, &record, &resource_version);
        let replaced = self
            .bounded(
                "update",
                self.api.replace(&self.name, &PostParams::default(), &obj),
            )
            .await?;
        self.remember(&replaced);
        Ok(to_stored(&replaced))
    }

    fn watch(
        &self,
        resource_version: String,
    ) -> LocalBoxStream<'static, Result<WatchItem, StoreError>> {
        let store = self.clone();
        let wp = WatchParams::default()
            .fields(&self.field_selector())
            .timeout(WATCH_TIMEOUT_SECS);
        let start = async move {
            // A half-open connection would otherwise hang the watch start for good.
            let started =
                tokio::time::timeout(store.timeout, store.api.watch(&wp, &resource_version))
                    .await
                    .map_err(|_| StoreError::Timeout {
                        verb: "watch",
                        url: store.url.clone(),
                        timeout: store.timeout,
                    })?;
            let stream = started.map_err(|e| store.err(e, "watch"))?;
            Ok::<_, StoreError>((store, stream.boxed()))
        };
        futures::stream::once(start)
            .flat_map(|started| match started {
                Err(e) => futures::stream::iter([Err(e)]).boxed_local(),
                Ok((store, stream)) => {
                    let idle = store.url.clone();
                    futures::stream::unfold(
                        (store, stream, false),
                        move |(store, mut stream, done)| {
                            let idle_url = idle.clone();
                            async move {
                                if done {
                                    return None;
                                }
                                let next = tokio::time::timeout(WATCH_IDLE, stream.next()).await;
                                let item = match next {
                                    Err(_) => Err(StoreError::Timeout {
                                        verb: "watch",
                                        url: idle_url,
                                        timeout: WATCH_IDLE,
                                    }),
                                    Ok(None) => return None,
                                    Ok(Some(Err(e))) => Err(store.err(e, "watch")),
                                    Ok(Some(Ok(ev))) => match ev {
                                        WatchEvent::Added(l) | WatchEvent::Modified(l) => {
                                            store.remember(&l);
                                            Ok(WatchItem::Changed(to_stored(&l)))
                                        }
                                        WatchEvent::Deleted(l) => Ok(WatchItem::Deleted {
                                            resource_version: l
                                                .metadata
                                                .resource_version
                                                .unwrap_or_default(),
                                        }),
                                        WatchEvent::Bookmark(b) => Ok(WatchItem::Bookmark {
                                            resource_version: b.metadata.resource_version,
                                        }),
                                        WatchEvent::Error(status) => {
                                            Err(store.err(kube::Error::Api(status), "watch"))
                                        }
                                    },
                                };
                                // An error ends the stream after being reported.
                                let done = item.is_err();
                                Some((item, (store, stream, done)))
                            }
                        },
                    )
                    .boxed_local()
                }
            })
            .boxed_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: &str, transitions: i32) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.to_owned()),
            lease_duration_seconds: 15,
            acquire_time: None,
            renew_time: None,
            transitions,
            released: false,
        }
    }

    #[test]
    fn table_enforces_optimistic_concurrency() {
        let mut t = LeaseTable::new(4);
        let (a, _) = t.create(rec("a", 0)).unwrap();
        assert_eq!(t.create(rec("b", 0)).unwrap_err(), Failure::AlreadyExists);
        let (b, _) = t.replace(rec("b", 1), &a.resource_version).unwrap();
        assert_ne!(a.resource_version, b.resource_version);
        // Stale resourceVersion.
        assert_eq!(
            t.replace(rec("c", 2), &a.resource_version).unwrap_err(),
            Failure::Conflict
        );
        // No-op update keeps the resourceVersion and emits nothing.
        let (same, item) = t.replace(rec("b", 1), &b.resource_version).unwrap();
        assert_eq!(same.resource_version, b.resource_version);
        assert!(item.is_none());
        t.delete();
        assert_eq!(
            t.replace(rec("c", 2), &b.resource_version).unwrap_err(),
            Failure::NotFound
        );
    }

    #[test]
    fn table_watch_history_and_gone() {
        let mut t = LeaseTable::new(2);
        let start = t.get().resource_version;
        let (a, _) = t.create(rec("a", 0)).unwrap();
        assert_eq!(t.since(&start).unwrap().len(), 1);
        let (b, _) = t.replace(rec("b", 1), &a.resource_version).unwrap();
        let (c, _) = t.replace(rec("c", 2), &b.resource_version).unwrap();
        assert_eq!(t.since(&start).unwrap_err(), Failure::Gone);
        assert_eq!(t.since(&b.resource_version).unwrap().len(), 1);
        assert!(t.since(&c.resource_version).unwrap().is_empty());
        assert_eq!(t.since("garbage").unwrap_err(), Failure::Gone);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn memory_store_watch_sees_changes_after_rv() {
        let store = MemoryStore::new();
        let snap = store.get().await.unwrap();
        assert!(snap.lease.is_none());
        let mut w = store.watch(snap.resource_version);
        let a = store.create(rec("a", 0)).await.unwrap();
        let err = store.create(rec("b", 0)).await.unwrap_err();
        assert_eq!(err.failure(), Failure::AlreadyExists);
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            WatchItem::Changed(a.clone())
        );
        store.inject(StoreError::Gone);
        assert!(store.get().await.is_err());
        store.close_watches();
        assert!(w.next().await.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_api_server_is_one_clear_transient_error() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("https://127.0.0.1:{port}/");
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let store = KubeStore::new(client, url.clone(), "ns", "x", Duration::from_secs(5));
        let err = store.get().await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unreachable { .. }),
            "{err:?} should be Unreachable"
        );
        assert_eq!(err.failure(), Failure::Transient);
        assert_eq!(err.kind(), "unreachable");
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        for want in [
            "cannot reach",
            url.as_str(),
            "list",
            "KUBECONFIG",
            "refused",
        ] {
            assert!(
                line.to_lowercase().contains(&want.to_lowercase()),
                "{want} missing in {line}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_watch_start_that_hangs_times_out() {
        // Accepts connections and never answers: a half-open API server connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let url = format!("http://127.0.0.1:{port}/");
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let timeout = Duration::from_millis(300);
        let store = KubeStore::new(client, url, "ns", "x", timeout);
        let mut watch = store.watch("1".into());
        let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the watch start hung past its timeout");
        assert!(
            matches!(first, Some(Err(StoreError::Timeout { verb: "watch", .. }))),
            "{first:?}"
        );
        held.abort();
    }

    #[test]
    fn kube_object_round_trip_keeps_election_fields() {
        let ts = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let record = LeaseRecord {
            holder: Some("pod-a".into()),
            lease_duration_seconds: 15,
            acquire_time: Some(ts),
            renew_time: Some(ts),
            transitions: 3,
            released: false,
        };
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.holder.clone(),
                lease_duration_seconds: Some(15),
                acquire_time: Some(MicroTime(ts)),
                renew_time: Some(MicroTime(ts)),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        };
        let stored = to_stored(&lease);
        assert_eq!(stored.record, record);
        assert_eq!(stored.resource_version, "42");
        let mut empty = lease.clone();
        if let Some(s) = empty.spec.as_mut() {
            s.holder_identity = Some(String::new());
        }
        assert_eq!(to_stored(&empty).record.holder, None);
        empty.metadata.annotations = Some(BTreeMap::from([(
            RELEASED_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
        assert!(to_stored(&empty).record.released);
    }

    #[test]
    fn updates_keep_metadata_and_set_only_election_fields() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let ts = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let base = Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some("41".into()),
                labels: Some(BTreeMap::from([("team".into(), "a".into())])),
                annotations: Some(BTreeMap::from([
                    ("gitops/sync".into(), "yes".into()),
                    (RELEASED_ANNOTATION.into(), "true".into()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "app".into(),
                    uid: "u-1".into(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..LeaseSpec::default()
            }),
        };
        let record = LeaseRecord {
            holder: Some("pod-a".into()),
            lease_duration_seconds: 15,
            acquire_time: Some(ts),
            renew_time: None,
            transitions: 4,
            released: false,
        };
        let l = updated_object(&base, &record, "41");
        assert_eq!(l.metadata.resource_version.as_deref(), Some("41"));
        assert_eq!(l.metadata.labels, base.metadata.labels);
        assert_eq!(l.metadata.owner_references, base.metadata.owner_references);
        let ann = l.metadata.annotations.clone().unwrap();
        assert_eq!(ann.get("gitops/sync").map(String::as_str), Some("yes"));
        assert!(
            !ann.contains_key(RELEASED_ANNOTATION),
            "a claim clears the mark"
        );
        assert_eq!(to_stored(&l).record, record);
        let release = LeaseRecord {
            holder: None,
            released: true,
            ..record
        };
        let l = updated_object(&l, &release, "");
        assert_eq!(l.metadata.resource_version, None);
        assert_eq!(to_stored(&l).record, release);
    }
}
