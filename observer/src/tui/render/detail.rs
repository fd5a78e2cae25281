//! Detail: one pod's whole timeline with offsets from deletion_seen, and
//! the YAML its Service should apply. Side by side on wide terminals,
//! stacked (one scroll) on narrow ones.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use super::{bad, dim, header_style, render_empty};
use crate::tui::app::App;
use crate::tui::format::{ms, offset, opt_ms, seconds};
use crate::tui::view::{DetailView, ServiceRow, TerminationView};

const SIDE_BY_SIDE: u16 = 120;

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
    let clock = app.view_clock_ms();
    let facts = facts_lines(&view, clock);
    let yaml = yaml_lines(view.service.as_ref());
    let scroll = (app.detail_scroll, 0);
    // Long verdicts wrap; the leading spaces of the timeline stay.
    let wrap = Wrap { trim: false };
    if area.width >= SIDE_BY_SIDE {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(area);
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

fn field(name: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{name:<10}"), header_style()),
        Span::raw(value),
    ])
}

fn facts_lines(view: &DetailView, clock: u64) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if let Some(t) = &view.termination {
        termination_lines(t, clock, &mut lines);
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
            lines.push(Line::from(format!(
                "  {:<32} gap {:>8}  {} failed  {state}",
                r.pod,
                opt_ms(r.gap_ms),
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

fn termination_lines(t: &TerminationView, clock: u64, lines: &mut Vec<Line<'static>>) {
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
            t.source
        ),
    ));
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
    if t.deletion_observed_late {
        lines.push(Line::styled(
            "deletion was seen late: the gap is a lower bound and not used for recommendations",
            bad(),
        ));
    }
    lines.push(Line::from(""));
    lines.push(Line::styled(
        "Timeline (from deletion seen)",
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
