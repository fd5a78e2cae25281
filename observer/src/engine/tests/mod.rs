//! Scenario tests: API-shaped Pod and EndpointSlice objects and connect
//! records through the engine, asserting what a user reads in the output.

mod arrival_tests;
mod choice_tests;
mod connector_tests;
mod recommend_tests;
mod scenarios;

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;
use crate::cluster::ResourceEvent;
use crate::probe::decode::{FailureClass, Outcome};

pub const MS: u64 = 1_000_000;

pub fn ms(t: u64) -> MonoTime {
    MonoTime(t * MS)
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// A Deployment pod as the API shows it (preStop `sleep 5`, grace 30 s,
/// port 8080); `deleting` adds a deletionTimestamp.
pub fn pod(name: &str, uid: &str, pod_ip: &str, ready: bool, deleting: bool) -> Pod {
    let mut value = json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid,
            "labels": {"pod-template-hash": "abc12"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc12",
                                  "uid": "rs", "controller": true}]
        },
        "spec": {"containers": [{"name": "web", "image": "web",
                                 "ports": [{"containerPort": 8080}],
                                 "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 5"]}}}}],
                 "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    });
    if deleting {
        value["metadata"]["deletionTimestamp"] = json!("2026-03-02T09:01:47Z");
        value["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    }
    serde_json::from_value(value).expect("valid pod")
}

/// One endpoint: (ip, pod uid, ready, terminating).
pub type Ep<'a> = (&'a str, &'a str, bool, bool);

pub fn slice(endpoints: &[Ep]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(addr, uid, ready, terminating)| {
            json!({"addresses": [addr],
                   "conditions": {"ready": ready, "serving": *ready || *terminating, "terminating": terminating},
                   "targetRef": {"kind": "Pod", "namespace": "shop", "uid": uid}})
        })
        .collect();
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": "web-x1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .expect("valid slice")
}

/// The engine as these tests run it: the ingress is the host process
/// `nginx` (the tests' records come from it, from no pod's cgroup), and
/// windows close after 5 s of quiet (the tests' timelines are laid out
/// around it, whatever the default).
pub fn ingress_nginx() -> EngineConfig {
    EngineConfig {
        ingress: IngressConfig {
            comms: vec!["nginx".into()],
            ..IngressConfig::default()
        },
        quiet_period: std::time::Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

/// A connect record from the ingress (pid 100, nginx) to `dst`.
pub fn record(
    dst: &str,
    ts_ms: u64,
    syn_ms: Option<u64>,
    watched: bool,
    outcome: Outcome,
) -> ConnectRecord {
    ConnectRecord {
        ts: ms(ts_ms),
        syn: syn_ms.map(ms),
        src: "10.0.9.1:40000".parse().expect("addr"),
        dst: dst.parse().expect("addr"),
        pid: 100,
        tid: 101,
        comm: "nginx".into(),
        cgroup_id: 7,
        pod_uid: None,
        container_id: None,
        retry: false,
        retried: None,
        count: 1,
        watched,
        outcome,
    }
}

/// The SYN to a watched destination.
pub fn syn(dst: &str, t_ms: u64) -> ConnectRecord {
    record(dst, t_ms, None, true, Outcome::Connect)
}

/// A failure `waited` ms after its SYN at `syn_ms`.
pub fn failed(
    dst: &str,
    syn_ms: u64,
    waited: u64,
    class: FailureClass,
    watched: bool,
) -> ConnectRecord {
    record(
        dst,
        syn_ms + waited,
        Some(syn_ms),
        watched,
        Outcome::Failed {
            class,
            errno: 0,
            waited_ns: waited * MS,
            synchronous: false,
        },
    )
}

/// One input to the engine (only ever in short test vectors, so the
/// variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum Step {
    Pod(u64, Event<Pod>),
    Slice(u64, Event<EndpointSlice>),
    Connect(ConnectRecord),
    Tick(u64),
}

/// Every step of a complete initial list of pods and slices at `t_ms`.
pub fn listed(t_ms: u64, pods: Vec<Pod>, slices: Vec<EndpointSlice>) -> Vec<Step> {
    let mut steps = vec![Step::Pod(t_ms, Event::Init)];
    steps.extend(
        pods.into_iter()
            .map(|p| Step::Pod(t_ms, Event::InitApply(p))),
    );
    steps.push(Step::Pod(t_ms, Event::InitDone));
    steps.push(Step::Slice(t_ms, Event::Init));
    steps.extend(
        slices
            .into_iter()
            .map(|s| Step::Slice(t_ms, Event::InitApply(s))),
    );
    steps.push(Step::Slice(t_ms, Event::InitDone));
    steps
}

/// Runs the steps through `engine` and returns every output in order.
pub fn run(engine: &mut Engine, steps: Vec<Step>) -> Vec<Output> {
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Pod(t, e) => engine.on_cluster(
                StampedEvent {
                    at: ms(t),
                    event: ResourceEvent::Pod(Box::new(e)),
                },
                &mut out,
            ),
            Step::Slice(t, e) => engine.on_cluster(
                StampedEvent {
                    at: ms(t),
                    event: ResourceEvent::EndpointSlice(Box::new(e)),
                },
                &mut out,
            ),
            Step::Connect(r) => engine.on_connect(&r, &mut out),
            Step::Tick(t) => engine.on_tick(ms(t), &mut out),
        }
    }
    out
}

pub fn closed(out: &[Output]) -> Vec<&PodTermination> {
    out.iter()
        .filter_map(|o| match o {
            Output::TerminationClosed(t) => Some(t),
            _ => None,
        })
        .collect()
}

pub fn findings(out: &[Output]) -> Vec<&Finding> {
    out.iter()
        .filter_map(|o| match o {
            Output::Finding(f) => Some(f),
            _ => None,
        })
        .collect()
}

pub fn watch_ops(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Watch(ip) => Some(format!("watch {ip}")),
            Output::Unwatch(ip) => Some(format!("unwatch {ip}")),
            _ => None,
        })
        .collect()
}
