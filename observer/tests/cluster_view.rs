//! `observer cluster` against two agents' HTTP APIs on loopback: an
//! ingress node's agent (nginx, a host process, sending to the pod) and
//! the pod's own node's agent (what arrived at the pod). Each runs its own
//! engine on its own clock, 2 hours apart; the command prints one row per
//! termination with both views, and the figure that joins the two nodes
//! comes out right because it is measured on each node from the
//! EndpointSlice change both saw, never across the two clocks.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::runtime::watcher::Event;
use observer::{
    agent::{EngineLoop, Input, StateSink},
    clock::MonoTime,
    cluster::{ResourceEvent, StampedEvent},
    engine::{Engine, EngineConfig, IngressConfig},
    export::{AgentState, HttpConfig, HttpServer},
    probe::decode::{ConnectRecord, Outcome},
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_observer");
const MS: u64 = 1_000_000;
const POD_IP: &str = "10.4.0.7";

fn pod(deleting: bool) -> Pod {
    let mut value = json!({
        "metadata": {"name": "cart-1", "namespace": "shop", "uid": "u-cart-1",
                     "labels": {"app": "cart"}},
        "spec": {"nodeName": "node-b",
                 "containers": [{"name": "cart", "image": "cart", "ports": [{"containerPort": 8080}]}],
                 "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
                   "conditions": [{"type": "Ready", "status": if deleting { "False" } else { "True" }}]}
    });
    if deleting {
        value["metadata"]["deletionTimestamp"] = json!("2026-03-02T09:01:47Z");
        value["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    }
    serde_json::from_value(value).unwrap()
}

fn slice(terminating: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": "cart-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "cart"}},
        "endpoints": [{"addresses": [POD_IP],
                       "conditions": {"ready": !terminating, "serving": true, "terminating": terminating},
                       "targetRef": {"kind": "Pod", "namespace": "shop", "uid": "u-cart-1"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn pod_event(at_ms: u64, event: Event<Pod>) -> Input {
    Input::Cluster(StampedEvent {
        at: MonoTime(at_ms * MS),
        event: ResourceEvent::Pod(Box::new(event)),
    })
}

fn slice_event(at_ms: u64, event: Event<EndpointSlice>) -> Input {
    Input::Cluster(StampedEvent {
        at: MonoTime(at_ms * MS),
        event: ResourceEvent::EndpointSlice(Box::new(event)),
    })
}

/// What one node's kernel reported: nginx's connect on the ingress node,
/// the pod's accepted connection on the pod's node (a kernel event: no
/// watch lag).
fn connect(at_ms: u64, arrival: bool) -> Input {
    Input::Connect(ConnectRecord {
        ts: MonoTime(at_ms * MS),
        syn: None,
        src: "10.0.9.1:40000".parse().unwrap(),
        dst: format!("{POD_IP}:8080").parse().unwrap(),
        pid: if arrival { 0 } else { 100 },
        tid: if arrival { 0 } else { 101 },
        comm: if arrival {
            String::new()
        } else {
            "nginx".into()
        },
        cgroup_id: if arrival { 42 } else { 7 },
        pod_uid: None,
        container_id: None,
        watched: true,
        retry: false,
        retried: None,
        count: 1,
        outcome: if arrival {
            Outcome::Accepted
        } else {
            Outcome::Connect
        },
    })
}

/// One node's agent: its engine fed one termination on its own clock
/// (`base` ms), `watch_lag` ms after the API's events, served on loopback.
async fn agent(node: &str, base: u64, watch_lag: u64, ingress: bool) -> HttpServer {
    let config = EngineConfig {
        ingress: IngressConfig {
            comms: if ingress {
                vec!["nginx".into()]
            } else {
                Vec::new()
            },
            node: Some(node.into()),
            ..IngressConfig::default()
        },
        ..EngineConfig::default()
    };
    let state = AgentState::default();
    state.set_probe_attached(true);
    state.set_not_ready(None);
    let mut engine = EngineLoop::new(
        Engine::new(config),
        vec![Box::new(StateSink::new(state.clone()))],
    );
    let t = |ms: u64| base + ms + watch_lag;
    let mut inputs = vec![
        pod_event(base, Event::Init),
        pod_event(base, Event::InitApply(pod(false))),
        pod_event(base, Event::InitDone),
        slice_event(base, Event::Init),
        slice_event(base, Event::InitApply(slice(false))),
        slice_event(base, Event::InitDone),
        // The deletion, then the address leaving the EndpointSlice 190 ms
        // later (the API's times; each node sees them `watch_lag` late).
        pod_event(t(1_000), Event::Apply(pod(true))),
        slice_event(t(1_190), Event::Apply(slice(true))),
    ];
    // nginx keeps choosing the pod until 490 ms after the API's deletion;
    // each connect arrives at the pod 1 ms after it left.
    for at in [1_100, 1_300, 1_490] {
        inputs.push(if ingress {
            connect(base + at, false)
        } else {
            connect(base + at + 1, true)
        });
    }
    inputs.push(slice_event(t(1_600), Event::Delete(slice(true))));
    inputs.push(pod_event(t(3_000), Event::Delete(pod(true))));
    inputs.push(Input::Tick(MonoTime((base + 60_000) * MS)));
    for input in inputs {
        engine.feed(input, None).unwrap();
    }
    HttpServer::start(
        &["127.0.0.1:0".parse().unwrap()],
        Arc::new(state),
        HttpConfig::default(),
    )
    .await
    .expect("server starts")
}

/// Runs `observer cluster ARGS` off the async threads (the agents'
/// servers run on them).
async fn observer_cluster(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("cluster")
            .args(&args)
            .output()
            .expect("observer cluster runs")
    })
    .await
    .expect("joined")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_per_termination_with_both_nodes_views() {
    // The ingress node sees the API's events 3 ms late, the pod's node
    // 7 ms late; their clocks are two hours apart.
    let ingress_node = agent("node-a", 1_000_000, 3, true).await;
    let pod_node = agent("node-b", 1_000_000 + 7_200_000, 7, false).await;
    let urls =
        [ingress_node.local_addrs[0], pod_node.local_addrs[0]].map(|addr| format!("http://{addr}"));
    let output = observer_cluster(&["--format", "json", "--agents", &urls.join(",")]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let view: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let rows = view["terminations"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "one row for the one termination: {view:#}");
    let row = &rows[0];
    assert_eq!(row["uid"], "u-cart-1");
    assert_eq!(row["node"], "node-b");
    let mut agents: Vec<&str> = row["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    agents.sort_unstable();
    let mut expected = urls.clone();
    expected.sort_unstable();
    assert_eq!(agents, expected, "both agents' parts in one row");
    // Each node's figures on its own clock, from its own deletion_seen.
    assert_eq!(row["propagation_gap_ms"], 490 - 3, "{row:#}");
    let ingress = &row["ingress_nodes"][0];
    assert_eq!(ingress["agent"], urls[0].as_str());
    assert_eq!(ingress["propagation_gap_ms"], 490 - 3);
    assert_eq!(ingress["endpoint_removed_ms"], 600);
    let destination = &row["pod_node"];
    assert_eq!(destination["agent"], urls[1].as_str());
    assert_eq!(destination["arrival_gap_ms"], 490 + 1 - 7, "{row:#}");
    assert_eq!(destination["endpoint_removed_ms"], 600);
    // Joined through the EndpointSlice change: the send came 1 ms before
    // the arrival, and the join is off by the 4 ms by which node-b's watch
    // is later than node-a's. Nothing of the two hours between the clocks
    // shows. Both nodes took the same time from the deletion to the slice
    // change, so the anchors agree: a steady difference of watch latencies
    // is the part of the error no agent can see (docs/ARCHITECTURE.md).
    assert_eq!(ingress["send_after_arrival_ms"], -1 + 4, "{row:#}");
    assert_eq!(ingress["anchor_disagreement_ms"], 0);
    assert!(row["clock"].as_str().unwrap().contains("own"));
    assert_eq!(view["unreachable"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_is_named_and_the_others_still_print() {
    let ingress_node = agent("node-a", 1_000_000, 3, true).await;
    let reachable = format!("http://{}", ingress_node.local_addrs[0]);
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let both = format!("{reachable},{gone}");
    let output = observer_cluster(&["--format", "json", "--agents", &both]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(view["terminations"].as_array().map(Vec::len), Some(1));
    assert!(view["unreachable"][&gone].is_string(), "{view:#}");
    let none = observer_cluster(&["--agents", &gone]).await;
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("no agent could be read"), "{stderr}");
}
