//! The lab end to end: real namespaces, real nginx, the simulator, the
//! kernel probe. Each test runs a short rolling update and checks the
//! measurement against the lab's ground truth (nginx's access log), then
//! that the lab left nothing behind.
//!
//! The tests share two cores with the rest of the suite, so they run one at
//! a time (a lock), each in its own lab id (names and pod CIDR).
//!
//! `ProbeOnlyMeasure` sees connects (SYNs) only, not requests sent on
//! pooled connections, so every scenario it measures turns upstream
//! keep-alive off; the engine's scenarios keep the default (nginx pools).

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use observer::lab::report::{ConnectorRole, TerminationReport};
use observer::lab::scenario::IngressKind;
use observer::lab::{
    EngineMeasure, LabReport, LabScenario, ProbeOnlyMeasure, render_summary, run_lab,
};
use observer_tests::{assert_lab_clean as assert_clean, require_root};

/// One lab at a time: the runs are timing measurements.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How far a measured gap may be from the truth.
const TOLERANCE_MS: f64 = 50.0;

/// Runs `scenario` measured by the probe alone (connects only).
async fn run(scenario: &LabScenario) -> LabReport {
    let report = run_lab(scenario, false, ProbeOnlyMeasure::new)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    assert_clean(scenario);
    report
}

/// The probe-only measurement with keep-alive off: every send is a SYN,
/// and its last SYN is the last send (it cannot tell a retry from a
/// choice), so it is checked against the truth's last send.
fn assert_last_send_accurate(report: &LabReport, expected_terminations: usize) {
    assert_eq!(report.scenario.upstream_keepalive, 0, "SYNs are every send");
    assert_eq!(report.terminations.len(), expected_terminations);
    for t in &report.terminations {
        assert!(
            t.truth_last_send_ms.is_some(),
            "{}: nginx sent nothing after the deletion",
            t.pod
        );
        let error = t
            .last_send_error_ms()
            .expect("the probe-only measurement tells its last send");
        assert!(
            error <= TOLERANCE_MS,
            "{}: truth's last send {:?} ms, measured {:?} ms",
            t.pod,
            t.truth_last_send_ms,
            t.measured_last_send_ms
        );
    }
}

