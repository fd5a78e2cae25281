//! Test data: engine output for a small rollout (two Services terminating
//! pods, one workload without a Service), and an `App` fed with it at a
//! fixed clock, so rendered screens are reproducible.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::clock::{MonoTime, WallClock};
use crate::engine::arrivals::{DestinationView, SenderArrivals, SenderKind};
use crate::engine::connector::{ConnectorRole, IngressStatus};
use crate::engine::recommend::GapView;
use crate::engine::{
    CloseReason, ConnectorActivity, EngineCounters, FailureCounts, Finding, FindingKind, PodState,
    PodTermination, Recommendation, Snapshot,
};
use crate::probe::{ConnectRecord, FailureClass, Outcome};
use crate::tui::adapt::{findings_update, snapshot_update};
use crate::tui::app::{Action, App};

pub const NOW: MonoTime = MonoTime(1_000_000_000_000);
/// 2026-01-01T12:00:00Z: the wall time that goes with [`NOW`].
pub const NOW_UNIX_MS: u64 = 1_767_268_800_000;
pub const CLOCK: WallClock = WallClock::new(NOW, NOW_UNIX_MS);
/// The TUI clock when the fixture snapshot arrives.
pub const RECEIVED_MS: u64 = 60_000;

fn at(ms_before_now: u64) -> MonoTime {
    MonoTime(NOW.0 - ms_before_now * 1_000_000)
}

fn after(start: MonoTime, ms: u64) -> MonoTime {
    MonoTime(start.0 + ms * 1_000_000)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, last))
}

struct Pod {
    ns: &'static str,
    name: &'static str,
    service: Option<&'static str>,
    workload: &'static str,
    ip: u8,
    age_ms: u64,
}

fn termination(pod: Pod) -> PodTermination {
    PodTermination {
        namespace: pod.ns.into(),
        pod: pod.name.into(),
        uid: format!("uid-{}", pod.name),
        ips: vec![ip(pod.ip)],
        node: Some("node-b".into()),
        workload: Some(pod.workload.into()),
        services: pod.service.into_iter().map(String::from).collect(),
        configured_prestop_ms: Some(2000),
        termination_grace_period_seconds: Some(30),
        deletion_seen: at(pod.age_ms),
        deletion_observed_late: false,
        endpoint_not_ready: None,
        endpoint_removed: None,
        last_connect: None,
        last_choice: None,
        last_send: None,
        retries_after_deletion: 0,
        served_after_deletion: 0,
        first_failure: None,
        last_failure: None,
        connects_after_deletion: 0,
        failures: FailureCounts::default(),
        failures_retried: 0,
        failures_not_retried: 0,
        propagation_gap_ns: None,
        control_plane_lag_ns: None,
        dataplane_lag_ns: None,
        retry_tail_ns: None,
        ingress_found: true,
        connectors: Vec::new(),
        failure_times: Vec::new(),
        destination: None,
        closed: None,
    }
}

/// Fills in the timeline from offsets (ms after deletion_seen).
fn timeline(
    mut t: PodTermination,
    not_ready: Option<u64>,
    removed: Option<u64>,
    last_connect: Option<u64>,
    failures: &[(u64, FailureClass)],
) -> PodTermination {
    let t0 = t.deletion_seen;
    t.endpoint_not_ready = not_ready.map(|ms| after(t0, ms));
    t.endpoint_removed = removed.map(|ms| after(t0, ms));
    t.last_connect = last_connect.map(|ms| after(t0, ms));
    t.last_choice = t.last_connect;
    t.last_send = t.last_connect;
    t.propagation_gap_ns = Some(last_connect.unwrap_or(0) as i64 * 1_000_000);
    t.control_plane_lag_ns = not_ready.map(|ms| ms as i64 * 1_000_000);
    t.dataplane_lag_ns = match (not_ready, last_connect) {
        (Some(n), Some(l)) => Some((l as i64 - n as i64) * 1_000_000),
        _ => None,
    };
    for (ms, class) in failures {
        t.failures.add(*class);
        t.failure_times.push((after(t0, *ms), *class));
    }
    // The ingress retried all but the last failure elsewhere.
    t.failures_retried = failures.len().saturating_sub(1) as u64;
    t.failures_not_retried = failures.len().min(1) as u64;
    t.first_failure = failures.first().map(|(ms, _)| after(t0, *ms));
    t.last_failure = failures.last().map(|(ms, _)| after(t0, *ms));
    if last_connect.is_some() {
        t.connects_after_deletion = 42;
        let last = last_connect.map(|ms| after(t0, ms));
        t.connectors = vec![
            ConnectorActivity {
                name: "ingress-nginx/ingress-nginx-controller-5c8d7".into(),
                role: ConnectorRole::Ingress,
                connects: 42,
                failures: failures.len() as u64,
                last_connect: last,
                until_ns: last.map(|l| l.signed_since(t0)),
            },
            ConnectorActivity {
                name: "kubelet".into(),
                role: ConnectorRole::Kubelet,
                connects: 31,
                failures: 3,
                last_connect: Some(after(t0, 31_200)),
                until_ns: Some(31_200_000_000),
            },
            ConnectorActivity {
                name: "monitoring/prometheus-0".into(),
                role: ConnectorRole::Pod,
                connects: 2,
                failures: 0,
                last_connect: Some(after(t0, 12_000)),
                until_ns: Some(12_000_000_000),
            },
        ];
    }
    t
}

