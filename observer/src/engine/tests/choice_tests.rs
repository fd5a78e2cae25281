//! Choices, retries and pooled sends: the gap ends at the ingress's last
//! choice of the pod (a first try, or a request on a pooled connection);
//! retries that failures caused make the retry tail, never the gap.

use kube::runtime::watcher::Event;

use super::*;
use crate::probe::retry::RetriedFailure;

const WEB1: &str = "10.0.0.1";
const WEB1_HTTP: &str = "10.0.0.1:8080";

/// web-1 listed, deleted at 10 s, endpoint not ready at 10.5 s, gone at
/// 20 s; `connects` in between; closed by a tick at 40 s.
fn rollout(pod_spec: Pod, deleting: Pod, connects: Vec<ConnectRecord>) -> Vec<Step> {
    let mut steps = listed(
        1_000,
        vec![pod_spec],
        vec![slice(&[(WEB1, "u1", true, false)])],
    );
    steps.extend([
        Step::Pod(10_000, Event::Apply(deleting.clone())),
        Step::Slice(10_500, Event::Apply(slice(&[(WEB1, "u1", false, true)]))),
    ]);
    steps.extend(connects.into_iter().map(Step::Connect));
    steps.extend([
        Step::Pod(20_000, Event::Delete(deleting)),
        Step::Tick(40_000),
    ]);
    steps
}

fn web1(deleting: bool) -> Pod {
    pod("web-1", "u1", WEB1, true, deleting)
}

fn retry(dst: &str, t_ms: u64) -> ConnectRecord {
    let mut r = syn(dst, t_ms);
    r.retry = true;
    r
}

/// A pooled connection to `dst` closing at `closed_ms`, whose last
/// request went out at `sent_ms`.
fn pooled(dst: &str, sent_ms: u64, closed_ms: u64) -> ConnectRecord {
    record(
        dst,
        closed_ms,
        None,
        true,
        Outcome::Sent {
            last_send: ms(sent_ms),
        },
    )
}

fn pooled_retry(dst: &str, sent_ms: u64, closed_ms: u64) -> ConnectRecord {
    let mut r = pooled(dst, sent_ms, closed_ms);
    r.retry = true;
    r
}

fn closed_one(engine: &mut Engine, steps: Vec<Step>) -> PodTermination {
    let out = run(engine, steps);
    let records = closed(&out);
    assert_eq!(records.len(), 1, "{records:#?}");
    records[0].clone()
}

#[test]
fn requests_on_pooled_connections_extend_the_gap_past_the_last_syn() {
    let mut engine = Engine::new(ingress_nginx());
    let t = closed_one(
        &mut engine,
        rollout(
            web1(false),
            web1(true),
            vec![
                syn(WEB1_HTTP, 11_000),
                // A keep-alive connection opened before the deletion kept
                // carrying requests until 13 s; it closed at 14 s.
                pooled(WEB1_HTTP, 13_000, 14_000),
                // One idle since before the deletion: not a send after it.
                pooled(WEB1_HTTP, 9_000, 14_500),
                // One whose last request retried a failure elsewhere.
                pooled_retry(WEB1_HTTP, 13_500, 14_600),
            ],
        ),
    );
    assert_eq!(t.last_connect, Some(ms(11_000)));
    assert_eq!(t.last_choice, Some(ms(13_000)));
    assert_eq!(t.last_send, Some(ms(13_500)));
    assert_eq!(t.propagation_gap_ns, Some(3_000 * MS as i64));
    assert_eq!(t.dataplane_lag_ns, Some(2_500 * MS as i64));
    assert_eq!(t.retry_tail_ns, Some(500 * MS as i64));
    assert_eq!(
        t.connects_after_deletion, 1,
        "a pooled request is no new connection"
    );
}

#[test]
fn retries_make_the_retry_tail_not_the_gap() {
    let mut engine = Engine::new(ingress_nginx());
    let t = closed_one(
        &mut engine,
        rollout(
            web1(false),
            web1(true),
            vec![
                syn(WEB1_HTTP, 11_000),
                failed(WEB1_HTTP, 12_000, 1, FailureClass::Refused, true),
                syn(WEB1_HTTP, 12_000),
                // Old workers retry requests that failed elsewhere, at a
                // pod the ingress no longer chooses.
                retry(WEB1_HTTP, 14_000),
                retry(WEB1_HTTP, 16_500),
            ],
        ),
    );
    assert_eq!(t.last_choice, Some(ms(12_000)));
    assert_eq!(t.last_connect, Some(ms(16_500)));
    assert_eq!(t.last_send, Some(ms(16_500)));
    assert_eq!(t.propagation_gap_ns, Some(2_000 * MS as i64));
    assert_eq!(t.retry_tail_ns, Some(4_500 * MS as i64));
    assert_eq!(t.connects_after_deletion, 4);
    assert_eq!(t.retries_after_deletion, 2);
    // The recommendation covers the 2 s of choices, not the 6.5 s tail.
    let rec = &engine.recommendations()[0];
    assert_eq!(rec.max_ms, 2_000.0);
    assert_eq!(rec.recommended_prestop_seconds, 3);
}