/// The engine's propagation gap against the truth's choice gap.
fn assert_accurate(report: &LabReport, expected_terminations: usize) {
    assert_eq!(report.terminations.len(), expected_terminations);
    for t in &report.terminations {
        assert!(
            t.truth_gap_ms.is_some(),
            "{}: nginx sent nothing after the deletion",
            t.pod
        );
        assert!(
            t.error_ms() <= TOLERANCE_MS,
            "{}: truth {:?} ms, measured {:?} ms",
            t.pod,
            t.truth_gap_ms,
            t.measured_gap_ms
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_gap_matches_nginx_truth() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(1),
        qps: 100,
        lab_id: 11,
        upstream_keepalive: 0,
        ..LabScenario::default()
    };
    let report = run(&scenario).await;
    assert_last_send_accurate(&report, 2);
    // Without preStop the naive app refuses while nginx still sends to it.
    assert!(report.failed_connects() > 0, "failures are measured");
    assert!(report.client.requests > 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_gap_matches_nginx_truth() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(1),
        qps: 100,
        ipv6: true,
        lab_id: 12,
        upstream_keepalive: 0,
        ..LabScenario::default()
    };
    let report = run(&scenario).await;
    assert_eq!(report.scenario.ip_family, "ipv6");
    assert_last_send_accurate(&report, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommended_prestop_removes_the_failures() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(2),
        qps: 100,
        lab_id: 13,
        ..LabScenario::default()
    };
    // Only the engine recommends: the verify run needs its measurement.
    let report = run_lab(&scenario, true, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert!(report.failed_connects() > 0, "no preStop: failed connects");
    let rec = report.recommendation.expect("a recommendation");
    assert!(rec.prestop_seconds >= 3, "covers a 2 s delay: {rec:?}");
    let verify = report.verify.expect("verify ran");
    assert_eq!(verify.prestop_seconds, rec.prestop_seconds);
    assert_eq!(
        verify.termination_grace_period_seconds,
        rec.termination_grace_period_seconds
    );
    assert_eq!(verify.failed_connects, 0, "failures remain: {verify:?}");
    assert_eq!(verify.client_errors, 0, "users saw errors: {verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_ips_are_attributed_by_time() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        // With maxSurge 1 a rollout's new pods start while the old ones
        // still hold their IPs, so the IPs freed by rollout 1 go to the pods
        // of rollout 2, which rollout 3 terminates.
        rollouts: 3,
        propagation_delay: Duration::from_secs(1),
        qps: 100,
        reuse_ips: true,
        lab_id: 14,
        upstream_keepalive: 0,
        ..LabScenario::default()
    };
    let report = run(&scenario).await;
    let mut ips: Vec<_> = report.terminations.iter().map(|t| t.ip).collect();
    ips.sort();
    ips.dedup();
    assert!(
        ips.len() < report.terminations.len(),
        "an IP was reused by a later pod that was also terminated"
    );
    // A connect to the IP's next holder counted for the old pod would make
    // its gap run into the next pod's life, far from the truth.
    assert_last_send_accurate(&report, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_gap_matches_nginx_truth() {
    require_root();
    let _serial = SERIAL.lock().await;
    let kept = std::env::temp_dir().join(format!("obslab15-logs-{}", std::process::id()));
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(1),
        qps: 100,
        lab_id: 15,
        keep_logs: Some(kept.clone()),
        // The default neighbours: the kubelet probing every second and a
        // bystander scraping 5 times a second.
        ..LabScenario::default()
    };
    let report = run_lab(&scenario, false, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_eq!(report.terminations.len(), 2);
    assert_kept_records(&kept, &report);
    let _ = std::fs::remove_dir_all(&kept);
    // The gap ends at the last choice, over pooled connections and new
    // ones alike; retries after failures (SYNs and pooled requests) do not
    // move it.
    assert_choices_within(&report, POOLED_TOLERANCE_MS);
    assert!(report.failed_connects() > 0, "failures are measured");
    assert!(report.recommendation.is_some(), "the engine recommends");
    assert_hidden_failures_match(&report);
    assert_views_agree(&report);
    // nginx retried the refused tries elsewhere, and old workers kept
    // retrying at the pods after they stopped choosing them: the engine's
    // last send sees those retries, its gap does not.
    for t in &report.terminations {
        assert!(t.retries > 0, "{t:?}");
        let (Some(truth), Some(measured)) = (t.truth_last_send_ms, t.measured_last_send_ms) else {
            panic!("{}: no last send: {t:?}", t.pod);
        };
        assert!(
            (truth - measured).abs() <= POOLED_TOLERANCE_MS,
            "{}: last send {truth} ms, measured {measured} ms",
            t.pod
        );
    }
}

/// The sandboxes linger past the propagation delay, so every address
/// still resolves while nginx sends to it and the wire sees each send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_truth_agrees_with_nginx_log() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(1),
        sandbox_linger: Duration::from_secs(4),
        lab_id: 23,
        ..LabScenario::default()
    };
    let report = run_lab(&scenario, false, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert_eq!(report.terminations.len(), 2);
    assert_wire_agrees_with_the_log(&report);
    assert_hidden_failures_match(&report);
}

/// The wire truth (frames on the lab's bridge) and nginx's log agree on
/// each termination's last send, wherever the pod's address still
/// resolved (else the wire cannot see the sends queued behind it).
fn assert_wire_agrees_with_the_log(report: &LabReport) {
    assert_eq!(report.wire.dropped, 0, "the capture lost frames");
    for t in &report.terminations {
        if t.wire_unresolved {
            continue;
        }
        let error = t
            .wire_error_ms()
            .unwrap_or_else(|| panic!("{}: no wire truth: {t:?}", t.pod));
        assert!(
            error <= 5.0,
            "{}: nginx's log says the last send was at {:?} ms, the wire {:?} ms",
            t.pod,
            t.truth_last_send_ms,
            t.wire_last_send_ms
        );
    }
    assert!(
        report.terminations.iter().all(|t| !t.wire_unresolved),
        "the wire saw every termination whole"
    );
}

/// Failed connects split into those the ingress retried elsewhere and
/// those users saw, within 5 % of the ingress's own records. A retry over
/// a pooled connection makes no connect: the kernel counts its failure as
/// not retried (docs/ENGINE.md, "Hidden failures"), and so does this
/// check.
fn assert_hidden_failures_match(report: &LabReport) {
    let h = &report.hidden;
    assert!(h.truth_retried > 0, "the ingress retried failures: {h:?}");
    assert!(
        h.visible_retried_error_percent() <= 5.0 && h.visible_not_retried_error_percent() <= 5.0,
        "measured {} retried / {} not, the ingress's records {} / {} ({} retried over pooled connections)",
        h.measured_retried,
        h.measured_not_retried,
        h.truth_retried,
        h.truth_not_retried,
        h.truth_retried_pooled
    );
}

/// HAProxy, its servers changed in place over the runtime API (no
/// reload), `retries 3` with `option redispatch`: the last send against
/// the wire truth, the failures it hid against its own log, and the
/// recommendation verified. The sandboxes linger past the propagation
/// delay, so the wire sees every send. One connection per request: a
/// retry over a pooled connection to a healthy pod makes no connect, and
/// the kernel cannot see it (docs/ENGINE.md, "Hidden failures").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_matches_the_wire_and_its_own_retries() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 3,
        rollouts: 1,
        propagation_delay: Duration::from_millis(1000),
        jitter: Duration::from_millis(300),
        sandbox_linger: Duration::from_secs(3),
        upstream_keepalive: 0,
        ingress: IngressKind::Haproxy,
        lab_id: 22,
        ..LabScenario::default()
    };
    let report = run_lab(&scenario, true, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert_eq!(report.terminations.len(), 3);
    assert_eq!(report.wire.dropped, 0, "the capture lost frames");
    for t in &report.terminations {
        assert!(
            !t.wire_unresolved,
            "{}: the wire missed sends: {t:?}",
            t.pod
        );
        let wire = t.wire_last_send_ms.unwrap_or(0.0);
        let send = t.measured_last_send_ms.unwrap_or(0.0);
        let gap = t.measured_gap_ms.unwrap_or(0.0);
        assert!(
            (send - wire).abs() <= POOLED_TOLERANCE_MS,
            "{}: the wire's last send {wire} ms, measured {send} ms",
            t.pod
        );
        // The gap ends at the last choice: at or before the last send,
        // which may be a retry (the wire cannot tell one from a choice).
        assert!(
            gap <= wire + POOLED_TOLERANCE_MS,
            "{}: the wire's last send {wire} ms, measured gap {gap} ms",
            t.pod
        );
    }
    assert!(report.failed_connects() > 0, "failures are measured");
    assert_hidden_failures_match(&report);
    assert_views_agree(&report);
    let verify = report.verify.expect("verified");
    assert_eq!(
        (verify.failed_connects, verify.client_errors),
        (0, 0),
        "the recommended preStop removes every failure"
    );
}

/// Caddy, a Go proxy: its upstreams changed in place over the admin API,
/// each failed request tried again after Caddy's own 250 ms backoff, on
/// whichever thread runs its goroutine, with Go's connection pools. The
/// truth is Caddy's log of every try (which knows a retry from a choice):
/// the measured gap ends at the last choice, never at a retry that came
/// a backoff later, and the recommendation is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_gap_ends_at_its_last_choice_despite_late_retries() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 3,
        rollouts: 1,
        propagation_delay: Duration::from_millis(1000),
        jitter: Duration::from_millis(300),
        ingress: IngressKind::Caddy,
        lab_id: 26,
        ..LabScenario::default()
    };
    let report = run_lab(&scenario, true, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert_eq!(report.terminations.len(), 3);
    assert_eq!(report.wire.dropped, 0, "the capture lost frames");
    assert!(
        report.hidden.truth_retried > 0,
        "Caddy retried failed tries: {:?}",
        report.hidden
    );
    assert_choices_within(&report, GO_RETRY_TOLERANCE_MS);
    assert_views_agree(&report);
    let verify = report.verify.expect("verified");
    assert_eq!(
        verify.failed_connects, 0,
        "the recommended preStop removes every failed connect to a pod"
    );
    // One verify run of the bench's twelve had a client error with no
    // failed connect to any pod: an error of Caddy's own, which no preStop
    // of the pods removes. More than that is the rollout's.
    assert!(
        verify.client_errors <= 1,
        "{} client errors with the recommended preStop",
        verify.client_errors
    );
}

/// How far the gap may be from the last choice of a proxy that retries
/// after a backoff, on any thread.
const GO_RETRY_TOLERANCE_MS: f64 = 50.0;

/// How far the two views of the same packets may be apart: both date a
/// pooled request by its connection's close, to a jiffy each (4 ms at the
/// usual 250 Hz).
const VIEWS_TOLERANCE_MS: f64 = 10.0;

/// The ingress's sender-side last send and its destination-side last
/// arrival (the pods run on the lab's node) are the same packets.
fn assert_views_agree(report: &LabReport) {
    for t in &report.terminations {
        let arrival = t
            .measured_last_arrival_ms
            .unwrap_or_else(|| panic!("{}: no destination-side view: {t:?}", t.pod));
        let send = t.measured_last_send_ms.unwrap_or(0.0);
        assert!(
            (arrival - send).abs() <= VIEWS_TOLERANCE_MS,
            "{}: last send {send} ms, last arrival {arrival} ms",
            t.pod
        );
        if let Some(apart) = t.views_apart_ms {
            assert!(
                apart.abs() <= VIEWS_TOLERANCE_MS,
                "{}: {apart} ms apart",
                t.pod
            );
        }
    }
}

/// `--keep-logs` keeps nginx's logs and the connect records the engine
/// measured from: every failure it counted for the terminations is there.
fn assert_kept_records(dir: &std::path::Path, report: &LabReport) {
    assert!(dir.join("obslab15-access.log").exists(), "nginx's log kept");
    let text = std::fs::read_to_string(dir.join("obslab15-records.ndjson")).expect("records kept");
    let records: Vec<observer::probe::ConnectRecord> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a record a line"))
        .collect();
    let pods: Vec<std::net::IpAddr> = report.terminations.iter().map(|t| t.ip).collect();
    let failures: u64 = records
        .iter()
        .filter(|r| pods.contains(&r.dst.ip()) && r.failure_class().is_some())
        .map(|r| r.count)
        .sum();
    assert!(
        failures > 0 && failures >= report.failed_connects(),
        "{failures} failures kept, {} measured",
        report.failed_connects()
    );
}

/// How far the engine's gap may be from the truth's last choice when the
/// ingress pools its upstream connections (the last request on a pooled
/// connection is known to a jiffy).
const POOLED_TOLERANCE_MS: f64 = 20.0;

fn assert_choices_within(report: &LabReport, tolerance_ms: f64) {
    for t in &report.terminations {
        let (Some(truth), Some(measured)) = (t.truth_gap_ms, t.measured_gap_ms) else {
            panic!("{}: no choice gap: {t:?}", t.pod);
        };
        assert!(
            (truth - measured).abs() <= tolerance_ms,
            "{}: last choice {truth} ms, measured {measured} ms",
            t.pod
        );
    }
}

/// With a preStop the pods keep serving their pooled connections: the
/// ingress chooses them through requests on those connections, without a
/// SYN, until it learns of the removal. Over IPv6, with the default pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_gap_over_pooled_connections_matches_last_choice() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(1),
        prestop: Duration::from_secs(3),
        ipv6: true,
        lab_id: 21,
        ..LabScenario::default()
    };
    let report = run_lab(&scenario, false, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert_eq!(report.terminations.len(), 2);
    assert_choices_within(&report, POOLED_TOLERANCE_MS);
    for t in &report.terminations {
        assert!(
            t.pooled_tries > 0,
            "requests went over pooled connections: {t:?}"
        );
    }
    assert_eq!(report.failed_connects(), 0);
    assert_eq!(report.client.errors, 0);
}

