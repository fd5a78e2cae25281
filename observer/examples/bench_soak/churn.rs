//! The cluster side of the soak: 10 000 pods behind 200 Services, their
//! EndpointSlices (2 000, five endpoints each), and a steady stream of
//! terminations written straight into the simulator's store, each logged
//! with the local time of every transition it made.
//!
//! A termination goes as the kubelet and the EndpointSlice controller make
//! it go: the pod is marked for deletion; its endpoint turns
//! `ready=false, serving=true, terminating=true`; after the preStop sleep
//! the endpoint leaves its slice and the pod is deleted; a successor pod
//! takes the same IP (IP reuse), starts not ready and turns ready, and its
//! endpoint joins the slice.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use observer::clock::MonoTime;
use observer::cluster::k8s_openapi::api::core::v1::Pod;
use observer::cluster::k8s_openapi::api::discovery::v1::EndpointSlice;
use observer_sim::Store;
use serde_json::json;

pub const NAMESPACE: &str = "soak";
pub const SERVICES: usize = 200;
pub const SLICES_PER_SERVICE: usize = 10;
pub const ENDPOINTS_PER_SLICE: usize = 5;
pub const PODS: usize = SERVICES * SLICES_PER_SERVICE * ENDPOINTS_PER_SLICE;
pub const PORT: u16 = 8080;
/// The pods' preStop sleep: how long a terminating endpoint stays listed.
pub const PRE_STOP: Duration = Duration::from_secs(2);
const NOT_READY_AFTER: Duration = Duration::from_millis(100);
const SUCCESSOR_AFTER: Duration = Duration::from_millis(300);
const SUCCESSOR_READY_AFTER: Duration = Duration::from_millis(400);

/// What the simulator did to one pod, at local CLOCK_MONOTONIC times.
#[derive(Clone, Debug)]
pub struct TerminationLog {
    pub uid: String,
    pub name: String,
    pub deleted: MonoTime,
    pub not_ready: Option<MonoTime>,
    pub removed: Option<MonoTime>,
    pub gone: Option<MonoTime>,
}

#[derive(Clone)]
struct Endpoint {
    uid: String,
    name: String,
    /// The node its pod runs on, as the EndpointSlice controller writes it.
    node: String,
    ip: Ipv4Addr,
    ready: bool,
    terminating: bool,
}

/// Slot `i`: its service, slice and fixed IP.
fn service_of(slot: usize) -> usize {
    slot / (SLICES_PER_SERVICE * ENDPOINTS_PER_SLICE)
}

fn slice_of(slot: usize) -> usize {
    slot / ENDPOINTS_PER_SLICE
}

pub fn ip_of(slot: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 64, (slot / 250) as u8, (slot % 250 + 1) as u8)
}

/// The node slot's pods run on, of `nodes`.
pub fn node_of(slot: usize, nodes: usize) -> String {
    format!("node-{}", slot % nodes.max(1))
}

/// The slot a pod's name was made for (`{service}-7d4b9c-{slot}-{generation}`).
pub fn slot_of_name(name: &str) -> Option<usize> {
    name.rsplit('-').nth(1)?.parse().ok()
}

fn pod_object(slot: usize, generation: u32, ready: bool, nodes: usize) -> Pod {
    let service = format!("svc-{:03}", service_of(slot));
    let ip = ip_of(slot).to_string();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{service}-7d4b9c-{slot}-{generation}"), "namespace": NAMESPACE,
            "labels": {"app": service, "pod-template-hash": "7d4b9c", "tier": "backend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("{service}-7d4b9c"), "uid": format!("rs-{service}"),
                                 "controller": true}]
        },
        "spec": {
            "nodeName": node_of(slot, nodes), "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "app", "image": "registry.example/app:1.2.3",
                "env": [{"name": "LOG_LEVEL", "value": "info"},
                        {"name": "UPSTREAM", "value": "http://backend.svc.cluster.local:8080"}],
                "ports": [{"containerPort": PORT, "protocol": "TCP", "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": PORT}, "periodSeconds": 2},
                "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP.as_secs()}}}
            }]
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": if ready { "True" } else { "False" }}]
        }
    }))
    .unwrap_or_default()
}

fn slice_object(index: usize, endpoints: &[Option<Endpoint>]) -> EndpointSlice {
    let service = format!("svc-{:03}", index / SLICES_PER_SERVICE);
    let listed: Vec<_> = endpoints
        .iter()
        .flatten()
        .map(|e| {
            json!({"addresses": [e.ip.to_string()], "nodeName": e.node,
                   "conditions": {"ready": e.ready && !e.terminating, "serving": e.ready,
                                  "terminating": e.terminating},
                   "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": e.name, "uid": e.uid}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{service}-{index:04}"), "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-01T00:00:00Z"}
        },
        "addressType": "IPv4",
        "endpoints": listed,
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}]
    }))
    .unwrap_or_default()
}

struct State {
    /// Per slice, its endpoint slots.
    slices: Vec<Vec<Option<Endpoint>>>,
    generations: Vec<u32>,
    log: Vec<TerminationLog>,
}

