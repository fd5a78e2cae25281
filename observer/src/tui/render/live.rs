//! Live terminations: each terminating pod as a timeline bar on one shared
//! scale, growing while its window is open, with the milestones and the
//! failures marked where they happened.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, ListState};

use super::{bad, dim, header_style, render_empty, selected_style};
use crate::tui::app::{App, Screen};
use crate::tui::format::{fit, ms, opt_ms};
use crate::tui::view::TerminationView;

/// Scales the bars snap to, so the axis reads in round numbers.
const SCALES_MS: [i64; 12] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000,
    3_600_000,
];

const LEGEND: &str = "D deletion seen  N not ready  R removed  L last connect  x failure  ▶ now";

pub(super) fn render(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.termination_rows();
    let open = rows.iter().filter(|t| t.is_open()).count();
    let block = Block::default().borders(Borders::ALL).title(format!(
        " Terminations: {open} open, {} recent ",
        rows.len() - open
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if rows.is_empty() {
        let message: &[&str] = if app.filter.is_empty() {
            &[
                "No pod is terminating.",
                "Each terminating pod appears here as a bar that grows from the",
                "moment its deletion is seen until the ingress stops connecting.",
            ]
        } else {
            &["Nothing matches the filter.", "Esc clears it."]
        };
        render_empty(frame, inner, message);
        return;
    }
    let [axis_area, list_area, legend_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(2),
        Constraint::Length(1),
    ])
    .areas(inner);
    let clock = app.view_clock_ms();
    let longest = rows.iter().map(|t| t.span_ms(clock)).max().unwrap_or(0);
    let scale = SCALES_MS
        .iter()
        .copied()
        .find(|s| *s >= longest)
        .unwrap_or(longest.max(1));
    // Two columns of indent, so the bar lines up under the names.
    let bar_width = inner.width.saturating_sub(2) as usize;
    frame.render_widget(axis(scale, bar_width), axis_area);
    let show_source = app.sources.len() > 1;
    let items: Vec<ListItem> = rows
        .iter()
        .map(|t| {
            ListItem::new(vec![
                title_line(t, show_source, inner.width as usize),
                bar_line(t, clock, scale, bar_width),
            ])
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(app.selected_index(Screen::Live)));
    frame.render_stateful_widget(
        List::new(items).highlight_style(selected_style()),
        list_area,
        &mut state,
    );
    frame.render_widget(
        Line::styled(fit(LEGEND, inner.width as usize), dim()),
        legend_area,
    );
}

fn axis(scale: i64, width: usize) -> Line<'static> {
    let left = "  0s";
    let middle = seconds_label(scale / 2);
    let right = seconds_label(scale);
    let total = width + 2;
    let mid_at = 2 + width / 2 - middle.len() / 2;
    let mut text = String::from(left);
    while text.len() < mid_at {
        text.push(' ');
    }
    text.push_str(&middle);
    while text.len() + right.len() < total {
        text.push(' ');
    }
    text.push_str(&right);
    Line::styled(text, dim())
}

/// `2.5s`, `10s`: axis labels in whole seconds where they are whole.
fn seconds_label(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

fn title_line(t: &TerminationView, show_source: bool, width: usize) -> Line<'static> {
    let mut spans = vec![Span::styled(t.label(), header_style())];
    if show_source {
        spans.push(Span::styled(format!(" @{}", t.source), dim()));
    }
    spans.push(Span::raw(format!("  gap {}", opt_ms(t.gap_ms))));
    let failures = t.failures.total();
    if failures > 0 {
        let class = t
            .failures
            .nonzero()
            .first()
            .map(|(c, _)| c.as_str())
            .unwrap_or("");
        spans.push(Span::styled(
            format!("  {failures} failed ({class})"),
            bad(),
        ));
        if t.failures_retried > 0 {
            spans.push(Span::styled(
                format!(" {} hidden", t.failures_retried),
                Style::default().fg(Color::Yellow),
            ));
        }
    }
    let state = match &t.closed {
        None => Span::styled(
            format!("  open {}", ms(t.age_ms as f64)),
            Style::default().fg(Color::Yellow),
        ),
        Some(reason) => Span::styled(format!("  closed: {reason}"), dim()),
    };
    spans.push(state);
    if t.deletion_observed_late {
        spans.push(Span::styled("  (deletion seen late)", dim()));
    }
    let line = Line::from(spans);
    if line.width() > width {
        if show_source {
            // The agents are in the Detail; the figures matter more here.
            return title_line(t, false, width);
        }
        // Keep the essentials when the row does not fit.
        return Line::from(fit(
            &format!("{}  gap {}  {failures} failed", t.label(), opt_ms(t.gap_ms)),
            width,
        ));
    }
    line
}

/// The bar: `D` at deletion_seen, then the window's span filled in, with
/// milestones and failures overlaid at their offsets.
fn bar_line(t: &TerminationView, clock: u64, scale: i64, width: usize) -> Line<'static> {
    if width < 2 {
        return Line::from("");
    }
    let column = |offset_ms: i64| -> usize {
        let clamped = offset_ms.clamp(0, scale);
        ((clamped as i128 * (width as i128 - 1)) / scale as i128) as usize
    };
    let span_end = column(t.span_ms(clock));
    let mut cells: Vec<(char, Style)> = (0..width)
        .map(|i| {
            if i <= span_end {
                ('─', Style::default().fg(Color::Cyan))
            } else {
                ('·', dim())
            }
        })
        .collect();
    let marks = [
        (t.endpoint_not_ready_ms, 'N'),
        (t.endpoint_removed_ms, 'R'),
        (t.last_connect_ms, 'L'),
    ];
    for (offset, symbol) in marks {
        if let Some(offset) = offset {
            cells[column(offset)] = (symbol, header_style());
        }
    }
    for (offset, _) in &t.failure_marks {
        cells[column(*offset)] = ('x', bad());
    }
    if t.is_open() {
        cells[span_end] = ('▶', Style::default().fg(Color::Yellow));
    }
    cells[0] = ('D', header_style());
    let mut spans = vec![Span::raw("  ")];
    spans.extend(
        cells
            .into_iter()
            .map(|(c, style)| Span::styled(c.to_string(), style)),
    );
    Line::from(spans)
}
