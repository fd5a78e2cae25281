//! Combining what several agents report into one picture (pure).
//!
//! Every node runs an agent, so one termination (one pod uid) arrives from
//! several: each ingress node's agent measures the sender side (its own
//! ingress's propagation gap, sends and failures), and the agent on the
//! pod's own node measures the destination side (what arrived at the pod).
//! They merge into one row:
//!
//! - the sender side comes from the agents whose ingress measured a gap:
//!   the row's gap is the largest (the preStop must cover the slowest
//!   ingress node), with that agent's timeline; every ingress node's own
//!   gap, last send and failures stay listed for the Detail screen;
//!   connects and failures are summed (each node's connects are its own);
//! - the destination view comes from the agent that has one (the pod's
//!   node; of several, the one that saw the most arrive);
//! - the window is open while any agent's is.
//!
//! No monotonic time crosses between agents: each agent's times are on its
//! own node's CLOCK_MONOTONIC, so the view carries offsets from each
//! agent's own deletion_seen (durations, which are comparable) and never a
//! difference of two nodes' times. The nodes saw the deletion within a
//! watch's latency of each other, so their offsets share one timeline;
//! the live age and its receive time always come from one agent.
//!
//! Services are merged too, and conservatively: the preStop must cover the
//! slowest node, so p99, max and the recommendation are the maximum over
//! agents; p50 is the sample-weighted mean of the agents' p50s (an
//! estimate, not a quantile of the union, which would need the raw
//! samples). The view behind the gaps is the agents' where they agree,
//! `both` where they differ.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::view::{FailureTally, IngressSide, ServiceRow, SourceData, TerminationView};
use crate::engine::connector::ConnectorRole;
use crate::engine::recommend::GapView;

/// Whether an agent is currently reachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// Not heard from yet.
    Connecting,
    Up,
    /// The connection failed or ended; its last data is still shown.
    Lost {
        reason: String,
    },
}

/// One agent as the TUI knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceState {
    pub status: SourceStatus,
    /// Its last snapshot, kept while it is lost (marked stale in the
    /// status line rather than vanishing from the screens).
    pub data: Option<SourceData>,
    /// TUI clock (ms) when `data` arrived.
    pub received_at_ms: u64,
}

impl Default for SourceState {
    fn default() -> Self {
        SourceState {
            status: SourceStatus::Connecting,
            data: None,
            received_at_ms: 0,
        }
    }
}

/// The combined view of every agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merged {
    pub services: Vec<ServiceRow>,
    pub terminations: Vec<TerminationView>,
}

/// Merges every source's last data.
pub fn merge(sources: &BTreeMap<String, SourceState>) -> Merged {
    let mut services: BTreeMap<(String, String), ServiceRow> = BTreeMap::new();
    // Each pod's records from every agent, in the order first seen.
    let mut pods: Vec<Vec<TerminationView>> = Vec::new();
    let mut by_uid: BTreeMap<String, usize> = BTreeMap::new();
    for (name, state) in sources {
        let Some(data) = &state.data else { continue };
        for row in &data.services {
            let key = (row.namespace.clone(), row.name.clone());
            match services.get_mut(&key) {
                Some(merged) => merge_service(merged, row, name),
                None => {
                    let mut first = row.clone();
                    first.sources = vec![name.clone()];
                    services.insert(key, first);
                }
            }
        }
        for t in &data.terminations {
            let mut t = t.clone();
            t.source = name.clone();
            t.sources = vec![name.clone()];
            t.received_at_ms = state.received_at_ms;
            if let Some(d) = &mut t.destination {
                d.source = name.clone();
            }
            // Without a uid a record cannot be told from another pod's of
            // the same name: it stays its agent's own row.
            let known = by_uid.get(&t.uid).copied().filter(|_| !t.uid.is_empty());
            match known.and_then(|i| pods.get_mut(i)) {
                Some(records) => records.push(t),
                None => {
                    by_uid.insert(t.uid.clone(), pods.len());
                    pods.push(vec![t]);
                }
            }
        }
    }
    Merged {
        services: services.into_values().collect(),
        terminations: pods.into_iter().filter_map(merge_termination).collect(),
    }
}