/// One sender's arrivals: (name, kind, last arrival in ms after t0,
/// arrivals, refused, dropped).
type SenderRow = (&'static str, SenderKind, Option<u64>, u64, u64, u64);

/// A destination view from its senders, the largest first; the totals
/// leave out the kubelet's, as the engine's do.
fn destination(t0: MonoTime, senders: &[SenderRow]) -> DestinationView {
    let mut view = DestinationView::default();
    for &(name, kind, last_ms, arrivals, refused, dropped) in senders {
        let last_arrival = last_ms.map(|ms| after(t0, ms));
        if kind != SenderKind::Kubelet {
            view.last_arrival = view.last_arrival.max(last_arrival);
            view.served_after_deletion += arrivals;
            view.refused += refused;
            view.dropped += dropped;
        }
        view.senders.push(SenderArrivals {
            name: name.into(),
            kind,
            last_arrival,
            arrival_gap_ns: last_arrival.map(|at| at.signed_since(t0)),
            arrivals,
            refused,
            dropped,
        });
    }
    view.derive(t0);
    view
}

pub fn open_terminations() -> Vec<PodTermination> {
    use FailureClass::Refused;
    let cart = termination(Pod {
        ns: "shop",
        name: "cart-7d9f8-abcde",
        service: Some("cart"),
        workload: "cart",
        ip: 17,
        age_ms: 3_400,
    });
    let checkout = termination(Pod {
        ns: "shop",
        name: "checkout-5c6b-xk2lp",
        service: Some("checkout"),
        workload: "checkout",
        ip: 23,
        age_ms: 1_200,
    });
    let mut checkout = timeline(checkout, Some(380), None, None, &[]);
    checkout.propagation_gap_ns = None;
    let mut cart = timeline(
        cart,
        Some(620),
        None,
        Some(3_100),
        &[(2_900, Refused), (3_000, Refused), (3_050, Refused)],
    );
    // The pod runs on the ingress's node: both views, which agree.
    let mut arrived = destination(
        cart.deletion_seen,
        &[
            (
                "ingress-nginx/ingress-nginx-controller-5c8d7",
                SenderKind::Ingress,
                Some(3_102),
                39,
                3,
                0,
            ),
            ("kubelet", SenderKind::Kubelet, Some(3_300), 3, 0, 0),
            (
                "monitoring/prometheus-0",
                SenderKind::Pod,
                Some(1_200),
                1,
                0,
                0,
            ),
        ],
    );
    arrived.compare_with_sender_side(cart.last_send);
    cart.destination = Some(arrived);
    vec![cart, checkout]
}

pub fn recent_terminations() -> Vec<PodTermination> {
    let cart = termination(Pod {
        ns: "shop",
        name: "cart-7d9f8-qwert",
        service: Some("cart"),
        workload: "cart",
        ip: 12,
        age_ms: 40_000,
    });
    let mut cart = timeline(
        cart,
        Some(700),
        Some(1_500),
        Some(4_300),
        &[
            (4_100, FailureClass::TimedOut),
            (4_200, FailureClass::TimedOut),
        ],
    );
    cart.closed = Some(CloseReason::Quiet);
    let login = termination(Pod {
        ns: "auth",
        name: "login-66f-zzq",
        service: Some("login"),
        workload: "login",
        ip: 31,
        age_ms: 90_000,
    });
    let mut login = timeline(login, Some(150), Some(900), Some(1_100), &[]);
    login.configured_prestop_ms = Some(5000);
    login.closed = Some(CloseReason::Quiet);
    vec![cart, login, ledger()]
}

/// A pod behind a load balancer outside the cluster: no ingress on any
/// node measured it, so only the destination view has a gap.
fn ledger() -> PodTermination {
    let ledger = termination(Pod {
        ns: "payments",
        name: "ledger-6b7c9-p4x2m",
        service: None,
        workload: "ledger",
        ip: 44,
        age_ms: 120_000,
    });
    let mut ledger = timeline(ledger, Some(300), Some(1_400), None, &[]);
    ledger.propagation_gap_ns = None;
    ledger.dataplane_lag_ns = None;
    ledger.ingress_found = false;
    ledger.configured_prestop_ms = None;
    ledger.destination = Some(destination(
        ledger.deletion_seen,
        &[
            ("alb", SenderKind::External, Some(9_800), 118, 3, 0),
            ("kubelet", SenderKind::Kubelet, Some(10_400), 12, 2, 0),
            (
                "payments/reconciler-5f9d8-2kq7v",
                SenderKind::Pod,
                Some(2_100),
                6,
                0,
                0,
            ),
            ("external", SenderKind::External, None, 0, 0, 4),
        ],
    ));
    ledger.closed = Some(CloseReason::Quiet);
    ledger
}

fn recommendation(
    ns: &str,
    service: Option<&str>,
    workload: &str,
    gaps: (f64, f64, f64),
    recommended: u64,
    configured: Option<f64>,
    verdict: &str,
) -> Recommendation {
    let (p50, p99, max) = gaps;
    let name = service.unwrap_or(workload);
    Recommendation {
        namespace: ns.into(),
        service: service.map(String::from),
        workload: Some(workload.into()),
        samples: 12,
        p50_ms: p50,
        p90_ms: (p50 + p99) / 2.0,
        p99_ms: p99,
        max_ms: max,
        quantile: 0.99,
        margin_ms: 1000,
        used_max: false,
        recommended_prestop_seconds: recommended,
        recommended_termination_grace_period_seconds: recommended + 30,
        configured_prestop_seconds: configured,
        configured_termination_grace_period_seconds: Some(30),
        failed_connects: FailureCounts::default(),
        verdict: vec![verdict.into()],
        sigterm_delay: String::new(),
        gap_view: Default::default(),
        yaml: format!(
            "# {ns}/{name}\nspec:\n  terminationGracePeriodSeconds: {}\n  containers:\n  - name: {name}\n    lifecycle:\n      preStop:\n        sleep:\n          seconds: {recommended}\n",
            recommended + 30
        ),
    }
}

pub fn recommendations() -> Vec<Recommendation> {
    let mut cart = recommendation(
        "shop",
        Some("cart"),
        "cart",
        (3_200.0, 4_600.0, 4_800.0),
        6,
        Some(2.0),
        "preStop 2s is 4s short of p99 4600ms + 1000ms margin: connects are refused during rollouts",
    );
    cart.failed_connects.refused = 31;
    cart.failed_connects.timed_out = 4;
    let mut login = recommendation(
        "auth",
        Some("login"),
        "login",
        (900.0, 1_400.0, 1_500.0),
        3,
        Some(5.0),
        "preStop 5s covers p99 1400ms + margin",
    );
    login.samples = 30;
    let mut ledger = recommendation(
        "payments",
        None,
        "ledger",
        (7_000.0, 9_800.0, 9_800.0),
        11,
        None,
        "no preStop: in-flight requests are reset while the ingress still connects",
    );
    ledger.samples = 2;
    ledger.failed_connects.reset = 7;
    ledger.gap_view = GapView::Destination;
    vec![cart, login, ledger]
}

pub fn snapshot(connects_seen: u64, failures: u64) -> Snapshot {
    let mut counters = EngineCounters {
        connects_seen,
        ..EngineCounters::default()
    };
    counters
        .failures_by_state
        .insert("terminating/refused".into(), failures);
    Snapshot {
        now: NOW,
        open: open_terminations(),
        recent: recent_terminations(),
        recommendations: recommendations(),
        counters,
        ingress: Default::default(),
    }
}

pub fn finding(
    ms_before_now: u64,
    dst: (u8, u16),
    class: FailureClass,
    pod: Option<&str>,
) -> Finding {
    let kind = if pod.is_some() {
        FindingKind::ToTerminatingPod
    } else {
        FindingKind::StaleEndpoint
    };
    Finding {
        at: at(ms_before_now),
        record: ConnectRecord {
            ts: at(ms_before_now),
            syn: Some(at(ms_before_now + 1)),
            src: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 40_000),
            dst: SocketAddr::new(ip(dst.0), dst.1),
            pid: 812,
            tid: 815,
            comm: "nginx".into(),
            cgroup_id: 1,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched: true,
            outcome: Outcome::Failed {
                class,
                errno: 111,
                waited_ns: 1_250_000,
                synchronous: false,
            },
        },
        pod_state: if pod.is_some() {
            PodState::Terminating
        } else {
            PodState::Unknown
        },
        namespace: pod.map(|_| "shop".to_string()),
        pod: pod.map(String::from),
        service: pod.map(|_| "cart".to_string()),
        kind,
    }
}

