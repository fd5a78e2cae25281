//! Detail: one pod's whole timeline with offsets from deletion_seen, and
//! the YAML its Service should apply. Side by side on wide terminals,
//! stacked (one scroll) on narrow ones.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use super::{bad, dim, header_style, render_empty};
use crate::engine::arrivals::SenderKind;
use crate::engine::recommend::GapView;
use crate::tui::app::App;
use crate::tui::format::{fit, ms, offset, opt_ms, seconds};
use crate::tui::view::{ArrivalsView, DetailView, ServiceRow, TerminationView};

const SIDE_BY_SIDE: u16 = 120;

/// Within this the two views count as agreeing: two jiffies at the
/// coarsest tick rate (HZ=100), to which the destination side dates
/// pooled requests.
const VIEWS_AGREE_MS: f64 = 20.0;

pub(super) fn render(app: &App, frame: &mut Frame, area: Rect) {
    let Some(view) = app.detail_view() else {
        let block = Block::default().borders(Borders::ALL).title(" Detail ");
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let message: &[&str] = if app.detail.is_none() {
            &[
                "Nothing selected.",
                "Press Enter on a row to see its detail.",
            ]
        } else {
            &[
                "That record is no longer in the agents' data.",
                "Esc goes back.",
            ]
        };
        render_empty(frame, inner, message);
        return;
    };
    let title = match &view.termination {
        Some(t) => format!(" {} ", t.label()),
        None => view
            .service
            .as_ref()
            .map(|s| format!(" {} ", s.label()))
            .unwrap_or_default(),
    };
    let side_by_side = area.width >= SIDE_BY_SIDE;
    let [left, right] = if side_by_side {
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area)
    } else {
        [area, Rect::default()]
    };
    // Inside the facts panel's borders.
    let room = Room {
        width: left.width.saturating_sub(2) as usize,
        rows: left.height.saturating_sub(2) as usize,
    };
    let clock = app.view_clock_ms();
    let facts = facts_lines(&view, clock, room);
    let yaml = yaml_lines(view.service.as_ref());
    let scroll = (app.detail_scroll, 0);
    // Long verdicts wrap; the leading spaces of the timeline stay.
    let wrap = Wrap { trim: false };
    if side_by_side {
        frame.render_widget(
            Paragraph::new(facts)
                .wrap(wrap)
                .scroll(scroll)
                .block(Block::default().borders(Borders::ALL).title(title)),
            left,
        );
        frame.render_widget(
            Paragraph::new(yaml)
                .scroll(scroll)
                .block(Block::default().borders(Borders::ALL).title(" Apply ")),
            right,
        );
    } else {
        let mut lines = facts;
        lines.push(Line::from(""));
        lines.push(Line::styled("Apply", header_style()));
        lines.extend(yaml);
        let title = if lines.len() + 2 > area.height as usize {
            format!("{title}· ↑↓ scroll ")
        } else {
            title
        };
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(wrap)
                .scroll(scroll)
                .block(Block::default().borders(Borders::ALL).title(title)),
            area,
        );
    }
}

/// The facts panel's inside: sender rows are cut to its width, and to one
/// screenful, so the largest senders are seen together when scrolled to.
#[derive(Clone, Copy, Debug)]
struct Room {
    width: usize,
    rows: usize,
}

fn field(name: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<10}"), header_style()),
        Span::raw(value),
    ])
}

fn facts_lines(view: &DetailView, clock: u64, room: Room) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if let Some(t) = &view.termination {
        termination_lines(t, clock, room, &mut lines);
    }
    if let Some(s) = &view.service {
        if !lines.is_empty() {
            lines.push(Line::from(""));
        }
        service_lines(s, &mut lines);
    }
    if !view.related.is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::styled("Other terminations", header_style()));
        for r in &view.related {
            let state = r.closed.as_deref().unwrap_or("open");
            // Where no ingress measured a gap, the arrival gap stands in,
            // marked as the Overview marks it.
            let arrival_gap = r.destination.as_ref().and_then(|d| d.arrival_gap_ms);
            let gap = match (r.gap_ms, arrival_gap) {
                (None, Some(arrival)) => format!("{:>8} [dst]", ms(arrival as f64)),
                (gap, _) => format!("{:>8}", opt_ms(gap)),
            };
            lines.push(Line::from(format!(
                "  {:<32} gap {gap}  {} failed  {state}",
                r.pod,
                r.failures.total()
            )));
        }
    }
    lines
}

