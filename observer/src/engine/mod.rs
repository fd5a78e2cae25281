//! The correlation engine: connect records and cluster events in,
//! termination records, findings and recommendations out.
//!
//! Pure and synchronous: no I/O, no clock reads, no async. Every output
//! order is deterministic (ordered maps throughout), so live runs, replays
//! and tests agree. Memory grows with live pods and watched addresses,
//! never with the number of events: every list is bounded. See
//! docs/ENGINE.md.

pub mod arrivals;
pub mod config;
pub mod connect;
pub mod connector;
pub mod findings;
pub mod hidden;
pub mod recommend;
pub mod record;
pub mod replay;
pub mod samples;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use crate::clock::MonoTime;
use crate::cluster::{ChangeKind, ClusterChange, ClusterModel, PodRef, StampedEvent};
use crate::probe::decode::{ConnectRecord, FailureClass, Outcome};
use crate::probe::retry::RetriedFailure;

use arrivals::{LocalSenders, Sender, SenderKind};
use connect::ConnectFact;
use connector::{ConnectorRole, Connectors, IngressStatus};
use findings::{RecentlyReady, RetiredIps, classify};
use hidden::RetryCredits;
use replay::ReplayBuffer;
use samples::Samples;
use window::Window;

pub use config::{EngineConfig, RecommendConfig};
pub use connector::{DEFAULT_INGRESS_SELECTORS, IngressConfig};
pub use recommend::Recommendation;
pub use record::{
    CloseReason, ConnectorActivity, EngineCounters, FailureCounts, Finding, FindingKind, Output,
    PodState, PodTermination, Snapshot,
};

/// How far the ingress's destination-side last arrival may pass its
/// sender-side last send before the sending side is taken to have missed
/// its packets: each view dates a pooled request to a jiffy (10 ms at
/// 100 Hz).
pub const VIEWS_AGREE_NS: i64 = 25_000_000;

/// Closed terminations kept for [`Engine::snapshot`].
pub const RECENT_CLOSED: usize = 128;

