//! The cluster-wide view of the soak: every agent's records merged as
//! `observer cluster` merges them (`tui::cluster_rows`), one row per
//! termination, and what each row holds of the two sides.

use std::collections::BTreeMap;

use observer::clock::MonoTime;
use observer::engine::PodTermination;
use observer::tui::adapt::termination_view;
use observer::tui::cluster_rows::cluster_rows;
use observer::tui::merge::{SourceState, SourceStatus};
use observer::tui::view::SourceData;

use super::churn::{self, TerminationLog};

/// The name the `index`th ingress node's agent has in the merged view.
pub fn ingress_agent_name(index: usize) -> String {
    format!("ingress-{index}")
}

/// Every `termination` record of one agent's NDJSON output.
pub fn terminations(output: &str) -> Vec<PodTermination> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|value| value.get("termination").cloned())
        .filter_map(|t| serde_json::from_value(t).ok())
        .collect()
}

/// What the merged view made of the run.
#[derive(Debug, Default)]
pub struct MergedChecks {
    /// Terminations the simulator made.
    pub made: usize,
    /// Of those, with exactly one row.
    pub one_row: usize,
    /// Terminations of pods on the node agents' nodes.
    pub on_agent_nodes: usize,
    /// Of those, one row holding the pod's node agent's record and every
    /// ingress node's.
    pub every_agent: usize,
    /// Of those, with every ingress node's gap in the row.
    pub with_ingress_gaps: usize,
    /// Rows the simulator did not make.
    pub unexpected: usize,
}

/// Merges each `(name, output)` of the ingress nodes' agents with each
/// `(node, output)` of the node agents.
pub fn check(
    log: &[TerminationLog],
    nodes: usize,
    ingress_outputs: &[(String, &str)],
    node_outputs: &[(String, &str)],
) -> MergedChecks {
    let now = MonoTime::now();
    let source = |output: &str| SourceState {
        status: SourceStatus::Up,
        data: Some(SourceData {
            terminations: terminations(output)
                .iter()
                .map(|t| termination_view(t, now))
                .collect(),
            ..SourceData::default()
        }),
        received_at_ms: 0,
    };
    let mut sources = BTreeMap::new();
    for (name, output) in ingress_outputs.iter().chain(node_outputs) {
        sources.insert(name.clone(), source(output));
    }
    let rows = cluster_rows(&sources);
    let made = churn::names_by_uid(log);
    let mut checks = MergedChecks {
        made: log.len(),
        unexpected: rows
            .iter()
            .filter(|r| !made.contains_key(r.uid.as_str()))
            .count(),
        ..MergedChecks::default()
    };
    for termination in log {
        let mine: Vec<_> = rows.iter().filter(|r| r.uid == termination.uid).collect();
        let [row] = mine.as_slice() else { continue };
        checks.one_row += 1;
        let node = churn::slot_of_name(&termination.name).map(|slot| churn::node_of(slot, nodes));
        let Some(node) = node.filter(|n| sources.contains_key(n)) else {
            continue;
        };
        checks.on_agent_nodes += 1;
        let every_ingress = ingress_outputs
            .iter()
            .all(|(name, _)| row.agents.contains(name));
        if row.agents.contains(&node) && every_ingress {
            checks.every_agent += 1;
            if row.ingress_nodes.len() == ingress_outputs.len() {
                checks.with_ingress_gaps += 1;
            }
        }
    }
    checks
}

impl MergedChecks {
    /// The table's rows, and whether every termination has exactly one row
    /// and every node agent's pod a row with every agent's part.
    pub fn rows(&self) -> (String, bool) {
        let passed = self.one_row == self.made
            && self.unexpected == 0
            && self.every_agent == self.on_agent_nodes;
        let text = format!(
            "| **merged view (`observer cluster`): terminations with exactly one row** | **{} of {}** ({} rows not made by the simulator) |\n\
             | **merged rows of the node agents' pods holding their node's and every ingress node's parts** | **{} of {}** ({} with every ingress node's gap) |\n",
            self.one_row,
            self.made,
            self.unexpected,
            self.every_agent,
            self.on_agent_nodes,
            self.with_ingress_gaps
        );
        (text, passed)
    }
}