/// The sender side of one agent's record, where its node's ingress
/// measured the gap (elsewhere the gap is unknown, or only the connects
/// of bystanders).
fn ingress_side(t: &TerminationView) -> Option<IngressSide> {
    let gap_ms = t.gap_ms.filter(|_| t.ingress_found)?;
    Some(IngressSide {
        source: t.source.clone(),
        gap_ms,
        last_send_ms: t.last_send_ms,
        connects_after_deletion: t.connects_after_deletion,
        failures: t.failures,
    })
}

/// One pod's records (one per agent, in agent order) as one row; `None`
/// for no records.
fn merge_termination(records: Vec<TerminationView>) -> Option<TerminationView> {
    let mut ingress: Vec<IngressSide> = records.iter().filter_map(ingress_side).collect();
    // Stable: of equal gaps, the first agent's comes first.
    ingress.sort_by_key(|side| Reverse(side.gap_ms));
    if let [only] = records.as_slice() {
        // A pod one agent saw is that agent's record.
        let mut row = only.clone();
        row.ingress = ingress;
        return Some(row);
    }
    let senders: Vec<&TerminationView> = records
        .iter()
        .filter(|t| ingress_side(t).is_some())
        .collect();
    // The first of those that saw the most arrive: where the pod ran.
    let destination = records
        .iter()
        .enumerate()
        .filter(|(_, t)| t.destination.is_some())
        .min_by_key(|(_, t)| Reverse(t.destination.as_ref().map(|d| d.weight())))
        .map(|(i, _)| i);
    // The row's timeline is the agent's whose gap it shows; without an
    // ingress anywhere, the pod's node's.
    let primary = match ingress.first() {
        Some(largest) => records.iter().position(|t| t.source == largest.source),
        None => destination,
    }
    .unwrap_or(0);
    let mut row = records.get(primary)?.clone();
    row.sources = records.iter().map(|t| t.source.clone()).collect();
    row.sources.dedup();
    row.source = source_label(&row.sources);
    row.ingress_found = !senders.is_empty();
    row.ingress = ingress;
    row.destination = destination
        .and_then(|i| records.get(i))
        .and_then(|t| t.destination.clone());
    if row.node.is_none() {
        row.node = records.iter().find_map(|t| t.node.clone());
    }
    if !senders.is_empty() {
        // Each ingress node's connects are its own: they add up. Their
        // offsets are each from its own deletion_seen (see the module doc).
        row.connects_after_deletion = senders.iter().map(|t| t.connects_after_deletion).sum();
        row.retries_after_deletion = senders.iter().map(|t| t.retries_after_deletion).sum();
        row.failures_retried = senders.iter().map(|t| t.failures_retried).sum();
        row.failures_not_retried = senders.iter().map(|t| t.failures_not_retried).sum();
        row.failures = FailureTally::default();
        for t in &senders {
            row.failures.merge(&t.failures);
        }
        row.first_failure_ms = senders.iter().filter_map(|t| t.first_failure_ms).min();
        row.last_failure_ms = senders.iter().filter_map(|t| t.last_failure_ms).max();
        row.failure_marks = senders
            .iter()
            .flat_map(|t| t.failure_marks.iter().copied())
            .collect();
        row.failure_marks.sort_by_key(|(at, _)| *at);
    }
    // Who connected, as each node saw it: the row's own agent's first,
    // then the ingresses of every node before the others.
    row.connectors = records
        .get(primary)
        .into_iter()
        .chain(
            records
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != primary)
                .map(|(_, t)| t),
        )
        .flat_map(|t| t.connectors.iter().cloned())
        .collect();
    row.connectors
        .sort_by_key(|c| c.role != ConnectorRole::Ingress.as_str());
    // Open while any agent still measures. The live age grows from the
    // receive time of the snapshot it came with, so both come from one
    // agent: the one whose window has been open longest by the TUI's clock.
    let open = records
        .iter()
        .filter(|t| t.is_open())
        .min_by_key(|t| Reverse(i128::from(t.age_ms) - i128::from(t.received_at_ms)));
    if let Some(open) = open {
        row.closed = None;
        row.age_ms = open.age_ms;
        row.received_at_ms = open.received_at_ms;
    }
    Some(row)
}

