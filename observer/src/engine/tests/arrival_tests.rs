//! The destination-side view: what lands on a terminating pod of this
//! node, from any sender, and the recommendation it gives where no
//! ingress on the node measured a gap.

use kube::runtime::watcher::Event;

use super::*;
use crate::engine::arrivals::{ExternalSender, SenderKind};
use crate::probe::decode::DropReason;

const WEB1: &str = "10.0.0.1";
const WEB1_HTTP: &str = "10.0.0.1:8080";

/// What the pod's kernel saw arrive from `src`.
fn arrival(src: &str, ts_ms: u64, outcome: Outcome) -> ConnectRecord {
    ConnectRecord {
        src: src.parse().expect("addr"),
        pid: 0,
        tid: 0,
        comm: String::new(),
        // The pod's own socket's cgroup: never a connector.
        cgroup_id: 42,
        ..record(WEB1_HTTP, ts_ms, None, true, outcome)
    }
}

fn refused(src: &str, ts_ms: u64) -> ConnectRecord {
    arrival(
        src,
        ts_ms,
        Outcome::Dropped {
            reason: DropReason::NoSocket,
            opens_connection: true,
        },
    )
}

/// web-1 runs on node-a, this engine's node; no ingress on it.
fn on_this_node() -> (Engine, Vec<Step>) {
    let config = EngineConfig {
        ingress: IngressConfig {
            node: Some("node-a".into()),
            ..IngressConfig::default()
        },
        external_senders: vec![ExternalSender::parse("192.0.2.0/24=alb").expect("range")],
        quiet_period: std::time::Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let mut web1 = pod("web-1", "u1", WEB1, true, false);
    web1.spec.as_mut().expect("spec").node_name = Some("node-a".into());
    let steps = listed(1_000, vec![web1], vec![slice(&[(WEB1, "u1", true, false)])]);
    (Engine::new(config), steps)
}

/// web-1 runs on node-a, this engine's node, with nginx (a host process)
/// as the ingress and `others` listed beside it.
fn nginx_on_this_node(others: Vec<Pod>) -> (Engine, Vec<Step>) {
    let mut config = ingress_nginx();
    config.ingress.node = Some("node-a".into());
    let mut web1 = pod("web-1", "u1", WEB1, true, false);
    web1.spec.as_mut().expect("spec").node_name = Some("node-a".into());
    let mut pods = vec![web1];
    pods.extend(others);
    let steps = listed(1_000, pods, vec![slice(&[(WEB1, "u1", true, false)])]);
    (Engine::new(config), steps)
}

fn deleting_web1(t_ms: u64) -> Step {
    let mut web1 = pod("web-1", "u1", WEB1, true, true);
    web1.spec.as_mut().expect("spec").node_name = Some("node-a".into());
    Step::Pod(t_ms, Event::Apply(web1))
}

fn deleted_web1(t_ms: u64) -> Step {
    let mut web1 = pod("web-1", "u1", WEB1, false, true);
    web1.spec.as_mut().expect("spec").node_name = Some("node-a".into());
    Step::Pod(t_ms, Event::Delete(web1))
}

#[test]
fn an_external_load_balancer_s_last_arrival_gives_the_gap_and_the_recommendation() {
    let (mut engine, mut steps) = on_this_node();
    steps.extend([
        // Before deletion: not part of the termination.
        Step::Connect(arrival("192.0.2.10:50000", 9_000, Outcome::Accepted)),
        deleting_web1(10_000),
        Step::Slice(10_400, Event::Apply(slice(&[(WEB1, "u1", false, true)]))),
        Step::Connect(arrival("192.0.2.10:50001", 11_000, Outcome::Accepted)),
        // A pooled connection whose last request arrived at 12.5 s.
        Step::Connect(arrival(
            "192.0.2.11:50002",
            13_100,
            Outcome::Received {
                last_arrival: ms(12_500),
            },
        )),
        // The app stopped listening: refused, then the network went.
        Step::Connect(refused("192.0.2.10:50003", 13_000)),
        Step::Connect(arrival(
            "192.0.2.10:50004",
            13_400,
            Outcome::Dropped {
                reason: DropReason::Neighbour,
                opens_connection: true,
            },
        )),
        // An address nobody named.
        Step::Connect(arrival("198.51.100.7:40000", 11_500, Outcome::Accepted)),
        // Not a port the Service advertises.
        Step::Connect(ConnectRecord {
            dst: "10.0.0.1:9090".parse().expect("addr"),
            ..arrival("192.0.2.10:50005", 14_000, Outcome::Accepted)
        }),
        deleted_web1(15_000),
        Step::Slice(15_500, Event::Apply(slice(&[]))),
        Step::Tick(21_000),
    ]);
    let out = run(&mut engine, steps);
    let closed = closed(&out);
    assert_eq!(closed.len(), 1, "{closed:#?}");
    let t = closed[0];
    assert!(!t.ingress_found);
    assert_eq!(t.propagation_gap_ns, None, "no ingress measured a gap");
    let view = t.destination.as_ref().expect("the pod's own node's view");
    // The SYN the node dropped at 13.4 s still arrived: the load
    // balancer chose the pod then.
    assert_eq!(view.last_arrival, Some(ms(13_400)));
    assert_eq!(view.arrival_gap_ns, Some(3_400 * MS as i64));
    assert_eq!(view.refused, 1);
    assert_eq!(view.dropped, 1);
    assert_eq!(view.served_after_deletion, 3);
    let names: Vec<(&str, SenderKind, u64)> = view
        .senders
        .iter()
        .map(|s| (s.name.as_str(), s.kind, s.arrivals))
        .collect();
    assert_eq!(
        names,
        vec![
            ("alb", SenderKind::External, 2),
            ("external", SenderKind::External, 1)
        ]
    );
    assert_eq!(view.senders[0].refused, 1);
    assert_eq!(view.senders[0].dropped, 1);
    assert_eq!(view.senders[0].arrival_gap_ns, Some(3_400 * MS as i64));

    let recommendations = engine.recommendations();
    assert_eq!(recommendations.len(), 2, "{recommendations:#?}");
    let service = &recommendations[0];
    assert_eq!(service.gap_view.as_str(), "destination");
    assert_eq!(service.max_ms, 3_400.0);
}

#[test]
fn the_kubelet_s_probes_never_move_the_arrival_gap() {
    let (mut engine, mut steps) = on_this_node();
    // The kubelet's connect, seen by this node's sending side (its
    // cgroup is no pod's: a host process named kubelet).
    let kubelet_established = ConnectRecord {
        src: "10.0.9.1:45000".parse().expect("addr"),
        comm: "kubelet".into(),
        cgroup_id: 1,
        ..record(
            WEB1_HTTP,
            11_800,
            Some(11_799),
            true,
            Outcome::Established { latency_ns: MS },
        )
    };
    steps.extend([
        deleting_web1(10_000),
        Step::Connect(arrival("192.0.2.10:50001", 11_000, Outcome::Accepted)),
        Step::Connect(kubelet_established),
        Step::Connect(arrival("10.0.9.1:45000", 11_800, Outcome::Accepted)),
        // The kubelet's next probe: its SYN (port not assigned yet), then
        // the pod's kernel refusing it.
        Step::Connect(ConnectRecord {
            src: "10.0.9.1:0".parse().expect("addr"),
            comm: "kubelet".into(),
            cgroup_id: 1,
            ..syn(WEB1_HTTP, 12_600)
        }),
        Step::Connect(refused("10.0.9.1:45001", 12_600)),
        deleted_web1(13_000),
        Step::Tick(19_000),
    ]);
    let out = run(&mut engine, steps);
    let t = closed(&out)[0];
    let view = t.destination.as_ref().expect("view");
    assert_eq!(view.last_arrival, Some(ms(11_000)));
    assert_eq!(view.refused, 0, "the kubelet's refusals are its own");
    let kubelet = view
        .senders
        .iter()
        .find(|s| s.kind == SenderKind::Kubelet)
        .expect("the kubelet is a sender");
    assert_eq!(kubelet.name, "kubelet");
    assert_eq!((kubelet.arrivals, kubelet.refused), (1, 1));
    assert_eq!(view.largest_sender_gap(), Some(1_000 * MS as i64));
}

#[test]
fn a_pod_on_this_node_that_nothing_reached_has_an_arrival_gap_of_zero() {
    let (mut engine, mut steps) = on_this_node();
    steps.extend([
        deleting_web1(10_000),
        deleted_web1(11_000),
        Step::Tick(17_000),
    ]);
    let out = run(&mut engine, steps);
    let view = closed(&out)[0].destination.clone().expect("view");
    assert_eq!(view.last_arrival, None);
    assert_eq!(view.arrival_gap_ns, Some(0));
    assert!(view.senders.is_empty());
}

#[test]
fn with_an_ingress_on_the_node_both_views_are_compared() {
    let (mut engine, mut steps) = nginx_on_this_node(Vec::new());
    let established = record(
        WEB1_HTTP,
        12_001,
        Some(12_000),
        true,
        Outcome::Established { latency_ns: MS },
    );
    steps.extend([
        deleting_web1(10_000),
        Step::Connect(syn(WEB1_HTTP, 12_000)),
        Step::Connect(established),
        // nginx's connect as the pod's kernel saw it land (same 4-tuple).
        Step::Connect(arrival("10.0.9.1:40000", 12_001, Outcome::Accepted)),
        deleted_web1(13_000),
        Step::Tick(19_000),
    ]);
    let out = run(&mut engine, steps);
    let t = closed(&out)[0];
    assert!(t.ingress_found);
    assert_eq!(t.propagation_gap_ns, Some(2_000 * MS as i64));
    let view = t.destination.as_ref().expect("view");
    assert_eq!(view.senders[0].kind, SenderKind::Ingress);
    assert_eq!(view.senders[0].name, "nginx");
    assert_eq!(
        view.views_apart_ns,
        Some(MS as i64),
        "the SYN left at 12.000 s, landed 12.001 s"
    );
    let recommendations = engine.recommendations();
    assert_eq!(recommendations[0].gap_view.as_str(), "sender");
}

#[test]
fn a_flooded_frame_is_one_drop_however_many_hosts_drop_a_copy() {
    let (mut engine, mut steps) = on_this_node();
    let flooded = |ts_ms: u64, us: u64| ConnectRecord {
        ts: MonoTime(ts_ms * MS + us * 1_000),
        ..arrival(
            "192.0.2.10:50009",
            ts_ms,
            Outcome::Dropped {
                reason: DropReason::OtherHost,
                opens_connection: true,
            },
        )
    };
    steps.extend([
        deleting_web1(10_000),
        // One SYN flooded to four ports, then its retransmission a
        // second later, flooded again.
        Step::Connect(flooded(12_000, 0)),
        Step::Connect(flooded(12_000, 40)),
        Step::Connect(flooded(12_000, 90)),
        Step::Connect(flooded(12_000, 400)),
        Step::Connect(flooded(13_000, 0)),
        Step::Connect(flooded(13_000, 60)),
        deleted_web1(14_000),
        Step::Tick(20_000),
    ]);
    let out = run(&mut engine, steps);
    let view = closed(&out)[0].destination.clone().expect("view");
    assert_eq!(view.dropped, 2, "two SYNs, each dropped once: {view:#?}");
    assert_eq!(
        view.last_arrival,
        Some(ms(12_000)),
        "the connection's first SYN dates the choice, not its retransmission"
    );
    assert_eq!(view.senders[0].name, "alb");
}

#[test]
fn an_ingress_sending_through_a_cluster_ip_is_measured_at_the_pod() {
    // nginx connects to the Service's ClusterIP; the node DNATs it to the
    // pod: the sending side sees no connect to the pod, the pod's kernel
    // sees nginx's packets arrive.
    let mut nginx = pod("nginx-1", "u9", "10.0.9.1", true, false);
    nginx.metadata.labels = Some(
        [(
            "app.kubernetes.io/name".to_string(),
            "nginx-ingress".to_string(),
        )]
        .into(),
    );
    nginx.spec.as_mut().expect("spec").node_name = Some("node-a".into());
    let (mut engine, mut steps) = nginx_on_this_node(vec![nginx]);
    steps.extend([
        deleting_web1(10_000),
        Step::Connect(arrival("10.0.9.1:40000", 12_500, Outcome::Accepted)),
        deleted_web1(13_000),
        Step::Tick(19_000),
    ]);
    let out = run(&mut engine, steps);
    let t = closed(&out)[0];
    let view = t.destination.as_ref().expect("view");
    assert_eq!(view.senders[0].kind, SenderKind::Ingress, "{view:#?}");
    assert_eq!(view.ingress_arrival_gap(), Some(2_500 * MS as i64));
    let recommendations = engine.recommendations();
    assert_eq!(recommendations[0].gap_view.as_str(), "destination");
    assert_eq!(recommendations[0].max_ms, 2_500.0);
}

#[test]
fn the_ingress_s_retries_at_the_pod_do_not_switch_the_view() {
    // nginx chose the pod until 11 s, then only retried there until 15 s
    // (old workers): the pod saw those retries arrive too. The sending
    // side saw every packet, so its choice gap stands.
    let (mut engine, mut steps) = nginx_on_this_node(Vec::new());
    let retry = ConnectRecord {
        retry: true,
        ..syn(WEB1_HTTP, 15_000)
    };
    steps.extend([
        deleting_web1(10_000),
        Step::Connect(syn(WEB1_HTTP, 11_000)),
        Step::Connect(retry),
        Step::Connect(refused("10.0.9.1:40000", 15_000)),
        deleted_web1(16_000),
        Step::Tick(22_000),
    ]);
    let out = run(&mut engine, steps);
    let t = closed(&out)[0];
    assert_eq!(t.propagation_gap_ns, Some(1_000 * MS as i64));
    let view = t.destination.as_ref().expect("view");
    assert_eq!(
        view.ingress_arrival_gap(),
        Some(5_000 * MS as i64),
        "{view:#?}"
    );
    let recommendations = engine.recommendations();
    assert_eq!(recommendations[0].gap_view.as_str(), "sender");
    assert_eq!(recommendations[0].max_ms, 1_000.0);
}

#[test]
fn a_node_s_own_traffic_is_named_after_the_node() {
    // A NodePort's SNAT: what arrives comes from node-b's address, which
    // node-b's pods report as their hostIP.
    let (mut engine, mut steps) = on_this_node();
    let mut other: Pod = pod("db-1", "u7", "10.0.1.7", true, false);
    other.spec.as_mut().expect("spec").node_name = Some("node-b".into());
    other.status.as_mut().expect("status").host_ip = Some("192.168.10.22".into());
    steps.extend([
        Step::Pod(2_000, Event::Apply(other)),
        deleting_web1(10_000),
        Step::Connect(arrival("192.168.10.22:31000", 11_000, Outcome::Accepted)),
        deleted_web1(12_000),
        Step::Tick(18_000),
    ]);
    let out = run(&mut engine, steps);
    let view = closed(&out)[0].destination.clone().expect("view");
    assert_eq!(view.senders.len(), 1, "{view:#?}");
    assert_eq!(view.senders[0].kind, SenderKind::Node);
    assert_eq!(view.senders[0].name, "node-b");
}

#[test]
fn a_pod_on_another_node_is_named_after_the_service_it_backs() {
    // With node-scoped watches the ingress pod on node-b is no pod this
    // agent knows; the EndpointSlices (watched cluster-wide) still say
    // which Service its address backs.
    let (mut engine, mut steps) = on_this_node();
    let controller: EndpointSlice = serde_json::from_value(serde_json::json!({
        "addressType": "IPv4",
        "metadata": {"name": "ingress-nginx-controller-x", "namespace": "ingress-nginx",
                     "labels": {"kubernetes.io/service-name": "ingress-nginx-controller"}},
        "endpoints": [{"addresses": ["10.0.3.9"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "namespace": "ingress-nginx", "uid": "u-ctl"}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
    }))
    .expect("slice");
    steps.extend([
        Step::Slice(2_000, Event::Apply(controller)),
        deleting_web1(10_000),
        Step::Connect(arrival("10.0.3.9:41000", 11_000, Outcome::Accepted)),
        deleted_web1(12_000),
        Step::Tick(18_000),
    ]);
    let out = run(&mut engine, steps);
    let view = closed(&out)[0].destination.clone().expect("view");
    assert_eq!(view.senders.len(), 1, "{view:#?}");
    assert_eq!(view.senders[0].kind, SenderKind::Pod);
    assert_eq!(
        view.senders[0].name,
        "service ingress-nginx/ingress-nginx-controller"
    );
    assert_eq!(view.arrival_gap_ns, Some(1_000 * MS as i64));
}