/// The edges of the accuracy target at the default rate (200 qps): the
/// shortest delay with jitter over IPv6, the longest with jitter over IPv4.
/// `cargo xtask bench lab` sweeps the points in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_jittered_delay_over_ipv6_matches_truth() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_millis(500),
        jitter: Duration::from_millis(250),
        seed: 7,
        ipv6: true,
        lab_id: 16,
        upstream_keepalive: 0,
        ..LabScenario::default()
    };
    let report = run(&scenario).await;
    assert_eq!(report.scenario.qps, 200, "the default rate");
    assert_last_send_accurate(&report, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jittered_delay_matches_truth() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(10),
        jitter: Duration::from_secs(2),
        seed: 3,
        lab_id: 17,
        upstream_keepalive: 0,
        ..LabScenario::default()
    };
    let report = run(&scenario).await;
    assert_eq!(report.scenario.jitter_ms, 2_000);
    assert_last_send_accurate(&report, 2);
}

/// A node's real neighbours: the kubelet probes every pod from the node
/// until its container exits (through an 8 s preStop), and a bystander pod
/// scrapes the pod IPs directly. nginx's access log (the truth) holds the
/// ingress's tries only. The agent's pipeline must measure the ingress
/// alone, recommend from it (not from probes that run as long as the
/// preStop), and the recommendation must still leave no failure; the
/// neighbours are reported beside the gap with their own last connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_measures_the_ingress_not_its_neighbours() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = neighbours_scenario(18);
    let report = run_lab(&scenario, true, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert_neighbours_ran(&report);
    assert_accurate(&report, 2);
    let rec = report.recommendation.expect("the engine recommends");
    let max_gap_ms = report
        .terminations
        .iter()
        .filter_map(|t| t.measured_gap_ms)
        .fold(0.0, f64::max);
    // The gap plus the engine's 1 s margin, rounded up: about 3 s for a
    // 1 s propagation delay, where the probes ran for 8 s.
    assert_eq!(
        rec.prestop_seconds,
        ((max_gap_ms + 1_000.0) / 1_000.0).ceil() as u64,
        "recommended from the ingress's gap"
    );
    assert!(rec.prestop_seconds < 8, "{rec:?}");
    let verify = report.verify.expect("verify ran");
    assert_eq!(verify.failed_connects, 0, "failures remain: {verify:?}");
    assert_eq!(verify.client_errors, 0, "users saw errors: {verify:?}");
    for t in &report.terminations {
        assert_named_connectors(t);
    }
}