/// The store, the cluster's state and the simulator's own log.
#[derive(Clone)]
pub struct Churn {
    store: Store,
    state: Arc<Mutex<State>>,
    nodes: usize,
}

impl Churn {
    /// Creates every pod (ready) and every slice.
    pub fn populate(store: Store, nodes: usize) -> anyhow::Result<Churn> {
        let mut slices = vec![vec![None; ENDPOINTS_PER_SLICE]; PODS / ENDPOINTS_PER_SLICE];
        for slot in 0..PODS {
            let created = store.create(pod_object(slot, 0, true, nodes))?;
            slices[slice_of(slot)][slot % ENDPOINTS_PER_SLICE] = Some(Endpoint {
                uid: created.metadata.uid.unwrap_or_default(),
                name: created.metadata.name.unwrap_or_default(),
                node: node_of(slot, nodes),
                ip: ip_of(slot),
                ready: true,
                terminating: false,
            });
        }
        for (index, endpoints) in slices.iter().enumerate() {
            store.create(slice_object(index, endpoints))?;
        }
        Ok(Churn {
            store,
            nodes,
            state: Arc::new(Mutex::new(State {
                slices,
                generations: vec![0; PODS],
                log: Vec::new(),
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes slot's endpoint (or removes it) and writes its slice.
    fn set_endpoint(
        &self,
        slot: usize,
        change: impl FnOnce(&mut Option<Endpoint>),
    ) -> anyhow::Result<()> {
        let mut state = self.lock();
        let index = slice_of(slot);
        change(&mut state.slices[index][slot % ENDPOINTS_PER_SLICE]);
        self.store
            .update(slice_object(index, &state.slices[index]))?;
        Ok(())
    }

    /// Terminates the pod in `slot` and starts its successor, step by step
    /// in real time; returns when the successor is ready.
    pub async fn terminate(&self, slot: usize) -> anyhow::Result<()> {
        let (uid, name) = {
            let state = self.lock();
            let endpoint = state.slices[slice_of(slot)][slot % ENDPOINTS_PER_SLICE].clone();
            let endpoint = endpoint.ok_or_else(|| anyhow::anyhow!("slot {slot} has no pod"))?;
            (endpoint.uid, endpoint.name)
        };
        // Each time is taken just before its write: the agent cannot see
        // a change before it.
        let deleted = MonoTime::now();
        let _: Pod = self.store.delete(NAMESPACE, &name, Some(30))?;
        let index = {
            let mut state = self.lock();
            state.log.push(TerminationLog {
                uid,
                name: name.clone(),
                deleted,
                not_ready: None,
                removed: None,
                gone: None,
            });
            state.log.len() - 1
        };
        tokio::time::sleep(NOT_READY_AFTER).await;
        self.lock().log[index].not_ready = Some(MonoTime::now());
        self.set_endpoint(slot, |e| {
            if let Some(e) = e {
                e.terminating = true;
            }
        })?;
        tokio::time::sleep(PRE_STOP).await;
        self.lock().log[index].removed = Some(MonoTime::now());
        self.set_endpoint(slot, |e| *e = None)?;
        self.lock().log[index].gone = Some(MonoTime::now());
        let _: Pod = self.store.delete(NAMESPACE, &name, Some(0))?;

        tokio::time::sleep(SUCCESSOR_AFTER).await;
        let generation = {
            let mut state = self.lock();
            state.generations[slot] += 1;
            state.generations[slot]
        };
        let successor = self
            .store
            .create(pod_object(slot, generation, false, self.nodes))?;
        let endpoint = Endpoint {
            uid: successor.metadata.uid.clone().unwrap_or_default(),
            name: successor.metadata.name.clone().unwrap_or_default(),
            node: node_of(slot, self.nodes),
            ip: ip_of(slot),
            ready: false,
            terminating: false,
        };
        self.set_endpoint(slot, |e| *e = Some(endpoint))?;
        tokio::time::sleep(SUCCESSOR_READY_AFTER).await;
        let mut ready = successor;
        ready.metadata.resource_version = None;
        if let Some(status) = ready.status.as_mut() {
            for condition in status.conditions.iter_mut().flatten() {
                if condition.type_ == "Ready" {
                    condition.status = "True".into();
                }
            }
        }
        self.store.update(ready)?;
        self.set_endpoint(slot, |e| {
            if let Some(e) = e {
                e.ready = true;
            }
        })?;
        Ok(())
    }

    /// The simulator's log of terminations so far.
    pub fn log(&self) -> Vec<TerminationLog> {
        self.lock().log.clone()
    }
}

/// Slots in a fixed shuffled order, so consecutive terminations hit
/// different Services and slices.
pub fn slot_order() -> Vec<usize> {
    let mut order: Vec<usize> = (0..PODS).collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        order.swap(i, (rng % (i as u64 + 1)) as usize);
    }
    order
}

/// The simulator's log by pod UID.
pub fn names_by_uid(log: &[TerminationLog]) -> BTreeMap<&str, &TerminationLog> {
    log.iter().map(|t| (t.uid.as_str(), t)).collect()
}
