//! What the engine emits: termination records, findings, counters. These
//! are the NDJSON schema (docs/ENGINE.md), so every type is serde-stable.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::connector::{ConnectorRole, IngressStatus};
use super::recommend::Recommendation;
use crate::clock::MonoTime;
use crate::probe::decode::{ConnectRecord, FailureClass};

/// One thing the engine tells its caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Output {
    /// Put this address in the kernel watch map: every connect to it is
    /// reported from now on (the pod started terminating, or is not ready).
    Watch(IpAddr),
    /// Take this address out of the kernel watch map.
    Unwatch(IpAddr),
    TerminationOpened(PodTermination),
    TerminationClosed(PodTermination),
    /// A notable failed connect.
    Finding(Finding),
}

/// Failed connects by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    pub refused: u64,
    pub host_unreachable: u64,
    pub net_unreachable: u64,
    pub timed_out: u64,
    pub aborted: u64,
    pub reset: u64,
    /// Requests in flight when the peer closed the connection (FIN).
    #[serde(default)]
    pub cut: u64,
    pub other: u64,
}

impl FailureCounts {
    pub fn add(&mut self, class: FailureClass) {
        self.add_n(class, 1);
    }

    pub fn add_n(&mut self, class: FailureClass, n: u64) {
        *self.slot(class) += n;
    }

    pub fn get(&self, class: FailureClass) -> u64 {
        match class {
            FailureClass::Refused => self.refused,
            FailureClass::HostUnreachable => self.host_unreachable,
            FailureClass::NetUnreachable => self.net_unreachable,
            FailureClass::TimedOut => self.timed_out,
            FailureClass::Aborted => self.aborted,
            FailureClass::Reset => self.reset,
            FailureClass::Cut => self.cut,
            FailureClass::Other => self.other,
        }
    }

    pub fn total(&self) -> u64 {
        FailureClass::ALL.iter().map(|c| self.get(*c)).sum()
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &FailureCounts) {
        for class in FailureClass::ALL {
            *self.slot(class) += other.get(class);
        }
    }

    fn slot(&mut self, class: FailureClass) -> &mut u64 {
        match class {
            FailureClass::Refused => &mut self.refused,
            FailureClass::HostUnreachable => &mut self.host_unreachable,
            FailureClass::NetUnreachable => &mut self.net_unreachable,
            FailureClass::TimedOut => &mut self.timed_out,
            FailureClass::Aborted => &mut self.aborted,
            FailureClass::Reset => &mut self.reset,
            FailureClass::Cut => &mut self.cut,
            FailureClass::Other => &mut self.other,
        }
    }
}

/// Why a measurement window closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The pod is gone from the API and no connect came for the quiet period.
    Quiet,
    /// The pod's IP was handed to a new pod.
    IpReused,
    /// A relist found the pod gone: it was removed while unwatched.
    RemovedWhileUnwatched,
    /// The engine shut down with the window still open.
    Shutdown,
}

/// One connector's traffic to a terminating pod after deletion_seen: the
/// ingress's (which measures the gap) or a bystander's (reported beside it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorActivity {
    /// `namespace/name` for a pod, `kubelet`, or a host process's comm.
    pub name: String,
    pub role: ConnectorRole,
    /// New connections (SYNs, and connects that failed before a SYN).
    pub connects: u64,
    pub failures: u64,
    pub last_connect: Option<MonoTime>,
    /// last_connect − deletion_seen: how long it kept connecting.
    pub until_ns: Option<i64>,
}

/// One pod's termination as this node saw it. Times are CLOCK_MONOTONIC ns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodTermination {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    /// Owning Deployment (or other controller) name.
    pub workload: Option<String>,
    pub services: Vec<String>,
    pub configured_prestop_ms: Option<u64>,
    pub termination_grace_period_seconds: Option<i64>,
    pub deletion_seen: MonoTime,
    /// The deletion happened while unwatched: the true start is earlier
    /// and the gap is not used for recommendations.
    pub deletion_observed_late: bool,
    pub endpoint_not_ready: Option<MonoTime>,
    pub endpoint_removed: Option<MonoTime>,
    /// The ingress's last connect, retries included (only ingress
    /// connectors count from here to `failures`; the others are in
    /// `connectors`).
    pub last_connect: Option<MonoTime>,
    /// The ingress's last choice of the pod: a first try, or a request on
    /// a pooled connection (not a retry). The gap ends here.
    #[serde(default)]
    pub last_choice: Option<MonoTime>,
    /// The ingress's last send to the pod: a SYN (retries included) or a
    /// request on a pooled connection.
    #[serde(default)]
    pub last_send: Option<MonoTime>,
    /// Connects after deletion that only retried a failure elsewhere.
    #[serde(default)]
    pub retries_after_deletion: u64,
    /// The ingress's connects after deletion that the pod accepted.
    #[serde(default)]
    pub served_after_deletion: u64,
    pub first_failure: Option<MonoTime>,
    pub last_failure: Option<MonoTime>,
    pub connects_after_deletion: u64,
    pub failures: FailureCounts,
    /// Of `failures`, those the ingress retried to another endpoint: the
    /// user got an answer (later). Hidden failures.
    #[serde(default)]
    pub failures_retried: u64,
    /// Of `failures`, those no retry followed: the user got an error
    /// (or a failure the kernel counted in a storm, which cannot be
    /// paired with its retry).
    #[serde(default)]
    pub failures_not_retried: u64,
    /// last_choice − deletion_seen; 0 when the ingress chose the pod
    /// nothing after deletion.
    pub propagation_gap_ns: Option<i64>,
    /// endpoint_not_ready − deletion_seen (signed: the watches are not
    /// ordered against each other).
    pub control_plane_lag_ns: Option<i64>,
    /// last_choice − endpoint_not_ready (signed).
    pub dataplane_lag_ns: Option<i64>,
    /// last_send − last_choice, when retries (or sends) came later: what
    /// users suffered after the ingress stopped choosing the pod.
    /// Reported, never recommended from.
    #[serde(default)]
    pub retry_tail_ns: Option<i64>,
    /// An ingress was known on this node when the window closed. Without
    /// one the gap is `None`: nothing measured it, and bystanders never
    /// stand in for the ingress.
    #[serde(default)]
    pub ingress_found: bool,
    /// Who connected after deletion, the ingress first (bounded).
    pub connectors: Vec<ConnectorActivity>,
    /// Failures in time order (bounded: the first ones).
    pub failure_times: Vec<(MonoTime, FailureClass)>,
    /// The destination-side view: what landed on the pod, from its own
    /// node's kernel (present where this node hosts the pod, or where
    /// anything arrived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<super::arrivals::DestinationView>,
    /// `None` while the window is open.
    pub closed: Option<CloseReason>,
}

