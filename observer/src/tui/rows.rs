//! What each screen lists: the merged data after the filter and the sort,
//! the Detail screen's contents, and the export file. Pure reads of `App`.

use std::cmp::Ordering;

use super::app::{App, DetailTarget, SortKey};
use super::format::ms;
use super::view::{DetailView, FailureRow, ServiceRow, TerminationView};
use crate::engine::recommend::GapView;

fn desc_f64(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

fn compare_services(sort: SortKey, a: &ServiceRow, b: &ServiceRow) -> Ordering {
    let by_name = || (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name));
    let by_failures = || b.failures.total().cmp(&a.failures.total());
    let by_gap = || desc_f64(a.p99_ms, b.p99_ms).then(desc_f64(a.max_ms, b.max_ms));
    match sort {
        SortKey::Worst => desc_f64(a.shortfall_s(), b.shortfall_s())
            .then_with(by_failures)
            .then_with(by_gap)
            .then_with(by_name),
        SortKey::Gap => by_gap().then_with(by_name),
        SortKey::Failures => by_failures().then_with(by_name),
        SortKey::Name => by_name(),
    }
}

fn compare_terminations(sort: SortKey, a: &TerminationView, b: &TerminationView) -> Ordering {
    let by_name = || (&a.namespace, &a.pod, &a.source).cmp(&(&b.namespace, &b.pod, &b.source));
    let by_gap = || b.gap_ms.unwrap_or(-1).cmp(&a.gap_ms.unwrap_or(-1));
    let by_failures = || b.failures.total().cmp(&a.failures.total());
    match sort {
        // Live windows first: they are what is happening now.
        SortKey::Worst => b
            .is_open()
            .cmp(&a.is_open())
            .then_with(by_gap)
            .then_with(by_failures)
            .then_with(by_name),
        SortKey::Gap => by_gap().then_with(by_name),
        SortKey::Failures => by_failures().then_with(by_name),
        SortKey::Name => by_name(),
    }
}

impl App {
    /// Overview rows: filtered, then sorted by the current key.
    pub fn service_rows(&self) -> Vec<&ServiceRow> {
        let mut rows: Vec<&ServiceRow> = self
            .merged
            .services
            .iter()
            .filter(|s| s.matches(&self.filter))
            .collect();
        rows.sort_by(|a, b| compare_services(self.sort, a, b));
        rows
    }

    /// Live-termination rows: filtered, then sorted by the current key.
    pub fn termination_rows(&self) -> Vec<&TerminationView> {
        let mut rows: Vec<&TerminationView> = self
            .merged
            .terminations
            .iter()
            .filter(|t| t.matches(&self.filter))
            .collect();
        rows.sort_by(|a, b| compare_terminations(self.sort, a, b));
        rows
    }

    /// Failures log rows, newest first, filtered.
    pub fn failure_rows(&self) -> Vec<&FailureRow> {
        self.failures
            .iter()
            .filter(|f| f.matches(&self.filter))
            .collect()
    }

    /// The Detail screen's contents, if its target still exists.
    pub fn detail_view(&self) -> Option<DetailView> {
        let (termination, namespace, group) = match self.detail.as_ref()? {
            DetailTarget::Termination { source, uid } => {
                let t = self
                    .merged
                    .terminations
                    .iter()
                    .find(|t| t.is_record(source, uid))?;
                let group = t.group_name().map(str::to_string);
                (Some(t.clone()), t.namespace.clone(), group)
            }
            DetailTarget::Service { namespace, name } => {
                (None, namespace.clone(), Some(name.clone()))
            }
        };
        let service = group.as_ref().and_then(|g| {
            self.merged
                .services
                .iter()
                .find(|s| s.namespace == namespace && &s.name == g)
                .cloned()
        });
        let mut related: Vec<TerminationView> = self
            .merged
            .terminations
            .iter()
            .filter(|t| t.namespace == namespace && t.group_name() == group.as_deref())
            .filter(|t| {
                termination
                    .as_ref()
                    .is_none_or(|focus| !t.is_record(&focus.source, &focus.uid))
            })
            .cloned()
            .collect();
        related.sort_by(|a, b| a.age_ms.cmp(&b.age_ms).then(a.pod.cmp(&b.pod)));
        if termination.is_none() && service.is_none() {
            return None;
        }
        Some(DetailView {
            termination,
            service,
            related,
        })
    }
}

/// The file `e` writes: one YAML document per Service, each preceded by
/// the measurements behind it as comments, so the file explains itself.
pub fn export_contents(rows: &[&ServiceRow]) -> String {
    let mut out = String::from("# observer: recommended preStop durations\n");
    for row in rows {
        out.push_str("---\n");
        out.push_str(&format!(
            "# {}: {} termination(s), propagation gap p50 {} p99 {} max {}\n",
            row.label(),
            row.samples,
            ms(row.p50_ms),
            ms(row.p99_ms),
            ms(row.max_ms),
        ));
        match row.gap_view {
            GapView::Sender => {}
            GapView::Destination => out.push_str(
                "# gaps from the destination view: what arrived at the pods (no ingress measured them)\n",
            ),
            GapView::Both => out.push_str(
                "# gaps from both views: the ingress's sends, and arrivals at the pods where no ingress measured\n",
            ),
        }
        let configured = row
            .configured_prestop_s
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "none".to_string());
        out.push_str(&format!(
            "# preStop: configured {configured}, recommended {}s; terminationGracePeriodSeconds {}\n",
            row.recommended_prestop_s, row.recommended_grace_s
        ));
        for line in &row.verdict {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&row.yaml);
        if !row.yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