/// What the failures did to users: hidden by a retry elsewhere (slower
/// answers) or seen (errors).
fn hidden_failures(t: &TerminationView) -> String {
    let hidden = t.failures_retried;
    let seen = t.failures_not_retried;
    if seen == 0 {
        format!(
            "{hidden} retried elsewhere by the ingress: hidden failures, users got slower answers, not errors"
        )
    } else {
        format!("{hidden} retried elsewhere (hidden), {seen} not retried (users got errors)")
    }
}

fn termination_lines(t: &TerminationView, clock: u64, room: Room, lines: &mut Vec<Line<'static>>) {
    let ips: Vec<String> = t.ips.iter().map(|ip| ip.to_string()).collect();
    lines.push(field("Pod", format!("{} (uid {})", t.label(), t.uid)));
    lines.push(field(
        "Node",
        format!(
            "{}  IPs {}  seen by {}",
            t.node.as_deref().unwrap_or("-"),
            if ips.is_empty() {
                "-".to_string()
            } else {
                ips.join(", ")
            },
            // Every agent by name: the row's label may be cut short.
            if t.sources.is_empty() {
                t.source.clone()
            } else {
                t.sources.join(", ")
            }
        ),
    ));
    // A row several agents reported: which one each side came from.
    let merged = t.sources.len() > 1;
    if merged {
        lines.push(field("From", origins(t)));
    }
    lines.push(field(
        "Service",
        format!(
            "{}  workload {}",
            if t.services.is_empty() {
                "-".to_string()
            } else {
                t.services.join(", ")
            },
            t.workload.as_deref().unwrap_or("-")
        ),
    ));
    lines.push(field(
        "Spec",
        format!(
            "preStop {}  terminationGracePeriodSeconds {}",
            t.configured_prestop_ms
                .map(|p| ms(p as f64))
                .unwrap_or_else(|| "none".to_string()),
            t.grace_s
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".to_string())
        ),
    ));
    let window = match &t.closed {
        None => format!("open, {} so far", ms(t.span_ms(clock) as f64)),
        Some(reason) => format!("closed: {reason}"),
    };
    lines.push(field("Window", window));
    let mut gap = format!(
        "propagation {}  control plane {}  dataplane {}",
        opt_ms(t.gap_ms),
        opt_ms(t.control_plane_lag_ms),
        opt_ms(t.dataplane_lag_ms)
    );
    if let Some(tail) = t.retry_tail_ms {
        gap.push_str(&format!("  retry tail {}", ms(tail as f64)));
    }
    lines.push(field("Gap", gap));
    let mut connects = format!("{} after deletion", t.connects_after_deletion);
    if t.retries_after_deletion > 0 {
        connects.push_str(&format!(" ({} retries)", t.retries_after_deletion));
    }
    for (class, n) in t.failures.nonzero() {
        connects.push_str(&format!(", {n} {}", class.as_str()));
    }
    lines.push(field("Connects", connects));
    if t.failures.total() > 0 {
        lines.push(field("Failures", hidden_failures(t)));
    }
    if let Some(d) = &t.destination {
        lines.push(field("Arrivals", arrivals_summary(d)));
        if let Some(apart) = d.views_apart_ms {
            lines.push(field("Views", views_apart(apart)));
        }
    }
    if t.deletion_observed_late {
        lines.push(Line::styled(
            "deletion was seen late: the gap is a lower bound and not used for recommendations",
            bad(),
        ));
    }
    lines.push(Line::from(""));
    // Each agent's offsets are from its own deletion_seen: no node's
    // clock is read against another's.
    lines.push(Line::styled(
        if merged {
            "Timeline (from deletion seen, as each agent saw it)"
        } else {
            "Timeline (from deletion seen)"
        },
        header_style(),
    ));
    let mut events: Vec<(i64, Line<'static>)> = t
        .milestones()
        .into_iter()
        .map(|(m, at)| {
            (
                at,
                Line::from(format!("  {:>10}  {}", offset(at), m.label())),
            )
        })
        .collect();
    events.extend(t.failure_marks.iter().map(|(at, class)| {
        (
            *at,
            Line::styled(
                format!("  {:>10}  failed: {}", offset(*at), class.as_str()),
                bad(),
            ),
        )
    }));
    if let Some(at) = t.destination.as_ref().and_then(|d| d.last_arrival_ms) {
        events.push((
            at,
            Line::from(format!("  {:>10}  last arrival", offset(at))),
        ));
    }
    // Stable: at one offset the sender side's milestones come first.
    events.sort_by_key(|(at, _)| *at);
    lines.extend(events.into_iter().map(|(_, line)| line));
    if !t.connectors.is_empty() {
        lines.push(Line::from(""));
        lines.push(Line::styled(
            "Connected after deletion (only the ingress measures the gap)",
            header_style(),
        ));
        for c in &t.connectors {
            // The name last: a long pod name runs off the edge, the
            // figures stay in their columns.
            let until = c.until_ms.map_or_else(|| "-".to_owned(), offset);
            lines.push(Line::from(format!(
                "  {:<7} until {:>7} {:>6} conn {:>5} fail  {}",
                c.role, until, c.connects, c.failures, c.name
            )));
        }
    }
    if merged {
        ingress_lines(t, room, lines);
    }
    if let Some(d) = &t.destination {
        sender_lines(d, room, lines);
    }
}

/// Which agent each side of a merged row came from: the gap (the largest
/// of the ingress nodes') and the arrivals (the pod's node).
fn origins(t: &TerminationView) -> String {
    let gap = match t.ingress.as_slice() {
        [] => "no ingress measured a gap".to_owned(),
        [only] => format!("gap {}", only.source),
        [largest, ..] => format!(
            "gap {} (the largest of {} ingress nodes)",
            largest.source,
            t.ingress.len()
        ),
    };
    match &t.destination {
        Some(d) => format!("{gap}  arrivals {}", d.source),
        None => gap,
    }
}

/// Each ingress node's own sender side, the largest gap first: the row's
/// gap is the first's, the others are what the preStop also covers.
fn ingress_lines(t: &TerminationView, room: Room, lines: &mut Vec<Line<'static>>) {
    if t.ingress.is_empty() {
        return;
    }
    lines.push(Line::from(""));
    lines.push(Line::styled(
        "Sent after deletion (sender side, each ingress node's own kernel)",
        header_style(),
    ));
    for side in &t.ingress {
        // The agent last, cut to the panel, as the senders below.
        let figures = format!(
            "  gap {:>7}  last send {:>8} {:>6} conn {:>4} fail  ",
            ms(side.gap_ms as f64),
            side.last_send_ms.map_or_else(|| "-".to_owned(), offset),
            side.connects_after_deletion,
            side.failures.total()
        );
        let name = fit(
            &side.source,
            room.width.saturating_sub(figures.chars().count()),
        );
        lines.push(Line::from(format!("{figures}{name}")));
    }
}

/// The destination view in one line: the last arrival as an offset from
/// deletion_seen, the arrival gap, and what the pod served, refused and
/// dropped after it.
fn arrivals_summary(d: &ArrivalsView) -> String {
    format!(
        "last {}  gap {}  served {}  refused {}  dropped {}",
        d.last_arrival_ms.map_or_else(|| "none".to_owned(), offset),
        opt_ms(d.arrival_gap_ms),
        d.served_after_deletion,
        d.refused,
        d.dropped
    )
}

/// The ingress's last send and last arrival are the same packets, seen
/// from two kernels: they differ by the jiffy the destination side dates
/// pooled requests to. Further apart means one view missed something.
fn views_apart(apart_ms: f64) -> String {
    let within = apart_ms.abs().ceil();
    if within <= VIEWS_AGREE_MS {
        format!("sender and destination agree within {}", ms(within))
    } else {
        format!(
            "sender and destination {} apart (last arrival − ingress's last send)",
            ms(apart_ms)
        )
    }
}

/// Who sent what arrived, the largest first: as many rows as fit one
/// screenful of the panel, then how many were left out.
fn sender_lines(d: &ArrivalsView, room: Room, lines: &mut Vec<Line<'static>>) {
    if d.senders.is_empty() {
        return;
    }
    lines.push(Line::from(""));
    lines.push(Line::styled(
        "Arrived after deletion (destination view, the pod's own kernel)",
        header_style(),
    ));
    let shown = if d.senders.len() < room.rows {
        d.senders.len()
    } else {
        // The header and the "more" line take two rows.
        room.rows.saturating_sub(2).max(1)
    };
    for s in d.senders.iter().take(shown) {
        // As in the connectors above: the name last, cut to the panel so
        // the figures keep their columns.
        let figures = format!(
            "  {:<8} gap {:>7} {:>6} arr {:>4} ref {:>4} drop  ",
            s.kind,
            opt_ms(s.arrival_gap_ms),
            s.arrivals,
            s.refused,
            s.dropped
        );
        let name = fit(&s.name, room.width.saturating_sub(figures.chars().count()));
        let line = format!("{figures}{name}");
        // The kubelet's probes never move the arrival gap.
        if s.kind == SenderKind::Kubelet.as_str() {
            lines.push(Line::styled(line, dim()));
        } else {
            lines.push(Line::from(line));
        }
    }
    let left_out = d.senders.len() - shown;
    if left_out > 0 {
        lines.push(Line::styled(
            format!("  … {left_out} smaller sender(s) not shown"),
            dim(),
        ));
    }
}

fn service_lines(s: &ServiceRow, lines: &mut Vec<Line<'static>>) {
    lines.push(field("Service", s.label()));
    lines.push(field(
        "Measured",
        format!(
            "{} termination(s)  p50 {}  p99 {}  max {}",
            s.samples,
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.max_ms)
        ),
    ));
    if let Some(gaps) = gap_view_text(s.gap_view) {
        lines.push(field("Gaps", gaps.to_owned()));
    }
    lines.push(field(
        "preStop",
        format!(
            "configured {}  recommended {}s",
            seconds(s.configured_prestop_s),
            s.recommended_prestop_s
        ),
    ));
    for v in &s.verdict {
        lines.push(Line::from(format!("  {v}")));
    }
}

