//! Pods and EndpointSlices from the API, as arbitrary JSON, through the
//! cluster model and the engine as watch events.
//!
//! One event a line: a letter for the watch event (`a`pply, `d`elete,
//! `i`nit, `l`isted: InitApply, `D`one: InitDone), a letter for the
//! resource (`p`od, `s`lice), then the object's JSON. The events are
//! half a second apart, with an engine tick after each. Absent fields,
//! empty strings, invalid or duplicate IPs, huge lists: whatever
//! deserializes as the Kubernetes type must be taken or skipped, never
//! panicked on, and every lookup must answer.
#![no_main]

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use libfuzzer_sys::fuzz_target;
use observer::clock::MonoTime;
use observer::cluster::{ClusterModel, ResourceEvent, StampedEvent};
use observer::engine::{Engine, EngineConfig};
use serde::de::DeserializeOwned;

const STEP_NS: u64 = 500_000_000;

fn event<K: DeserializeOwned>(op: u8, json: &str) -> Option<Event<K>> {
    let object = || serde_json::from_str::<K>(json).ok();
    Some(match op {
        b'a' => Event::Apply(object()?),
        b'd' => Event::Delete(object()?),
        b'i' => Event::Init,
        b'l' => Event::InitApply(object()?),
        b'D' => Event::InitDone,
        _ => return None,
    })
}

fn parse_line(line: &str) -> Option<ResourceEvent> {
    let bytes = line.as_bytes();
    let (&op, &resource) = (bytes.first()?, bytes.get(1)?);
    let json = line.get(2..)?;
    match resource {
        b'p' => Some(ResourceEvent::Pod(Box::new(event::<Pod>(op, json)?))),
        b's' => Some(ResourceEvent::EndpointSlice(Box::new(event::<
            EndpointSlice,
        >(op, json)?))),
        _ => None,
    }
}

fn check_lookups(model: &ClusterModel, at: MonoTime) {
    let stats = model.stats();
    assert_eq!(stats.pods, model.pods().count());
    assert_eq!(stats.endpoint_records, model.endpoints().count());
    for pod in model.pods() {
        let _ = model.endpoints_of_pod(&pod.uid);
        let _ = model.advertised_ports(&pod.uid);
        let _ = pod.pre_stop_sleep();
        let _ = pod.heap_bytes();
        for ip in &pod.ips {
            let _ = model.pod_for_ip_at(*ip, at);
            assert!(!model.ip_claims(*ip).is_empty(), "a pod's IP has a tenure");
        }
        // Two live pods cannot share a name in the API, but a watch that
        // missed a delete shows the newer one only: the name then finds
        // the newer pod, or none once that one is deleted too.
        if let Some(found) = model.pod_by_name(&pod.namespace, &pod.name) {
            assert_eq!((&found.namespace, &found.name), (&pod.namespace, &pod.name));
            assert!(
                found.removal.is_none(),
                "a name finds a pod still in the API"
            );
        }
    }
    for record in model.endpoints() {
        assert!(model.endpoint(&record.key).is_some());
        assert!(!model.endpoint_history(&record.key).is_empty());
    }
    let _ = model.estimated_heap_bytes();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut model = ClusterModel::new();
    let mut engine = Engine::new(EngineConfig::default());
    let mut outputs = Vec::new();
    let mut at = MonoTime(0);
    for line in text.lines() {
        let Some(event) = parse_line(line) else {
            continue;
        };
        at = MonoTime(at.0 + STEP_NS);
        let stamped = StampedEvent { at, event };
        let _ = model.apply(stamped.clone());
        engine.on_cluster(stamped, &mut outputs);
        engine.on_tick(at, &mut outputs);
        check_lookups(&model, at);
    }
    check_lookups(engine.model(), at);
    let end = MonoTime(at.0 + 60 * STEP_NS);
    engine.on_tick(end, &mut outputs);
    engine.finish(end, &mut outputs);
    let snapshot = engine.snapshot(end);
    serde_json::to_string(&snapshot).expect("a snapshot encodes");
    let _ = engine.recommendations();
    model.prune_removed_before(end);
    check_lookups(&model, end);
});
