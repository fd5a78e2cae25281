//! Terminations, IP reuse, out-of-order arrival, findings and closing.

use kube::runtime::watcher::Event;

use super::*;

const WEB1: &str = "10.0.0.1";
const WEB1_HTTP: &str = "10.0.0.1:8080";

fn web1_listed() -> Vec<Step> {
    listed(
        1_000,
        vec![pod("web-1", "u1", WEB1, true, false)],
        vec![slice(&[(WEB1, "u1", true, false)])],
    )
}

fn only(records: Vec<&PodTermination>) -> &PodTermination {
    assert_eq!(
        records.len(),
        1,
        "expected one closed termination: {records:#?}"
    );
    records[0]
}

#[test]
fn termination_with_connects_after_deletion_has_exact_gap_and_lags() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.extend([
        Step::Pod(10_000, Event::Apply(pod("web-1", "u1", WEB1, true, true))),
        Step::Slice(10_500, Event::Apply(slice(&[(WEB1, "u1", false, true)]))),
        Step::Connect(syn(WEB1_HTTP, 11_000)),
        Step::Connect(record(
            WEB1_HTTP,
            11_001,
            Some(11_000),
            true,
            Outcome::Established { latency_ns: MS },
        )),
        Step::Connect(syn(WEB1_HTTP, 12_000)),
        Step::Connect(syn(WEB1_HTTP, 13_200)),
        Step::Connect(failed(WEB1_HTTP, 13_200, 1, FailureClass::Refused, true)),
        // Not a port the Service advertises: not part of the gap.
        Step::Connect(syn("10.0.0.1:9999", 14_000)),
        Step::Pod(15_000, Event::Delete(pod("web-1", "u1", WEB1, false, true))),
        Step::Slice(15_500, Event::Apply(slice(&[]))),
        Step::Tick(19_999),
    ]);
    let out = run(&mut engine, steps);
    assert!(closed(&out).is_empty(), "quiet period not over yet");
    let opened = engine.snapshot(ms(19_999)).open;
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].propagation_gap_ns, Some(3_200 * MS as i64));

    let out2 = run(&mut engine, vec![Step::Tick(20_000)]);
    let t = only(closed(&out2));
    assert_eq!(
        (t.namespace.as_str(), t.pod.as_str(), t.uid.as_str()),
        ("shop", "web-1", "u1")
    );
    assert_eq!(t.ips, [ip(WEB1)]);
    assert_eq!(t.workload.as_deref(), Some("web"));
    assert_eq!(t.services, ["web"]);
    assert_eq!(t.configured_prestop_ms, Some(5_000));
    assert_eq!(t.termination_grace_period_seconds, Some(30));
    assert_eq!(t.deletion_seen, ms(10_000));
    assert!(!t.deletion_observed_late);
    assert_eq!(t.endpoint_not_ready, Some(ms(10_500)));
    assert_eq!(t.endpoint_removed, Some(ms(15_500)));
    assert_eq!(t.last_connect, Some(ms(13_200)));
    assert_eq!(t.connects_after_deletion, 3);
    assert_eq!(t.failures.refused, 1);
    assert_eq!(t.failures.total(), 1);
    assert_eq!(
        (t.first_failure, t.last_failure),
        (Some(ms(13_201)), Some(ms(13_201)))
    );
    assert_eq!(t.propagation_gap_ns, Some(3_200 * MS as i64));
    assert_eq!(t.control_plane_lag_ns, Some(500 * MS as i64));
    assert_eq!(t.dataplane_lag_ns, Some(2_700 * MS as i64));
    assert_eq!(
        t.connectors,
        [ConnectorActivity {
            name: "nginx".into(),
            role: connector::ConnectorRole::Ingress,
            connects: 3,
            failures: 1,
            last_connect: Some(ms(13_200)),
            until_ns: Some(3_200 * MS as i64),
        }]
    );
    assert_eq!(t.failure_times, [(ms(13_201), FailureClass::Refused)]);
    assert_eq!(t.closed, Some(CloseReason::Quiet));

    let all: Vec<Output> = out.iter().chain(out2.iter()).cloned().collect();
    assert_eq!(watch_ops(&all), ["watch 10.0.0.1", "unwatch 10.0.0.1"]);
    // Failures inside a window are in its record, not separate findings.
    assert!(findings(&all).is_empty());
    assert_eq!(engine.counters().terminations_closed, 1);
    assert_eq!(
        engine
            .counters()
            .failures(PodState::Terminating, FailureClass::Refused),
        1
    );
    // The record is what the NDJSON exporter writes: it must round-trip.
    let text = serde_json::to_string(t).expect("serializable");
    let back: PodTermination = serde_json::from_str(&text).expect("deserializable");
    assert_eq!(&back, t);
}