pub fn findings() -> Vec<Finding> {
    use FailureClass::*;
    let cart = Some("cart-7d9f8-abcde");
    vec![
        finding(36_000, (12, 8080), TimedOut, Some("cart-7d9f8-qwert")),
        finding(35_900, (12, 8080), TimedOut, Some("cart-7d9f8-qwert")),
        finding(9_000, (99, 8080), HostUnreachable, None),
        finding(500, (17, 8080), Refused, cart),
        finding(400, (17, 8080), Refused, cart),
        finding(350, (17, 8080), Refused, cart),
    ]
}

/// An app fed with the fixture at a fixed clock, with 40 seconds of rates.
pub fn app_with_data() -> App {
    let mut app = App::new("observer-recommendations.yaml".into());
    let (mut connects, mut failures) = (10_000, 0);
    for second in 0..40u64 {
        app.update(Action::Tick {
            now_ms: RECEIVED_MS - 40_000 + second * 1000,
        });
        connects += 100 + (second * 37) % 50;
        if (30..35).contains(&second) {
            failures += second % 4;
        }
        app.update(Action::Data(snapshot_update(
            "local",
            &snapshot(connects, failures),
        )));
    }
    app.update(Action::Tick {
        now_ms: RECEIVED_MS,
    });
    app.update(Action::Data(snapshot_update(
        "local",
        &snapshot(connects, failures),
    )));
    if let Some(update) = findings_update("local", &findings(), &CLOCK) {
        app.update(Action::Data(update));
    }
    app
}

