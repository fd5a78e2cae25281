//! Which Pods an agent watches, and the Pod watch stream that follows that
//! scope.
//!
//! An agent on every node that watched every Pod of the cluster would make
//! the API server send each pod change once per node. Most agents need
//! their own node's Pods only: the destination side, their own connectors,
//! the ingress found on the node. An agent whose node runs an ingress also
//! needs the identity of the remote pods the ingress sends to (names,
//! owners, preStop), so its watch widens to the cluster the moment an
//! ingress pod shows up on its node, and stays wide until the agent
//! restarts. docs/ARCHITECTURE.md ("Watch scope") says why this design and
//! not a shared cache.

use std::collections::BTreeMap;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::Serialize;
use tracing::info;

use super::lean::{LeanPod, map_event};
use super::selector::LabelSelector;

/// Which Pods an agent watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PodScope {
    /// Every pod (of the watched namespace, if one is set).
    #[default]
    Cluster,
    /// The pods of one node only (`fieldSelector=spec.nodeName=NODE`).
    Node(String),
    /// The pods of one node, widened to every pod once a pod matching any
    /// of the ingress selectors runs on that node.
    NodeUntilIngress {
        node: String,
        ingress_selectors: Vec<LabelSelector>,
    },
}

impl PodScope {
    /// The node whose pods the watch starts with, if it starts narrow.
    pub fn node(&self) -> Option<&str> {
        match self {
            PodScope::Cluster => None,
            PodScope::Node(node) | PodScope::NodeUntilIngress { node, .. } => Some(node),
        }
    }
}

/// The scope a Pod watch has right now, for `/metrics` and the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeNow {
    #[default]
    Cluster,
    Node,
}

impl ScopeNow {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeNow::Cluster => "cluster",
            ScopeNow::Node => "node",
        }
    }
}

/// The current scope of a watch, shared with whoever reports it, and with
/// the EndpointSlice watch, which widens with it.
#[derive(Debug)]
pub struct SharedScope(tokio::sync::watch::Sender<ScopeNow>);

impl Default for SharedScope {
    fn default() -> SharedScope {
        SharedScope(tokio::sync::watch::Sender::new(ScopeNow::Cluster))
    }
}

impl SharedScope {
    pub fn get(&self) -> ScopeNow {
        *self.0.borrow()
    }

    pub fn set(&self, scope: ScopeNow) {
        self.0.send_replace(scope);
    }

    /// Sees every later change of the scope.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<ScopeNow> {
        self.0.subscribe()
    }
}

/// A pod that runs on `node` and matches one of `selectors`.
fn is_ingress_on(pod: &Pod, node: &str, selectors: &[LabelSelector]) -> bool {
    let on_node = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .is_some_and(|name| name == node);
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    on_node && selectors.iter().any(|s| s.matches(labels))
}

type PodEvents = BoxStream<'static, Result<Event<Pod>, watcher::Error>>;

struct ScopedWatch {
    api: Api<LeanPod>,
    config: watcher::Config,
    events: PodEvents,
    /// While narrow and allowed to widen: the node and the ingress
    /// selectors that widen it.
    widen_on: Option<(String, Vec<LabelSelector>)>,
    scope: std::sync::Arc<SharedScope>,
}

fn pod_watcher(api: Api<LeanPod>, config: watcher::Config) -> PodEvents {
    watcher::watcher(api, config)
        .default_backoff()
        .map(|item| item.map(|event| map_event(event, LeanPod::into_pod)))
        .boxed()
}

/// The Pod watch events of `scope`. `config` carries the label selector
/// and page size; the node's field selector is added here. A widening
/// starts a new watch of every pod: its list replaces the node's in the
/// model (a relist that only adds pods).
pub fn scoped_pod_events(
    api: Api<LeanPod>,
    config: watcher::Config,
    scope: &PodScope,
    now: std::sync::Arc<SharedScope>,
) -> impl Stream<Item = Result<Event<Pod>, watcher::Error>> + Send + 'static {
    let narrow = |node: &str| config.clone().fields(&format!("spec.nodeName={node}"));
    let (events, widen_on) = match scope {
        PodScope::Cluster => (pod_watcher(api.clone(), config.clone()), None),
        PodScope::Node(node) => (pod_watcher(api.clone(), narrow(node)), None),
        PodScope::NodeUntilIngress {
            node,
            ingress_selectors,
        } => (
            pod_watcher(api.clone(), narrow(node)),
            Some((node.clone(), ingress_selectors.clone())),
        ),
    };
    now.set(if scope.node().is_some() {
        ScopeNow::Node
    } else {
        ScopeNow::Cluster
    });
    let state = ScopedWatch {
        api,
        config,
        events,
        widen_on,
        scope: now,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.events.next().await?;
        let widen = match (&state.widen_on, &item) {
            (Some((node, selectors)), Ok(Event::Apply(pod) | Event::InitApply(pod))) => {
                is_ingress_on(pod, node, selectors).then(|| {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    (node.clone(), name)
                })
            }
            _ => None,
        };
        if let Some((node, ingress)) = widen {
            info!(
                node,
                ingress,
                "an ingress runs on this node: watching every pod of the cluster, for the \
                 names and owners of the pods it sends to"
            );
            state.events = pod_watcher(state.api.clone(), state.config.clone());
            state.widen_on = None;
            state.scope.set(ScopeNow::Cluster);
        }
        Some((item, state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    fn pod(node: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn only_an_ingress_pod_on_this_node_widens_the_watch() {
        let selectors =
            vec![LabelSelector::parse("app.kubernetes.io/name=ingress-nginx").expect("selector")];
        let ingress = [("app.kubernetes.io/name", "ingress-nginx")];
        assert!(is_ingress_on(&pod("a", &ingress), "a", &selectors));
        assert!(!is_ingress_on(&pod("b", &ingress), "a", &selectors));
        assert!(!is_ingress_on(
            &pod("a", &[("app", "web")]),
            "a",
            &selectors
        ));
    }

    #[test]
    fn the_shared_scope_reads_back_what_was_set() {
        let scope = SharedScope::default();
        assert_eq!(scope.get(), ScopeNow::Cluster);
        scope.set(ScopeNow::Node);
        assert_eq!(scope.get().as_str(), "node");
    }
}