#[test]
fn ip_reuse_closes_the_old_window_and_attributes_later_connects_to_the_new_pod() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.extend([
        Step::Pod(10_000, Event::Apply(pod("web-1", "u1", WEB1, true, true))),
        Step::Connect(syn(WEB1_HTTP, 11_000)),
        Step::Pod(15_000, Event::Delete(pod("web-1", "u1", WEB1, false, true))),
        // The address is handed to a new pod, not yet ready.
        Step::Pod(16_000, Event::Apply(pod("web-2", "u2", WEB1, false, false))),
        Step::Connect(failed(WEB1_HTTP, 16_500, 3, FailureClass::Refused, true)),
        Step::Pod(17_000, Event::Apply(pod("web-2", "u2", WEB1, true, false))),
    ]);
    let out = run(&mut engine, steps);
    let t = only(closed(&out));
    assert_eq!(t.uid, "u1");
    assert_eq!(t.closed, Some(CloseReason::IpReused));
    assert_eq!(t.propagation_gap_ns, Some(1_000 * MS as i64));
    assert_eq!((t.connects_after_deletion, t.failures.total()), (1, 0));
    let f = findings(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, FindingKind::ToNotReadyPod);
    assert_eq!(f[0].pod.as_deref(), Some("web-2"));
    assert_eq!(f[0].pod_state, PodState::NotReady);
    // The address stays watched across the hand-over (the new pod is not
    // ready), and is released once it is.
    assert_eq!(watch_ops(&out), ["watch 10.0.0.1", "unwatch 10.0.0.1"]);
    assert_eq!(engine.recommendations().len(), 2, "service and workload");
}

#[test]
fn connects_delivered_before_the_deletion_event_are_replayed_into_the_window() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.extend([
        Step::Connect(syn(WEB1_HTTP, 9_500)),
        Step::Connect(syn(WEB1_HTTP, 10_200)),
        Step::Connect(syn(WEB1_HTTP, 10_400)),
        Step::Connect(failed(WEB1_HTTP, 10_400, 2, FailureClass::Refused, true)),
        // The watch event stamped at 10.0 s reaches the engine only now.
        Step::Pod(10_000, Event::Apply(pod("web-1", "u1", WEB1, true, true))),
    ]);
    let out = run(&mut engine, steps);
    let opened: Vec<&PodTermination> = out
        .iter()
        .filter_map(|o| match o {
            Output::TerminationOpened(t) => Some(t),
            _ => None,
        })
        .collect();
    let t = only(opened);
    assert_eq!(t.deletion_seen, ms(10_000));
    assert_eq!(t.last_connect, Some(ms(10_400)));
    assert_eq!(
        t.connects_after_deletion, 2,
        "the 9.5 s connect was before deletion"
    );
    assert_eq!(t.failures.refused, 1);
    assert_eq!(t.propagation_gap_ns, Some(400 * MS as i64));
}

#[test]
fn failure_to_an_address_no_pod_owns_is_a_stale_endpoint() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.extend([
        Step::Pod(10_000, Event::Apply(pod("web-1", "u1", WEB1, true, true))),
        Step::Pod(11_000, Event::Delete(pod("web-1", "u1", WEB1, false, true))),
        Step::Slice(11_000, Event::Apply(slice(&[]))),
        Step::Tick(16_000),
        Step::Connect(failed(WEB1_HTTP, 17_000, 1, FailureClass::Refused, false)),
        // Never a pod address as far as the cluster says: counted only.
        Step::Connect(failed(
            "192.0.2.7:443",
            17_100,
            1,
            FailureClass::TimedOut,
            false,
        )),
    ]);
    let out = run(&mut engine, steps);
    assert_eq!(closed(&out).len(), 1);
    assert!(
        engine.model().pod("u1").is_none(),
        "pruned after its window closed"
    );
    let f = findings(&out);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].kind, FindingKind::StaleEndpoint);
    assert_eq!(f[0].pod_state, PodState::Unknown);
    assert_eq!(
        (
            f[0].namespace.as_deref(),
            f[0].pod.as_deref(),
            f[0].service.as_deref()
        ),
        (Some("shop"), Some("web-1"), Some("web"))
    );
    let c = engine.counters();
    assert_eq!(c.unknown_ip_failures, 2);
    assert_eq!(c.failures(PodState::Unknown, FailureClass::Refused), 1);
    assert_eq!(c.failures(PodState::Unknown, FailureClass::TimedOut), 1);
}

