//! State tests: keys, screens, filter, sort, pause, export, rates, and
//! several sources with one going away.

use super::adapt::{findings_update, snapshot_update};
use super::app::{
    Action, App, DataUpdate, DetailTarget, Effect, Key, Screen, SortKey, SourceEvent,
};
use super::fixtures::{
    CLOCK, agent_snapshots, app_with_agents, app_with_data, empty_app, finding, snapshot,
};
use super::merge::{SourceStatus, summarize};
use crate::probe::FailureClass;

fn press(app: &mut App, keys: &[Key]) -> Vec<Effect> {
    keys.iter()
        .filter_map(|key| app.update(Action::Key(*key)))
        .collect()
}

fn chars(text: &str) -> Vec<Key> {
    text.chars().map(Key::Char).collect()
}

fn service_names(app: &App) -> Vec<String> {
    app.service_rows().iter().map(|r| r.label()).collect()
}

#[test]
fn number_keys_tab_and_esc_move_between_screens() {
    let mut app = app_with_data();
    press(&mut app, &[Key::Char('2')]);
    assert_eq!(app.screen, Screen::Live);
    press(&mut app, &[Key::Tab]);
    assert_eq!(app.screen, Screen::Failures);
    press(&mut app, &[Key::Tab]);
    assert_eq!(app.screen, Screen::Overview);
    press(&mut app, &[Key::BackTab]);
    assert_eq!(app.screen, Screen::Failures);
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    assert_eq!(app.screen, Screen::Detail);
    press(&mut app, &[Key::Esc]);
    assert_eq!(app.screen, Screen::Live);
}

#[test]
fn q_and_ctrl_c_quit_but_q_types_into_the_filter() {
    let mut app = empty_app();
    assert_eq!(press(&mut app, &[Key::Char('q')]), vec![Effect::Quit]);
    assert_eq!(press(&mut app, &[Key::Char('/'), Key::Char('q')]), vec![]);
    assert_eq!(app.filter, "q");
    assert_eq!(press(&mut app, &[Key::Interrupt]), vec![Effect::Quit]);
}

#[test]
fn help_opens_and_closes() {
    let mut app = empty_app();
    press(&mut app, &[Key::Char('?')]);
    assert!(app.show_help);
    // Keys other than the closing ones do nothing while help is up.
    press(&mut app, &[Key::Char('2')]);
    assert_eq!(app.screen, Screen::Overview);
    press(&mut app, &[Key::Esc]);
    assert!(!app.show_help);
}

#[test]
fn overview_is_sorted_worst_first_and_s_cycles_the_sort() {
    let mut app = app_with_data();
    // ledger: no preStop, needs 11 s; cart: 2 s configured, needs 6 s.
    assert_eq!(
        service_names(&app),
        ["payments/ledger", "shop/cart", "auth/login"]
    );
    press(&mut app, &[Key::Char('s')]);
    assert_eq!(app.sort, SortKey::Gap);
    assert_eq!(
        service_names(&app),
        ["payments/ledger", "shop/cart", "auth/login"]
    );
    press(&mut app, &[Key::Char('s')]);
    assert_eq!(app.sort, SortKey::Failures);
    assert_eq!(
        service_names(&app),
        ["shop/cart", "payments/ledger", "auth/login"]
    );
    press(&mut app, &[Key::Char('s')]);
    assert_eq!(app.sort, SortKey::Name);
    assert_eq!(
        service_names(&app),
        ["auth/login", "payments/ledger", "shop/cart"]
    );
    press(&mut app, &[Key::Char('s')]);
    assert_eq!(app.sort, SortKey::Worst);
}

#[test]
fn live_lists_open_windows_first() {
    let app = app_with_data();
    let pods: Vec<_> = app
        .termination_rows()
        .iter()
        .map(|t| t.pod.clone())
        .collect();
    assert_eq!(
        pods,
        [
            "cart-7d9f8-abcde",
            "checkout-5c6b-xk2lp",
            "cart-7d9f8-qwert",
            "login-66f-zzq",
            "ledger-6b7c9-p4x2m"
        ]
    );
}

#[test]
fn filter_matches_namespace_service_or_pod_and_esc_clears_it() {
    let mut app = app_with_data();
    press(&mut app, &[Key::Char('/')]);
    press(&mut app, &chars("SHOP"));
    assert!(app.editing_filter);
    assert_eq!(service_names(&app), ["shop/cart"]);
    assert_eq!(app.termination_rows().len(), 3);
    press(&mut app, &[Key::Enter]);
    assert!(!app.editing_filter);
    assert_eq!(app.filter, "SHOP");

    press(
        &mut app,
        &[
            Key::Char('/'),
            Key::Backspace,
            Key::Backspace,
            Key::Backspace,
            Key::Backspace,
        ],
    );
    press(&mut app, &chars("qwert"));
    press(&mut app, &[Key::Enter]);
    assert_eq!(app.termination_rows().len(), 1);
    assert!(service_names(&app).is_empty());
    // Failures match by pod too.
    assert_eq!(app.failure_rows().len(), 2);

    press(&mut app, &[Key::Esc]);
    assert!(app.filter.is_empty());
    assert_eq!(service_names(&app).len(), 3);
}

