//! Connectors: only the ingress measures the gap; the kubelet's probes,
//! scrapers and other processes are reported beside it and never move it.

use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;
use crate::engine::connector::ConnectorRole;

const WEB1: &str = "10.0.0.1";
const WEB1_HTTP: &str = "10.0.0.1:8080";
const NODE: &str = "node-a";

/// A pod on `node` with `labels`, at `pod_ip` (hostNetwork when asked).
fn labelled_pod(
    ns: &str,
    name: &str,
    uid: &str,
    pod_ip: &str,
    labels: serde_json::Value,
    host_network: bool,
    deleting: bool,
) -> Pod {
    let mut value = json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
        "spec": {"nodeName": NODE, "hostNetwork": host_network,
                 "containers": [{"name": "main", "image": "x"}]},
        "status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    });
    if deleting {
        value["metadata"]["deletionTimestamp"] = json!("2026-03-02T09:01:47Z");
    }
    serde_json::from_value(value).expect("valid pod")
}

fn ingress_pod() -> Pod {
    labelled_pod(
        "ingress-nginx",
        "ingress-nginx-controller-5c8d7",
        "ing",
        "10.0.5.1",
        json!({"app.kubernetes.io/name": "ingress-nginx",
               "app.kubernetes.io/component": "controller"}),
        false,
        false,
    )
}

fn prometheus_pod() -> Pod {
    labelled_pod(
        "monitoring",
        "prometheus-0",
        "prom",
        "10.0.5.2",
        json!({"app.kubernetes.io/name": "prometheus"}),
        false,
        false,
    )
}

/// A SYN to `dst` from the pod `uid` (its cgroup), by `comm`.
fn syn_from(uid: Option<&str>, comm: &str, dst: &str, t_ms: u64) -> ConnectRecord {
    let mut r = syn(dst, t_ms);
    r.pod_uid = uid.map(str::to_owned);
    r.comm = comm.into();
    r
}

fn refused_from(uid: Option<&str>, comm: &str, dst: &str, t_ms: u64) -> ConnectRecord {
    let mut r = failed(dst, t_ms, 1, FailureClass::Refused, true);
    r.pod_uid = uid.map(str::to_owned);
    r.comm = comm.into();
    r
}

