//! A recording holds no secret a Pod carried: the real watchers read a Pod
//! with an environment value and a secret-looking annotation from the API
//! simulator, the agent's engine loop records every input, and the secret
//! is nowhere in the file. The pruned recording still replays to the live
//! output, byte for byte.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use observer::{
    agent::{EngineLoop, Input, NdjsonSink, RecordingSink, Sink, replay},
    clock::MonoTime,
    cluster::{self, ClientSource, StampedEvent, WatchConfig, WatchCounters},
    engine::{Engine, EngineConfig, IngressConfig},
    probe::decode::{ConnectRecord, FailureClass, Outcome},
};
use observer_sim::SimServer;

const ENV_SECRET: &str = "env-value-7f3a9c-do-not-record";
const ANNOTATION_SECRET: &str = "annotation-token-51e0b2";
const POD_IP: &str = "10.9.0.5";
const INGRESS: &str = "edge-proxy";

fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                     "annotations": {"vault.example/agent-token": ANNOTATION_SECRET}},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "app", "image": "web",
                                 "env": [{"name": "DATABASE_PASSWORD", "value": ENV_SECRET}],
                                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                 "lifecycle": {"preStop": {"exec": {"command":
                                     ["sh", "-c", format!("sleep 2; PASS={ENV_SECRET} drain")]}}}}]},
        "status": {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("pod JSON")
}

