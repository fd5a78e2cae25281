//! The cluster-wide view as data (`observer cluster`): one row per
//! termination, merged from every agent that saw part of it (pure).
//!
//! The merge is the TUI's ([`super::merge`]); this module writes each row
//! as a record that says where each figure came from. Every figure is an
//! offset from the reporting agent's own `deletion_seen`, on its own
//! node's CLOCK_MONOTONIC: a gap is never computed across two nodes'
//! clocks. The one figure that joins two nodes, how far an ingress node's
//! last send lies from the pod's node's last arrival, is a difference of
//! differences: each side is measured from the EndpointSlice change that
//! both nodes saw (`endpoint_removed`), so the nodes' clocks cancel. What
//! is left is the difference of the two nodes' watch latencies for that
//! change. `anchor_disagreement_ms` shows it where it shows: how much the
//! two nodes disagree on the time from the deletion to the EndpointSlice
//! change (both are watch events; equal latencies give 0).

use std::collections::BTreeMap;

use serde::Serialize;

use super::merge::{SourceState, merge};
use super::view::{FailureTally, TerminationView};
use crate::probe::FailureClass;

/// Where every figure of a row comes from.
pub const CLOCK_NOTE: &str = "offsets in ms from each reporting agent's own deletion_seen, \
                              on its own node's monotonic clock";

/// One termination, every agent's part of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterRow {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    /// The node the pod ran on.
    pub node: Option<String>,
    pub workload: Option<String>,
    /// Every agent that reported it.
    pub agents: Vec<String>,
    pub open: bool,
    /// The largest ingress node's gap: what a preStop must cover.
    pub propagation_gap_ms: Option<i64>,
    pub clock: &'static str,
    /// The pod's own node: what landed on the pod.
    pub pod_node: Option<PodNodeView>,
    /// Each ingress node: its own sender side, the largest gap first.
    pub ingress_nodes: Vec<IngressNodeView>,
}

/// The pod's node's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodNodeView {
    pub agent: String,
    pub arrival_gap_ms: Option<i64>,
    pub last_arrival_ms: Option<i64>,
    pub refused: u64,
    pub dropped: u64,
    pub served_after_deletion: u64,
    /// The EndpointSlice change (the address removed) as this agent saw it.
    pub endpoint_removed_ms: Option<i64>,
}

/// One ingress node's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IngressNodeView {
    pub agent: String,
    pub propagation_gap_ms: i64,
    pub last_send_ms: Option<i64>,
    pub connects_after_deletion: u64,
    pub failures: BTreeMap<&'static str, u64>,
    pub endpoint_removed_ms: Option<i64>,
    /// The last send against the pod's node's last arrival, joined through
    /// the EndpointSlice change both nodes saw (positive: the send came
    /// later, as it must where the send reached the pod late).
    pub send_after_arrival_ms: Option<i64>,
    /// How much this node and the pod's node disagree on the time from the
    /// deletion to the EndpointSlice change: the part of the two watch
    /// latencies that differs, as far as both watch events show it.
    pub anchor_disagreement_ms: Option<i64>,
}

fn failures(tally: &FailureTally) -> BTreeMap<&'static str, u64> {
    FailureClass::ALL
        .iter()
        .zip(tally.0)
        .filter(|(_, n)| *n > 0)
        .map(|(class, n)| (class.as_str(), n))
        .collect()
}

/// Each agent's own record of the pod `uid`.
fn own_record<'a>(
    sources: &'a BTreeMap<String, SourceState>,
    agent: &str,
    uid: &str,
) -> Option<&'a TerminationView> {
    sources
        .get(agent)?
        .data
        .as_ref()?
        .terminations
        .iter()
        .find(|t| t.uid == uid && !uid.is_empty())
}

