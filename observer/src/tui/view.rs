//! The TUI's own view model: what the screens show, already reduced to
//! display units (milliseconds relative to the pod's `deletion_seen`, wall
//! times, strings). The render functions take only these types, so they are
//! tested without an engine, and every data source (the in-process engine,
//! remote agents) is converted into them once, by `adapt`.
//!
//! Monotonic timestamps never cross into the view: each agent has its own
//! CLOCK_MONOTONIC, so offsets are taken on the agent's side of the wire and
//! only offsets and wall times are compared here. A termination several
//! agents saw is one row (`merge`), whose offsets are each from the
//! deletion_seen of the agent they came from.

use std::net::{IpAddr, SocketAddr};

use crate::engine::recommend::GapView;
use crate::probe::FailureClass;

/// Failed connects by class, in [`FailureClass::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureTally(pub [u64; 8]);

impl FailureTally {
    fn index(class: FailureClass) -> usize {
        FailureClass::ALL
            .iter()
            .position(|c| *c == class)
            .unwrap_or(FailureClass::ALL.len() - 1)
    }

    pub fn get(&self, class: FailureClass) -> u64 {
        self.0[Self::index(class)]
    }

    pub fn add(&mut self, class: FailureClass, n: u64) {
        self.0[Self::index(class)] += n;
    }

    pub fn merge(&mut self, other: &FailureTally) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero classes, largest first (ties in class order).
    pub fn nonzero(&self) -> Vec<(FailureClass, u64)> {
        let mut out: Vec<(FailureClass, u64)> = FailureClass::ALL
            .iter()
            .map(|c| (*c, self.get(*c)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.1));
        out
    }
}

/// One Service (or workload, when the pods back no Service) on the
/// Overview: what its terminations measured and what preStop they need.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceRow {
    pub namespace: String,
    /// The Service name; the workload name when there is no Service.
    pub name: String,
    pub workload: Option<String>,
    /// Terminations measured (samples behind the quantiles).
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub failures: FailureTally,
    pub configured_prestop_s: Option<f64>,
    pub recommended_prestop_s: u64,
    pub configured_grace_s: Option<i64>,
    pub recommended_grace_s: u64,
    pub verdict: Vec<String>,
    /// The pod-spec fragment to apply.
    pub yaml: String,
    /// The agents whose measurements this row combines.
    pub sources: Vec<String>,
    /// Which view measured the gaps behind the quantiles.
    pub gap_view: GapView,
}

impl ServiceRow {
    /// A short mark for rows whose gaps did not all come from the sender
    /// side (the default, left unmarked): `dst` or `both`.
    pub fn gap_view_mark(&self) -> Option<&'static str> {
        match self.gap_view {
            GapView::Sender => None,
            GapView::Destination => Some("dst"),
            GapView::Both => Some("both"),
        }
    }

    /// How many seconds the configured preStop falls short of the
    /// recommendation (no preStop counts as zero seconds).
    pub fn shortfall_s(&self) -> f64 {
        self.recommended_prestop_s as f64 - self.configured_prestop_s.unwrap_or(0.0)
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A point on a termination's timeline, as milliseconds after
/// `deletion_seen` (negative when the endpoint change arrived first: the
/// pod and slice watches are not ordered against each other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    DeletionSeen,
    EndpointNotReady,
    EndpointRemoved,
    FirstFailure,
    LastFailure,
    LastConnect,
    LastChoice,
}

impl Milestone {
    pub fn label(self) -> &'static str {
        match self {
            Milestone::DeletionSeen => "deletion seen",
            Milestone::EndpointNotReady => "endpoint not ready",
            Milestone::EndpointRemoved => "endpoint removed",
            Milestone::FirstFailure => "first failure",
            Milestone::LastFailure => "last failure",
            Milestone::LastConnect => "last connect",
            Milestone::LastChoice => "last choice",
        }
    }
}

/// A process that connected to the pod after its deletion was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorView {
    /// `namespace/name`, `kubelet`, or a process name.
    pub name: String,
    /// `ingress`, `kubelet`, `pod` or `process`.
    pub role: String,
    pub connects: u64,
    pub failures: u64,
    /// Its last connect, from deletion_seen.
    pub until_ms: Option<i64>,
}

/// One sender's arrivals at a terminating pod (the destination view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderView {
    /// `namespace/name`, `kubelet`, a process name, or an
    /// `--external-sender` range's name (`external` when none holds it).
    pub name: String,
    /// `ingress`, `kubelet`, `pod`, `process` or `external`.
    pub kind: String,
    /// Its last arrival, from deletion_seen.
    pub arrival_gap_ms: Option<i64>,
    pub arrivals: u64,
    pub refused: u64,
    pub dropped: u64,
}