#[test]
fn selection_moves_and_clamps() {
    let mut app = app_with_data();
    press(&mut app, &[Key::Down, Key::Char('j'), Key::Down, Key::Down]);
    assert_eq!(app.selected_index(Screen::Overview), 2);
    press(&mut app, &[Key::Up]);
    assert_eq!(app.selected_index(Screen::Overview), 1);
    press(&mut app, &[Key::Home]);
    assert_eq!(app.selected_index(Screen::Overview), 0);
    press(&mut app, &[Key::End]);
    assert_eq!(app.selected_index(Screen::Overview), 2);
    app.update(Action::ScrollUp);
    assert_eq!(app.selected_index(Screen::Overview), 1);
    press(&mut app, &[Key::Enter]);
    assert_eq!(
        app.detail,
        Some(DetailTarget::Service {
            namespace: "shop".into(),
            name: "cart".into()
        })
    );
    // In Detail the arrows scroll.
    press(&mut app, &[Key::Down, Key::Down]);
    assert_eq!(app.detail_scroll, 2);
    app.update(Action::ScrollUp);
    assert_eq!(app.detail_scroll, 1);
}

#[test]
fn keys_on_empty_data_do_not_panic() {
    let mut app = empty_app();
    let keys = [
        Key::Down,
        Key::Up,
        Key::PageDown,
        Key::End,
        Key::Enter,
        Key::Char('4'),
        Key::Esc,
        Key::Char('2'),
        Key::Enter,
        Key::Char('3'),
        Key::Enter,
        Key::Char('s'),
        Key::Char('p'),
        Key::Char('p'),
        Key::Char('e'),
    ];
    assert!(press(&mut app, &keys).is_empty());
    assert_eq!(
        app.message.as_deref(),
        Some("nothing to export yet: no recommendations")
    );
}

#[test]
fn enter_on_a_failure_opens_its_pods_termination() {
    let mut app = app_with_data();
    press(&mut app, &[Key::Char('3'), Key::Enter]);
    assert_eq!(
        app.detail,
        Some(DetailTarget::Termination {
            source: "local".into(),
            uid: "uid-cart-7d9f8-abcde".into()
        })
    );
    // The stale-endpoint failure has no pod to open.
    let mut app = app_with_data();
    press(
        &mut app,
        &[Key::Char('3'), Key::Down, Key::Down, Key::Down, Key::Enter],
    );
    assert_eq!(app.screen, Screen::Failures);
    assert_eq!(
        app.message.as_deref(),
        Some("no termination record for that pod")
    );
}

#[test]
fn a_failure_one_agent_saw_opens_the_row_every_agent_reported() {
    let mut app = app_with_agents();
    let failed = [finding(
        1_600,
        (17, 8080),
        FailureClass::Refused,
        Some("cart-7d9f8-abcde"),
    )];
    if let Some(update) = findings_update("node-c", &failed, &CLOCK) {
        app.update(Action::Data(update));
    }
    press(&mut app, &[Key::Char('3'), Key::Enter]);
    assert_eq!(app.screen, Screen::Detail);
    let shown = app.detail_view().and_then(|v| v.termination);
    assert_eq!(
        shown.map(|t| (t.pod, t.sources)),
        Some((
            "cart-7d9f8-abcde".to_string(),
            vec!["node-a".into(), "node-b".into(), "node-c".into()]
        ))
    );
}

#[test]
fn an_open_detail_stays_when_another_agent_reports_the_pod() {
    let agents = agent_snapshots();
    let mut app = App::new("out.yaml".into());
    let Some((name, first)) = agents.first() else {
        panic!("no agents in the fixture");
    };
    app.update(Action::Data(snapshot_update(name, first)));
    press(&mut app, &[Key::Char('2'), Key::Enter]);
    assert_eq!(
        app.detail,
        Some(DetailTarget::Termination {
            source: "node-a".into(),
            uid: "uid-cart-7d9f8-abcde".into()
        })
    );
    for (name, snapshot) in &agents[1..] {
        app.update(Action::Data(snapshot_update(name, snapshot)));
    }
    // The row's label is now every agent's; the pod is still the pod.
    let shown = app.detail_view().and_then(|v| v.termination);
    assert_eq!(
        shown.map(|t| (t.source, t.ingress.len())),
        Some(("node-a+2 more".to_string(), 2))
    );
}