/// The correlation engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    model: ClusterModel,
    connectors: Connectors,
    /// Open measurement windows by pod uid.
    windows: BTreeMap<String, Window>,
    /// Addresses this engine asked the kernel to watch.
    watched: BTreeSet<IpAddr>,
    replay: ReplayBuffer,
    recent: VecDeque<PodTermination>,
    samples: Samples,
    retired: RetiredIps,
    ready: RecentlyReady,
    counters: EngineCounters,
    /// Retries whose failure no window has counted yet.
    credits: RetryCredits,
    /// This node's connects by 4-tuple, naming what arrives from them.
    local_senders: LocalSenders,
    /// The newest time any input carried: the engine's notion of now.
    latest: MonoTime,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            connectors: Connectors::new(&config.ingress),
            config,
            model: ClusterModel::new(),
            windows: BTreeMap::new(),
            watched: BTreeSet::new(),
            replay: ReplayBuffer::default(),
            recent: VecDeque::new(),
            samples: Samples::default(),
            retired: RetiredIps::default(),
            ready: RecentlyReady::default(),
            counters: EngineCounters::default(),
            credits: RetryCredits::default(),
            local_senders: LocalSenders::default(),
            latest: MonoTime(0),
        }
    }

    /// Feeds one connect outcome from the probe.
    pub fn on_connect(&mut self, record: &ConnectRecord, out: &mut Vec<Output>) {
        if record.is_arrival() {
            self.on_arrival(record);
            return;
        }
        self.counters.connects_seen += 1;
        let (role, connector) = self.connectors.identify(record, &self.model);
        // What this node's own processes connect with, to name what lands
        // on its pods: a SYN (its port not assigned yet) or the outcome
        // that knows the port. Only watched destinations carry both.
        if record.watched
            && matches!(
                record.outcome,
                Outcome::Connect | Outcome::Established { .. } | Outcome::Failed { .. }
            )
        {
            let at = record.syn.unwrap_or(record.ts);
            self.local_senders
                .note(record.src, record.dst, at, role, connector);
        }
        let fact = ConnectFact::from_record(record, role, connector);
        self.latest = self.latest.max(fact.ts);
        self.replay.push(fact, self.latest);
        // Attribution by tenure: whoever held the address when it happened.
        let mut in_window = false;
        if let Some(pod) = self.model.pod_for_ip_at(fact.ip, fact.at)
            && let Some(window) = self.windows.get_mut(&pod.uid)
        {
            window.touch(fact.ts);
            if window.accepts(&fact) {
                apply(
                    window,
                    &fact,
                    self.connectors.name(connector),
                    &mut self.credits,
                );
                in_window = true;
            }
        }
        if role == ConnectorRole::Ingress
            && let Some(failure) = fact.retried
        {
            self.credit_retry(failure);
        }
        let Some(class) = fact.failure else {
            return;
        };
        if role != ConnectorRole::Ingress {
            // The kubelet's probes and other bystanders fail against a
            // terminating pod as a matter of course; they are counted, in
            // its record when a window is open, never made findings.
            *self.counters.bystander_failures.entry(role).or_insert(0) += fact.count;
            return;
        }
        if in_window {
            // Counted in the termination record; not a finding of its own.
            self.count_failure(PodState::Terminating, class, fact.count);
        } else {
            self.on_failure(record, &fact, class, out);
        }
    }

    /// Feeds what the receiving side saw land on a pod of this node: it
    /// goes to the pod's open window, named after its sender. It never
    /// moves the sender-side figures.
    fn on_arrival(&mut self, record: &ConnectRecord) {
        self.counters.arrivals_seen += 1;
        let at = arrivals::arrival_time(record);
        self.latest = self.latest.max(record.ts);
        let sender = self.sender_of(record, at);
        let Some(pod) = self.model.pod_for_ip_at(record.dst.ip(), at) else {
            return;
        };
        let Some(window) = self.windows.get_mut(&pod.uid) else {
            return;
        };
        window.touch(record.ts);
        window.apply_arrival(at, record.src, record.dst.port(), &record.outcome, &sender);
    }

    /// Who sent what arrived: this node's own connector where the 4-tuple
    /// is one of its connects, else a pod by its address, else a Service's
    /// pod by the EndpointSlices, else a node by its address, else an
    /// external sender (named where `--external-sender` covers it). Never
    /// the destination port alone.
    fn sender_of(&self, record: &ConnectRecord, at: MonoTime) -> Sender {
        if let Some((role, connector)) = self.local_senders.find(record.src, record.dst, at) {
            return Sender {
                kind: SenderKind::from_role(role),
                name: self.connectors.name(connector).to_owned(),
            };
        }
        let ip = record.src.ip();
        if let Some(pod) = self.model.pod_for_ip_at(ip, at) {
            let kind = if self.connectors.is_ingress_pod(pod) {
                SenderKind::Ingress
            } else {
                SenderKind::Pod
            };
            return Sender {
                kind,
                name: format!("{}/{}", pod.namespace, pod.name),
            };
        }
        // A pod this agent does not watch (on another node) that backs a
        // Service: named after the Service, as the EndpointSlices say.
        if let Some((namespace, service)) = self.model.service_of_ip_at(ip, at) {
            return Sender {
                kind: SenderKind::Pod,
                name: format!("service {namespace}/{service}"),
            };
        }
        if let Some(node) = self.model.node_with_ip(ip) {
            return Sender {
                kind: SenderKind::Node,
                name: node.to_owned(),
            };
        }
        let name = self
            .config
            .external_senders
            .iter()
            .find(|range| range.contains(ip))
            .map_or("external", |range| range.name.as_str());
        Sender {
            kind: SenderKind::External,
            name: name.to_owned(),
        }
    }

    /// Counts the failure a retry named as retried, in the window that
    /// counted it; else the retry waits for it.
    fn credit_retry(&mut self, failure: RetriedFailure) {
        let credited = self
            .model
            .pod_for_ip_at(failure.dst.ip(), failure.at)
            .and_then(|pod| self.windows.get_mut(&pod.uid))
            .is_some_and(|window| window.credit_retry(failure));
        if !credited {
            self.credits.remember(failure);
        }
    }

    fn count_failure(&mut self, state: PodState, class: FailureClass, count: u64) {
        let key = record::failure_key_str(state, class);
        match self.counters.failures_by_state.get_mut(key) {
            Some(n) => *n += count,
            None => {
                self.counters
                    .failures_by_state
                    .insert(key.to_owned(), count);
            }
        }
    }

    fn on_failure(
        &mut self,
        record: &ConnectRecord,
        fact: &ConnectFact,
        class: FailureClass,
        out: &mut Vec<Output>,
    ) {
        let found = classify(&self.model, &self.retired, &self.ready, fact.ip, fact.at);
        self.count_failure(found.state, class, fact.count);
        if found.state == PodState::Unknown {
            self.counters.unknown_ip_failures += fact.count;
        }
        let Some(kind) = found.kind else {
            return;
        };
        if kind == FindingKind::ReadyTooEarly
            && let Some(namespace) = &found.namespace
        {
            self.samples.note_ready_too_early(
                namespace,
                &found.services,
                found.workload.as_deref(),
            );
        }
        out.push(Output::Finding(Finding {
            at: fact.ts,
            record: record.clone(),
            pod_state: found.state,
            namespace: found.namespace,
            pod: found.pod,
            service: found.services.into_iter().next(),
            kind,
        }));
    }

    /// Feeds one watch event; applies it to the internal cluster model.
    pub fn on_cluster(&mut self, event: StampedEvent, out: &mut Vec<Output>) {
        self.counters.cluster_events += 1;
        self.latest = self.latest.max(event.at);
        for change in self.model.apply(event) {
            self.on_change(change, out);
        }
    }

    fn on_change(&mut self, change: ClusterChange, out: &mut Vec<Output>) {
        let at = change.at;
        match change.kind {
            ChangeKind::PodIpAssigned { pod, ip } => {
                // The address now belongs to another pod: earlier holders'
                // windows end here (connects from now on are the new pod's).
                let reused: Vec<String> = self
                    .windows
                    .values()
                    .filter(|w| w.uid() != pod.uid && w.ips().contains(&ip))
                    .map(|w| w.uid().to_owned())
                    .collect();
                for uid in reused {
                    self.close(&uid, CloseReason::IpReused, out);
                }
                if let Some(window) = self.windows.get_mut(&pod.uid) {
                    window.refresh_from_model(&self.model);
                }
                self.sync_watch(ip, out);
            }
            ChangeKind::PodTerminating {
                pod,
                deletion_seen,
                observed_late,
                ..
            } => self.open(&pod, deletion_seen, observed_late, out),
            ChangeKind::PodReadyChanged { pod, ready } => {
                self.ready.set(&pod.uid, ready, at);
                self.sync_pod_watches(&pod, out);
            }
            ChangeKind::PodRemoved { pod } => self.removed(&pod, at, false, out),
            ChangeKind::PodRemovedWhileUnwatched { pod } => {
                // Deleted and gone while unwatched: the start of its
                // termination is unknown, but connects to it from now on
                // are still worth counting. A pod whose deletion was seen
                // already had its window (perhaps closed since, when its
                // address went to another pod): a second would report the
                // termination twice.
                let deletion_seen = self
                    .model
                    .pod(&pod.uid)
                    .is_some_and(|record| record.deletion.is_some());
                if !deletion_seen {
                    self.open(&pod, at, true, out);
                }
                self.removed(&pod, at, true, out);
            }
            ChangeKind::EndpointSeen { endpoint, .. }
            | ChangeKind::EndpointConditionsChanged { endpoint, .. }
            | ChangeKind::EndpointNotReady { endpoint, .. }
            | ChangeKind::EndpointRemoved { endpoint, .. } => {
                let model = &self.model;
                for window in self.windows.values_mut() {
                    if window.ips().contains(&endpoint.ip) {
                        window.refresh_from_model(model);
                    }
                }
            }
            ChangeKind::PodSeen { .. } | ChangeKind::Resynced { .. } => {}
        }
    }

    /// Opens a window at `deletion_seen` and replays buffered connects
    /// made after it (they may have arrived before the watch event).
    fn open(&mut self, pod: &PodRef, deletion_seen: MonoTime, late: bool, out: &mut Vec<Output>) {
        if self.windows.contains_key(&pod.uid) {
            return;
        }
        let Some(record) = self.model.pod(&pod.uid) else {
            return;
        };
        // A pod that never had an address never received a connect.
        if record.ips.is_empty() {
            return;
        }
        let mut window = Window::open(&self.model, record, deletion_seen, late);
        // The pod runs on this node: its kernel sees everything that lands
        // on it, so "nothing arrived" is a measurement too.
        if self.config.ingress.node.is_some() && record.node == self.config.ingress.node {
            window.expect_arrivals();
        }
        let ips = window.ips().to_vec();
        let model = &self.model;
        for fact in self.replay.to_ips_since(&ips, deletion_seen) {
            if model
                .pod_for_ip_at(fact.ip, fact.at)
                .map(|p| p.uid.as_str())
                != Some(pod.uid.as_str())
            {
                continue;
            }
            window.touch(fact.ts);
            if window.accepts(fact) {
                let name = self.connectors.name(fact.connector);
                apply(&mut window, fact, name, &mut self.credits);
            }
        }
        out.push(Output::TerminationOpened(window.record.clone()));
        self.windows.insert(pod.uid.clone(), window);
        for ip in ips {
            self.sync_watch(ip, out);
        }
    }

    fn removed(
        &mut self,
        pod: &PodRef,
        at: MonoTime,
        while_unwatched: bool,
        out: &mut Vec<Output>,
    ) {
        self.ready.forget(&pod.uid);
        if let Some(window) = self.windows.get_mut(&pod.uid) {
            window.mark_removed(at, while_unwatched);
        }
        self.sync_pod_watches(pod, out);
    }

    fn close(&mut self, uid: &str, reason: CloseReason, out: &mut Vec<Output>) {
        let Some(window) = self.windows.remove(uid) else {
            return;
        };
        let ingress_found = self.ingress_status().found();
        let (record, config) = window.close(reason, ingress_found);
        // What the ingress's packets show at the pod, where the pod runs
        // here: past the sending side's last send (retries included: the
        // pod cannot tell a retry from a choice), the sending side missed
        // them (a Service's ClusterIP, DNATed to the pod after the connect).
        let last_send_ns = record
            .last_send
            .map_or(0, |send| send.signed_since(record.deletion_seen));
        let missed_by_sender = record
            .destination
            .as_ref()
            .and_then(|view| view.ingress_arrival_gap())
            .filter(|arrival| *arrival > last_send_ns + VIEWS_AGREE_NS);
        // Pods that never served (never advertised, nothing connected)
        // would only pull the gap distribution towards zero.
        if ingress_found
            && record.usable_for_recommendation()
            && let Some(arrival) = missed_by_sender
        {
            let mut from_arrivals = record.clone();
            from_arrivals.propagation_gap_ns = Some(arrival);
            self.samples
                .add_from_arrivals(&from_arrivals, &config, self.config.recommend.window);
        } else if ingress_found
            && record.usable_for_recommendation()
            && (config.advertised || record.last_connect.is_some())
        {
            self.samples
                .add(&record, &config, self.config.recommend.window);
        } else if !ingress_found
            && record.usable_for_recommendation()
            && let Some(gap) = record
                .destination
                .as_ref()
                .and_then(|view| view.largest_sender_gap())
        {
            // No ingress on this node measured a gap: the largest sender's
            // arrival gap stands in, and the recommendation says so.
            let mut from_arrivals = record.clone();
            from_arrivals.propagation_gap_ns = Some(gap);
            self.samples
                .add_from_arrivals(&from_arrivals, &config, self.config.recommend.window);
        }
        for ip in &record.ips {
            self.retired.insert(
                *ip,
                &record.namespace,
                &record.pod,
                record.services.first().map(String::as_str),
            );
        }
        self.counters.terminations_closed += 1;
        self.counters.failures_retried += record.failures_retried;
        self.counters.failures_not_retried += record.failures_not_retried;
        if self.recent.len() >= RECENT_CLOSED {
            self.recent.pop_front();
        }
        self.recent.push_back(record.clone());
        let ips = record.ips.clone();
        out.push(Output::TerminationClosed(record));
        for ip in ips {
            self.sync_watch(ip, out);
        }
    }

    fn sync_pod_watches(&mut self, pod: &PodRef, out: &mut Vec<Output>) {
        let ips = self
            .model
            .pod(&pod.uid)
            .map(|p| p.ips.clone())
            .unwrap_or_default();
        for ip in ips {
            self.sync_watch(ip, out);
        }
    }

    /// Watches `ip` while an open window or a not-yet-ready pod holds it.
    fn sync_watch(&mut self, ip: IpAddr, out: &mut Vec<Output>) {
        let in_window = self.windows.values().any(|w| w.ips().contains(&ip));
        let not_ready = self
            .model
            .ip_claims(ip)
            .last()
            .filter(|c| c.valid_until.is_none())
            .and_then(|c| self.model.pod(&c.pod_uid))
            .is_some_and(|p| p.ready != Some(true) && p.deletion.is_none() && p.removal.is_none());
        let want = in_window || not_ready;
        if want && self.watched.insert(ip) {
            out.push(Output::Watch(ip));
        } else if !want && self.watched.remove(&ip) {
            out.push(Output::Unwatch(ip));
        }
    }

    /// Closes windows whose quiet period has passed and forgets what no
    /// open window needs any more.
    pub fn on_tick(&mut self, now: MonoTime, out: &mut Vec<Output>) {
        self.latest = self.latest.max(now);
        self.replay.expire(now);
        self.credits.expire(now);
        self.ready.expire(now);
        let quiet = self.config.quiet_period;
        let due: Vec<(String, CloseReason)> = self
            .windows
            .values()
            .filter(|w| w.is_quiet(now, quiet))
            .map(|w| (w.uid().to_owned(), w.quiet_reason()))
            .collect();
        for (uid, reason) in due {
            self.close(&uid, reason, out);
        }
        // Removed pods stay in the model while their window is open (late
        // connects are attributed through their IP tenure).
        let keep_from = self
            .windows
            .values()
            .filter_map(|w| w.removed_at)
            .min()
            .unwrap_or(now)
            .min(now);
        self.model.prune_removed_before(keep_from);
    }

    /// No window is open and no address watched: a tick has nothing to
    /// close, and what it expires can wait.
    pub fn is_idle(&self) -> bool {
        self.windows.is_empty() && self.watched.is_empty()
    }

    /// Shutdown: closes every open window (reason Shutdown) and releases
    /// every watched address.
    pub fn finish(&mut self, now: MonoTime, out: &mut Vec<Output>) {
        self.latest = self.latest.max(now);
        let uids: Vec<String> = self.windows.keys().cloned().collect();
        for uid in uids {
            self.close(&uid, CloseReason::Shutdown, out);
        }
        for ip in std::mem::take(&mut self.watched) {
            out.push(Output::Unwatch(ip));
        }
    }

    pub fn model(&self) -> &ClusterModel {
        &self.model
    }

    /// Open windows (oldest termination first), recent closed ones,
    /// recommendations and counters.
    pub fn snapshot(&self, now: MonoTime) -> Snapshot {
        let mut open: Vec<PodTermination> =
            self.windows.values().map(|w| w.record.clone()).collect();
        open.sort_by(|a, b| (a.deletion_seen, &a.uid).cmp(&(b.deletion_seen, &b.uid)));
        Snapshot {
            now,
            open,
            recent: self.recent.iter().cloned().collect(),
            recommendations: self.recommendations(),
            counters: self.counters.clone(),
            ingress: self.ingress_status(),
        }
    }

    /// What is known of this node's ingress: its pods (by the ingress
    /// selectors, on this node) and ingress processes seen connecting.
    pub fn ingress_status(&self) -> IngressStatus {
        self.connectors.status(&self.model)
    }

    pub fn recommendations(&self) -> Vec<Recommendation> {
        self.samples.recommendations(&self.config.recommend)
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Addresses currently watched, in order.
    pub fn watched(&self) -> impl Iterator<Item = &IpAddr> {
        self.watched.iter()
    }

    /// Sizes of every bounded structure, for the memory figure.
    pub fn sizes(&self) -> EngineSizes {
        EngineSizes {
            open_windows: self.windows.len(),
            watched: self.watched.len(),
            replay: self.replay.len(),
            recent: self.recent.len(),
            retired_ips: self.retired.len(),
            recently_ready: self.ready.len(),
            model_pods: self.model.stats().pods,
            retry_credits: self.credits.len(),
            local_senders: self.local_senders.len(),
        }
    }
}

/// Applies a connect to a window; a failure that a retry already named is
/// counted as retried at once.
fn apply(window: &mut Window, fact: &ConnectFact, connector: &str, credits: &mut RetryCredits) {
    window.apply(fact, connector);
    if fact.role == ConnectorRole::Ingress
        && let Some(failure) = fact.failure_key()
        && credits.take(failure)
    {
        window.credit_retry(failure);
    }
}

/// How full the engine's bounded structures are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineSizes {
    pub open_windows: usize,
    pub watched: usize,
    pub replay: usize,
    pub recent: usize,
    pub retired_ips: usize,
    pub recently_ready: usize,
    pub model_pods: usize,
    /// Retries waiting for the failure they name.
    #[serde(default)]
    pub retry_credits: usize,
    /// This node's connects remembered to name what arrives from them.
    #[serde(default)]
    pub local_senders: usize,
}