fn slice(uid: &str, ready: bool, listed: bool) -> EndpointSlice {
    let endpoints = if listed {
        serde_json::json!([{"addresses": [POD_IP],
            "conditions": {"ready": ready, "serving": true, "terminating": !ready},
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": uid}}])
    } else {
        serde_json::json!([])
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-abc12", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .expect("slice JSON")
}

fn refused(port: u16) -> ConnectRecord {
    let now = MonoTime::now();
    ConnectRecord {
        ts: now,
        syn: Some(now),
        src: format!("10.9.0.1:{port}").parse().unwrap(),
        dst: format!("{POD_IP}:8080").parse().unwrap(),
        pid: 7,
        tid: 7,
        comm: INGRESS.into(),
        cgroup_id: 1,
        pod_uid: None,
        container_id: None,
        retry: false,
        retried: None,
        count: 1,
        watched: true,
        outcome: Outcome::Failed {
            class: FailureClass::Refused,
            errno: 111,
            waited_ns: 1_000,
            synchronous: false,
        },
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        quiet_period: Duration::from_secs(1),
        ingress: IngressConfig {
            comms: vec![INGRESS.into()],
            ..IngressConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// The engine loop fed by the real watchers, as `observer agent --record`
/// runs it (without the probe: connects are fed directly).
struct Agent<S> {
    events: S,
    engine_loop: EngineLoop,
    last: MonoTime,
}

impl<S: futures::Stream<Item = StampedEvent> + Unpin> Agent<S> {
    fn feed(&mut self, input: Input) {
        self.last = match &input {
            Input::Connect(c) => c.ts,
            Input::Cluster(e) => e.at,
            Input::Tick(t) => *t,
        };
        self.engine_loop.feed(input, None).expect("sinks write");
    }

    /// Feeds watch events (and a tick every 100 ms) until `done` holds.
    async fn pump(&mut self, what: &str, done: impl Fn(&Engine) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done(self.engine_loop.engine()) {
            assert!(Instant::now() < deadline, "{what} within 15 s");
            match tokio::time::timeout(Duration::from_millis(100), self.events.next()).await {
                Ok(Some(event)) => self.feed(Input::Cluster(event)),
                Ok(None) => panic!("the watch stream ended"),
                Err(_) => self.feed(Input::Tick(MonoTime::now())),
            }
        }
    }
}

fn pod_state(engine: &Engine, uid: &str, check: impl Fn(&cluster::PodRecord) -> bool) -> bool {
    engine.model().pod(uid).is_some_and(check)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_holds_no_env_value_or_annotation_and_replays_identically() {
    let sim = SimServer::start().await.expect("simulator");
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let uid = sim
        .store()
        .create(pod())
        .expect("create pod")
        .metadata
        .uid
        .expect("uid");
    sim.store()
        .create(slice(&uid, true, true))
        .expect("create slice");

    let client = cluster::connect(&ClientSource::Kubeconfig(kubeconfig))
        .await
        .expect("client")
        .expect("configured");
    let events = Box::pin(cluster::stamped_events(
        &client,
        &WatchConfig::default(),
        std::sync::Arc::new(WatchCounters::default()),
    ));
    let recording = dir.join("inputs.rec");
    let live = dir.join("live.ndjson");
    let config = config();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(NdjsonSink::create(&live).expect("output")),
        Box::new(RecordingSink::create(&recording, &config.ingress).expect("recording")),
    ];
    let mut agent = Agent {
        events,
        engine_loop: EngineLoop::new(Engine::new(config.clone()), sinks),
        last: MonoTime(0),
    };

    agent
        .pump("both watches listed, the pod ready", |e| {
            e.model().is_synced() && pod_state(e, &uid, |p| p.ready == Some(true))
        })
        .await;
    sim.store()
        .delete::<Pod>("shop", "web-1", Some(30))
        .expect("graceful delete");
    agent
        .pump("the deletion seen", |e| {
            pod_state(e, &uid, |p| p.deletion_seen().is_some())
        })
        .await;
    for port in 40_000..40_003 {
        agent.feed(Input::Connect(refused(port)));
    }
    sim.store()
        .update(slice(&uid, false, true))
        .expect("endpoint not ready");
    sim.store()
        .update(slice(&uid, false, false))
        .expect("endpoint removed");
    sim.store()
        .delete::<Pod>("shop", "web-1", Some(0))
        .expect("pod gone");
    agent
        .pump("the pod's removal seen", |e| {
            pod_state(e, &uid, |p| p.removal.is_some())
        })
        .await;
    // The slice's events travel on their own watch: let them arrive.
    let settle = Instant::now() + Duration::from_millis(500);
    agent.pump("", |_| Instant::now() > settle).await;
    let end = agent.last;
    agent.engine_loop.finish(end, None).expect("finish");

    let recorded = std::fs::read_to_string(&recording).expect("recording");
    assert!(recorded.contains("\"web-1\""), "the pod is recorded");
    for secret in [
        ENV_SECRET,
        ANNOTATION_SECRET,
        "DATABASE_PASSWORD",
        "vault.example",
    ] {
        assert!(
            !recorded.contains(secret),
            "{secret} is in the recording:\n{recorded}"
        );
    }

    let live_out = std::fs::read_to_string(&live).expect("live output");
    let termination = live_out
        .lines()
        .find(|l| l.starts_with("{\"termination\""))
        .unwrap_or_else(|| panic!("a termination in the live output:\n{live_out}"));
    assert!(
        termination.contains("\"configured_prestop_ms\":2000"),
        "the preStop sleep survives pruning: {termination}"
    );
    assert!(termination.contains("\"refused\":3"), "{termination}");
    let replayed = dir.join("replay.ndjson");
    // The ingress comes from the recording itself.
    let flags = EngineConfig {
        ingress: IngressConfig::default(),
        ..config
    };
    replay(&recording, Some(&replayed), flags, false).expect("replay");
    assert_eq!(
        std::fs::read_to_string(&replayed).expect("replay output"),
        live_out,
        "the pruned recording replays to the live output"
    );
    assert_no_secret_in(&replayed);
    sim.shutdown().await;
}

fn assert_no_secret_in(path: &Path) {
    let text = std::fs::read_to_string(path).expect("readable");
    assert!(!text.contains(ENV_SECRET) && !text.contains(ANNOTATION_SECRET));
}
