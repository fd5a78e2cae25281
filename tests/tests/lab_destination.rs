//! The lab's destination-side scenarios end to end: a load balancer
//! outside the cluster, and an ingress sending through a Service's
//! ClusterIP. In both only the pods' node's receiving side sees where the
//! requests went; each test checks it against the wire, and that the
//! recommendation it gives leaves a verify run clean.
//!
//! One lab at a time (a lock), each in its own lab id.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use observer::lab::scenario::IngressKind;
use observer::lab::{EngineMeasure, LabReport, LabScenario, render_summary, run_lab};
use observer_tests::assert_lab_clean as assert_clean;
use observer_tests::require_root;

/// One lab at a time: the runs are timing measurements.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How far the destination side's last arrival may be from the wire's
/// last SYN or request.
const ARRIVAL_TOLERANCE_MS: f64 = 20.0;

/// A load balancer outside the cluster (an ALB in IP mode): no ingress on
/// any node, its sockets unseen; only the pods' node's receiving side
/// measures. Its last arrival at each pod matches the wire, its
/// recommendation comes from it, and a verify run with it is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_load_balancer_is_measured_from_the_pods_node() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 3,
        rollouts: 1,
        prestop: Duration::ZERO,
        propagation_delay: Duration::from_secs(3),
        ingress: IngressKind::External,
        lab_id: 24,
        ..LabScenario::default()
    };
    let report = run_lab(&scenario, true, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert_eq!(report.scenario.ingress, "external");
    assert_eq!(report.terminations.len(), 3);
    assert_eq!(report.wire.dropped, 0, "the capture lost frames");
    assert_eq!(report.served.ingress, 0, "no ingress in the cluster");
    for t in &report.terminations {
        let arrival = t
            .measured_last_arrival_ms
            .unwrap_or_else(|| panic!("{}: no destination-side view: {t:?}", t.pod));
        let wire = t
            .wire_last_send_ms
            .expect("the load balancer chose the pod after deletion");
        assert!(
            wire > 2_500.0,
            "{}: chosen until the load balancer applied the change",
            t.pod
        );
        if t.wire_unresolved {
            // The wire saw only a lower bound.
            assert!(arrival >= wire - ARRIVAL_TOLERANCE_MS, "{t:?}");
        } else {
            assert!(
                (arrival - wire).abs() <= ARRIVAL_TOLERANCE_MS,
                "{}: the wire's last send {wire} ms, last arrival {arrival} ms",
                t.pod
            );
        }
        // No sender-side gap: no ingress measured one; the gap is the
        // arrival's.
        assert_eq!(t.measured_gap_ms, Some(arrival), "{t:?}");
        assert!(t.measured_last_send_ms.is_none(), "{t:?}");
    }
    assert!(report.client.errors > 0, "no preStop, no retries: 502s");
    assert_recommendation_covers(&report, 4);
}

/// nginx sends to the Service's ClusterIP, DNATed by the node as
/// kube-proxy does: its sockets never connect to a pod's address, so only
/// the pods' node sees where each request went. The last arrivals match
/// the wire, the recommendation comes from them, and a verify run is
/// clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_through_a_cluster_ip_is_measured_from_the_pods_node() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        prestop: Duration::ZERO,
        propagation_delay: Duration::from_secs(2),
        via_service: true,
        lab_id: 25,
        ..LabScenario::default()
    };
    let report = run_lab(&scenario, true, EngineMeasure::default)
        .await
        .expect("lab run");
    println!("{}", render_summary(&report));
    assert_clean(&scenario);
    assert!(report.scenario.via_service);
    assert_eq!(report.terminations.len(), 2);
    for t in &report.terminations {
        let arrival = t
            .measured_last_arrival_ms
            .unwrap_or_else(|| panic!("{}: no destination-side view: {t:?}", t.pod));
        let wire = t
            .wire_last_send_ms
            .expect("nginx chose the pod after deletion");
        assert!(!t.wire_unresolved, "{t:?}");
        assert!(
            (arrival - wire).abs() <= ARRIVAL_TOLERANCE_MS,
            "{}: the wire's last send {wire} ms, last arrival {arrival} ms",
            t.pod
        );
        // The sending side saw no connect to the pod's address.
        assert!(t.measured_last_send_ms.unwrap_or(0.0) < 1.0, "{t:?}");
    }
    assert_recommendation_covers(&report, 3);
}

/// The recommendation comes from the arrivals, is at least
/// `prestop_seconds`, and the verify run with it is clean.
fn assert_recommendation_covers(report: &LabReport, prestop_seconds: u64) {
    let rec = report
        .recommendation
        .expect("a recommendation from the arrivals");
    assert!(
        rec.prestop_seconds >= prestop_seconds,
        "covers the delay: {rec:?}"
    );
    let verify = report.verify.expect("verified");
    assert_eq!(
        (verify.failed_connects, verify.client_errors),
        (0, 0),
        "the recommended preStop removes every failure"
    );
}
