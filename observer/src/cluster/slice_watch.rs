//! The EndpointSlice watch, and the scope the model keeps its endpoints in.
//!
//! EndpointSlices are always watched cluster-wide: a remote pod's
//! termination reaches the ingress nodes as the slice's `terminating`
//! condition, as kube-proxy reads it. What an agent keeps of them follows
//! its Pod watch. While that watch is one node's, the model keeps that
//! node's endpoints whole and, of every other endpoint, only which Service
//! lists its address (to name remote senders); whole records of every
//! endpoint of the cluster were most of a node agent's memory. When the Pod
//! watch widens (an ingress runs on the node), this watch starts over: its
//! relist gives the model every endpoint whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::lean::LeanSlice;
use super::pod_watch::{PodScope, ScopeNow, SharedScope};

/// One item of the slice watch: a watch event, or the node whose endpoints
/// the model keeps whole from here on.
// Nearly every item is a watch event, moved straight on: boxing it would
// cost an allocation per event to save bytes on the rare scope change.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SliceItem {
    Scope(Option<String>),
    Watch(Result<Event<LeanSlice>, watcher::Error>),
}

type SliceEvents = BoxStream<'static, Result<Event<LeanSlice>, watcher::Error>>;

struct ScopedSlices {
    api: Api<LeanSlice>,
    config: watcher::Config,
    events: SliceEvents,
    /// The scope to announce before the next event.
    announce: Option<Option<String>>,
    /// While narrow: the Pod watch's scope, which says when to widen.
    widen_on: Option<watch::Receiver<ScopeNow>>,
    /// Set while the watcher lists, so the watch's sockets read the
    /// pages promptly ([`super::paced_socket`]).
    listing: Arc<AtomicBool>,
}

fn slice_watcher(
    api: Api<LeanSlice>,
    config: watcher::Config,
    listing: Arc<AtomicBool>,
) -> SliceEvents {
    watcher::watcher(api, config)
        .default_backoff()
        // The watcher yields `Init` before it sends the first page's
        // request, and `InitDone` before the watch's.
        .inspect(move |event| match event {
            Ok(Event::Init) => listing.store(true, Ordering::Relaxed),
            Ok(Event::InitDone) => listing.store(false, Ordering::Relaxed),
            _ => {}
        })
        .boxed()
}

/// What woke the narrow watch.
#[allow(clippy::large_enum_variant)]
enum Woke {
    Event(Option<Result<Event<LeanSlice>, watcher::Error>>),
    ScopeChanged(bool),
}

/// The slice watch of an agent whose Pods are watched in `pod_scope`;
/// `pod_scope_now` is that watch's scope as it changes. `listing` is kept
/// set while the watcher lists.
pub fn scoped_slice_events(
    api: Api<LeanSlice>,
    config: watcher::Config,
    pod_scope: &PodScope,
    pod_scope_now: &Arc<SharedScope>,
    listing: Arc<AtomicBool>,
) -> impl Stream<Item = SliceItem> + Send + use<> {
    let node = pod_scope.node().map(str::to_owned);
    let state = ScopedSlices {
        events: slice_watcher(api.clone(), config.clone(), listing.clone()),
        api,
        config,
        widen_on: node.as_ref().map(|_| pod_scope_now.subscribe()),
        announce: node.map(Some),
        listing,
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(scope) = state.announce.take() {
            return Some((SliceItem::Scope(scope), state));
        }
        loop {
            let woke = match &mut state.widen_on {
                None => Woke::Event(state.events.next().await),
                Some(scope) => tokio::select! {
                    item = state.events.next() => Woke::Event(item),
                    changed = scope.changed() => Woke::ScopeChanged(
                        // A closed channel means the Pod watch is gone: stay
                        // as we are.
                        changed.is_ok() && *scope.borrow_and_update() == ScopeNow::Cluster
                    ),
                },
            };
            match woke {
                Woke::Event(item) => return item.map(|item| (SliceItem::Watch(item), state)),
                Woke::ScopeChanged(false) => drop_closed_scope(&mut state),
                Woke::ScopeChanged(true) => return Some(widen(state)),
            }
        }
    })
}

/// The Pod watch widened: start over with every endpoint whole.
fn widen(mut state: ScopedSlices) -> (SliceItem, ScopedSlices) {
    state.events = slice_watcher(
        state.api.clone(),
        state.config.clone(),
        state.listing.clone(),
    );
    state.widen_on = None;
    (SliceItem::Scope(None), state)
}

/// A closed scope channel means the Pod watch is gone: stay as we are.
fn drop_closed_scope(state: &mut ScopedSlices) {
    if state
        .widen_on
        .as_ref()
        .is_some_and(|rx| rx.has_changed().is_err())
    {
        state.widen_on = None;
    }
}
