//! The engine's output -> the TUI's view model.
//!
//! Monotonic times become offsets here, on the side of the clock that
//! produced them: an agent's `MonoTime`s are only comparable with each
//! other, so the view carries ms after `deletion_seen` and wall times.

use super::app::{DataUpdate, SourceEvent};
use super::view::{
    ArrivalsView, ConnectorView, FailureRow, FailureTally, SenderView, ServiceRow, SourceData,
    TerminationView,
};
use crate::clock::{MonoTime, WallClock};
use crate::engine::arrivals::DestinationView;
use crate::engine::{
    CloseReason, FailureCounts, Finding, PodTermination, Recommendation, Snapshot,
};
use crate::probe::{FailureClass, Outcome};

fn tally(counts: &FailureCounts) -> FailureTally {
    let mut out = FailureTally::default();
    for class in FailureClass::ALL {
        out.add(class, counts.get(class));
    }
    out
}

fn ns_to_ms(ns: i64) -> i64 {
    ns / 1_000_000
}

pub fn close_reason(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::Quiet => "quiet",
        CloseReason::IpReused => "IP reused",
        CloseReason::RemovedWhileUnwatched => "removed while unwatched",
        CloseReason::Shutdown => "shutdown",
    }
}

/// The destination view, with its times as offsets from `t0`
/// (deletion_seen), on the agent's side of the wire like every other.
pub fn arrivals_view(d: &DestinationView, t0: MonoTime) -> ArrivalsView {
    ArrivalsView {
        source: String::new(),
        last_arrival_ms: d.last_arrival.map(|at| ns_to_ms(at.signed_since(t0))),
        arrival_gap_ms: d.arrival_gap_ns.map(ns_to_ms),
        refused: d.refused,
        dropped: d.dropped,
        served_after_deletion: d.served_after_deletion,
        senders: d
            .senders
            .iter()
            .map(|s| SenderView {
                name: s.name.clone(),
                kind: s.kind.as_str().to_owned(),
                arrival_gap_ms: s.arrival_gap_ns.map(ns_to_ms),
                arrivals: s.arrivals,
                refused: s.refused,
                dropped: s.dropped,
            })
            .collect(),
        views_apart_ms: d.views_apart_ns.map(|ns| ns as f64 / 1e6),
    }
}

pub fn termination_view(t: &PodTermination, now: MonoTime) -> TerminationView {
    let since = |at: Option<MonoTime>| at.map(|at| ns_to_ms(at.signed_since(t.deletion_seen)));
    TerminationView {
        source: String::new(),
        sources: Vec::new(),
        namespace: t.namespace.clone(),
        pod: t.pod.clone(),
        uid: t.uid.clone(),
        ips: t.ips.clone(),
        node: t.node.clone(),
        workload: t.workload.clone(),
        services: t.services.clone(),
        configured_prestop_ms: t.configured_prestop_ms,
        grace_s: t.termination_grace_period_seconds,
        age_ms: now.saturating_since(t.deletion_seen).as_millis() as u64,
        received_at_ms: 0,
        deletion_observed_late: t.deletion_observed_late,
        endpoint_not_ready_ms: since(t.endpoint_not_ready),
        endpoint_removed_ms: since(t.endpoint_removed),
        last_connect_ms: since(t.last_connect),
        first_failure_ms: since(t.first_failure),
        last_failure_ms: since(t.last_failure),
        connects_after_deletion: t.connects_after_deletion,
        failures: tally(&t.failures),
        failure_marks: t
            .failure_times
            .iter()
            .map(|(at, class)| (ns_to_ms(at.signed_since(t.deletion_seen)), *class))
            .collect(),
        gap_ms: t.propagation_gap_ns.map(ns_to_ms),
        control_plane_lag_ms: t.control_plane_lag_ns.map(ns_to_ms),
        dataplane_lag_ms: t.dataplane_lag_ns.map(ns_to_ms),
        last_choice_ms: since(t.last_choice),
        retry_tail_ms: t.retry_tail_ns.map(ns_to_ms),
        last_send_ms: since(t.last_send),
        ingress_found: t.ingress_found,
        ingress: Vec::new(),
        retries_after_deletion: t.retries_after_deletion,
        failures_retried: t.failures_retried,
        failures_not_retried: t.failures_not_retried,
        connectors: t
            .connectors
            .iter()
            .map(|c| ConnectorView {
                name: c.name.clone(),
                role: c.role.as_str().to_owned(),
                connects: c.connects,
                failures: c.failures,
                until_ms: c.until_ns.map(ns_to_ms),
            })
            .collect(),
        destination: t
            .destination
            .as_ref()
            .map(|d| arrivals_view(d, t.deletion_seen)),
        closed: t.closed.map(|r| close_reason(r).to_string()),
    }
}