/// The agents behind a row as the screens show them: both while there
/// are two (`node-a+node-b`), else the first and how many more.
fn source_label(sources: &[String]) -> String {
    match sources {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a}+{b}"),
        [first, rest @ ..] => format!("{first}+{} more", rest.len()),
    }
}

fn merge_service(into: &mut ServiceRow, row: &ServiceRow, source: &str) {
    let total = into.samples + row.samples;
    if total > 0 {
        into.p50_ms =
            (into.p50_ms * into.samples as f64 + row.p50_ms * row.samples as f64) / total as f64;
    }
    into.samples = total;
    into.p99_ms = into.p99_ms.max(row.p99_ms);
    into.max_ms = into.max_ms.max(row.max_ms);
    into.failures.merge(&row.failures);
    into.configured_prestop_s = into.configured_prestop_s.or(row.configured_prestop_s);
    into.configured_grace_s = into.configured_grace_s.or(row.configured_grace_s);
    // The slowest node decides; its YAML carries its numbers.
    if row.recommended_prestop_s > into.recommended_prestop_s {
        into.recommended_prestop_s = row.recommended_prestop_s;
        into.recommended_grace_s = row.recommended_grace_s.max(into.recommended_grace_s);
        into.yaml = row.yaml.clone();
    } else {
        into.recommended_grace_s = into.recommended_grace_s.max(row.recommended_grace_s);
    }
    for line in &row.verdict {
        if !into.verdict.contains(line) {
            into.verdict.push(line.clone());
        }
    }
    into.gap_view = combine_views(into.gap_view, row.gap_view);
    into.sources.push(source.to_string());
}

/// The view behind merged gaps: one view where every agent used it,
/// `both` where they differ.
fn combine_views(a: GapView, b: GapView) -> GapView {
    if a == b { a } else { GapView::Both }
}

/// Counts for the status line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSummary {
    pub up: usize,
    pub connecting: usize,
    /// Lost agents with the reason, by name.
    pub lost: Vec<(String, String)>,
}