#[test]
fn pause_freezes_the_view_and_resume_catches_up() {
    let mut app = app_with_data();
    let failures_before = app.failures.len();
    let shown_before = app.merged.clone();
    press(&mut app, &[Key::Char('p')]);
    assert!(app.is_paused());
    let frozen_clock = app.view_clock_ms();

    app.update(Action::Tick { now_ms: 65_000 });
    let mut later = snapshot(1_000_000, 99);
    later.open.truncate(1);
    app.update(Action::Data(snapshot_update("local", &later)));
    let more = findings_update(
        "local",
        &[finding(
            1,
            (17, 8080),
            FailureClass::Reset,
            Some("cart-7d9f8-abcde"),
        )],
        &CLOCK,
    );
    app.update(Action::Data(more.expect("a failure")));

    assert_eq!(app.view_clock_ms(), frozen_clock);
    assert_eq!(app.merged, shown_before);
    assert_eq!(app.failures.len(), failures_before);
    assert_eq!(app.held(), 1);

    press(&mut app, &[Key::Char('p')]);
    assert!(!app.is_paused());
    assert_eq!(app.view_clock_ms(), 65_000);
    assert_eq!(app.merged.terminations.len(), 4);
    assert_eq!(app.failures.len(), failures_before + 1);
    assert_eq!(app.failures[0].class, FailureClass::Reset);
    assert_eq!(app.held(), 0);
}

#[test]
fn export_writes_the_shown_recommendations() {
    let mut app = app_with_data();
    press(&mut app, &[Key::Char('/')]);
    press(&mut app, &chars("cart"));
    press(&mut app, &[Key::Enter]);
    let effects = press(&mut app, &[Key::Char('e')]);
    let [Effect::Export { path, contents }] = effects.as_slice() else {
        panic!("expected one export, got {effects:?}");
    };
    assert_eq!(path.to_str(), Some("observer-recommendations.yaml"));
    assert!(contents.contains("# shop/cart: 12 termination(s)"));
    assert!(contents.contains("seconds: 6"));
    assert!(!contents.contains("ledger"));
    app.update(Action::Exported(Ok("/tmp/x.yaml".into())));
    assert_eq!(
        app.message.as_deref(),
        Some("wrote recommendations to /tmp/x.yaml")
    );
    app.update(Action::Exported(Err("/ro/x.yaml: read-only".into())));
    assert_eq!(
        app.message.as_deref(),
        Some("export failed: /ro/x.yaml: read-only")
    );
}

#[test]
fn rates_are_per_second_deltas_of_the_counters() {
    let mut app = empty_app();
    let send = |app: &mut App, connects, failures, now_ms| {
        app.update(Action::Tick { now_ms });
        app.update(Action::Data(snapshot_update(
            "local",
            &snapshot(connects, failures),
        )));
    };
    send(&mut app, 1_000, 5, 100);
    send(&mut app, 1_150, 5, 600);
    send(&mut app, 1_400, 8, 1_200);
    // An agent restart resets its counters: no negative rate.
    send(&mut app, 10, 0, 2_100);
    app.update(Action::Tick { now_ms: 3_000 });
    let rates: Vec<(u64, u64)> = app.rates.iter().map(|r| (r.connects, r.failures)).collect();
    assert_eq!(rates, [(150, 0), (250, 3), (0, 0)]);
}

#[test]
fn a_long_stall_does_not_replay_every_second() {
    let mut app = empty_app();
    app.update(Action::Tick {
        now_ms: 10_000_000_000,
    });
    assert_eq!(app.rates.len(), super::app::RATE_HISTORY_SECONDS);
}

#[test]
fn scrolled_failure_log_keeps_its_row_as_failures_arrive() {
    let mut app = app_with_data();
    press(&mut app, &[Key::Char('3'), Key::Down, Key::Down]);
    let selected = app.failure_rows()[app.selected_index(Screen::Failures)].clone();
    let more = findings_update(
        "local",
        &[finding(1, (17, 8080), FailureClass::Refused, Some("x"))],
        &CLOCK,
    );
    app.update(Action::Data(more.expect("a failure")));
    assert_eq!(
        app.failure_rows()[app.selected_index(Screen::Failures)],
        &selected
    );
}

#[test]
fn two_sources_merge_and_one_going_away_shows_lost() {
    let mut app = App::new("out.yaml".into());
    app.add_source("http://a:9090");
    app.add_source("http://b:9090");
    for source in ["http://a:9090", "http://b:9090"] {
        app.update(Action::Data(snapshot_update(source, &snapshot(10, 0))));
    }
    // Both agents reported every pod: one row each, naming both; Services
    // merge.
    let rows = app.termination_rows();
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|t| t.source == "http://a:9090+http://b:9090"),
        "{rows:#?}"
    );
    assert_eq!(app.service_rows().len(), 3);
    assert_eq!(app.service_rows()[1].samples, 24);

    app.update(Action::Data(DataUpdate {
        source: "http://b:9090".into(),
        event: SourceEvent::Lost {
            reason: "connection refused".into(),
        },
    }));
    let summary = summarize(&app.sources);
    assert_eq!(summary.up, 1);
    assert_eq!(
        summary.lost,
        [(
            "http://b:9090".to_string(),
            "connection refused".to_string()
        )]
    );
    // Its last data stays on screen until it comes back.
    assert_eq!(app.termination_rows().len(), 5);
    assert!(app.termination_rows().iter().all(|t| t.sources.len() == 2));

    app.update(Action::Data(snapshot_update(
        "http://b:9090",
        &snapshot(20, 0),
    )));
    assert_eq!(app.sources["http://b:9090"].status, SourceStatus::Up);
}
