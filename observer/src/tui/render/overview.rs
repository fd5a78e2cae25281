//! Overview: one row per Service, worst first, with the selected row's
//! verdict spelled out underneath.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState, Wrap};

use super::{bad, dim, good, header_style, render_empty, selected_style};
use crate::engine::recommend::GapView;
use crate::probe::FailureClass;
use crate::tui::app::{App, Screen};
use crate::tui::format::{fit, ms, seconds};
use crate::tui::view::ServiceRow;

/// From this width on, failed connects get one column per class.
const WIDE: u16 = 120;

const COLUMN_SPACING: u16 = 1;

/// The classes that get their own column on wide terminals.
const CLASS_COLUMNS: [(FailureClass, &str); 5] = [
    (FailureClass::Refused, "REFUSED"),
    (FailureClass::HostUnreachable, "UNREACH"),
    (FailureClass::TimedOut, "TIMEOUT"),
    (FailureClass::Aborted, "ABORTED"),
    (FailureClass::Reset, "RESET"),
];

pub(super) fn render(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.service_rows();
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" Services ({}) ", rows.len()));
    if rows.is_empty() {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let message: &[&str] = if app.filter.is_empty() {
            &[
                "No terminations measured yet.",
                "Services appear here once a pod behind them terminates",
                "and its measurement window closes.",
            ]
        } else {
            &["Nothing matches the filter.", "Esc clears it."]
        };
        render_empty(frame, inner, message);
        return;
    }
    let [table_area, verdict_area] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(5)]).areas(area);
    let wide = area.width >= WIDE;
    let selected = app.selected_index(Screen::Overview);
    render_table(frame, table_area, block, &rows, selected, wide);
    if let Some(row) = rows.get(selected) {
        render_verdict(frame, verdict_area, row);
    }
}

/// Total failed connects and the commonest class, e.g. `35 ref`.
fn failed_cell(row: &ServiceRow) -> String {
    match row.failures.nonzero().first() {
        None => "0".to_string(),
        Some((class, _)) => {
            let name = class.as_str();
            format!("{} {}", row.failures.total(), &name[..name.len().min(3)])
        }
    }
}

/// The verdict in a word or two, for narrow terminals.
fn short_verdict(row: &ServiceRow) -> String {
    let shortfall = row.shortfall_s();
    match row.configured_prestop_s {
        None if shortfall > 0.0 => "no preStop".to_string(),
        _ if shortfall > 0.0 => format!("{}s short", shortfall.ceil()),
        _ => "ok".to_string(),
    }
}

fn render_table(
    frame: &mut Frame,
    area: Rect,
    block: Block,
    rows: &[&ServiceRow],
    selected: usize,
    wide: bool,
) {
    let mut header = vec!["SERVICE", "TERM", "P50", "P99", "MAX"];
    let mut widths = vec![
        Constraint::Fill(2),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    if wide {
        header.extend(CLASS_COLUMNS.iter().map(|(_, h)| *h));
        widths.extend(CLASS_COLUMNS.iter().map(|_| Constraint::Length(7)));
    } else {
        header.push("FAILED");
        widths.push(Constraint::Length(7));
    }
    header.extend(["PRESTOP", "REC", "VERDICT"]);
    widths.extend([
        Constraint::Length(7),
        Constraint::Length(4),
        // Narrow terminals get a one-word verdict; the panel below has it all.
        if wide {
            Constraint::Fill(3)
        } else {
            Constraint::Length(10)
        },
    ]);
    // The SERVICE column as the table lays it out (no highlight symbol).
    let label_width = Layout::horizontal(widths.clone())
        .spacing(COLUMN_SPACING)
        .split(block.inner(area))
        .first()
        .map_or(0, |column| column.width as usize);
    let table_rows = rows.iter().map(|row| {
        // A mark where the gaps did not come from the sender view (the
        // default, unmarked), after the name: a long name is cut to make
        // room for it rather than the mark.
        let mut label = vec![];
        match row.gap_view_mark() {
            Some(mark) => {
                let mark = format!(" [{mark}]");
                let room = label_width.saturating_sub(mark.chars().count());
                label.push(Span::raw(fit(&row.label(), room)));
                label.push(Span::styled(mark, dim()));
            }
            None => label.push(Span::raw(row.label())),
        }
        let mut cells = vec![
            Cell::from(Line::from(label)),
            Cell::from(row.samples.to_string()),
            Cell::from(ms(row.p50_ms)),
            Cell::from(ms(row.p99_ms)),
            Cell::from(ms(row.max_ms)),
        ];
        if wide {
            cells.extend(
                CLASS_COLUMNS
                    .iter()
                    .map(|(class, _)| Cell::from(row.failures.get(*class).to_string())),
            );
        } else {
            cells.push(Cell::from(failed_cell(row)));
        }
        let short = row.shortfall_s() > 0.0;
        let verdict = if wide {
            row.verdict.first().cloned().unwrap_or_default()
        } else {
            short_verdict(row)
        };
        cells.extend([
            Cell::from(seconds(row.configured_prestop_s)),
            Cell::from(Span::styled(
                format!("{}s", row.recommended_prestop_s),
                if short { bad() } else { good() },
            )),
            Cell::from(Span::styled(verdict, if short { bad() } else { good() })),
        ]);
        Row::new(cells)
    });
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(header_style()))
        .column_spacing(COLUMN_SPACING)
        .block(block)
        .row_highlight_style(selected_style());
    let mut state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn render_verdict(frame: &mut Frame, area: Rect, row: &ServiceRow) {
    let view = match row.gap_view {
        GapView::Sender => "",
        GapView::Destination => " · destination view",
        GapView::Both => " · both views",
    };
    let title = format!(
        " {}{view} ",
        fit(
            &row.label(),
            area.width.saturating_sub(4 + view.chars().count() as u16) as usize
        )
    );
    let mut lines: Vec<Line> = row.verdict.iter().map(|v| Line::from(v.as_str())).collect();
    if lines.is_empty() {
        lines.push(Line::styled("no verdict", dim()));
    }
    lines.push(Line::styled(
        format!(
            "preStop {} → {}s · terminationGracePeriodSeconds {} → {} · Enter for YAML",
            seconds(row.configured_prestop_s),
            row.recommended_prestop_s,
            row.configured_grace_s
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".to_string()),
            row.recommended_grace_s,
        ),
        dim(),
    ));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}
