//! Drawing: pure functions of `&App` into a ratatui `Frame`.
//!
//! Nothing here changes state or reads a clock, so any screen at any size
//! can be rendered into a `TestBackend` and compared as text. Every screen
//! gets the same frame: a tab bar on top, a status line at the bottom.

mod detail;
mod failures;
mod live;
mod overview;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::app::{App, Screen};
use super::merge::summarize;

/// Below this the screens cannot be laid out; a message says so instead.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 15;

pub(crate) fn header_style() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

pub(crate) fn selected_style() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

pub(crate) fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

pub(crate) fn bad() -> Style {
    Style::default().fg(Color::Red)
}

pub(crate) fn good() -> Style {
    Style::default().fg(Color::Green)
}

/// Draws the whole TUI.
pub fn render(app: &App, frame: &mut Frame) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        render_too_small(frame, area);
        return;
    }
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    render_tabs(app, frame, tabs);
    match app.screen {
        Screen::Overview => overview::render(app, frame, body),
        Screen::Live => live::render(app, frame, body),
        Screen::Failures => failures::render(app, frame, body),
        Screen::Detail => detail::render(app, frame, body),
    }
    render_status(app, frame, status);
    if app.show_help {
        render_help(frame, body);
    }
}

fn render_too_small(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("Terminal too small"),
        Line::from(format!(
            "{}x{}; observer needs at least {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        )),
        Line::from("Enlarge the window, or press q to quit."),
    ];
    let top = area.height.saturating_sub(text.len() as u16) / 2;
    let [_, middle] = Layout::vertical([Constraint::Length(top), Constraint::Min(0)]).areas(area);
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        middle,
    );
}

fn render_tabs(app: &App, frame: &mut Frame, area: Rect) {
    let mut spans = vec![Span::styled(" observer ", header_style())];
    let tabs = Screen::TABS.iter().chain([Screen::Detail].iter());
    let narrow = area.width < 100;
    for (n, screen) in tabs.enumerate() {
        let title = if narrow {
            screen.short_title()
        } else {
            screen.title()
        };
        let label = format!(" {} {title} ", n + 1);
        let style = if *screen == app.screen {
            selected_style()
        } else {
            Style::default()
        };
        spans.push(Span::styled(label, style));
    }
    frame.render_widget(Line::from(spans), area);
    let mut right = vec![Span::raw(format!("sort:{} ", app.sort.label()))];
    if app.is_paused() {
        right.push(Span::styled(
            " PAUSED ",
            bad().add_modifier(Modifier::REVERSED),
        ));
    }
    frame.render_widget(Line::from(right).alignment(Alignment::Right), area);
}

fn render_status(app: &App, frame: &mut Frame, area: Rect) {
    if app.editing_filter {
        let line = Line::from(vec![
            Span::styled("filter: ", header_style()),
            Span::raw(format!("{}█", app.filter)),
            Span::styled("  Enter keep · Esc clear", dim()),
        ]);
        frame.render_widget(line, area);
        return;
    }
    let summary = summarize(&app.sources);
    let mut spans = Vec::new();
    let total = summary.up + summary.connecting + summary.lost.len();
    if total == 0 {
        spans.push(Span::styled("no data source", bad()));
    } else if total == 1 && summary.lost.is_empty() {
        // One source (the in-process engine, or one agent): name it.
        let (name, state) = app.sources.iter().next().map_or(("", ""), |(name, _)| {
            (
                name.as_str(),
                if summary.up == 1 { "up" } else { "connecting" },
            )
        });
        spans.push(Span::raw(format!("{name} {state}")));
    } else {
        spans.push(Span::raw(format!("agents {}/{} up", summary.up, total)));
        if summary.connecting > 0 {
            spans.push(Span::raw(format!(", {} connecting", summary.connecting)));
        }
    }
    for (name, reason) in &summary.lost {
        spans.push(Span::styled(format!(" · LOST {name}: {reason}"), bad()));
    }
    if app.held() > 0 {
        spans.push(Span::raw(format!(" · {} held", app.held())));
    }
    if !app.filter.is_empty() {
        spans.push(Span::styled(
            format!(" · filter \"{}\"", app.filter),
            header_style(),
        ));
    }
    if let Some(message) = &app.message {
        spans.push(Span::styled(format!(" · {message}"), header_style()));
    }
    let line = Line::from(spans);
    let used = line.width();
    frame.render_widget(line, area);
    // The hint yields to longer status text.
    if used + 8 <= area.width as usize {
        let hint = Line::from(Span::styled("? help ", dim())).alignment(Alignment::Right);
        frame.render_widget(hint, area);
    }
}

const HELP: &[(&str, &str)] = &[
    ("1 2 3 / Tab", "Overview, Live terminations, Failures"),
    ("Enter / 4", "detail of the selected row"),
    ("Esc", "back from detail; clear the filter"),
    ("↑ ↓ / j k", "move (PgUp PgDn Home End, mouse wheel)"),
    ("/", "filter by namespace, service or pod"),
    ("s", "change the sort (worst, gap, failures, name)"),
    ("p", "pause / resume the live view"),
    ("e", "write recommendations to a file"),
    ("?", "this help"),
    ("q / Ctrl-C", "quit"),
];

fn render_help(frame: &mut Frame, body: Rect) {
    let width = body.width.min(62);
    // The keys, a blank line, two notes, and the borders.
    let height = body.height.min(HELP.len() as u16 + 5);
    let area = Rect {
        x: body.x + (body.width - width) / 2,
        y: body.y + (body.height - height) / 2,
        width,
        height,
    };
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!("{key:>12}  "), header_style()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::styled(
        "  gap = last connect − deletion seen, per ingress node",
        dim(),
    ));
    lines.push(Line::styled(
        "  [dst] gaps from arrivals at the pods; [both] mixed",
        dim(),
    ));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Keys ")),
        area,
    );
}

/// A centred, dim explanation for a screen with nothing to show.
pub(crate) fn render_empty(frame: &mut Frame, area: Rect, lines: &[&str]) {
    let top = area.height.saturating_sub(lines.len() as u16) / 2;
    let [_, middle] = Layout::vertical([Constraint::Length(top), Constraint::Min(0)]).areas(area);
    let text: Vec<Line> = lines.iter().map(|l| Line::styled(*l, dim())).collect();
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        middle,
    );
}