/// What landed on a terminating pod after deletion_seen, seen by the
/// kernel of the pod's own node (the destination view). Counts leave out
/// the kubelet's probes; its own row in `senders` has them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArrivalsView {
    /// The agent that saw it (the pod's node's); set by the merge.
    pub source: String,
    /// The last SYN or request that reached the pod, from deletion_seen.
    pub last_arrival_ms: Option<i64>,
    /// 0 when nothing arrived after deletion_seen.
    pub arrival_gap_ms: Option<i64>,
    pub refused: u64,
    pub dropped: u64,
    pub served_after_deletion: u64,
    /// The largest first (bounded by the agent).
    pub senders: Vec<SenderView>,
    /// The ingress's last arrival against its last send, where the pod's
    /// node also ran the ingress (fractional: the two usually agree to
    /// within a jiffy).
    pub views_apart_ms: Option<f64>,
}

impl ArrivalsView {
    /// How much it saw, to choose between two agents' views of one pod:
    /// what arrived without the kubelet, then with it (the pod's node
    /// sees its kubelet's probes even when nothing else arrives).
    pub fn weight(&self) -> (u64, u64) {
        let senders = self
            .senders
            .iter()
            .map(|s| s.arrivals + s.refused + s.dropped)
            .sum();
        (
            self.served_after_deletion + self.refused + self.dropped,
            senders,
        )
    }
}

/// One ingress node's sender side of a termination, as its own agent
/// measured it. Offsets are from that agent's deletion_seen.
#[derive(Clone, Debug, PartialEq)]
pub struct IngressSide {
    /// The agent on that ingress node.
    pub source: String,
    pub gap_ms: i64,
    /// Its ingress's last send (a SYN, retries included, or a request on
    /// a pooled connection).
    pub last_send_ms: Option<i64>,
    pub connects_after_deletion: u64,
    pub failures: FailureTally,
}

/// One pod's termination, as every agent that saw it reported it: the
/// sender side of each ingress node, and the destination side of the
/// pod's own node (see `merge`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TerminationView {
    /// How the screens name the agents that reported it (`node-a`,
    /// `node-a+node-b`, `node-a+2 more`); set by the merge.
    pub source: String,
    /// The agents that reported it, by name; set by the merge.
    pub sources: Vec<String>,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    /// The node the pod ran on.
    pub node: Option<String>,
    pub workload: Option<String>,
    pub services: Vec<String>,
    pub configured_prestop_ms: Option<u64>,
    pub grace_s: Option<i64>,
    /// now − deletion_seen when the agent took its snapshot.
    pub age_ms: u64,
    /// The TUI's clock (ms) when that snapshot arrived; set by the merge,
    /// so an open window's bar keeps growing between snapshots.
    pub received_at_ms: u64,
    pub deletion_observed_late: bool,
    pub endpoint_not_ready_ms: Option<i64>,
    pub endpoint_removed_ms: Option<i64>,
    pub last_connect_ms: Option<i64>,
    pub first_failure_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    pub connects_after_deletion: u64,
    pub failures: FailureTally,
    /// Where failures happened on the timeline (bounded by the agent).
    pub failure_marks: Vec<(i64, FailureClass)>,
    pub gap_ms: Option<i64>,
    pub control_plane_lag_ms: Option<i64>,
    pub dataplane_lag_ms: Option<i64>,
    /// The ingress's last choice of the pod (where the gap ends).
    pub last_choice_ms: Option<i64>,
    /// Sends after the last choice: retries of failures elsewhere.
    pub retry_tail_ms: Option<i64>,
    /// The ingress's last send to the pod (retries included).
    pub last_send_ms: Option<i64>,
    /// An ingress ran on the agent's node, so its gap is the ingress's
    /// (while the window is open: the agent knows one now).
    pub ingress_found: bool,
    /// Every ingress node's own gap, the largest first (the row's gap is
    /// the first's); set by the merge.
    pub ingress: Vec<IngressSide>,
    pub retries_after_deletion: u64,
    /// Failures the ingress retried elsewhere (hidden from users), and
    /// those that reached users.
    pub failures_retried: u64,
    pub failures_not_retried: u64,
    pub connectors: Vec<ConnectorView>,
    /// The destination view, where the agent runs on the pod's node (or
    /// anything arrived).
    pub destination: Option<ArrivalsView>,
    /// Why the measurement window closed; `None` while it is open.
    pub closed: Option<String>,
}

impl TerminationView {
    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    /// Whether this is the record a Detail target names. A pod's uid names
    /// it across agents (the row's agents can change as they report);
    /// without one, only the agent's own record is it.
    pub fn is_record(&self, source: &str, uid: &str) -> bool {
        self.uid == uid && (!uid.is_empty() || self.source == source)
    }