#[test]
fn pods_deleted_while_unwatched_are_recorded_but_not_recommended_from() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = listed(
        1_000,
        vec![
            pod("web-1", "u1", WEB1, true, false),
            pod("web-2", "u2", "10.0.0.2", true, false),
        ],
        vec![slice(&[
            (WEB1, "u1", true, false),
            ("10.0.0.2", "u2", true, false),
        ])],
    );
    // The watch was down; the relist no longer has web-1.
    steps.extend([
        Step::Pod(20_000, Event::Init),
        Step::Pod(
            20_000,
            Event::InitApply(pod("web-2", "u2", "10.0.0.2", true, false)),
        ),
        Step::Pod(20_000, Event::InitDone),
        // The ingress still has the old address.
        Step::Connect(syn(WEB1_HTTP, 21_000)),
        // First seen already terminating.
        Step::Pod(
            20_500,
            Event::Apply(pod("web-3", "u3", "10.0.0.3", true, true)),
        ),
        Step::Pod(
            21_500,
            Event::Delete(pod("web-3", "u3", "10.0.0.3", false, true)),
        ),
        Step::Tick(26_000),
        Step::Tick(27_000),
    ]);
    let out = run(&mut engine, steps);
    let records = closed(&out);
    assert_eq!(records.len(), 2);
    let (gone, late) = (records[0], records[1]);
    assert_eq!(gone.uid, "u1");
    assert_eq!(gone.closed, Some(CloseReason::RemovedWhileUnwatched));
    assert!(gone.deletion_observed_late);
    assert_eq!(gone.connects_after_deletion, 1);
    assert_eq!(late.uid, "u3");
    assert_eq!(late.closed, Some(CloseReason::Quiet));
    assert!(late.deletion_observed_late);
    assert!(
        engine.recommendations().is_empty(),
        "late gaps are not used"
    );
}

#[test]
fn failures_around_readiness_are_findings_by_pod_state() {
    let mut engine = Engine::new(ingress_nginx());
    let web3 = "10.0.0.3:8080";
    let mut steps = listed(
        1_000,
        vec![pod("web-3", "u3", "10.0.0.3", false, false)],
        vec![slice(&[("10.0.0.3", "u3", false, false)])],
    );
    steps.extend([
        Step::Connect(failed(web3, 3_000, 1, FailureClass::Refused, true)),
        Step::Pod(
            5_000,
            Event::Apply(pod("web-3", "u3", "10.0.0.3", true, false)),
        ),
        Step::Slice(
            5_000,
            Event::Apply(slice(&[("10.0.0.3", "u3", true, false)])),
        ),
        Step::Connect(failed(web3, 5_500, 1, FailureClass::Refused, false)),
        Step::Connect(failed(web3, 9_000, 1, FailureClass::Reset, false)),
        Step::Pod(
            10_000,
            Event::Apply(pod("web-3", "u3", "10.0.0.3", true, true)),
        ),
        Step::Pod(
            11_000,
            Event::Delete(pod("web-3", "u3", "10.0.0.3", false, true)),
        ),
        Step::Tick(16_000),
    ]);
    let out = run(&mut engine, steps);
    let kinds: Vec<(FindingKind, PodState)> = findings(&out)
        .iter()
        .map(|f| (f.kind, f.pod_state))
        .collect();
    assert_eq!(
        kinds,
        [
            (FindingKind::ToNotReadyPod, PodState::NotReady),
            (FindingKind::ReadyTooEarly, PodState::Ready),
            (FindingKind::ToReadyPod, PodState::Ready),
        ]
    );
    let c = engine.counters();
    assert_eq!(c.failures(PodState::NotReady, FailureClass::Refused), 1);
    assert_eq!(c.failures(PodState::Ready, FailureClass::Refused), 1);
    assert_eq!(c.failures(PodState::Ready, FailureClass::Reset), 1);
    // Not-ready pods are watched until ready; terminating ones until closed.
    assert_eq!(
        watch_ops(&out),
        [
            "watch 10.0.0.3",
            "unwatch 10.0.0.3",
            "watch 10.0.0.3",
            "unwatch 10.0.0.3"
        ]
    );
    let recs = engine.recommendations();
    let web = recs
        .iter()
        .find(|r| r.service.as_deref() == Some("web"))
        .expect("service recommendation");
    assert!(
        web.verdict
            .iter()
            .any(|v| v.contains("1 connects failed within 2 s of a pod becoming ready")),
        "{:#?}",
        web.verdict
    );
}