/// The ingress pod of the fixture's first ingress node.
const INGRESS_POD: &str = "ingress-nginx/ingress-nginx-controller-5c8d7";
/// The second ingress node's.
const NODE_C_INGRESS_POD: &str = "ingress-nginx/ingress-nginx-controller-9f2k1";
/// How far the second ingress node's monotonic clock is ahead of the
/// others': each node's clock counts from its own boot.
const NODE_C_SKEW_NS: u64 = 5_000_000_000;

/// `t` as a node whose clock is `skew_ns` ahead records it.
fn skewed(mut t: PodTermination, skew_ns: u64) -> PodTermination {
    let shift = |at: MonoTime| MonoTime(at.0 + skew_ns);
    t.deletion_seen = shift(t.deletion_seen);
    for at in [
        &mut t.endpoint_not_ready,
        &mut t.endpoint_removed,
        &mut t.last_connect,
        &mut t.last_choice,
        &mut t.last_send,
        &mut t.first_failure,
        &mut t.last_failure,
    ] {
        *at = at.map(shift);
    }
    for (at, _) in &mut t.failure_times {
        *at = shift(*at);
    }
    for c in &mut t.connectors {
        c.last_connect = c.last_connect.map(shift);
    }
    if let Some(view) = &mut t.destination {
        view.last_arrival = view.last_arrival.map(shift);
        for s in &mut view.senders {
            s.last_arrival = s.last_arrival.map(shift);
        }
    }
    t
}

fn ingress_on_node(pod: &str) -> IngressStatus {
    IngressStatus {
        pods: vec![pod.into()],
        processes: Vec::new(),
    }
}