    /// Whether `agent` reported this termination.
    pub fn seen_by(&self, agent: &str) -> bool {
        self.sources.iter().any(|s| s == agent)
    }

    /// The Service this pod counts under on the Overview.
    pub fn group_name(&self) -> Option<&str> {
        self.services
            .first()
            .map(String::as_str)
            .or(self.workload.as_deref())
    }

    /// Every known milestone with its offset, in time order.
    pub fn milestones(&self) -> Vec<(Milestone, i64)> {
        let mut out = vec![(Milestone::DeletionSeen, 0)];
        let optional = [
            (Milestone::EndpointNotReady, self.endpoint_not_ready_ms),
            (Milestone::EndpointRemoved, self.endpoint_removed_ms),
            (Milestone::FirstFailure, self.first_failure_ms),
            (Milestone::LastFailure, self.last_failure_ms),
            (Milestone::LastConnect, self.last_connect_ms),
            (Milestone::LastChoice, self.last_choice_ms),
        ];
        out.extend(optional.iter().filter_map(|(m, t)| t.map(|t| (*m, t))));
        out.sort_by_key(|(_, t)| *t);
        out
    }

    /// The window's length at TUI time `clock_ms`: open windows grow,
    /// closed ones end at the last thing that happened.
    pub fn span_ms(&self, clock_ms: u64) -> i64 {
        if self.is_open() {
            let grown = clock_ms.saturating_sub(self.received_at_ms);
            (self.age_ms + grown) as i64
        } else {
            self.measured_end_ms()
        }
    }

    /// Where the measured part of a closed window ends: the latest thing
    /// that happened. Open windows end at their live age instead.
    pub fn measured_end_ms(&self) -> i64 {
        self.milestones()
            .iter()
            .map(|(_, t)| *t)
            .chain(self.failure_marks.iter().map(|(t, _)| *t))
            .max()
            .unwrap_or(0)
    }

    pub fn matches(&self, needle: &str) -> bool {
        contains_ci(&self.namespace, needle)
            || contains_ci(&self.pod, needle)
            || self.services.iter().any(|s| contains_ci(s, needle))
            || self
                .workload
                .as_deref()
                .is_some_and(|w| contains_ci(w, needle))
    }
}

/// One failed connect in the Failures log.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRow {
    /// The agent that saw it.
    pub source: String,
    /// Wall-clock time (Unix ms), derived from the agent's monotonic clock.
    pub at_unix_ms: u64,
    pub pid: u32,
    pub comm: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub service: Option<String>,
    pub class: FailureClass,
    /// How long the connect waited before it failed.
    pub waited_ms: f64,
    /// The destination pod's state at that moment.
    pub pod_state: String,
    /// What the agent concluded (e.g. `to_terminating_pod`).
    pub kind: String,
}

impl FailureRow {
    pub fn matches(&self, needle: &str) -> bool {
        [&self.namespace, &self.pod, &self.service]
            .iter()
            .any(|f| f.as_deref().is_some_and(|v| contains_ci(v, needle)))
            || contains_ci(&self.comm, needle)
    }
}

/// What one agent currently reports (replaced wholesale by each snapshot).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceData {
    pub services: Vec<ServiceRow>,
    pub terminations: Vec<TerminationView>,
    /// Cumulative connects the agent has seen (for connects per second).
    pub connects_total: u64,
    /// Cumulative failed connects the agent has seen.
    pub failures_total: u64,
}

/// One per-second bucket of the Failures sparklines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RatePoint {
    pub connects: u64,
    pub failures: u64,
}

/// Case-insensitive substring match (the filter is typed by a human).
pub fn contains_ci(haystack: &str, needle: &str) -> bool {
    needle.is_empty() || haystack.to_lowercase().contains(&needle.to_lowercase())
}

impl ServiceRow {
    pub fn matches(&self, needle: &str) -> bool {
        contains_ci(&self.namespace, needle)
            || contains_ci(&self.name, needle)
            || self
                .workload
                .as_deref()
                .is_some_and(|w| contains_ci(w, needle))
    }
}

/// Everything the Detail screen shows for one pod or one Service.
#[derive(Clone, Debug, PartialEq)]
pub struct DetailView {
    /// The termination in focus (absent when a Service was opened and none
    /// of its pods has terminated yet).
    pub termination: Option<TerminationView>,
    /// The Service the pod counts under, with its recommendation.
    pub service: Option<ServiceRow>,
    /// Other terminations of the same Service, newest first.
    pub related: Vec<TerminationView>,
}
