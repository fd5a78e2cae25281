//! One open measurement window: a terminating pod, the connects to it after
//! deletion_seen, and the derived gap and lags.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::arrivals::{DestinationView, Sender};
use super::connect::ConnectFact;
use super::connector::ConnectorRole;
use super::hidden::FailureSet;
use super::record::{CloseReason, ConnectorActivity, FailureCounts, PodTermination};
use crate::clock::MonoTime;
use crate::cluster::{ClusterModel, PodRecord};
use crate::probe::decode::{DropReason, Outcome};
use crate::probe::retry::RetriedFailure;

/// Distinct connectors kept per termination.
pub const MAX_CONNECTORS: usize = 16;
/// Failures kept with their times per termination (the first ones: the
/// start of trouble is what a timeline needs).
pub const MAX_FAILURE_TIMES: usize = 64;
/// The ingress's failures per termination that a later retry may still
/// name (the newest are kept; one beyond stays `not_retried`).
pub const MAX_UNRETRIED: usize = 4096;

/// What is known about the pod's configuration, kept for recommendations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodConfig {
    /// The container a preStop belongs in: the one with a preStop hook,
    /// else the first app container.
    pub container: Option<String>,
    /// Some Service advertised the pod as ready at some point: the ingress
    /// could have routed to it.
    pub advertised: bool,
}

/// An open termination.
#[derive(Clone, Debug)]
pub struct Window {
    pub record: PodTermination,
    pub config: PodConfig,
    /// Ports that count for last_connect; empty means every port.
    pub ports: Vec<u16>,
    /// When the pod left the API, if it has.
    pub removed_at: Option<MonoTime>,
    pub removed_while_unwatched: bool,
    /// Latest of deletion_seen, removal, and any connect to the pod's IPs:
    /// the quiet period counts from here.
    pub last_activity: MonoTime,
    /// The ingress's failures no retry has named yet.
    unretried: FailureSet,
    /// Recent flooded copies counted, by sender: a bridge hands one copy
    /// of a frame to every port, and each drops it (`other_host`).
    floods: VecDeque<(SocketAddr, MonoTime)>,
    /// Senders' 4-tuples whose SYN already arrived (bounded).
    syn_senders: BoundedSet,
}

/// A set of socket addresses that forgets its oldest beyond a bound.
#[derive(Clone, Debug, Default)]
struct BoundedSet {
    members: std::collections::HashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
}

/// SYN senders remembered per termination: two minutes of a 50-connects-a-second sender.
const MAX_SYN_SENDERS: usize = 8192;

impl BoundedSet {
    /// Adds `addr`; whether it was new.
    fn insert(&mut self, addr: SocketAddr) -> bool {
        if !self.members.insert(addr) {
            return false;
        }
        self.order.push_back(addr);
        if self.order.len() > MAX_SYN_SENDERS
            && let Some(old) = self.order.pop_front()
        {
            self.members.remove(&old);
        }
        true
    }
}

/// Copies of one flooded frame arrive within microseconds of each other;
/// a SYN's retransmission comes a second later at the soonest.
pub const FLOOD_COPIES_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);
/// Flooded frames remembered per termination to tell copies apart.
const MAX_FLOODS: usize = 32;

impl Window {
    /// Opens a window for `pod` at `deletion_seen`.
    pub fn open(
        model: &ClusterModel,
        pod: &PodRecord,
        deletion_seen: MonoTime,
        late: bool,
    ) -> Window {
        let workload = pod.owner.as_ref().map(|o| o.name.clone());
        let container = pod
            .containers
            .iter()
            .find(|c| c.pre_stop.sleep().is_some())
            .or_else(|| pod.containers.iter().find(|c| !c.sidecar))
            .map(|c| c.name.clone());
        let record = PodTermination {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            uid: pod.uid.clone(),
            ips: pod.ips.clone(),
            node: pod.node.clone(),
            workload,
            services: Vec::new(),
            configured_prestop_ms: pod.pre_stop_sleep().map(|d| d.as_millis() as u64),
            termination_grace_period_seconds: pod.termination_grace_period_seconds,
            deletion_seen,
            deletion_observed_late: late,
            endpoint_not_ready: None,
            endpoint_removed: None,
            last_connect: None,
            last_choice: None,
            last_send: None,
            retries_after_deletion: 0,
            served_after_deletion: 0,
            first_failure: None,
            last_failure: None,
            connects_after_deletion: 0,
            failures: FailureCounts::default(),
            failures_retried: 0,
            failures_not_retried: 0,
            propagation_gap_ns: None,
            control_plane_lag_ns: None,
            dataplane_lag_ns: None,
            retry_tail_ns: None,
            ingress_found: false,
            connectors: Vec::new(),
            failure_times: Vec::new(),
            destination: None,
            closed: None,
        };
        let mut window = Window {
            record,
            config: PodConfig {
                container,
                advertised: false,
            },
            ports: Vec::new(),
            removed_at: None,
            removed_while_unwatched: false,
            last_activity: deletion_seen,
            unretried: FailureSet::default(),
            floods: VecDeque::new(),
            syn_senders: BoundedSet::default(),
        };
        window.refresh_from_model(model);
        window
    }

