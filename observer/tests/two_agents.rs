//! Two agents for two nodes against the API simulator, each with its own
//! watches, engine and HTTP API, as the DaemonSet runs them: node-a runs
//! the ingress, node-b the pod that terminates. The pods' agent watches
//! only its node's Pods; the ingress's agent widens to the cluster when it
//! finds the ingress on its node; `observer cluster` then prints one row
//! for the termination with both views. The connects and arrivals are
//! what each node's probe reports (the probe is tested on the kernel by
//! the tests crate); everything else is the agent's own code.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use observer::{
    agent::{EngineLoop, Input, StateSink},
    clock::MonoTime,
    cluster::{PodScope, ScopeNow, WatchConfig, WatchCounters, stamped_events},
    engine::{Engine, EngineConfig, IngressConfig},
    export::{AgentState, HttpConfig, HttpServer},
    probe::decode::{ConnectRecord, Outcome},
};
use observer_sim::{RequestScope, SimConfig, SimServer};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_observer");
const WEB_IP: &str = "10.4.0.7";
const INGRESS_IP: &str = "10.4.1.9";

fn pod(name: &str, node: &str, ip: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "c", "image": "c", "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn web_slice(uid: &str, terminating: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": "web-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": [{"addresses": [WEB_IP],
                       "conditions": {"ready": !terminating, "serving": true, "terminating": terminating},
                       "targetRef": {"kind": "Pod", "namespace": "shop", "uid": uid}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

/// One node's agent: its watches, its engine loop (fed by the watches and
/// by `inputs`, which stand for its probe), its HTTP API.
struct Agent {
    inputs: mpsc::Sender<Input>,
    counters: Arc<WatchCounters>,
    state: AgentState,
    server: HttpServer,
}

async fn agent(client: &observer::cluster::Kube, node: &str) -> Agent {
    let ingress = IngressConfig {
        node: Some(node.into()),
        ..IngressConfig::default()
    };
    let watch = WatchConfig {
        pod_scope: PodScope::NodeUntilIngress {
            node: node.into(),
            ingress_selectors: ingress.parsed_selectors().unwrap(),
        },
        ..WatchConfig::default()
    };
    let config = EngineConfig {
        ingress,
        quiet_period: Duration::from_secs(1),
        ..EngineConfig::default()
    };
    let state = AgentState::default();
    state.set_probe_attached(true);
    state.set_not_ready(None);
    let counters = Arc::new(WatchCounters::default());
    let (inputs, mut rx) = mpsc::channel::<Input>(1024);
    let mut events = Box::pin(stamped_events(client, &watch, counters.clone()));
    let from_watches = inputs.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if from_watches.send(Input::Cluster(event)).await.is_err() {
                return;
            }
        }
    });
    let mut engine = EngineLoop::new(
        Engine::new(config),
        vec![Box::new(StateSink::new(state.clone()))],
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let input = tokio::select! {
                input = rx.recv() => match input { Some(i) => i, None => return },
                _ = tick.tick() => Input::Tick(MonoTime::now()),
            };
            engine.feed(input, None).unwrap();
        }
    });
    let server = HttpServer::start(
        &["127.0.0.1:0".parse().unwrap()],
        Arc::new(state.clone()),
        HttpConfig::default(),
    )
    .await
    .expect("server starts");
    Agent {
        inputs,
        counters,
        state,
        server,
    }
}

