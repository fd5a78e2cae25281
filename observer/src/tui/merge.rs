//! Combining what several agents report into one picture (pure).
//!
//! Each agent watches one ingress node, and each node has its own
//! propagation gap, so terminations are never merged: the same pod seen by
//! two agents is two rows, labelled by agent. Services are merged, and
//! conservatively: the preStop must cover the slowest node, so p99, max and
//! the recommendation are the maximum over agents; p50 is the
//! sample-weighted mean of the agents' p50s (an estimate, not a quantile of
//! the union, which would need the raw samples). The view behind the gaps
//! is the agents' where they agree, `both` where they differ.

use std::collections::BTreeMap;

use super::view::{ServiceRow, SourceData, TerminationView};
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
    let mut terminations = Vec::new();
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
            t.received_at_ms = state.received_at_ms;
            terminations.push(t);
        }
    }
    Merged {
        services: services.into_values().collect(),
        terminations,
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
    use crate::tui::view::FailureTally;

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

    fn source(rows: Vec<ServiceRow>, pods: &[&str]) -> SourceState {
        SourceState {
            status: SourceStatus::Up,
            data: Some(SourceData {
                services: rows,
                terminations: pods
                    .iter()
                    .map(|p| TerminationView {
                        namespace: "shop".into(),
                        pod: p.to_string(),
                        ..TerminationView::default()
                    })
                    .collect(),
                ..SourceData::default()
            }),
            received_at_ms: 7,
        }
    }

    #[test]
    fn services_merge_conservatively_and_terminations_stay_per_agent() {
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
        let labels: Vec<_> = merged
            .terminations
            .iter()
            .map(|t| (&t.source, &t.pod))
            .collect();
        assert_eq!(labels.len(), 2);
        assert_eq!(merged.terminations[0].received_at_ms, 7);
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