/// Where the gaps behind a recommendation came from, when not (only) the
/// ingress's sends.
fn gap_view_text(view: GapView) -> Option<&'static str> {
    match view {
        GapView::Sender => None,
        GapView::Destination => {
            Some("destination view: arrivals at the pods (no ingress measured)")
        }
        GapView::Both => Some("both views: ingress sends, arrivals where none measured"),
    }
}

fn yaml_lines(service: Option<&ServiceRow>) -> Vec<Line<'static>> {
    match service {
        Some(s) if !s.yaml.is_empty() => {
            s.yaml.lines().map(|l| Line::from(l.to_string())).collect()
        }
        _ => vec![Line::styled(
            "No recommendation yet: it needs at least one closed measurement window.",
            dim(),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::view::SenderView;

    fn senders(n: usize) -> ArrivalsView {
        ArrivalsView {
            senders: (0..n)
                .map(|i| SenderView {
                    name: format!("s{i:02} payments/a-rather-long-sender-name"),
                    kind: "pod".into(),
                    arrival_gap_ms: Some(100 * i as i64),
                    arrivals: 100 - i as u64,
                    refused: 0,
                    dropped: 0,
                })
                .collect(),
            ..ArrivalsView::default()
        }
    }

    fn text(lines: &[Line<'static>]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn senders_are_cut_to_one_screenful_and_the_panels_width() {
        let room = Room {
            width: 78,
            rows: 11,
        };
        let mut lines = Vec::new();
        sender_lines(&senders(16), room, &mut lines);
        let lines = text(&lines);
        // A blank line, the header, 9 senders and what was left out: the
        // header, the senders and the note fill the 11 rows.
        assert_eq!(lines.len(), 12, "{lines:#?}");
        assert!(lines[2].contains("s00"), "the largest first: {lines:#?}");
        assert!(lines[10].contains("s08"), "{lines:#?}");
        assert_eq!(lines[11], "  … 7 smaller sender(s) not shown");
        for line in &lines {
            assert!(line.chars().count() <= room.width, "{line:?}");
        }
        assert!(lines[2].ends_with('…'), "{lines:#?}");

        // All of them where they fit.
        let mut lines = Vec::new();
        sender_lines(&senders(4), room, &mut lines);
        assert_eq!(lines.len(), 6);
        let mut lines = Vec::new();
        sender_lines(&senders(0), room, &mut lines);
        assert!(lines.is_empty());
    }

    #[test]
    fn views_agree_within_a_jiffy_or_two_and_else_say_how_far_apart() {
        assert_eq!(views_apart(0.3), "sender and destination agree within 1ms");
        assert_eq!(views_apart(-4.0), "sender and destination agree within 4ms");
        assert_eq!(
            views_apart(-1500.0),
            "sender and destination -1500ms apart (last arrival − ingress's last send)"
        );
    }
}