#[test]
fn failures_are_counted_by_class() {
    use FailureClass::*;
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.push(Step::Pod(
        10_000,
        Event::Apply(pod("web-1", "u1", WEB1, true, true)),
    ));
    let unwatched =
        |syn_ms, waited, class| Step::Connect(failed(WEB1_HTTP, syn_ms, waited, class, false));
    steps.extend([
        unwatched(11_000, 1, Refused),
        unwatched(11_100, 3_000, HostUnreachable),
        // No route: connect() failed before any SYN left.
        Step::Connect(record(
            WEB1_HTTP,
            11_200,
            None,
            false,
            Outcome::Failed {
                class: NetUnreachable,
                errno: libc::ENETUNREACH,
                waited_ns: 0,
                synchronous: true,
            },
        )),
        unwatched(11_300, 1_000, TimedOut),
        unwatched(11_400, 200, Aborted),
        // A reset cuts a connection opened before deletion: a failure,
        // not a new connect.
        unwatched(9_000, 3_000, Reset),
        unwatched(11_500, 1, Other),
    ]);
    steps.push(Step::Tick(12_000));
    let out = run(&mut engine, steps);
    let t = &engine.snapshot(ms(12_000)).open[0];
    let expected = FailureCounts {
        refused: 1,
        host_unreachable: 1,
        net_unreachable: 1,
        timed_out: 1,
        aborted: 1,
        reset: 1,
        cut: 0,
        other: 1,
    };
    assert_eq!(t.failures, expected);
    assert_eq!(t.connects_after_deletion, 6);
    assert_eq!(t.last_connect, Some(ms(11_500)));
    let times: Vec<u64> = t.failure_times.iter().map(|(at, _)| at.0 / MS).collect();
    assert_eq!(
        times,
        [11_001, 11_200, 11_501, 11_600, 12_000, 12_300, 14_100]
    );
    for class in FailureClass::ALL {
        assert_eq!(
            engine.counters().failures(PodState::Terminating, class),
            expected.get(class),
            "{class:?}"
        );
    }
    assert!(findings(&out).is_empty());
    // The same failure on a port the Service does not advertise is outside
    // the window: a finding of its own.
    let out = run(
        &mut engine,
        vec![Step::Connect(failed(
            "10.0.0.1:9999",
            13_000,
            1,
            Refused,
            false,
        ))],
    );
    let f = findings(&out);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].kind, f[0].pod_state),
        (FindingKind::ToTerminatingPod, PodState::Terminating)
    );
    assert_eq!(f[0].service.as_deref(), Some("web"));
    assert_eq!(
        engine.counters().failures(PodState::Terminating, Refused),
        2
    );
}

#[test]
fn windows_close_after_the_quiet_period_or_at_shutdown() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = listed(
        1_000,
        vec![
            pod("web-1", "u1", WEB1, true, false),
            pod("web-2", "u2", "10.0.0.2", true, false),
        ],
        vec![slice(&[
            (WEB1, "u1", true, false),
            ("10.0.0.2", "u2", true, false),
        ])],
    );
    steps.extend([
        Step::Pod(10_000, Event::Apply(pod("web-1", "u1", WEB1, true, true))),
        Step::Pod(
            10_000,
            Event::Apply(pod("web-2", "u2", "10.0.0.2", true, true)),
        ),
        // Still in the API (a finalizer, a long grace period): stays open.
        Step::Tick(100_000),
        Step::Pod(
            100_000,
            Event::Delete(pod("web-1", "u1", WEB1, false, true)),
        ),
        // A straggler restarts the quiet period.
        Step::Connect(syn(WEB1_HTTP, 103_000)),
        Step::Tick(107_999),
    ]);
    let out = run(&mut engine, steps);
    assert!(closed(&out).is_empty());
    let out = run(&mut engine, vec![Step::Tick(108_000)]);
    let t = only(closed(&out));
    assert_eq!((t.uid.as_str(), t.closed), ("u1", Some(CloseReason::Quiet)));
    assert_eq!(t.propagation_gap_ns, Some(93_000 * MS as i64));

    let mut out = Vec::new();
    engine.finish(ms(200_000), &mut out);
    let t = only(closed(&out));
    assert_eq!(
        (t.uid.as_str(), t.closed),
        ("u2", Some(CloseReason::Shutdown))
    );
    assert_eq!(watch_ops(&out), ["unwatch 10.0.0.2"]);
    let recs = engine.recommendations();
    assert!(
        recs.iter().all(|r| r.samples == 1),
        "shutdown windows are not samples"
    );
}

