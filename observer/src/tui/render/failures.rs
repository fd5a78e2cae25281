//! Failures: connects and failures per second as sparklines, over a
//! scrolling log of failed connects, newest first.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Borders, Cell, RenderDirection, Row, Sparkline, Table, TableState};

use super::{bad, header_style, render_empty, selected_style};
use crate::tui::app::{App, Screen};
use crate::tui::format::{ms, time_of_day};
use crate::tui::view::{FailureRow, RatePoint};

/// From this width on the log also shows the agent, the wait and the kind.
const WIDE: u16 = 120;

pub(super) fn render(app: &App, frame: &mut Frame, area: Rect) {
    let [rates_area, log_area] =
        Layout::vertical([Constraint::Length(5), Constraint::Min(3)]).areas(area);
    render_rates(app, frame, rates_area);
    render_log(app, frame, log_area);
}

fn render_rates(app: &App, frame: &mut Frame, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(area);
    let rates = app.shown_rates();
    let sparkline = |area: Rect, pick: fn(&RatePoint) -> u64, what: &str, color: Color| {
        // One bar per second, newest at the right edge (drawn right to
        // left from the newest).
        let fits = area.width.saturating_sub(2) as usize;
        let shown: Vec<u64> = rates.iter().rev().take(fits).map(pick).collect();
        let last = shown.first().copied().unwrap_or(0);
        let peak = shown.iter().copied().max().unwrap_or(0);
        let title = format!(" {what}/s  now {last}  peak {peak} ");
        Sparkline::default()
            .data(&shown)
            .direction(RenderDirection::RightToLeft)
            .style(Style::default().fg(color))
            .block(Block::default().borders(Borders::ALL).title(title))
    };
    frame.render_widget(
        sparkline(left, |r| r.connects, "connects", Color::Cyan),
        left,
    );
    frame.render_widget(
        sparkline(right, |r| r.failures, "failures", Color::Red),
        right,
    );
}

/// The destination pod and port; narrow terminals drop the namespace
/// (the filter still matches it).
fn destination(row: &FailureRow, wide: bool) -> String {
    match (&row.namespace, &row.pod) {
        (Some(ns), Some(pod)) if wide => format!("{ns}/{pod}:{}", row.dst.port()),
        (_, Some(pod)) => format!("{pod}:{}", row.dst.port()),
        _ => row.dst.to_string(),
    }
}

fn render_log(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.failure_rows();
    let block = Block::default().borders(Borders::ALL).title(format!(
        " Failed connects ({}{}) ",
        rows.len(),
        if app.is_paused() { ", paused" } else { "" }
    ));
    if rows.is_empty() {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let message: &[&str] = if app.filter.is_empty() {
            &[
                "No failed connects seen.",
                "Refused, unreachable, timed-out, aborted and reset connects appear here.",
            ]
        } else {
            &["Nothing matches the filter.", "Esc clears it."]
        };
        render_empty(frame, inner, message);
        return;
    }
    let wide = area.width >= WIDE;
    let mut header = vec!["TIME (UTC)", "PROCESS", "DESTINATION", "CLASS", "POD STATE"];
    let mut widths = vec![
        Constraint::Length(12),
        Constraint::Length(14),
        Constraint::Fill(1),
        Constraint::Length(16),
        Constraint::Length(11),
    ];
    if wide {
        header.extend(["WAITED", "FINDING", "AGENT"]);
        widths.extend([
            Constraint::Length(8),
            Constraint::Length(20),
            Constraint::Length(16),
        ]);
    }
    let table_rows = rows.iter().map(|row| {
        let mut cells = vec![
            Cell::from(time_of_day(row.at_unix_ms)),
            Cell::from(format!("{}[{}]", row.comm, row.pid)),
            Cell::from(destination(row, wide)),
            Cell::from(row.class.as_str()).style(bad()),
            Cell::from(row.pod_state.clone()),
        ];
        if wide {
            cells.extend([
                Cell::from(ms(row.waited_ms)),
                Cell::from(row.kind.clone()),
                Cell::from(row.source.clone()),
            ]);
        }
        Row::new(cells)
    });
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(header_style()))
        .block(block)
        .row_highlight_style(selected_style());
    let mut state = TableState::default().with_selected(Some(app.selected_index(Screen::Failures)));
    frame.render_stateful_widget(table, area, &mut state);
}