impl PodTermination {
    /// Whether the gap may feed recommendations: the window closed with a
    /// known start of termination.
    pub fn usable_for_recommendation(&self) -> bool {
        !self.deletion_observed_late
            && matches!(
                self.closed,
                Some(CloseReason::Quiet | CloseReason::IpReused)
            )
    }
}

/// The state of the pod a failed connect went to, at the connect's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    Terminating,
    NotReady,
    Ready,
    Unknown,
}

impl PodState {
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Terminating => "terminating",
            PodState::NotReady => "not_ready",
            PodState::Ready => "ready",
            PodState::Unknown => "unknown",
        }
    }
}

/// What a finding says about a failed connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    ToTerminatingPod,
    ToNotReadyPod,
    /// Failed right after the pod became ready: the readiness probe says
    /// ready too early.
    ReadyTooEarly,
    /// The IP belongs to no pod this agent knows: a stale endpoint.
    StaleEndpoint,
    ToReadyPod,
}

/// A notable failed connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub at: MonoTime,
    pub record: ConnectRecord,
    pub pod_state: PodState,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub service: Option<String>,
    pub kind: FindingKind,
}

/// Running totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounters {
    pub connects_seen: u64,
    /// What the receiving side reported landing on this node's pods.
    #[serde(default)]
    pub arrivals_seen: u64,
    pub cluster_events: u64,
    /// Failed connects keyed `"<pod state>/<class>"`, e.g. `"terminating/refused"`.
    pub failures_by_state: BTreeMap<String, u64>,
    pub terminations_closed: u64,
    pub unknown_ip_failures: u64,
    /// Failed connects of connectors that are not the ingress (never
    /// findings, never in `failures_by_state`), by role.
    #[serde(default)]
    pub bystander_failures: BTreeMap<ConnectorRole, u64>,
    /// The ingress's failures to terminating pods, over closed
    /// terminations: retried (hidden from users) and not.
    #[serde(default)]
    pub failures_retried: u64,
    #[serde(default)]
    pub failures_not_retried: u64,
}

impl EngineCounters {
    /// The `failures_by_state` key of a state and class.
    pub fn failure_key(state: PodState, class: FailureClass) -> String {
        failure_key_str(state, class).to_owned()
    }

    pub fn failures(&self, state: PodState, class: FailureClass) -> u64 {
        self.failures_by_state
            .get(failure_key_str(state, class))
            .copied()
            .unwrap_or(0)
    }
}

/// Everything a UI needs at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub now: MonoTime,
    pub open: Vec<PodTermination>,
    /// Recently closed terminations, bounded, newest last.
    pub recent: Vec<PodTermination>,
    pub recommendations: Vec<Recommendation>,
    pub counters: EngineCounters,
    /// What is known of this node's ingress.
    #[serde(default)]
    pub ingress: IngressStatus,
}

/// Every `failures_by_state` key, so counting a failure allocates nothing.
const FAILURE_KEYS: [[&str; 8]; 4] = [
    [
        "terminating/refused",
        "terminating/host_unreachable",
        "terminating/net_unreachable",
        "terminating/timed_out",
        "terminating/aborted",
        "terminating/reset",
        "terminating/cut",
        "terminating/other",
    ],
    [
        "not_ready/refused",
        "not_ready/host_unreachable",
        "not_ready/net_unreachable",
        "not_ready/timed_out",
        "not_ready/aborted",
        "not_ready/reset",
        "not_ready/cut",
        "not_ready/other",
    ],
    [
        "ready/refused",
        "ready/host_unreachable",
        "ready/net_unreachable",
        "ready/timed_out",
        "ready/aborted",
        "ready/reset",
        "ready/cut",
        "ready/other",
    ],
    [
        "unknown/refused",
        "unknown/host_unreachable",
        "unknown/net_unreachable",
        "unknown/timed_out",
        "unknown/aborted",
        "unknown/reset",
        "unknown/cut",
        "unknown/other",
    ],
];

/// `"<pod state>/<class>"`, e.g. `"terminating/refused"`.
pub fn failure_key_str(state: PodState, class: FailureClass) -> &'static str {
    let row = match state {
        PodState::Terminating => 0,
        PodState::NotReady => 1,
        PodState::Ready => 2,
        PodState::Unknown => 3,
    };
    let column = FailureClass::ALL
        .iter()
        .position(|c| *c == class)
        .unwrap_or(FailureClass::ALL.len() - 1);
    FAILURE_KEYS[row][column]
}
