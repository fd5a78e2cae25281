//! Prometheus metrics (prometheus-client): the propagation gap, failed
//! connects, the recommended preStop, what landed on terminating pods
//! (the destination view), and the agent's own health.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::watch_metrics::{WatchMetrics, WatchReport};
use crate::{
    engine::connector::{ConnectorRole, IngressStatus},
    engine::{PodState, PodTermination, Recommendation},
    probe::{ProbeCounters, SyncFailureHook},
};

/// Gap buckets, seconds: 50 ms to 60 s, dense where preStop values live.
pub const GAP_BUCKETS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// `ingress`, `kubelet`, `pod` or `process`: four values at most.
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub class: String,
    pub pod_state: String,
}

/// The ingress's failed connects to terminating pods, by whether it hid
/// them with a retry: `retried` or `not_retried` (two values).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HiddenLabels {
    pub namespace: String,
    pub service: String,
    pub outcome: String,
}

fn gap_histogram() -> Histogram {
    Histogram::new(GAP_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    propagation_gap: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    arrival_gap: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    destination_served: Family<ServiceLabels, Counter>,
    destination_refused: Family<ServiceLabels, Counter>,
    destination_dropped: Family<ServiceLabels, Counter>,
    arrivals_seen: Counter,
    last_arrivals_seen: u64,
    failed_connects: Family<FailureLabels, Counter>,
    connect_failures: Family<HiddenLabels, Counter>,
    recommended_prestop: Family<ServiceLabels, Gauge>,
    terminations: Counter,
    events_processed: Counter,
    ringbuf_drops: Counter,
    socket_map_full: Counter,
    sync_failure_hook: Family<HookLabels, Gauge>,
    watch_restarts: Counter,
    watch_errors: Counter,
    watches: WatchMetrics,
    ingress_pods: Gauge,
    connects_after_deletion: Family<RoleLabels, Counter>,
    bystander_failures: Family<RoleLabels, Counter>,
    last_bystander_failures: std::collections::BTreeMap<ConnectorRole, u64>,
    last_ringbuf_drops: u64,
    last_socket_map_full: u64,
    last_watch_restarts: u64,
    last_watch_errors: u64,
    last_failures: std::collections::BTreeMap<String, u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub fn pod_state_label(state: PodState) -> &'static str {
    match state {
        PodState::Terminating => "terminating",
        PodState::NotReady => "not_ready",
        PodState::Ready => "ready",
        PodState::Unknown => "unknown",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("observer");
        let propagation_gap =
            Family::<ServiceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                gap_histogram as fn() -> Histogram,
            );
        registry.register(
            "propagation_gap_seconds",
            "How long after a pod started terminating this node still opened connections to it",
            propagation_gap.clone(),
        );
        let arrival_gap =
            Family::<ServiceLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                gap_histogram as fn() -> Histogram,
            );
        registry.register(
            "arrival_gap_seconds",
            "How long after a pod started terminating senders still sent to it: its last SYN or \
             request that reached the pod (accepted or not), seen by the kernel of the pod's node, \
             from any sender but the kubelet (the destination view; 0 when nothing arrived)",
            arrival_gap.clone(),
        );
        let destination_served = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "destination_served_after_deletion",
            "Connections terminating pods of this node accepted after deletion_seen, and pooled \
             ones whose last request arrived after it (at least one request each; not the \
             kubelet's), counted when the termination closes",
            destination_served.clone(),
        );
        let destination_refused = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "destination_refused",
            "SYNs that terminating pods of this node answered with an RST after deletion_seen \
             (nothing listened any more; not the kubelet's), counted when the termination closes",
            destination_refused.clone(),
        );
        let destination_dropped = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "destination_dropped",
            "Packets for terminating pods of this node that its kernel dropped after \
             deletion_seen (the pod's network gone, or no socket for a packet other than a SYN; \
             not the kubelet's), counted when the termination closes",
            destination_dropped.clone(),
        );
        let arrivals_seen = Counter::default();
        registry.register(
            "arrivals_seen",
            "What the receiving side reported landing on watched pods of this node (accepted \
             connections, pooled requests, refused SYNs, drops), fed to the engine",
            arrivals_seen.clone(),
        );
        let failed_connects = Family::<FailureLabels, Counter>::default();
        registry.register(
            "failed_connects",
            "Failed TCP connects by failure class and the destination pod's state",
            failed_connects.clone(),
        );
        let connect_failures = Family::<HiddenLabels, Counter>::default();
        registry.register(
            "connect_failures",
            "The ingress's failed connects to terminating pods, per Service, counted when the \
             termination closes: outcome=\"retried\" when the ingress retried the request on \
             another endpoint (a failure hidden from the user, who got a slower answer), \
             \"not_retried\" when no retry followed (the user got an error)",
            connect_failures.clone(),
        );
        let recommended_prestop = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "recommended_prestop_seconds",
            "Recommended preStop sleep per Service, from the measured propagation gaps",
            recommended_prestop.clone(),
        );
        let terminations = Counter::default();
        registry.register(
            "terminations",
            "Pod terminations measured",
            terminations.clone(),
        );
        let events_processed = Counter::default();
        registry.register(
            "events_processed",
            "Probe and Kubernetes events fed to the engine",
            events_processed.clone(),
        );
        let ringbuf_drops = Counter::default();
        registry.register(
            "ringbuf_drops",
            "Probe events lost because the kernel ring buffer was full",
            ringbuf_drops.clone(),
        );
        let socket_map_full = Counter::default();
        registry.register(
            "socket_map_full",
            "Connects the probe could not follow because its socket map was full (their \
             outcomes go unseen; raise the map size if this grows)",
            socket_map_full.clone(),
        );
        let sync_failure_hook = Family::<HookLabels, Gauge>::default();
        registry.register(
            "probe_sync_failure_hook",
            "How the probe sees connects that fail before their SYN (1 for the hook in use): \
             connect_exits (fexit), syscalls (opt-in, slower for every process), or off \
             (what auto becomes where fexit does not load)",
            sync_failure_hook.clone(),
        );
        let watch_restarts = Counter::default();
        registry.register(
            "watch_restarts",
            "Kubernetes watch restarts (relists)",
            watch_restarts.clone(),
        );
        let watch_errors = Counter::default();
        registry.register(
            "watch_errors",
            "Kubernetes watch errors",
            watch_errors.clone(),
        );
        let ingress_pods = Gauge::default();
        registry.register(
            "ingress_pods",
            "Ingress pods found on this node (by the ingress selectors). 0 with no ingress \
             process configured means no gap is measured here: the kubelet's probes and other \
             connectors never stand in for the ingress",
            ingress_pods.clone(),
        );
        let connects_after_deletion = Family::<RoleLabels, Counter>::default();
        registry.register(
            "connects_after_deletion",
            "New connections to terminating pods after deletion_seen, by connector role \
             (only the ingress's measure the gap)",
            connects_after_deletion.clone(),
        );
        let bystander_failures = Family::<RoleLabels, Counter>::default();
        registry.register(
            "bystander_connect_failures",
            "Failed connects made by connectors other than the ingress (kubelet probes, \
             other pods, host processes), by role; never findings",
            bystander_failures.clone(),
        );
        let watches = WatchMetrics::register(&mut registry);
        Metrics {
            registry,
            watches,
            ingress_pods,
            connects_after_deletion,
            bystander_failures,
            last_bystander_failures: std::collections::BTreeMap::new(),
            propagation_gap,
            arrival_gap,
            destination_served,
            destination_refused,
            destination_dropped,
            arrivals_seen,
            last_arrivals_seen: 0,
            failed_connects,
            connect_failures,
            recommended_prestop,
            terminations,
            events_processed,
            ringbuf_drops,
            socket_map_full,
            sync_failure_hook,
            watch_restarts,
            watch_errors,
            last_ringbuf_drops: 0,
            last_socket_map_full: 0,
            last_watch_restarts: 0,
            last_watch_errors: 0,
            last_failures: std::collections::BTreeMap::new(),
        }
    }

    pub fn record_termination(&self, termination: &PodTermination) {
        self.terminations.inc();
        for connector in &termination.connectors {
            self.connects_after_deletion
                .get_or_create(&RoleLabels {
                    role: connector.role.as_str().to_owned(),
                })
                .inc_by(connector.connects);
        }
        let services: Vec<&str> = if termination.services.is_empty() {
            vec![""]
        } else {
            termination.services.iter().map(String::as_str).collect()
        };
        for service in &services {
            for (outcome, n) in [
                ("retried", termination.failures_retried),
                ("not_retried", termination.failures_not_retried),
            ] {
                self.connect_failures
                    .get_or_create(&HiddenLabels {
                        namespace: termination.namespace.clone(),
                        service: service.to_string(),
                        outcome: outcome.into(),
                    })
                    .inc_by(n);
            }
        }
        let labels = |service: &str| ServiceLabels {
            namespace: termination.namespace.clone(),
            service: service.to_owned(),
        };
        if let Some(destination) = &termination.destination {
            for service in &services {
                let labels = labels(service);
                self.destination_served
                    .get_or_create(&labels)
                    .inc_by(destination.served_after_deletion);
                self.destination_refused
                    .get_or_create(&labels)
                    .inc_by(destination.refused);
                self.destination_dropped
                    .get_or_create(&labels)
                    .inc_by(destination.dropped);
            }
        }
        // A gap measured from a deletion seen late is only a lower bound:
        // counted above, never observed.
        if termination.deletion_observed_late {
            return;
        }
        let gaps = [
            (&self.propagation_gap, termination.propagation_gap_ns),
            (
                &self.arrival_gap,
                termination
                    .destination
                    .as_ref()
                    .and_then(|d| d.arrival_gap_ns),
            ),
        ];
        for (histogram, gap_ns) in gaps {
            let Some(gap_ns) = gap_ns else { continue };
            for service in &services {
                histogram
                    .get_or_create(&labels(service))
                    .observe(gap_ns.max(0) as f64 / 1e9);
            }
        }
    }

    /// Folds in the engine's running count of what the receiving side
    /// reported.
    pub fn set_arrivals(&mut self, total: u64) {
        self.arrivals_seen
            .inc_by(total.saturating_sub(self.last_arrivals_seen));
        self.last_arrivals_seen = self.last_arrivals_seen.max(total);
    }

    /// Folds in the engine's running failure totals (keyed
    /// `"<pod state>/<class>"`), which count every failed connect, not only
    /// the notable ones that become findings.
    pub fn set_failures(&mut self, totals: &std::collections::BTreeMap<String, u64>) {
        for (key, total) in totals {
            let Some((state, class)) = key.split_once('/') else {
                continue;
            };
            let last = self.last_failures.get(key).copied().unwrap_or(0);
            if *total > last {
                self.failed_connects
                    .get_or_create(&FailureLabels {
                        class: class.to_string(),
                        pod_state: state.to_string(),
                    })
                    .inc_by(total - last);
                self.last_failures.insert(key.clone(), *total);
            }
        }
    }

    /// What the engine knows of this node's ingress.
    pub fn set_ingress(&self, ingress: &IngressStatus) {
        self.ingress_pods.set(ingress.pods.len() as i64);
    }

    /// Folds in the engine's running bystander failure totals.
    pub fn set_bystander_failures(
        &mut self,
        totals: &std::collections::BTreeMap<ConnectorRole, u64>,
    ) {
        for (role, total) in totals {
            let last = self.last_bystander_failures.get(role).copied().unwrap_or(0);
            if *total > last {
                self.bystander_failures
                    .get_or_create(&RoleLabels {
                        role: role.as_str().to_owned(),
                    })
                    .inc_by(total - last);
                self.last_bystander_failures.insert(*role, *total);
            }
        }
    }

    pub fn set_recommendations(&self, recommendations: &[Recommendation]) {
        for rec in recommendations {
            let Some(service) = &rec.service else {
                continue;
            };
            self.recommended_prestop
                .get_or_create(&ServiceLabels {
                    namespace: rec.namespace.clone(),
                    service: service.clone(),
                })
                .set(rec.recommended_prestop_seconds as i64);
        }
    }

    pub fn add_events(&self, n: u64) {
        self.events_processed.inc_by(n);
    }

    pub fn set_sync_failure_hook(&self, hook: SyncFailureHook) {
        self.sync_failure_hook.clear();
        self.sync_failure_hook
            .get_or_create(&HookLabels {
                hook: hook.name().to_string(),
            })
            .set(1);
    }

    /// Folds cumulative source counters in as counter increments.
    pub fn set_health(
        &mut self,
        probe: Option<ProbeCounters>,
        watch_restarts: u64,
        watch_errors: u64,
    ) {
        if let Some(probe) = probe {
            let delta = probe.ringbuf_drops.saturating_sub(self.last_ringbuf_drops);
            self.ringbuf_drops.inc_by(delta);
            self.last_ringbuf_drops = self.last_ringbuf_drops.max(probe.ringbuf_drops);
            let delta = probe.map_full.saturating_sub(self.last_socket_map_full);
            self.socket_map_full.inc_by(delta);
            self.last_socket_map_full = self.last_socket_map_full.max(probe.map_full);
        }
        self.watch_restarts
            .inc_by(watch_restarts.saturating_sub(self.last_watch_restarts));
        self.last_watch_restarts = self.last_watch_restarts.max(watch_restarts);
        self.watch_errors
            .inc_by(watch_errors.saturating_sub(self.last_watch_errors));
        self.last_watch_errors = self.last_watch_errors.max(watch_errors);
    }

    /// The watches' scopes and cumulative counts.
    pub fn set_watches(&mut self, watches: &[WatchReport]) {
        self.watches.update(watches);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, metric: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(metric)?.trim().parse().ok())
    }

    #[test]
    fn hidden_and_visible_failures_are_counted_per_service() {
        let metrics = Metrics::default();
        let mut termination = crate::tui::fixtures::recent_terminations().remove(0);
        termination.namespace = "shop".into();
        termination.services = vec!["web".into()];
        termination.failures_retried = 7;
        termination.failures_not_retried = 2;
        metrics.record_termination(&termination);
        metrics.record_termination(&termination);
        let text = metrics.encode();
        let line = |outcome: &str| {
            format!(
                "observer_connect_failures_total{{namespace=\"shop\",service=\"web\",outcome=\"{outcome}\"}} "
            )
        };
        assert_eq!(value(&text, &line("retried")), Some(14), "{text}");
        assert_eq!(value(&text, &line("not_retried")), Some(4), "{text}");
    }

    #[test]
    fn the_destination_view_is_counted_per_service_and_its_gap_observed() {
        let mut metrics = Metrics::default();
        let mut termination = crate::tui::fixtures::recent_terminations().remove(0);
        termination.namespace = "shop".into();
        termination.services = vec!["web".into()];
        termination.destination = Some(crate::engine::arrivals::DestinationView {
            arrival_gap_ns: Some(2_500_000_000),
            refused: 3,
            dropped: 4,
            served_after_deletion: 5,
            ..Default::default()
        });
        metrics.record_termination(&termination);
        metrics.record_termination(&termination);
        // No destination view: nothing on the destination side.
        termination.destination = None;
        metrics.record_termination(&termination);
        let text = metrics.encode();
        let labels = "{namespace=\"shop\",service=\"web\"}";
        for (metric, expected) in [
            ("observer_destination_served_after_deletion_total", 10),
            ("observer_destination_refused_total", 6),
            ("observer_destination_dropped_total", 8),
            ("observer_arrival_gap_seconds_count", 2),
            ("observer_propagation_gap_seconds_count", 3),
        ] {
            assert_eq!(
                value(&text, &format!("{metric}{labels} ")),
                Some(expected),
                "{metric}: {text}"
            );
        }
        let bucket = |le: &str| {
            format!(
                "observer_arrival_gap_seconds_bucket{{le=\"{le}\",namespace=\"shop\",service=\"web\"}} "
            )
        };
        assert_eq!(value(&text, &bucket("2.0")), Some(0), "{text}");
        assert_eq!(value(&text, &bucket("3.0")), Some(2), "{text}");

        // A gap from a deletion seen late is a lower bound: counted, never
        // observed.
        termination.deletion_observed_late = true;
        termination.destination = Some(crate::engine::arrivals::DestinationView {
            arrival_gap_ns: Some(1),
            refused: 1,
            ..Default::default()
        });
        metrics.record_termination(&termination);
        let text = metrics.encode();
        assert_eq!(
            value(
                &text,
                &format!("observer_arrival_gap_seconds_count{labels} ")
            ),
            Some(2),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                &format!("observer_destination_refused_total{labels} ")
            ),
            Some(7),
            "{text}"
        );

        metrics.set_arrivals(40);
        metrics.set_arrivals(55);
        // An engine's count never goes back; an older snapshot changes nothing.
        metrics.set_arrivals(50);
        assert_eq!(
            value(&metrics.encode(), "observer_arrivals_seen_total "),
            Some(55)
        );
    }

    #[test]
    fn probe_losses_are_exported_as_counters_of_the_probes_totals() {
        let mut metrics = Metrics::default();
        let counters = |ringbuf_drops, map_full| ProbeCounters {
            ringbuf_drops,
            events_sent: 0,
            map_full,
        };
        metrics.set_health(Some(counters(3, 2)), 0, 0);
        metrics.set_health(Some(counters(5, 7)), 0, 0);
        // A probe read that failed changes nothing.
        metrics.set_health(None, 0, 0);
        let text = metrics.encode();
        assert_eq!(
            value(&text, "observer_ringbuf_drops_total "),
            Some(5),
            "{text}"
        );
        assert_eq!(
            value(&text, "observer_socket_map_full_total "),
            Some(7),
            "{text}"
        );
    }
}