/// Every termination any agent reports, one row each.
pub fn cluster_rows(sources: &BTreeMap<String, SourceState>) -> Vec<ClusterRow> {
    merge(sources)
        .terminations
        .into_iter()
        .map(|row| {
            let anchor = |agent: &str| {
                own_record(sources, agent, &row.uid).and_then(|t| t.endpoint_removed_ms)
            };
            let pod_node = row.destination.as_ref().map(|d| PodNodeView {
                agent: d.source.clone(),
                arrival_gap_ms: d.arrival_gap_ms,
                last_arrival_ms: d.last_arrival_ms,
                refused: d.refused,
                dropped: d.dropped,
                served_after_deletion: d.served_after_deletion,
                endpoint_removed_ms: anchor(&d.source),
            });
            let ingress_nodes = row
                .ingress
                .iter()
                .map(|side| {
                    let removed = anchor(&side.source);
                    let pod_side = pod_node
                        .as_ref()
                        .and_then(|p| Some((p.last_arrival_ms?, p.endpoint_removed_ms?, &p.agent)));
                    let joined = match (side.last_send_ms, removed, pod_side) {
                        (Some(send), Some(removed), Some((arrival, pod_removed, agent)))
                            if *agent != side.source =>
                        {
                            Some(((send - removed) - (arrival - pod_removed), {
                                (removed - pod_removed).abs()
                            }))
                        }
                        // One node saw both: one clock, no join needed.
                        (Some(send), _, Some((arrival, _, agent))) if *agent == side.source => {
                            Some((send - arrival, 0))
                        }
                        _ => None,
                    };
                    IngressNodeView {
                        agent: side.source.clone(),
                        propagation_gap_ms: side.gap_ms,
                        last_send_ms: side.last_send_ms,
                        connects_after_deletion: side.connects_after_deletion,
                        failures: failures(&side.failures),
                        endpoint_removed_ms: removed,
                        send_after_arrival_ms: joined.map(|(apart, _)| apart),
                        anchor_disagreement_ms: joined.map(|(_, spread)| spread),
                    }
                })
                .collect();
            ClusterRow {
                open: row.is_open(),
                propagation_gap_ms: row.ingress.first().map(|s| s.gap_ms),
                namespace: row.namespace,
                pod: row.pod,
                uid: row.uid,
                node: row.node,
                workload: row.workload,
                agents: row.sources,
                clock: CLOCK_NOTE,
                pod_node,
                ingress_nodes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::merge::SourceStatus;
    use crate::tui::view::{ArrivalsView, SourceData};

    fn agent(terminations: Vec<TerminationView>) -> SourceState {
        SourceState {
            status: SourceStatus::Up,
            data: Some(SourceData {
                terminations,
                ..SourceData::default()
            }),
            received_at_ms: 0,
        }
    }

    fn record(uid: &str) -> TerminationView {
        TerminationView {
            namespace: "shop".into(),
            pod: format!("cart-{uid}"),
            uid: uid.into(),
            node: Some("node-b".into()),
            closed: Some("quiet".into()),
            ..TerminationView::default()
        }
    }

    /// The ingress node's record: its gap, its last send, and when it saw
    /// the EndpointSlice change, all from its own deletion_seen.
    fn sent(uid: &str, gap: i64, last_send: i64, removed: i64) -> TerminationView {
        let mut t = record(uid);
        t.ingress_found = true;
        t.gap_ms = Some(gap);
        t.last_send_ms = Some(last_send);
        t.endpoint_removed_ms = Some(removed);
        t.failures.add(FailureClass::Refused, 4);
        t
    }

    /// The pod's node's record: what arrived, from its own deletion_seen.
    fn arrived(uid: &str, last_arrival: i64, removed: i64) -> TerminationView {
        let mut t = record(uid);
        t.endpoint_removed_ms = Some(removed);
        t.destination = Some(ArrivalsView {
            last_arrival_ms: Some(last_arrival),
            arrival_gap_ms: Some(last_arrival),
            refused: 4,
            served_after_deletion: 20,
            ..ArrivalsView::default()
        });
        t
    }

    #[test]
    fn each_termination_is_one_row_with_both_views_and_a_join_through_the_slice_change() {
        let sources = BTreeMap::from([
            (
                "node-a".to_string(),
                agent(vec![
                    sent("u1", 1_200, 1_300, 1_000),
                    sent("u2", 800, 850, 600),
                ]),
            ),
            (
                "node-b".to_string(),
                agent(vec![arrived("u1", 1_290, 1_004)]),
            ),
        ]);
        let rows = cluster_rows(&sources);
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let u1 = rows.iter().find(|r| r.uid == "u1").expect("u1");
        assert_eq!(u1.agents, ["node-a", "node-b"]);
        assert_eq!(u1.propagation_gap_ms, Some(1_200));
        let pod_node = u1.pod_node.as_ref().expect("the pod's node");
        assert_eq!((pod_node.agent.as_str(), pod_node.refused), ("node-b", 4));
        let [ingress] = u1.ingress_nodes.as_slice() else {
            panic!("{u1:#?}");
        };
        assert_eq!(ingress.agent, "node-a");
        assert_eq!(ingress.failures[&"refused"], 4);
        // (1300 − 1000) − (1290 − 1004): 14 ms, off by at most what the
        // two nodes' watch latencies differ, which shows as 4 ms here.
        assert_eq!(ingress.send_after_arrival_ms, Some(14));
        assert_eq!(ingress.anchor_disagreement_ms, Some(4));
        // Seen by the ingress node only: no destination, nothing joined.
        let u2 = rows.iter().find(|r| r.uid == "u2").expect("u2");
        assert_eq!(u2.agents, ["node-a"]);
        assert!(u2.pod_node.is_none());
        assert_eq!(u2.ingress_nodes[0].send_after_arrival_ms, None);
        let json = serde_json::to_value(u1).expect("json");
        assert_eq!(json["clock"], CLOCK_NOTE);
    }

    #[test]
    fn a_node_that_ran_both_sides_needs_no_join() {
        let mut both = sent("u1", 1_200, 1_300, 1_000);
        both.destination = arrived("u1", 1_299, 1_000).destination;
        let rows = cluster_rows(&BTreeMap::from([("node-a".to_string(), agent(vec![both]))]));
        let ingress = &rows[0].ingress_nodes[0];
        assert_eq!(ingress.send_after_arrival_ms, Some(1));
        assert_eq!(ingress.anchor_disagreement_ms, Some(0));
    }
}
