//! The network edge of the cluster side: builds the client, runs the Pod and
//! EndpointSlice watchers, stamps each event with its local receipt time and
//! hands it to the pure [`ClusterModel`]. Stamping happens here and only
//! here, so the model stays testable without a network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::change::{ClusterChange, WatchedResource};
use super::client::Kube;
use super::lean::{LeanPod, LeanSlice, map_event};
use super::model::{ClusterModel, ResourceEvent, StampedEvent};
use super::paced_socket::PaceGate;
use super::pod_watch::{PodScope, ScopeNow, SharedScope, scoped_pod_events};
use super::prune::prune_pod;
use super::slice_pace::{LocalEndpoints, LocalWindows, SlicePace};
use super::slice_watch::{SliceItem, scoped_slice_events};
use crate::clock::MonoTime;

/// What to watch. The default is every namespace, every object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// Watch one namespace instead of the whole cluster.
    pub namespace: Option<String>,
    /// Which Pods: the cluster's, one node's, or one node's until an
    /// ingress runs there. EndpointSlices are always the cluster's (or the
    /// namespace's): they carry every pod's termination, as kube-proxy
    /// reads them. While the Pod watch is one node's, the model keeps only
    /// that node's endpoints whole ([`super::slice_watch`]).
    pub pod_scope: PodScope,
    /// Label selector for pods (e.g. `app=web`).
    pub pod_label_selector: Option<String>,
    /// Label selector for EndpointSlices (e.g.
    /// `kubernetes.io/service-name=web`).
    pub slice_label_selector: Option<String>,
}