    pub fn uid(&self) -> &str {
        &self.record.uid
    }

    pub fn deletion_seen(&self) -> MonoTime {
        self.record.deletion_seen
    }

    /// Re-reads what the cluster model says about the pod's Service
    /// addresses: ports, services, endpoint_not_ready, endpoint_removed.
    pub fn refresh_from_model(&mut self, model: &ClusterModel) {
        let uid = self.record.uid.clone();
        if let Some(pod) = model.pod(&uid) {
            for ip in &pod.ips {
                if !self.record.ips.contains(ip) {
                    self.record.ips.push(*ip);
                }
            }
        }
        let endpoints = model.endpoints_of_pod(&uid);
        if endpoints.is_empty() {
            // The pod has left the model (and its addresses with it): keep
            // what was learned while it was there.
            return;
        }
        let mut services: Vec<String> = endpoints.iter().map(|r| r.key.service.clone()).collect();
        services.sort_unstable();
        services.dedup();
        self.record.services = services;
        // The first Service to stop advertising the address is when the
        // ingress could first have learned of it.
        self.record.endpoint_not_ready =
            endpoints.iter().filter_map(|r| r.endpoint_not_ready).min();
        // Removed only when no Service lists the address any more.
        self.record.endpoint_removed = if endpoints.is_empty() {
            None
        } else {
            endpoints
                .iter()
                .map(|r| r.endpoint_removed)
                .collect::<Option<Vec<_>>>()
                .and_then(|times| times.into_iter().max())
        };
        self.config.advertised |= endpoints
            .iter()
            .any(|r| r.ready_since.is_some() || r.endpoint_not_ready.is_some());
        self.ports = model.advertised_ports(&uid);
        self.derive();
    }

    /// Whether `fact` (already attributed to this pod) belongs in the
    /// window: at or after deletion_seen, on a port that counts.
    pub fn accepts(&self, fact: &ConnectFact) -> bool {
        fact.at >= self.record.deletion_seen
            && (self.ports.is_empty() || self.ports.contains(&fact.port))
    }

    /// Adds one connect by `connector`; the caller checked
    /// [`Window::accepts`]. Only the ingress's connects move the gap and
    /// the failure counts; every connector's are counted in `connectors`.
    pub fn apply(&mut self, fact: &ConnectFact, connector: &str) {
        self.count_connector(fact, connector);
        self.touch(fact.ts);
        if fact.role != ConnectorRole::Ingress {
            self.derive();
            return;
        }
        let r = &mut self.record;
        if fact.is_connect {
            r.last_connect = r.last_connect.max(Some(fact.at));
        }
        if fact.is_send {
            r.last_send = r.last_send.max(Some(fact.at));
        }
        if fact.is_choice {
            r.last_choice = r.last_choice.max(Some(fact.at));
        }
        if fact.new_attempt {
            r.connects_after_deletion += fact.count;
            if !fact.is_choice {
                r.retries_after_deletion += fact.count;
            }
        }
        if fact.established {
            r.served_after_deletion += 1;
        }
        if let Some(class) = fact.failure {
            r.failures.add_n(class, fact.count);
            if let Some(key) = fact.failure_key() {
                self.unretried.insert(key, MAX_UNRETRIED);
            }
            r.first_failure = Some(r.first_failure.map_or(fact.ts, |t| t.min(fact.ts)));
            r.last_failure = r.last_failure.max(Some(fact.ts));
            if r.failure_times.len() < MAX_FAILURE_TIMES {
                // Replayed facts can arrive after later ones: keep order.
                let at = r.failure_times.partition_point(|(t, _)| *t <= fact.ts);
                r.failure_times.insert(at, (fact.ts, class));
            }
        }
        self.derive();
    }

    /// The pod runs on this node: the destination-side view exists even
    /// when nothing arrives.
    pub fn expect_arrivals(&mut self) {
        let t0 = self.record.deletion_seen;
        self.record
            .destination
            .get_or_insert_with(DestinationView::default)
            .derive(t0);
    }