pub fn service_row(r: &Recommendation) -> ServiceRow {
    ServiceRow {
        namespace: r.namespace.clone(),
        name: r
            .service
            .clone()
            .or_else(|| r.workload.clone())
            .unwrap_or_else(|| "-".to_string()),
        workload: r.workload.clone(),
        samples: r.samples as u64,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
        max_ms: r.max_ms,
        failures: tally(&r.failed_connects),
        configured_prestop_s: r.configured_prestop_seconds,
        recommended_prestop_s: r.recommended_prestop_seconds,
        configured_grace_s: r.configured_termination_grace_period_seconds,
        recommended_grace_s: r.recommended_termination_grace_period_seconds,
        verdict: r.verdict.clone(),
        yaml: r.yaml.clone(),
        sources: Vec::new(),
        gap_view: r.gap_view,
    }
}

pub fn source_data(snapshot: &Snapshot) -> SourceData {
    SourceData {
        services: snapshot.recommendations.iter().map(service_row).collect(),
        terminations: snapshot
            .open
            .iter()
            .chain(snapshot.recent.iter())
            .map(|t| {
                let mut view = termination_view(t, snapshot.now);
                // The engine settles `ingress_found` when a window closes;
                // while one is open, whether the agent knows an ingress on
                // its node now is what says its gap is the ingress's (the
                // merge takes sender-side figures only from such agents).
                if t.closed.is_none() {
                    view.ingress_found = snapshot.ingress.found();
                }
                view
            })
            .collect(),
        connects_total: snapshot.counters.connects_seen,
        failures_total: snapshot.counters.failures_by_state.values().sum(),
    }
}

/// A failed connect for the log; `None` for findings that are not
/// failures (the log lists failures only).
pub fn failure_row(f: &Finding, clock: &WallClock) -> Option<FailureRow> {
    let Outcome::Failed {
        class, waited_ns, ..
    } = f.record.outcome
    else {
        return None;
    };
    let kind = serde_json::to_value(f.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Some(FailureRow {
        source: String::new(),
        at_unix_ms: clock.unix_ms_of(f.at),
        pid: f.record.pid,
        comm: f.record.comm.clone(),
        src: f.record.src,
        dst: f.record.dst,
        namespace: f.namespace.clone(),
        pod: f.pod.clone(),
        service: f.service.clone(),
        class,
        waited_ms: waited_ns as f64 / 1e6,
        pod_state: f.pod_state.as_str().to_string(),
        kind,
    })
}

pub fn snapshot_update(source: &str, snapshot: &Snapshot) -> DataUpdate {
    DataUpdate {
        source: source.to_string(),
        event: SourceEvent::Snapshot(source_data(snapshot)),
    }
}

/// The failures among `findings`, or `None` when there are none.
pub fn findings_update(
    source: &str,
    findings: &[Finding],
    clock: &WallClock,
) -> Option<DataUpdate> {
    let rows: Vec<FailureRow> = findings
        .iter()
        .filter_map(|f| failure_row(f, clock))
        .map(|mut row| {
            row.source = source.to_string();
            row
        })
        .collect();
    (!rows.is_empty()).then(|| DataUpdate {
        source: source.to_string(),
        event: SourceEvent::Failures(rows),
    })
}