/// What a node's probe reported, now.
fn record(src: &str, outcome: Outcome, ingress_uid: Option<&str>) -> Input {
    Input::Connect(ConnectRecord {
        ts: MonoTime::now(),
        syn: None,
        src: src.parse().unwrap(),
        dst: format!("{WEB_IP}:8080").parse().unwrap(),
        pid: 0,
        tid: 0,
        comm: String::new(),
        cgroup_id: 7,
        pod_uid: ingress_uid.map(str::to_owned),
        container_id: None,
        watched: true,
        retry: false,
        retried: None,
        count: 1,
        outcome,
    })
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_agent_watches_its_node_and_the_merged_view_has_both_sides() {
    let server = SimServer::start_with(SimConfig {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = server.store().clone();
    let web = store
        .create(pod("web-1", "node-b", WEB_IP, json!({"app": "web"})))
        .unwrap();
    let web_uid = web.metadata.uid.clone().unwrap();
    let controller = store
        .create(pod(
            "ingress-nginx-controller-1",
            "node-a",
            INGRESS_IP,
            json!({"app.kubernetes.io/name": "ingress-nginx",
                   "app.kubernetes.io/component": "controller"}),
        ))
        .unwrap();
    let ingress_uid = controller.metadata.uid.clone().unwrap();
    let batch = store
        .create(pod(
            "batch-1",
            "node-c",
            "10.4.2.3",
            json!({"app": "batch"}),
        ))
        .unwrap();
    store.create(web_slice(&web_uid, false)).unwrap();
    let client = observer::cluster::Kube::from_config(server.config().await.expect("config"))
        .expect("client");
    let node_a = agent(&client, "node-a").await;
    let node_b = agent(&client, "node-b").await;
    until("node-a widened to the cluster", || {
        node_a.counters.pod_scope.get() == ScopeNow::Cluster
            && node_a.state.snapshot().ingress.found()
    })
    .await;
    until("both listed", || {
        node_a.counters.pods.snapshot().lists >= 1 && node_b.counters.pods.snapshot().lists >= 1
    })
    .await;
    assert_eq!(node_b.counters.pod_scope.get(), ScopeNow::Node);
    // node-b's watch carried its own pod only: one object listed.
    assert_eq!(node_b.counters.pods.snapshot().events, 1);

    // The rollout: web-1 is deleted; its address goes not-ready, then
    // leaves the slice. The ingress keeps sending to it for a while, and
    // the pod's node sees those connects arrive.
    store.delete::<Pod>("shop", "web-1", None).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.update(web_slice(&web_uid, true)).unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let sent = record(
            &format!("{INGRESS_IP}:40000"),
            Outcome::Connect,
            Some(&ingress_uid),
        );
        node_a.inputs.send(sent).await.unwrap();
        let arrived = record(&format!("{INGRESS_IP}:40000"), Outcome::Accepted, None);
        node_b.inputs.send(arrived).await.unwrap();
    }
    store
        .delete::<EndpointSlice>("shop", "web-abc", None)
        .unwrap();
    store.delete::<Pod>("shop", "web-1", Some(0)).unwrap();
    // A pod on a third node changes: only the cluster-wide watch hears.
    let mut relabelled = batch;
    relabelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("tier".into(), "low".into());
    store.update(relabelled).unwrap();
    until("both windows closed", || {
        [&node_a, &node_b]
            .iter()
            .all(|a| a.state.snapshot().recent.iter().any(|t| t.uid == web_uid))
    })
    .await;

    let urls = [&node_a, &node_b].map(|a| format!("http://{}", a.server.local_addrs[0]));
    let agents = urls.join(",");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["cluster", "--format", "json", "--agents", &agents])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows: Vec<&Value> = view["terminations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["uid"] == web_uid.as_str())
        .collect();
    assert_eq!(rows.len(), 1, "one row for web-1: {view:#}");
    let row = rows[0];
    assert_eq!(row["node"], "node-b");
    let ingress = &row["ingress_nodes"][0];
    assert_eq!(ingress["agent"], urls[0].as_str(), "{row:#}");
    let gap = ingress["propagation_gap_ms"].as_i64().unwrap();
    assert!(
        gap >= 150,
        "the ingress chose web-1 after its deletion: {row:#}"
    );
    let pod_node = &row["pod_node"];
    assert_eq!(pod_node["agent"], urls[1].as_str(), "{row:#}");
    let arrival_gap = pod_node["arrival_gap_ms"].as_i64().unwrap();
    assert!(arrival_gap >= 150, "{row:#}");
    // Each measured on its own node from its own deletion_seen; the two
    // agents saw the deletion within a few ms of each other here.
    assert!((gap - arrival_gap).abs() < 100, "{row:#}");

    // What the API server served: node-b's Pod watch was node-scoped from
    // start to end; node-a listed its node's pods, found the ingress there
    // and watched the cluster from then on.
    let watches: BTreeMap<(String, RequestScope), u64> = server.requests().watches_by_scope();
    let pods = |scope| watches.get(&("pods".to_owned(), scope)).copied();
    assert_eq!(pods(RequestScope::Node), Some(1), "{watches:?}");
    assert_eq!(pods(RequestScope::Cluster), Some(1), "{watches:?}");
    let node_a_listed = server.requests().records().iter().any(|r| {
        r.resource() == "pods"
            && !r.watch
            && r.param("fieldSelector").as_deref() == Some("spec.nodeName=node-a")
    });
    assert!(node_a_listed, "node-a started with its own node's pods");
    // What each pod change cost: web-1's two changes went to node-b's
    // watch and node-a's; batch-1's to node-a's only.
    let sent = server.watch_events_sent();
    let pods_sent = |scope| sent.get(&("pods".to_owned(), scope)).copied();
    assert_eq!(pods_sent(RequestScope::Node), Some(2), "{sent:?}");
    assert_eq!(pods_sent(RequestScope::Cluster), Some(3), "{sent:?}");
    server.shutdown().await;
}
