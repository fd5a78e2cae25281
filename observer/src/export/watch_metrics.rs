//! The agent's Kubernetes watches on `/metrics`: which resource, at what
//! scope, how many objects they carry and how often they relist. An
//! operator checks from these that the agents on nodes without an ingress
//! watch their node's pods only, and what each costs the API server.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::cluster::watch::WatcherCountsSnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// `pods` or `endpointslices`.
    pub resource: String,
    /// `node`, `namespace` or `cluster`.
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// One watch, as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchReport {
    pub resource: &'static str,
    pub scope: &'static str,
    pub counts: WatcherCountsSnapshot,
    /// Times the watch's socket left the runtime's poll set.
    pub socket_parks: u64,
}

/// What the agent knows of its watches, for `/metrics`.
pub struct WatchMetrics {
    scope: Family<WatchLabels, Gauge>,
    events: Family<ResourceLabels, Counter>,
    lists: Family<ResourceLabels, Counter>,
    socket_parks: Family<ResourceLabels, Counter>,
    /// The cumulative counts already folded in, by resource.
    folded: std::collections::BTreeMap<&'static str, WatcherCountsSnapshot>,
}

impl WatchMetrics {
    pub fn register(registry: &mut Registry) -> WatchMetrics {
        let scope = Family::<WatchLabels, Gauge>::default();
        registry.register(
            "watch_scope",
            "The agent's Kubernetes watches (1 for the scope each has now). Pods: `node` on a \
             node without an ingress, `cluster` where an ingress runs (or --pod-watch cluster); \
             EndpointSlices: `cluster` (or `namespace` with --namespace)",
            scope.clone(),
        );
        let events = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "watch_objects",
            "Objects the agent's watches received, list items included (rate() gives the \
             watch's events per second)",
            events.clone(),
        );
        let lists = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "watch_lists",
            "Complete lists each watch made: the first, then one per relist (after a dropped \
             watch or 410 Gone) and per widening of the Pod watch",
            lists.clone(),
        );
        let socket_parks = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "watch_socket_parks",
            "Times a watch's socket left the agent's poll set, so that other nodes' changes \
             gather in the kernel and are read once a second (the EndpointSlice watch of a node \
             agent while none of its node's pods is terminating or not ready)",
            socket_parks.clone(),
        );
        WatchMetrics {
            scope,
            events,
            lists,
            socket_parks,
            folded: std::collections::BTreeMap::new(),
        }
    }

    /// Folds in the watches' cumulative counts; the scope gauge follows
    /// each watch's current scope.
    pub fn update(&mut self, watches: &[WatchReport]) {
        for watch in watches {
            let labels = ResourceLabels {
                resource: watch.resource.to_owned(),
            };
            let folded = self.folded.entry(watch.resource).or_default();
            self.events
                .get_or_create(&labels)
                .inc_by(watch.counts.events.saturating_sub(folded.events));
            self.lists
                .get_or_create(&labels)
                .inc_by(watch.counts.lists.saturating_sub(folded.lists));
            let parks = self.socket_parks.get_or_create(&labels);
            parks.inc_by(watch.socket_parks.saturating_sub(parks.get()));
            folded.events = folded.events.max(watch.counts.events);
            folded.lists = folded.lists.max(watch.counts.lists);
            for scope in ["node", "namespace", "cluster"] {
                self.scope
                    .get_or_create(&WatchLabels {
                        resource: watch.resource.to_owned(),
                        scope: scope.to_owned(),
                    })
                    .set(i64::from(scope == watch.scope));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn a_widened_pod_watch_moves_its_scope_and_counts_only_what_is_new() {
        let mut registry = Registry::with_prefix("observer");
        let mut metrics = WatchMetrics::register(&mut registry);
        let pods = |scope, events, lists| WatchReport {
            resource: "pods",
            scope,
            counts: WatcherCountsSnapshot {
                events,
                lists,
                ..WatcherCountsSnapshot::default()
            },
            socket_parks: lists * 3,
        };
        metrics.update(&[pods("node", 30, 1)]);
        metrics.update(&[pods("cluster", 530, 2)]);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"observer_watch_scope{resource="pods",scope="cluster"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"observer_watch_scope{resource="pods",scope="node"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"observer_watch_objects_total{resource="pods"} 530"#),
            "{text}"
        );
        assert!(
            text.contains(r#"observer_watch_lists_total{resource="pods"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"observer_watch_socket_parks_total{resource="pods"} 6"#),
            "{text}"
        );
    }
}
