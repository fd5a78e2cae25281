//! Every screen rendered into a `TestBackend` and compared as text
//! (insta snapshots in `snapshots/`), with data and empty, at 80x24 and
//! 160x48; plus the too-small message and a no-panic sweep over sizes.

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::app::{Action, App, Key, Screen};
use super::fixtures::{app_with_agents, app_with_data, empty_app};
use super::render::render;

fn draw(app: &App, width: u16, height: u16) -> String {
    draw_into(app, width, height).backend().to_string()
}

fn draw_into(app: &App, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(terminal) => terminal,
        Err(error) => panic!("test backend: {error}"),
    };
    if let Err(error) = terminal.draw(|frame| render(app, frame)) {
        panic!("draw: {error}");
    }
    terminal
}

fn on(mut app: App, keys: &[Key]) -> App {
    for key in keys {
        app.update(Action::Key(*key));
    }
    app
}

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

fn snapshot_all(name: &str, app: &App) {
    for (w, h) in SIZES {
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), draw(app, w, h));
    }
}

#[test]
fn overview() {
    snapshot_all("overview_data", &app_with_data());
    snapshot_all("overview_empty", &empty_app());
}

#[test]
fn live_terminations() {
    snapshot_all("live_data", &on(app_with_data(), &[Key::Char('2')]));
    snapshot_all("live_empty", &on(empty_app(), &[Key::Char('2')]));
}

#[test]
fn live_bars_grow_with_the_clock() {
    let mut app = on(app_with_data(), &[Key::Char('2')]);
    let before = draw(&app, 80, 24);
    app.update(Action::Tick { now_ms: 62_000 });
    let after = draw(&app, 80, 24);
    assert_ne!(
        before, after,
        "an open window's bar grows between snapshots"
    );
    insta::assert_snapshot!("live_data_2s_later_80x24", after);
}

#[test]
fn failures() {
    snapshot_all("failures_data", &on(app_with_data(), &[Key::Char('3')]));
    snapshot_all("failures_empty", &on(empty_app(), &[Key::Char('3')]));
}

#[test]
fn detail_of_a_termination() {
    // Live is sorted worst first: the open cart pod with the longest gap.
    let app = on(app_with_data(), &[Key::Char('2'), Key::Enter]);
    assert_eq!(app.screen, Screen::Detail);
    snapshot_all("detail_termination", &app);
}

#[test]
fn detail_of_a_termination_scrolled_to_its_senders() {
    // The open cart pod runs on the ingress's node: both views.
    let app = on(
        app_with_data(),
        &[Key::Char('2'), Key::Enter, Key::PageDown, Key::PageDown],
    );
    insta::assert_snapshot!("detail_termination_senders_80x24", draw(&app, 80, 24));
}

#[test]
fn detail_of_a_termination_seen_only_where_it_arrived() {
    // Last on Live (no sender-side gap): the ledger pod behind a load
    // balancer outside the cluster.
    let app = on(app_with_data(), &[Key::Char('2'), Key::End, Key::Enter]);
    let view = app.detail_view().and_then(|v| v.termination);
    assert_eq!(view.map(|t| t.pod), Some("ledger-6b7c9-p4x2m".to_string()));
    snapshot_all("detail_destination", &app);
}

#[test]
fn several_agents_show_one_row_per_termination() {
    // Two ingress nodes and the pods' node report the same pods.
    let app = on(app_with_agents(), &[Key::Char('2')]);
    assert_eq!(app.termination_rows().len(), 5);
    snapshot_all("live_agents", &app);
    // Worst first: the open cart pod, with the slower ingress node's gap.
    let app = on(app, &[Key::Enter]);
    let view = app.detail_view().and_then(|v| v.termination);
    assert_eq!(view.map(|t| t.pod), Some("cart-7d9f8-abcde".to_string()));
    snapshot_all("detail_agents", &app);
    insta::assert_snapshot!(
        "detail_agents_scrolled_80x24",
        draw(&on(app, &[Key::PageDown, Key::PageDown]), 80, 24)
    );
}

#[test]
fn detail_of_a_service() {
    let app = on(app_with_data(), &[Key::Enter]);
    snapshot_all("detail_service", &app);
}

#[test]
fn detail_with_nothing_selected_or_a_vanished_record() {
    // With no rows there is nothing to open: the screen stays put.
    assert_eq!(on(empty_app(), &[Key::Char('4')]).screen, Screen::Overview);
    let mut app = empty_app();
    app.screen = Screen::Detail;
    snapshot_all("detail_empty", &app);
    app.detail = Some(super::app::DetailTarget::Termination {
        source: "local".into(),
        uid: "gone".into(),
    });
    insta::assert_snapshot!("detail_gone_80x24", draw(&app, 80, 24));
}

#[test]
fn help_overlay() {
    insta::assert_snapshot!(
        "help_80x24",
        draw(&on(app_with_data(), &[Key::Char('?')]), 80, 24)
    );
}

#[test]
fn status_line_shows_filter_pause_and_lost_agents() {
    let app = on(
        app_with_data(),
        &[
            Key::Char('/'),
            Key::Char('c'),
            Key::Char('a'),
            Key::Char('r'),
        ],
    );
    insta::assert_snapshot!("filter_editing_80x24", draw(&app, 80, 24));
    let mut app = on(app, &[Key::Enter, Key::Char('p')]);
    app.update(Action::Data(super::app::DataUpdate {
        source: "http://10.0.0.9:9090".into(),
        event: super::app::SourceEvent::Lost {
            reason: "connection refused".into(),
        },
    }));
    insta::assert_snapshot!("filtered_paused_lost_80x24", draw(&app, 80, 24));
}

#[test]
fn too_small_says_so() {
    let screen = draw(&app_with_data(), 40, 10);
    assert!(screen.contains("Terminal too small"));
    insta::assert_snapshot!("too_small_40x10", screen);
}

#[test]
fn no_size_panics() {
    let apps = [
        app_with_data(),
        app_with_agents(),
        empty_app(),
        on(app_with_data(), &[Key::Char('?')]),
    ];
    let screens = [Key::Char('1'), Key::Char('2'), Key::Char('3'), Key::Enter];
    for app in apps {
        for key in screens {
            let app = on(app.clone(), &[key]);
            for (w, h) in [
                (0, 0),
                (1, 1),
                (59, 15),
                (60, 14),
                (60, 15),
                (61, 16),
                (80, 24),
                (97, 31),
                (119, 40),
                (120, 40),
                (250, 70),
            ] {
                // Only drawn: TestBackend cannot print a zero-width buffer.
                draw_into(&app, w, h);
            }
        }
    }
}