    /// Adds what the receiving side saw land on the pod at `at`, on
    /// `port`, from `sender`; only at or after deletion_seen, on a port
    /// that counts.
    pub fn apply_arrival(
        &mut self,
        at: MonoTime,
        src: SocketAddr,
        port: u16,
        outcome: &Outcome,
        sender: &Sender,
    ) {
        let t0 = self.record.deletion_seen;
        if at < t0 || !(self.ports.is_empty() || self.ports.contains(&port)) {
            return;
        }
        if matches!(
            outcome,
            Outcome::Dropped {
                reason: DropReason::OtherHost,
                ..
            }
        ) {
            let copy = self.floods.iter().any(|(from, when)| {
                *from == src && at.0.abs_diff(when.0) <= FLOOD_COPIES_WINDOW.as_nanos() as u64
            });
            if copy {
                return;
            }
            if self.floods.len() >= MAX_FLOODS {
                self.floods.pop_front();
            }
            self.floods.push_back((src, at));
        }
        // A connection's first SYN is when the sender chose the pod; its
        // retransmissions (same 4-tuple) arrive seconds later and are not
        // new choices.
        let first_syn = match outcome {
            Outcome::Dropped {
                opens_connection: true,
                ..
            } => self.syn_senders.insert(src),
            _ => true,
        };
        self.record
            .destination
            .get_or_insert_with(DestinationView::default)
            .apply(t0, at, outcome, sender, first_syn);
    }

    /// Counts `failure`, one of this window's, as retried by the ingress
    /// (hidden from the user); whether it was one of them.
    pub fn credit_retry(&mut self, failure: RetriedFailure) -> bool {
        if !self.unretried.remove(failure) {
            return false;
        }
        self.record.failures_retried += 1;
        self.derive();
        true
    }

    /// Notes activity on the pod's IPs (any port), restarting the quiet period.
    pub fn touch(&mut self, at: MonoTime) {
        self.last_activity = self.last_activity.max(at);
    }

    fn count_connector(&mut self, fact: &ConnectFact, name: &str) {
        let connectors = &mut self.record.connectors;
        let position = connectors
            .iter()
            .position(|c| c.role == fact.role && c.name == name);
        let index = match position {
            Some(index) => index,
            None if connectors.len() < MAX_CONNECTORS => {
                // The ingress first, then by name: a stable order for output.
                let at =
                    connectors.partition_point(|c| (c.role, c.name.as_str()) < (fact.role, name));
                connectors.insert(
                    at,
                    ConnectorActivity {
                        name: name.to_owned(),
                        role: fact.role,
                        connects: 0,
                        failures: 0,
                        last_connect: None,
                        until_ns: None,
                    },
                );
                at
            }
            None => return,
        };
        let activity = &mut connectors[index];
        if fact.new_attempt {
            activity.connects += fact.count;
        }
        if fact.failure.is_some() {
            activity.failures += fact.count;
        }
        if fact.is_connect {
            activity.last_connect = activity.last_connect.max(Some(fact.at));
        }
    }

    pub fn mark_removed(&mut self, at: MonoTime, while_unwatched: bool) {
        if self.removed_at.is_none() {
            self.removed_at = Some(at);
            self.removed_while_unwatched = while_unwatched;
        }
        self.touch(at);
    }

    /// Whether the quiet period has passed at `now`.
    pub fn is_quiet(&self, now: MonoTime, quiet: std::time::Duration) -> bool {
        self.removed_at.is_some() && now.saturating_since(self.last_activity) >= quiet
    }

    /// The reason a quiet close reports.
    pub fn quiet_reason(&self) -> CloseReason {
        if self.removed_while_unwatched {
            CloseReason::RemovedWhileUnwatched
        } else {
            CloseReason::Quiet
        }
    }

    /// Recomputes propagation_gap, control_plane_lag and dataplane_lag.
    fn derive(&mut self) {
        let r = &mut self.record;
        let t0 = r.deletion_seen;
        // No choice after deletion: the ingress stopped in time, gap 0.
        r.propagation_gap_ns = Some(r.last_choice.map_or(0, |last| last.signed_since(t0)));
        r.failures_not_retried = r.failures.total().saturating_sub(r.failures_retried);
        r.control_plane_lag_ns = r.endpoint_not_ready.map(|t| t.signed_since(t0));
        r.dataplane_lag_ns = match (r.last_choice, r.endpoint_not_ready) {
            (Some(last), Some(not_ready)) => Some(last.signed_since(not_ready)),
            _ => None,
        };
        r.retry_tail_ns = match (r.last_send, r.last_choice) {
            (Some(send), Some(choice)) if send > choice => Some(send.signed_since(choice)),
            (Some(send), None) => Some(send.signed_since(t0).max(0)),
            _ => None,
        };
        for activity in &mut r.connectors {
            activity.until_ns = activity.last_connect.map(|last| last.signed_since(t0));
        }
    }

    /// Ends the window and returns the final record. Without an ingress
    /// on the node nothing measured the gap, so it stays unknown.
    pub fn close(
        mut self,
        reason: CloseReason,
        ingress_found: bool,
    ) -> (PodTermination, PodConfig) {
        self.derive();
        self.record.ingress_found = ingress_found;
        let last_send = self.record.last_send.filter(|_| ingress_found);
        if let Some(view) = &mut self.record.destination {
            view.compare_with_sender_side(last_send);
        }
        if !ingress_found {
            self.record.propagation_gap_ns = None;
            self.record.dataplane_lag_ns = None;
        }
        self.record.closed = Some(reason);
        (self.record, self.config)
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.record.ips
    }
}