/// The same neighbours measured by the lab's own probe-only measurement,
/// which counts the ingress pod's cgroup only: within the tolerance of the
/// truth, with the kubelet and the bystander reported beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_only_gap_ignores_probes_and_scrapes() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        upstream_keepalive: 0,
        ..neighbours_scenario(19)
    };
    let report = run(&scenario).await;
    assert_neighbours_ran(&report);
    assert_last_send_accurate(&report, 2);
    for t in &report.terminations {
        assert_named_connectors(t);
    }
}

/// The ingress, the kubelet (probing through the preStop) and the
/// bystander, each with its own last connect.
fn assert_named_connectors(t: &TerminationReport) {
    let role = |r: ConnectorRole| t.connectors.iter().find(|c| c.role == r);
    let ingress = role(ConnectorRole::Ingress).expect("the ingress connected");
    assert!(
        ingress
            .name
            .starts_with("ingress-nginx/ingress-nginx-controller-")
    );
    let kubelet = role(ConnectorRole::Kubelet).expect("the kubelet probed");
    assert_eq!(kubelet.name, "kubelet");
    // It probes through the preStop: far later than the ingress.
    let last = kubelet.last_connect_ms.expect("a probe after deletion");
    assert!(last > 6_000.0, "{}: last probe at {last} ms", t.pod);
    let scraper = role(ConnectorRole::Pod).expect("the bystander scraped");
    assert_eq!(scraper.name, "monitoring/prometheus-0");
}