/// An ingress node's record: the fixture's sender side (its ingress's
/// connects), without what only the pod's node sees (what arrived, the
/// kubelet's probes and the other connectors there).
fn on_ingress_node(mut t: PodTermination) -> PodTermination {
    t.destination = None;
    t.connectors.retain(|c| c.role == ConnectorRole::Ingress);
    // Every agent measures every terminating pod: this one's ingress never
    // chose the ledger pod (behind a load balancer outside the cluster).
    t.ingress_found = true;
    if t.propagation_gap_ns.is_none() && t.closed.is_some() {
        t.propagation_gap_ns = Some(0);
    }
    t
}

/// The pods' node's record, where no ingress runs: only what arrived at
/// the pod, and who else connected from there. Its engine's running gap
/// while a window is open is 0 (no ingress connect); once closed, none.
fn on_pods_node(mut t: PodTermination) -> PodTermination {
    t.connectors.retain(|c| c.role != ConnectorRole::Ingress);
    t.ingress_found = false;
    t.last_connect = None;
    t.last_choice = None;
    t.last_send = None;
    t.first_failure = None;
    t.last_failure = None;
    t.failure_times.clear();
    t.failures = FailureCounts::default();
    t.failures_retried = 0;
    t.failures_not_retried = 0;
    t.connects_after_deletion = 0;
    t.retry_tail_ns = None;
    t.dataplane_lag_ns = None;
    t.propagation_gap_ns = t.closed.is_none().then_some(0);
    if let Some(view) = &mut t.destination {
        // Only a node that ran the ingress compares the two views.
        view.views_apart_ns = None;
    }
    t
}

/// What three agents report of the fixture's rollout: `node-a`, an ingress
/// node (the fixture's sender side); `node-b`, the pods' node, where no
/// ingress runs (what arrived at them); `node-c`, a second ingress node
/// that stopped choosing the open cart pod sooner (the only pod it saw).
/// Each has its own monotonic clock: `node-c`'s is 5 s ahead.
pub fn agent_snapshots() -> Vec<(&'static str, Snapshot)> {
    let mut node_a = snapshot(10_000, 3);
    node_a.open = node_a.open.into_iter().map(on_ingress_node).collect();
    node_a.recent = node_a.recent.into_iter().map(on_ingress_node).collect();
    node_a.ingress = ingress_on_node(INGRESS_POD);
    // No ingress measured the ledger pod's gap: only its node recommends.
    node_a
        .recommendations
        .retain(|r| r.gap_view != GapView::Destination);

    let mut node_b = snapshot(2_000, 0);
    node_b.open = node_b.open.into_iter().map(on_pods_node).collect();
    node_b.recent = node_b.recent.into_iter().map(on_pods_node).collect();
    node_b
        .recommendations
        .retain(|r| r.gap_view == GapView::Destination);

    // Its ingress stopped choosing the pod at 1.8 s; it saw the deletion
    // 30 ms after node-a did.
    let cart = termination(Pod {
        ns: "shop",
        name: "cart-7d9f8-abcde",
        service: Some("cart"),
        workload: "cart",
        ip: 17,
        age_ms: 3_370,
    });
    let cart = timeline(
        cart,
        Some(590),
        None,
        Some(1_800),
        &[(1_750, FailureClass::Refused)],
    );
    let mut cart = on_ingress_node(cart);
    cart.connects_after_deletion = 12;
    for c in &mut cart.connectors {
        c.name = NODE_C_INGRESS_POD.into();
        c.connects = 12;
    }
    let cart = skewed(cart, NODE_C_SKEW_NS);
    let node_c = Snapshot {
        now: MonoTime(NOW.0 + NODE_C_SKEW_NS),
        open: vec![cart],
        recent: Vec::new(),
        recommendations: Vec::new(),
        counters: EngineCounters::default(),
        ingress: ingress_on_node(NODE_C_INGRESS_POD),
    };
    vec![("node-a", node_a), ("node-b", node_b), ("node-c", node_c)]
}

/// An app fed with [`agent_snapshots`] at the fixture's clock.
pub fn app_with_agents() -> App {
    let mut app = App::new("observer-recommendations.yaml".into());
    let agents = agent_snapshots();
    for (name, _) in &agents {
        app.add_source(name);
    }
    app.update(Action::Tick {
        now_ms: RECEIVED_MS,
    });
    for (name, snapshot) in &agents {
        app.update(Action::Data(snapshot_update(name, snapshot)));
    }
    app
}

/// An app that has heard nothing yet from one local source.
pub fn empty_app() -> App {
    let mut app = App::new("observer-recommendations.yaml".into());
    app.add_source("local");
    app
}