/// Counters of one watcher, for metrics.
#[derive(Debug, Default)]
pub struct WatcherCounters {
    /// Objects received (watch events and list items).
    pub events: AtomicU64,
    /// Completed lists (the first one and every relist).
    pub lists: AtomicU64,
    /// Lists started after the first: the watch was restarted from scratch
    /// (410 Gone, or the watch could not resume).
    pub restarts: AtomicU64,
    /// Errors the watcher reported (it retries with backoff).
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`WatcherCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WatcherCountsSnapshot {
    pub events: u64,
    pub lists: u64,
    pub restarts: u64,
    pub errors: u64,
}

impl WatcherCounters {
    pub fn snapshot(&self) -> WatcherCountsSnapshot {
        WatcherCountsSnapshot {
            events: self.events.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    fn count(&self, event: &Result<Event<impl Sized>, watcher::Error>, resource: WatchedResource) {
        match event {
            Ok(Event::Init) => {
                if self.lists.load(Ordering::Relaxed) > 0 {
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    info!(?resource, "watch restarted; relisting");
                }
            }
            Ok(Event::InitDone) => {
                self.lists.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Apply(_) | Event::Delete(_) | Event::InitApply(_)) => {
                self.events.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                warn!(?resource, "watch error (retrying with backoff): {error}");
            }
        }
    }
}

/// Counters of both watchers.
#[derive(Debug, Default)]
pub struct WatchCounters {
    pub pods: WatcherCounters,
    pub endpoint_slices: WatcherCounters,
    /// The Pod watch's scope right now (it widens when an ingress shows
    /// up on this node).
    pub pod_scope: Arc<SharedScope>,
    /// How many times the slice watch's socket left the runtime's poll set
    /// to let other nodes' changes gather ([`super::paced_socket`]).
    pub slice_socket_parks: Arc<AtomicU64>,
}

/// The shared state of the cluster side: the model, the change stream and
/// the counters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClusterHandle {
    model: Arc<Mutex<ClusterModel>>,
    changes: broadcast::Sender<ClusterChange>,
    counters: Arc<WatchCounters>,
}

impl ClusterHandle {
    /// `change_capacity` is how many changes a slow subscriber may fall
    /// behind before it sees `RecvError::Lagged` (and should re-read the
    /// model).
    pub fn new(change_capacity: usize) -> ClusterHandle {
        let (changes, _) = broadcast::channel(change_capacity.max(1));
        ClusterHandle {
            model: Arc::new(Mutex::new(ClusterModel::new())),
            changes,
            counters: Arc::default(),
        }
    }

    /// Locks the model for lookups. Hold the guard briefly and never across
    /// an await.
    pub fn model(&self) -> MutexGuard<'_, ClusterModel> {
        // A panic while holding the lock cannot leave the model half-updated
        // in a way lookups could not tolerate, so a poisoned lock is used.
        self.model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Receives every change applied after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<ClusterChange> {
        self.changes.subscribe()
    }

    pub fn counters(&self) -> &WatchCounters {
        &self.counters
    }

    /// Applies one stamped event and publishes the resulting changes.
    pub fn apply(&self, event: StampedEvent) -> Vec<ClusterChange> {
        let changes = self.model().apply(event);
        for change in &changes {
            // No subscribers is fine: the model still holds the state.
            let _ = self.changes.send(change.clone());
        }
        changes
    }
}

impl Default for ClusterHandle {
    fn default() -> ClusterHandle {
        ClusterHandle::new(65_536)
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Objects per list page. A page is held whole, as full objects, until
/// each is pruned; at kube's default (500) a relist of a 10 000-pod
/// cluster raised the agent's peak memory by about 5 MiB. Smaller pages
/// cost more round trips (100 for that cluster, about a second in all).
pub const LIST_PAGE_SIZE: u32 = 100;

fn watcher_config(selector: Option<&str>) -> watcher::Config {
    let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    match selector {
        Some(selector) => config.labels(selector),
        None => config,
    }
}

/// The Pod and EndpointSlice watch events, merged, each stamped with
/// [`MonoTime::now`] the moment it is received. A node agent's slice watch
/// reads through a client of its own, whose sockets leave the poll set
/// while other nodes' changes gather ([`super::slice_pace`]). Errors are counted and
/// logged; the watchers retry with kube's default backoff, so the stream
/// does not end.
///
/// Each object is pruned at once to what the model reads
/// ([`super::prune`]): a relist of 10 000 pods queues thousands of events
/// ahead of the engine, and a whole Pod is several times its pruned size.
/// The model reads the same from both.
pub fn stamped_events(
    kube: &Kube,
    config: &WatchConfig,
    counters: Arc<WatchCounters>,
) -> impl Stream<Item = StampedEvent> + Send + 'static {
    let client = kube.client();
    let ns = config.namespace.as_deref();
    let pods = scoped_pod_events(
        api::<LeanPod>(client, ns),
        watcher_config(config.pod_label_selector.as_deref()),
        &config.pod_scope,
        counters.pod_scope.clone(),
    );
    let pace = Arc::new(SlicePace::default());
    let paced = match config.pod_scope.node() {
        Some(_) => kube.paced_client(PaceGate::new(
            pace.subscribe(),
            pace.listing(),
            counters.slice_socket_parks.clone(),
        )),
        None => None,
    };
    let slice_client = paced.as_ref().unwrap_or(client);
    let slices = scoped_slice_events(
        api::<LeanSlice>(slice_client, ns),
        watcher_config(config.slice_label_selector.as_deref()),
        &config.pod_scope,
        &counters.pod_scope,
        pace.listing(),
    );
    let pod_counters = counters.clone();
    let mut windows = LocalWindows::default();
    let mut local_endpoints = config.pod_scope.node().map(LocalEndpoints::new);
    let slice_pace = pace.clone();
    let pods = pods.filter_map(move |item| {
        let at = MonoTime::now();
        pod_counters.pods.count(&item, WatchedResource::Pods);
        // Only a node-scoped watch sets the slices' pace: a widened one
        // reads its slices as they come.
        if let Ok(event) = &item {
            if pod_counters.pod_scope.get() == ScopeNow::Node {
                if let Some(any) = windows.apply(event) {
                    pace.set_any_in_window(any, tokio::time::Instant::now());
                }
            } else {
                pace.set_prompt();
            }
        }
        std::future::ready(item.ok().map(|e| StampedEvent {
            at,
            event: ResourceEvent::Pod(Box::new(map_event(e, |pod| prune_pod(&pod)))),
        }))
    });
    let slices = slices.filter_map(move |item| {
        let at = MonoTime::now();
        let event = match item {
            SliceItem::Scope(node) => Some(ResourceEvent::SliceScope(node)),
            SliceItem::Watch(item) => {
                counters
                    .endpoint_slices
                    .count(&item, WatchedResource::EndpointSlices);
                item.ok().map(|e| {
                    let event = map_event(e, LeanSlice::into_pruned);
                    // While the Pod watch is narrow: does this node still owe
                    // an endpoint change it must date?
                    if counters.pod_scope.get() == ScopeNow::Node
                        && let Some(unsettled) =
                            local_endpoints.as_mut().and_then(|l| l.apply(&event))
                    {
                        slice_pace.set_slices_unsettled(unsettled, tokio::time::Instant::now());
                    }
                    ResourceEvent::EndpointSlice(Box::new(event))
                })
            }
        };
        std::future::ready(event.map(|event| StampedEvent { at, event }))
    });
    futures::stream::select(pods, slices)
}

/// Watches Pods and EndpointSlices and applies every event to the handle's
/// model until both watch streams end (they do not, short of the task
/// being dropped).
pub async fn run(kube: Kube, config: WatchConfig, handle: ClusterHandle) {
    let events = stamped_events(&kube, &config, handle.counters.clone());
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        handle.apply(event);
    }
}