fn neighbours_scenario(lab_id: u8) -> LabScenario {
    LabScenario {
        pods: 2,
        rollouts: 1,
        prestop: Duration::from_secs(8),
        propagation_delay: Duration::from_secs(1),
        probe_period: Duration::from_millis(500),
        bystander_qps: 20,
        qps: 100,
        lab_id,
        ..LabScenario::default()
    }
}

fn assert_neighbours_ran(report: &LabReport) {
    assert_eq!(report.scenario.probe_period_ms, 500);
    let served = report.served;
    assert!(served.ingress > 300, "{served:?}");
    // 4 pods live about 10 s each at 2 probes a second, and 20 scrapes a
    // second go round them for the whole run.
    assert!(served.kubelet > 40, "the kubelet probed: {served:?}");
    assert!(served.bystander > 100, "the bystander scraped: {served:?}");
    assert_eq!(served.other, 0, "{served:?}");
}

/// Upstream keep-alive on (the default) and the naive app (no preStop, no
/// drain) that takes 50 ms per request: nginx sends on pooled connections,
/// and the app's exit at the deletion closes them under nginx, cutting the
/// requests in flight. The truth (nginx's log) counts both, and the engine
/// counts each cut as a failure of the pod that cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tries_and_cut_requests_are_counted() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_secs(1),
        qps: 100,
        // Each pod gets a request every 20 ms: two or three are in flight
        // when it exits.
        app_latency: Duration::from_millis(50),
        lab_id: 20,
        ..LabScenario::default()
    };
    assert_eq!(scenario.upstream_keepalive, 32, "pooling is the default");
    let report = run_lab(&scenario, false, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert_eq!(report.scenario.upstream_keepalive, 32);
    assert_eq!(report.terminations.len(), 2);
    let n = report.ingress;
    assert!(
        n.pooled_tries > 10 * n.new_connection_tries,
        "nginx reused its connections: {n:?}"
    );
    let cut: u64 = report.terminations.iter().map(|t| t.cut_requests).sum();
    assert!(cut > 0, "the terminated pods' exits cut requests: {n:?}");
    assert_eq!(cut, report.cut_requests(), "only terminated pods cut");
    // The engine sees each cut as a failure of the pod that cut it: its
    // connection closed (FIN) with a request sent and nothing answered.
    let measured: u64 = report.terminations.iter().map(|t| t.failures.cut).sum();
    assert!(
        measured.abs_diff(cut) <= (cut / 4).max(2),
        "cut in flight: {measured} measured, {cut} in nginx's log"
    );
    for t in &report.terminations {
        if t.cut_requests > 0 {
            assert!(t.failures.cut > 0, "{}: its cut requests: {t:?}", t.pod);
        }
    }
    for t in &report.terminations {
        assert!(t.truth_gap_ms.is_some(), "{}: chosen after deletion", t.pod);
        assert!(
            t.truth_last_send_ms >= t.truth_gap_ms,
            "{}: the last send is never before the last choice",
            t.pod
        );
    }
}