pub fn summarize(sources: &BTreeMap<String, SourceState>) -> SourceSummary {
    let mut summary = SourceSummary::default();
    for (name, state) in sources {
        match &state.status {
            SourceStatus::Up => summary.up += 1,
            SourceStatus::Connecting => summary.connecting += 1,
            SourceStatus::Lost { reason } => summary.lost.push((name.clone(), reason.clone())),
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::FailureClass;
    use crate::tui::view::{ArrivalsView, ConnectorView, SenderView};

    fn row(p50: f64, p99: f64, samples: u64, rec: u64) -> ServiceRow {
        let mut failures = FailureTally::default();
        failures.add(FailureClass::Refused, 2);
        ServiceRow {
            namespace: "shop".into(),
            name: "cart".into(),
            samples,
            p50_ms: p50,
            p99_ms: p99,
            max_ms: p99,
            failures,
            configured_prestop_s: Some(5.0),
            recommended_prestop_s: rec,
            recommended_grace_s: rec + 30,
            verdict: vec![format!("needs {rec}s")],
            yaml: format!("sleep {rec}"),
            ..ServiceRow::default()
        }
    }

    fn pod(name: &str) -> TerminationView {
        TerminationView {
            namespace: "shop".into(),
            pod: name.to_string(),
            uid: format!("uid-{name}"),
            ..TerminationView::default()
        }
    }

    fn with(services: Vec<ServiceRow>, terminations: Vec<TerminationView>) -> SourceState {
        SourceState {
            status: SourceStatus::Up,
            data: Some(SourceData {
                services,
                terminations,
                ..SourceData::default()
            }),
            received_at_ms: 7,
        }
    }

    fn source(rows: Vec<ServiceRow>, pods: &[&str]) -> SourceState {
        with(rows, pods.iter().map(|p| pod(p)).collect())
    }

    fn agents(records: Vec<(&str, TerminationView)>) -> BTreeMap<String, SourceState> {
        records
            .into_iter()
            .map(|(name, t)| (name.to_string(), with(Vec::new(), vec![t])))
            .collect()
    }

    fn connector(name: &str, role: &str) -> ConnectorView {
        ConnectorView {
            name: name.into(),
            role: role.into(),
            connects: 1,
            failures: 0,
            until_ms: Some(100),
        }
    }

    /// An ingress node's record of `cart-1`: its own gap and failures (at
    /// `failures` ms), closed.
    fn sent(gap_ms: i64, connects: u64, failures: &[i64]) -> TerminationView {
        let mut t = pod("cart-1");
        t.ingress_found = true;
        t.gap_ms = Some(gap_ms);
        t.last_connect_ms = Some(gap_ms);
        t.last_choice_ms = Some(gap_ms);
        t.last_send_ms = Some(gap_ms + 200);
        t.endpoint_not_ready_ms = Some(gap_ms / 10);
        t.connects_after_deletion = connects;
        t.failures.add(FailureClass::Refused, failures.len() as u64);
        t.failures_retried = failures.len() as u64;
        t.failure_marks = failures
            .iter()
            .map(|at| (*at, FailureClass::Refused))
            .collect();
        t.first_failure_ms = failures.first().copied();
        t.last_failure_ms = failures.last().copied();
        t.connectors = vec![connector("ingress-nginx/controller", "ingress")];
        t.age_ms = 40_000;
        t.closed = Some("quiet".into());
        t
    }

    /// The pod's node's record of `cart-1`: no ingress there, so no gap
    /// (a window still open carries the engine's running 0), only what
    /// arrived; `served` arrivals from the ingress.
    fn arrived(served: u64) -> TerminationView {
        let mut t = pod("cart-1");
        t.gap_ms = Some(0);
        t.node = Some("node-b".into());
        t.connectors = vec![connector("kubelet", "kubelet")];
        t.destination = Some(ArrivalsView {
            last_arrival_ms: Some(3_302),
            arrival_gap_ms: Some(3_302),
            served_after_deletion: served,
            refused: 3,
            senders: vec![SenderView {
                name: "ingress-nginx/controller".into(),
                kind: "ingress".into(),
                arrival_gap_ms: Some(3_302),
                arrivals: served,
                refused: 3,
                dropped: 0,
            }],
            ..ArrivalsView::default()
        });
        t.age_ms = 5_000;
        t
    }

    #[test]
    fn services_merge_conservatively() {
        let mut sources = BTreeMap::new();
        sources.insert(
            "a".to_string(),
            source(vec![row(1000.0, 3000.0, 3, 5)], &["cart-1"]),
        );
        sources.insert(
            "b".to_string(),
            source(vec![row(2000.0, 4000.0, 1, 7)], &["cart-1"]),
        );
        let merged = merge(&sources);
        assert_eq!(merged.services.len(), 1);
        let s = &merged.services[0];
        assert_eq!(s.samples, 4);
        assert_eq!(s.p50_ms, 1250.0);
        assert_eq!(s.p99_ms, 4000.0);
        assert_eq!(s.recommended_prestop_s, 7);
        assert_eq!(s.yaml, "sleep 7");
        assert_eq!(s.failures.get(FailureClass::Refused), 4);
        assert_eq!(s.verdict, vec!["needs 5s", "needs 7s"]);
        assert_eq!(s.sources, vec!["a", "b"]);
        // One pod, one row, whoever reported it.
        assert_eq!(merged.terminations.len(), 1);
        assert_eq!(merged.terminations[0].source, "a+b");
        assert_eq!(merged.terminations[0].received_at_ms, 7);
    }

    #[test]
    fn a_single_agent_is_its_own_record() {
        let mut t = sent(3_100, 42, &[2_900, 3_000]);
        t.destination = arrived(39).destination;
        let merged = merge(&agents(vec![("node-a", t.clone())]));
        let mut expected = t.clone();
        expected.source = "node-a".into();
        expected.sources = vec!["node-a".into()];
        expected.received_at_ms = 7;
        expected.ingress = vec![IngressSide {
            source: "node-a".into(),
            gap_ms: 3_100,
            last_send_ms: Some(3_300),
            connects_after_deletion: 42,
            failures: t.failures,
        }];
        if let Some(d) = &mut expected.destination {
            d.source = "node-a".into();
        }
        assert_eq!(merged.terminations, vec![expected]);
    }

    #[test]
    fn an_ingress_node_and_the_pods_node_make_one_row_with_both_sides() {
        let mut ingress = sent(3_100, 42, &[2_900, 3_000, 3_050]);
        // The pod's network is bridged through the ingress's node, which
        // saw one frame for it: the pod's node saw more.
        ingress.destination = Some(ArrivalsView {
            dropped: 1,
            ..ArrivalsView::default()
        });
        let pods_node = arrived(39);
        let merged = merge(&agents(vec![
            ("node-a", ingress.clone()),
            ("node-b", pods_node.clone()),
        ]));
        assert_eq!(merged.terminations.len(), 1, "{merged:#?}");
        let t = &merged.terminations[0];
        assert_eq!(t.source, "node-a+node-b");
        assert_eq!(t.sources, ["node-a", "node-b"]);
        // The sender side is the ingress node's, and only its: the pod's
        // node's running 0 is no ingress's gap.
        assert!(t.ingress_found);
        assert_eq!(t.gap_ms, Some(3_100));
        assert_eq!(t.endpoint_not_ready_ms, Some(310));
        assert_eq!(
            t.ingress
                .iter()
                .map(|s| (&*s.source, s.gap_ms))
                .collect::<Vec<_>>(),
            [("node-a", 3_100)]
        );
        assert_eq!(t.failures.get(FailureClass::Refused), 3);
        assert_eq!(t.failure_marks.len(), 3);
        assert_eq!(t.connects_after_deletion, 42);
        // The destination side is the pod's node's.
        let d = t.destination.as_ref().expect("a destination view");
        assert_eq!(d.source, "node-b");
        assert_eq!(d.served_after_deletion, 39);
        assert_eq!(t.node.as_deref(), Some("node-b"));
        let connectors: Vec<_> = t.connectors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(connectors, ["ingress-nginx/controller", "kubelet"]);
        // Still open where the pod's node measures, growing from that
        // agent's own age and receive time.
        assert!(t.is_open());
        assert_eq!((t.age_ms, t.received_at_ms), (5_000, 7));
    }

    #[test]
    fn of_two_ingress_nodes_the_larger_gap_wins_and_both_are_listed() {
        let mut slow = sent(3_100, 42, &[2_900, 3_000, 3_050]);
        slow.connectors = vec![connector("ingress-nginx/controller-c", "ingress")];
        let fast = sent(1_200, 10, &[1_100, 1_150]);
        let merged = merge(&agents(vec![
            ("node-a", fast.clone()),
            ("node-b", arrived(52)),
            ("node-c", slow.clone()),
        ]));
        assert_eq!(merged.terminations.len(), 1, "{merged:#?}");
        let t = &merged.terminations[0];
        assert_eq!(t.source, "node-a+2 more");
        assert_eq!(t.sources, ["node-a", "node-b", "node-c"]);
        // The slowest ingress node decides, with its own timeline.
        assert_eq!(t.gap_ms, Some(3_100));
        assert_eq!(t.endpoint_not_ready_ms, slow.endpoint_not_ready_ms);
        assert_eq!(t.last_send_ms, Some(3_300));
        assert_eq!(
            t.ingress,
            [
                IngressSide {
                    source: "node-c".into(),
                    gap_ms: 3_100,
                    last_send_ms: Some(3_300),
                    connects_after_deletion: 42,
                    failures: slow.failures,
                },
                IngressSide {
                    source: "node-a".into(),
                    gap_ms: 1_200,
                    last_send_ms: Some(1_400),
                    connects_after_deletion: 10,
                    failures: fast.failures,
                },
            ]
        );
        // Each node's connects are its own: they add up.
        assert_eq!(t.connects_after_deletion, 52);
        assert_eq!(t.failures.get(FailureClass::Refused), 5);
        assert_eq!(t.failures_retried, 5);
        assert_eq!(
            (t.first_failure_ms, t.last_failure_ms),
            (Some(1_100), Some(3_050))
        );
        let marks: Vec<i64> = t.failure_marks.iter().map(|(at, _)| *at).collect();
        assert_eq!(marks, [1_100, 1_150, 2_900, 3_000, 3_050]);
        let connectors: Vec<_> = t.connectors.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            connectors,
            [
                "ingress-nginx/controller-c",
                "ingress-nginx/controller",
                "kubelet"
            ]
        );
        assert_eq!(
            t.destination.as_ref().map(|d| d.source.as_str()),
            Some("node-b")
        );
        // Every agent's window closed but the pod's node's.
        assert!(t.is_open());
    }

    #[test]
    fn records_without_a_uid_stay_apart() {
        let unnamed = || TerminationView {
            uid: String::new(),
            ..pod("cart-1")
        };
        let merged = merge(&agents(vec![("a", unnamed()), ("b", unnamed())]));
        let labels: Vec<_> = merged.terminations.iter().map(|t| &*t.source).collect();
        assert_eq!(labels, ["a", "b"]);
    }

    #[test]
    fn a_lost_agent_keeps_its_data_and_is_counted_lost() {
        let mut sources = BTreeMap::new();
        sources.insert(
            "a".to_string(),
            source(vec![row(1000.0, 3000.0, 3, 5)], &["x"]),
        );
        let mut lost = source(vec![row(2000.0, 4000.0, 1, 7)], &["y"]);
        lost.status = SourceStatus::Lost {
            reason: "connection refused".into(),
        };
        sources.insert("b".to_string(), lost);
        sources.insert("c".to_string(), SourceState::default());
        let summary = summarize(&sources);
        assert_eq!(summary.up, 1);
        assert_eq!(summary.connecting, 1);
        assert_eq!(
            summary.lost,
            vec![("b".to_string(), "connection refused".to_string())]
        );
        assert_eq!(merge(&sources).terminations.len(), 2);
    }

    #[test]
    fn gap_views_merge_to_both_where_agents_differ() {
        let with_view = |view| ServiceRow {
            gap_view: view,
            ..row(1000.0, 3000.0, 3, 5)
        };
        let merged = |a, b| {
            let mut sources = BTreeMap::new();
            sources.insert("a".to_string(), source(vec![with_view(a)], &[]));
            sources.insert("b".to_string(), source(vec![with_view(b)], &[]));
            merge(&sources).services[0].gap_view
        };
        assert_eq!(merged(GapView::Sender, GapView::Sender), GapView::Sender);
        assert_eq!(
            merged(GapView::Destination, GapView::Destination),
            GapView::Destination
        );
        assert_eq!(merged(GapView::Sender, GapView::Destination), GapView::Both);
        assert_eq!(merged(GapView::Both, GapView::Sender), GapView::Both);
    }

    #[test]
    fn nothing_merges_to_nothing() {
        assert_eq!(merge(&BTreeMap::new()), Merged::default());
    }
}