#[test]
fn an_error_report_without_its_close_counts_but_does_not_extend_the_gap() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.extend([
        Step::Pod(10_000, Event::Apply(pod("web-1", "u1", WEB1, true, true))),
        Step::Connect(syn(WEB1_HTTP, 11_000)),
        // The close of a connect was lost; its error report arrives 3 s
        // after its SYN, with no SYN time of its own.
        Step::Connect(record(
            WEB1_HTTP,
            14_000,
            None,
            false,
            Outcome::Failed {
                class: FailureClass::HostUnreachable,
                errno: libc::EHOSTUNREACH,
                waited_ns: 0,
                synchronous: false,
            },
        )),
        Step::Pod(15_000, Event::Delete(pod("web-1", "u1", WEB1, false, true))),
        Step::Slice(15_500, Event::Apply(slice(&[]))),
        Step::Tick(30_000),
    ]);
    let out = run(&mut engine, steps);
    let t = only(closed(&out));
    assert_eq!(
        t.last_connect,
        Some(ms(11_000)),
        "the report is not a connect"
    );
    assert_eq!(t.propagation_gap_ns, Some(1_000 * MS as i64));
    assert_eq!(t.failures.host_unreachable, 1, "the failure still counts");
}

/// A failure storm the kernel counted arrives as one record per class with
/// a count: the termination's figures and the metrics count every failure.
#[test]
fn a_counted_failure_storm_counts_every_failure() {
    use FailureClass::*;
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.push(Step::Pod(
        10_000,
        Event::Apply(pod("web-1", "u1", WEB1, true, true)),
    ));
    let mut storm = failed(WEB1_HTTP, 11_400, 1, Refused, false);
    storm.count = 5_000;
    steps.extend([
        Step::Connect(failed(WEB1_HTTP, 11_000, 1, Refused, false)),
        Step::Connect(storm),
        Step::Tick(12_000),
    ]);
    run(&mut engine, steps);
    let t = &engine.snapshot(ms(12_000)).open[0];
    assert_eq!(t.failures.refused, 5_001);
    assert_eq!(t.connects_after_deletion, 5_001);
    assert_eq!(t.last_connect, Some(ms(11_400)), "the storm's latest SYN");
    assert_eq!(
        engine.counters().failures(PodState::Terminating, Refused),
        5_001
    );
    // Outside any window (a ready pod of another Service): counted by state.
    let mut elsewhere = failed("10.0.0.99:80", 13_000, 1, Refused, false);
    elsewhere.count = 300;
    run(&mut engine, vec![Step::Connect(elsewhere)]);
    assert_eq!(engine.counters().failures(PodState::Unknown, Refused), 300);
}

/// A pod whose window closed when its address went to another pod, then
/// vanished while the watch was down: its termination was already
/// reported, and the relist must not report it again (a second window
/// would count it twice).
#[test]
fn a_pod_removed_while_unwatched_after_its_window_closed_is_reported_once() {
    let mut engine = Engine::new(ingress_nginx());
    let mut steps = web1_listed();
    steps.extend([
        Step::Pod(15_000, Event::Apply(pod("web-1", "u1", WEB1, false, true))),
        Step::Pod(16_000, Event::Apply(pod("web-2", "u2", WEB1, true, false))),
    ]);
    // The watch dropped; the relist after it no longer holds web-1.
    steps.extend(listed(
        20_000,
        vec![pod("web-2", "u2", WEB1, true, false)],
        vec![slice(&[(WEB1, "u2", true, false)])],
    ));
    steps.push(Step::Tick(90_000));
    let out = run(&mut engine, steps);
    let opened: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::TerminationOpened(t) => Some(t.uid.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(opened, ["u1"], "one termination, opened once");
    let t = only(closed(&out));
    assert_eq!(t.closed, Some(CloseReason::IpReused));
    assert_eq!(engine.counters().terminations_closed, 1);
}

#[test]
fn the_engine_is_idle_only_with_no_window_open_and_no_address_watched() {
    let mut engine = Engine::new(ingress_nginx());
    run(&mut engine, web1_listed());
    assert!(engine.is_idle(), "a ready pod: nothing to tick for");
    run(
        &mut engine,
        vec![Step::Pod(
            10_000,
            Event::Apply(pod("web-1", "u1", WEB1, true, true)),
        )],
    );
    assert!(!engine.is_idle(), "web-1's window is open");
    let out = run(
        &mut engine,
        vec![
            Step::Pod(15_000, Event::Delete(pod("web-1", "u1", WEB1, false, true))),
            Step::Slice(15_500, Event::Apply(slice(&[]))),
            Step::Tick(30_000),
        ],
    );
    assert_eq!(closed(&out).len(), 1);
    assert!(engine.is_idle(), "closed, and its address released");
}