#[test]
fn a_watched_syns_outcome_does_not_count_it_again_as_a_choice() {
    let mut engine = Engine::new(ingress_nginx());
    let mut refused_retry = failed(WEB1_HTTP, 15_000, 1, FailureClass::Refused, true);
    refused_retry.retry = false; // outcomes never carry the flag
    let t = closed_one(
        &mut engine,
        rollout(
            web1(false),
            web1(true),
            vec![
                syn(WEB1_HTTP, 11_000),
                retry(WEB1_HTTP, 15_000),
                refused_retry,
            ],
        ),
    );
    assert_eq!(t.last_choice, Some(ms(11_000)));
    assert_eq!(t.failures.refused, 1);
}

#[test]
fn an_app_that_keeps_serving_after_sigterm_is_told_so() {
    let no_prestop = |deleting: bool| {
        let mut p = web1(deleting);
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[0].lifecycle = None;
        }
        p
    };
    let mut engine = Engine::new(ingress_nginx());
    let served = |t_ms: u64| {
        record(
            WEB1_HTTP,
            t_ms + 1,
            Some(t_ms),
            false,
            Outcome::Established { latency_ns: MS },
        )
    };
    let t = closed_one(
        &mut engine,
        rollout(
            no_prestop(false),
            no_prestop(true),
            vec![served(11_000), served(12_400)],
        ),
    );
    assert_eq!(t.served_after_deletion, 2);
    assert_eq!(t.failures.total(), 0);
    let rec = &engine.recommendations()[0];
    assert!(
        rec.verdict
            .iter()
            .any(|v| v.contains("delays its own shutdown after SIGTERM")),
        "{:#?}",
        rec.verdict
    );
    assert!(!rec.verdict.iter().any(|v| v.contains("expect refused")));
}

#[test]
fn the_recommendation_also_gives_the_sigterm_delay_form() {
    let mut engine = Engine::new(ingress_nginx());
    closed_one(
        &mut engine,
        rollout(web1(false), web1(true), vec![syn(WEB1_HTTP, 12_000)]),
    );
    let rec = &engine.recommendations()[0];
    assert_eq!(rec.recommended_prestop_seconds, 3);
    assert!(
        rec.sigterm_delay.contains("keep serving for 3 s"),
        "{}",
        rec.sigterm_delay
    );
    assert!(
        rec.yaml
            .contains("on SIGTERM keep accepting and serving for 3 s")
    );
}

/// A first try to web-2 that retried `failure`, a failure of web-1.
fn retry_of(failure: &ConnectRecord, t_ms: u64) -> ConnectRecord {
    let mut r = syn("10.0.0.2:8080", t_ms);
    r.retry = true;
    r.retried = Some(RetriedFailure {
        dst: failure.dst,
        at: failure.ts,
    });
    r
}

#[test]
fn failures_the_ingress_retried_are_hidden_the_rest_reached_users() {
    let mut engine = Engine::new(ingress_nginx());
    // Refused at 12 s, retried on web-2 1 ms later: hidden.
    let refused = failed(WEB1_HTTP, 12_000, 0, FailureClass::Refused, true);
    // A connect the proxy gave up on: reported `aborted` after the
    // decoder's grace, so its retry (at 13.001 s) arrives first.
    let aborted = failed(WEB1_HTTP, 10_100, 2_900, FailureClass::Aborted, true);
    // Refused with no try left: the user got a 502.
    let unretried = failed(WEB1_HTTP, 14_000, 0, FailureClass::Refused, true);
    let t = closed_one(
        &mut engine,
        rollout(
            web1(false),
            web1(true),
            vec![
                syn(WEB1_HTTP, 12_000),
                refused.clone(),
                retry_of(&refused, 12_001),
                retry_of(&aborted, 13_001),
                aborted.clone(),
                syn(WEB1_HTTP, 14_000),
                unretried,
                // A retry naming a failure nobody counted credits nothing.
                retry_of(
                    &failed("10.0.0.3:8080", 15_000, 0, FailureClass::Refused, true),
                    15_001,
                ),
            ],
        ),
    );
    assert_eq!(t.failures.total(), 3);
    assert_eq!(t.failures_retried, 2);
    assert_eq!(t.failures_not_retried, 1);
    let counters = engine.counters();
    assert_eq!(
        (counters.failures_retried, counters.failures_not_retried),
        (2, 1)
    );
}

#[test]
fn a_retry_is_credited_once_even_if_reported_twice() {
    let mut engine = Engine::new(ingress_nginx());
    let refused = failed(WEB1_HTTP, 12_000, 0, FailureClass::Refused, true);
    let t = closed_one(
        &mut engine,
        rollout(
            web1(false),
            web1(true),
            vec![
                syn(WEB1_HTTP, 12_000),
                refused.clone(),
                retry_of(&refused, 12_001),
                retry_of(&refused, 12_002),
            ],
        ),
    );
    assert_eq!((t.failures_retried, t.failures_not_retried), (1, 0));
}