fn on_node() -> EngineConfig {
    EngineConfig {
        ingress: IngressConfig {
            node: Some(NODE.into()),
            ..IngressConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// web-1 listed beside `others`, deleted at 10 s, gone at 20 s.
fn rollout_with(others: Vec<Pod>, connects: Vec<ConnectRecord>) -> Vec<Step> {
    let mut pods = vec![pod("web-1", "u1", WEB1, true, false)];
    pods.extend(others);
    let mut steps = listed(1_000, pods, vec![slice(&[(WEB1, "u1", true, false)])]);
    steps.extend([
        Step::Pod(10_000, Event::Apply(pod("web-1", "u1", WEB1, true, true))),
        Step::Slice(10_500, Event::Apply(slice(&[(WEB1, "u1", false, true)]))),
    ]);
    steps.extend(connects.into_iter().map(Step::Connect));
    steps.extend([
        Step::Pod(20_000, Event::Delete(pod("web-1", "u1", WEB1, false, true))),
        Step::Tick(40_000),
    ]);
    steps
}

#[test]
fn only_the_ingress_pod_moves_the_gap_and_bystanders_are_reported_beside_it() {
    let mut engine = Engine::new(on_node());
    let steps = rollout_with(
        vec![ingress_pod(), prometheus_pod()],
        vec![
            syn_from(Some("ing"), "nginx", WEB1_HTTP, 11_000),
            syn_from(Some("ing"), "nginx", WEB1_HTTP, 12_000),
            refused_from(Some("ing"), "nginx", WEB1_HTTP, 12_000),
            // The kubelet probes through the preStop, until the container exits.
            syn_from(None, "kubelet", WEB1_HTTP, 14_000),
            syn_from(None, "kubelet", WEB1_HTTP, 18_000),
            refused_from(None, "kubelet", WEB1_HTTP, 18_500),
            // A scraper keeps its stale target list a while longer.
            syn_from(Some("prom"), "prometheus", WEB1_HTTP, 16_000),
            refused_from(Some("prom"), "prometheus", WEB1_HTTP, 19_000),
            // Some other host process.
            syn_from(None, "curl", WEB1_HTTP, 17_000),
        ],
    );
    let out = run(&mut engine, steps);
    let closed = closed(&out);
    assert_eq!(closed.len(), 1);
    let t = closed[0];
    assert!(t.ingress_found);
    assert_eq!(t.last_connect, Some(ms(12_000)));
    assert_eq!(t.propagation_gap_ns, Some(2_000 * MS as i64));
    assert_eq!(t.connects_after_deletion, 2);
    assert_eq!(t.failures.refused, 1, "only the ingress's failure counts");
    let summary: Vec<(&str, ConnectorRole, u64, u64, Option<i64>)> = t
        .connectors
        .iter()
        .map(|c| (c.name.as_str(), c.role, c.connects, c.failures, c.until_ns))
        .collect();
    let s = |ms: i64| Some(ms * MS as i64);
    assert_eq!(
        summary,
        [
            (
                "ingress-nginx/ingress-nginx-controller-5c8d7",
                ConnectorRole::Ingress,
                2,
                1,
                s(2_000)
            ),
            ("kubelet", ConnectorRole::Kubelet, 2, 1, s(8_500)),
            (
                "monitoring/prometheus-0",
                ConnectorRole::Pod,
                1,
                1,
                s(9_000)
            ),
            ("curl", ConnectorRole::Process, 1, 0, s(7_000)),
        ]
    );
    assert!(findings(&out).is_empty());
    let counters = engine.counters();
    assert_eq!(
        counters.failures(PodState::Terminating, FailureClass::Refused),
        1
    );
    assert_eq!(counters.bystander_failures[&ConnectorRole::Kubelet], 1);
    assert_eq!(counters.bystander_failures[&ConnectorRole::Pod], 1);
    let status = engine.ingress_status();
    assert_eq!(
        status.pods,
        ["ingress-nginx/ingress-nginx-controller-5c8d7"]
    );
    // The recommendation comes from the ingress's 2 s, not the probes' 8.5 s.
    let rec = &engine.recommendations()[0];
    assert_eq!(rec.max_ms, 2_000.0);
    assert_eq!(rec.recommended_prestop_seconds, 3);
}

#[test]
fn bystander_failures_to_ready_pods_are_never_findings() {
    let mut engine = Engine::new(on_node());
    let mut steps = listed(
        1_000,
        vec![
            pod("web-1", "u1", WEB1, true, false),
            prometheus_pod(),
            ingress_pod(),
        ],
        vec![slice(&[(WEB1, "u1", true, false)])],
    );
    steps.push(Step::Connect(refused_from(
        Some("prom"),
        "prometheus",
        WEB1_HTTP,
        5_000,
    )));
    steps.push(Step::Connect(refused_from(
        Some("ing"),
        "nginx",
        WEB1_HTTP,
        6_000,
    )));
    let out = run(&mut engine, steps);
    let found = findings(&out);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].record.pod_uid.as_deref(), Some("ing"));
}

#[test]
fn without_an_ingress_on_the_node_no_gap_is_invented() {
    let mut engine = Engine::new(on_node());
    // An ingress pod exists, but on another node.
    let mut elsewhere: Pod = ingress_pod();
    if let Some(spec) = elsewhere.spec.as_mut() {
        spec.node_name = Some("node-b".into());
    }
    let steps = rollout_with(
        vec![elsewhere, prometheus_pod()],
        vec![
            syn_from(None, "kubelet", WEB1_HTTP, 18_000),
            syn_from(Some("prom"), "prometheus", WEB1_HTTP, 16_000),
        ],
    );
    let out = run(&mut engine, steps);
    let t = closed(&out)[0];
    assert!(!t.ingress_found);
    assert_eq!(t.propagation_gap_ns, None);
    assert_eq!(t.connectors.len(), 2, "bystanders are still reported");
    assert!(!engine.ingress_status().found());
    assert!(
        engine.recommendations().is_empty(),
        "no recommendation from bystanders"
    );
}

#[test]
fn an_unknown_pod_uid_is_a_bystander_named_by_uid() {
    let mut engine = Engine::new(on_node());
    let steps = rollout_with(
        vec![ingress_pod()],
        vec![syn_from(Some("not-in-the-api"), "app", WEB1_HTTP, 13_000)],
    );
    let out = run(&mut engine, steps);
    let t = closed(&out)[0];
    assert_eq!(t.propagation_gap_ns, Some(0));
    assert_eq!(t.connectors[0].name, "pod not-in-the-api");
    assert_eq!(t.connectors[0].role, ConnectorRole::Pod);
}

#[test]
fn host_network_pods_never_claim_the_node_ip() {
    let node_ip = "192.168.1.10";
    let mut engine = Engine::new(on_node());
    let host_pod = |name: &str, uid: &str, deleting: bool| {
        labelled_pod("kube-system", name, uid, node_ip, json!({}), true, deleting)
    };
    let mut steps = listed(
        1_000,
        vec![
            host_pod("node-exporter-a", "h1", false),
            host_pod("kube-proxy-a", "h2", false),
            ingress_pod(),
        ],
        vec![],
    );
    steps.extend([
        Step::Pod(5_000, Event::Apply(host_pod("node-exporter-a", "h1", true))),
        Step::Pod(
            6_000,
            Event::Delete(host_pod("node-exporter-a", "h1", true)),
        ),
        Step::Tick(30_000),
    ]);
    let out = run(&mut engine, steps);
    assert!(watch_ops(&out).is_empty(), "{:?}", watch_ops(&out));
    assert!(closed(&out).is_empty());
    assert!(engine.model().ip_claims(ip(node_ip)).is_empty());
    assert!(engine.model().pod("h2").is_some_and(|p| p.ips.is_empty()));
}

#[test]
fn the_ingress_may_be_a_named_host_process() {
    let mut engine = Engine::new(EngineConfig {
        ingress: IngressConfig {
            selectors: vec![],
            comms: vec!["haproxy".into()],
            node: Some(NODE.into()),
        },
        ..EngineConfig::default()
    });
    let steps = rollout_with(
        vec![],
        vec![
            syn_from(None, "haproxy", WEB1_HTTP, 11_500),
            syn_from(None, "kubelet", WEB1_HTTP, 15_000),
        ],
    );
    let out = run(&mut engine, steps);
    let t = closed(&out)[0];
    assert_eq!(t.propagation_gap_ns, Some(1_500 * MS as i64));
    assert_eq!(engine.ingress_status().processes, ["haproxy"]);
}
