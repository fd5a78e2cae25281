//! Fault injection and the request log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Default)]
struct FaultState {
    refuse_until: Option<Instant>,
    latency: Duration,
}

/// Handle to inject faults into a running [`super::SimServer`].
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
    drop_watches: Arc<watch::Sender<u64>>,
    kill_connections: Arc<watch::Sender<u64>>,
    refused: Arc<AtomicU64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            drop_watches: Arc::new(watch::channel(0).0),
            kill_connections: Arc::new(watch::channel(0).0),
            refused: Arc::default(),
        }
    }
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts every open watch stream now, mid-stream: the connection is aborted
    /// without the closing chunk, as when an API server instance dies.
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|g| *g += 1);
    }

    /// For `duration`, every new connection is closed as soon as it is
    /// accepted, and connections already open (watches included) are cut now:
    /// what clients see while an API server restarts.
    pub fn refuse_connections(&self, duration: Duration) {
        self.lock().refuse_until = Some(Instant::now() + duration);
        self.kill_connections.send_modify(|g| *g += 1);
    }

    /// Ends a refusal early.
    pub fn accept_connections(&self) {
        self.lock().refuse_until = None;
    }

    /// Delays every response (and the start of every watch) by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// How many connections were closed unserved because of a refusal.
    pub fn refused_connections(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn refusing(&self) -> bool {
        let refusing = self.lock().refuse_until.is_some_and(|t| Instant::now() < t);
        if refusing {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        refusing
    }

    pub(crate) fn drop_watches_signal(&self) -> watch::Receiver<u64> {
        self.drop_watches.subscribe()
    }

    pub(crate) fn kill_connections_signal(&self) -> watch::Receiver<u64> {
        self.kill_connections.subscribe()
    }
}

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, still percent-encoded.
    pub query: String,
    pub status: u16,
    /// A `watch=true` request (status 200 means the stream was opened).
    pub watch: bool,
}

impl RequestRecord {
    /// A decoded query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        super::protocol::parse_query(&self.query).remove(name)
    }

    /// The collection asked for: the path's last segment (`pods`,
    /// `endpointslices`).
    pub fn resource(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// How much of the collection the request covers, as the API server's
    /// cost grows with it: one object, one node's pods, one namespace, or
    /// the whole cluster.
    pub fn scope(&self) -> RequestScope {
        RequestScope::of(&self.path, &self.query)
    }
}

impl RequestScope {
    /// The scope of a request for `path` with the raw `query`.
    pub fn of(path: &str, query: &str) -> RequestScope {
        let fields = super::protocol::parse_query(query).remove("fieldSelector");
        RequestScope::of_parts(path, fields.as_deref())
    }

    /// The scope of a request for `path` with the decoded field selector.
    pub fn of_parts(path: &str, field_selector: Option<&str>) -> RequestScope {
        let fields = field_selector.unwrap_or_default();
        let has = |field: &str| {
            fields
                .split(',')
                .filter_map(|term| term.split_once('='))
                .any(|(name, _)| name.trim() == field)
        };
        if has("metadata.name") {
            RequestScope::Object
        } else if has("spec.nodeName") {
            RequestScope::Node
        } else if path.contains("/namespaces/") {
            RequestScope::Namespace
        } else {
            RequestScope::Cluster
        }
    }
}

/// How much of a collection a list or watch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestScope {
    Object,
    Node,
    Namespace,
    Cluster,
}

impl RequestScope {
    pub const ALL: [RequestScope; 4] = [
        RequestScope::Object,
        RequestScope::Node,
        RequestScope::Namespace,
        RequestScope::Cluster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestScope::Object => "object",
            RequestScope::Node => "node",
            RequestScope::Namespace => "namespace",
            RequestScope::Cluster => "cluster",
        }
    }
}

/// Watch events sent (changes, not the initial listing nor bookmarks), by
/// resource and the watch's scope: what one object change costs the
/// server, summed over every watch that carried it.
#[derive(Clone, Default)]
pub struct WatchTally {
    sent: Arc<Mutex<BTreeMap<ScopedResource, Arc<AtomicU64>>>>,
}

/// A resource (`pods`) and the scope of the watches on it.
pub type ScopedResource = (String, RequestScope);

impl WatchTally {
    /// The counter a new watch of `resource` at `scope` adds to.
    pub(crate) fn counter(&self, resource: &str, scope: RequestScope) -> Arc<AtomicU64> {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.entry((resource.to_owned(), scope))
            .or_default()
            .clone()
    }

    pub fn snapshot(&self) -> BTreeMap<ScopedResource, u64> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter()
            .map(|(key, n)| (key.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Every request served, in order of completion of its response head.
#[derive(Clone, Default)]
pub struct RequestLog {
    records: Arc<Mutex<Vec<RequestRecord>>>,
}

impl RequestLog {
    fn lock(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn records(&self) -> Vec<RequestRecord> {
        self.lock().clone()
    }

    /// Records whose path equals `path`.
    pub fn for_path(&self, path: &str) -> Vec<RequestRecord> {
        self.lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The watches opened so far (status 200), by resource and scope.
    pub fn watches_by_scope(&self) -> BTreeMap<(String, RequestScope), u64> {
        let mut counts = BTreeMap::new();
        for r in self.lock().iter().filter(|r| r.watch && r.status == 200) {
            *counts
                .entry((r.resource().to_owned(), r.scope()))
                .or_insert(0) += 1;
        }
        counts
    }

    pub(crate) fn push(&self, r: RequestRecord) {
        self.lock().push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_of(path: &str, query: &str) -> RequestRecord {
        RequestRecord {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            status: 200,
            watch: true,
        }
    }

    #[test]
    fn a_request_is_scoped_by_its_field_selector_then_its_path() {
        let pods = "/api/v1/pods";
        assert_eq!(watch_of(pods, "watch=true").scope(), RequestScope::Cluster);
        let node = watch_of(pods, "fieldSelector=spec.nodeName%3Dnode-a&watch=true");
        assert_eq!(node.scope(), RequestScope::Node);
        assert_eq!(node.resource(), "pods");
        let one = watch_of(pods, "fieldSelector=metadata.name%3Dweb-1");
        assert_eq!(one.scope(), RequestScope::Object);
        let ns = watch_of(
            "/apis/discovery.k8s.io/v1/namespaces/lab/endpointslices",
            "",
        );
        assert_eq!(ns.scope(), RequestScope::Namespace);
        assert_eq!(ns.resource(), "endpointslices");
        let log = RequestLog::default();
        log.push(node.clone());
        log.push(node);
        log.push(watch_of(pods, "watch=true"));
        log.push(RequestRecord {
            status: 410,
            ..watch_of(pods, "watch=true")
        });
        let counts = log.watches_by_scope();
        assert_eq!(counts[&("pods".to_owned(), RequestScope::Node)], 2);
        assert_eq!(counts[&("pods".to_owned(), RequestScope::Cluster)], 1);
    }
}
