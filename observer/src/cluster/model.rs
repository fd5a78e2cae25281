//! The pure cluster model: watch events in, normalized changes out. No I/O
//! and no clock reads: every event arrives stamped with its local receipt
//! time, so live runs, replays and tests behave the same.
//!
//! Relists (the watcher's Init / InitApply / InitDone after a start, a
//! 410 Gone or a broken stream) are diffed against what the model held, so
//! a gap neither loses a transition the API still shows nor invents one.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use tracing::warn;

use super::change::{ChangeKind, ClusterChange, EndpointKey, WatchedResource};
use super::endpoints::{EndpointRecord, EndpointTable, SliceState};
use super::ip_index::{IpClaim, IpIndex};
use super::pod::{Deletion, MalformedObject, PodRecord, PodSnapshot, Removal};
use crate::clock::MonoTime;

/// A watch event with the local time it was received.
#[derive(Clone, Debug)]
pub struct StampedEvent {
    pub at: MonoTime,
    pub event: ResourceEvent,
}

/// A watch event of one of the watched resources (boxed: a Pod is a few
/// kilobytes and events travel through channels).
#[derive(Clone, Debug)]
pub enum ResourceEvent {
    Pod(Box<Event<Pod>>),
    EndpointSlice(Box<Event<EndpointSlice>>),
    /// The node whose endpoints the model keeps whole from here on (`None`:
    /// every node's). The slice watch sends it first, and again when it
    /// widens, right before its relist.
    SliceScope(Option<String>),
}

/// How a pod snapshot reached the model.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Watch,
    List,
}

/// Distinct malformed objects remembered for warn-once; beyond this many,
/// further ones are counted but not logged.
const MAX_WARNED: usize = 4096;

/// Sizes for metrics and the memory figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModelStats {
    pub pods: usize,
    pub pods_removed: usize,
    pub ips: usize,
    pub endpoint_records: usize,
    pub skipped_objects: u64,
    pub estimated_heap_bytes: usize,
}

/// Pods, IP tenures and endpoint addresses as this agent has seen them.
#[derive(Debug, Default)]
pub struct ClusterModel {
    /// Boxed so the table's spare slots stay pointer-sized.
    pods: HashMap<String, Box<PodRecord>>,
    /// `namespace/name` → uid of the pod currently holding the name.
    pod_names: HashMap<String, String>,
    ips: IpIndex,
    endpoints: EndpointTable,
    /// uids listed so far in a pod relist in progress.
    pod_relist: Option<HashSet<String>>,
    /// Slices listed so far in a slice relist in progress.
    slice_relist: Option<HashMap<String, SliceState>>,
    pods_synced: bool,
    slices_synced: bool,
    warned: HashSet<String>,
    skipped_objects: u64,
    /// Nodes by their addresses, from the pods' `status.hostIPs`: as many
    /// entries as nodes have addresses.
    nodes_by_ip: HashMap<IpAddr, String>,
}

impl ClusterModel {
    pub fn new() -> ClusterModel {
        ClusterModel::default()
    }

    /// Applies one stamped event and returns what changed.
    pub fn apply(&mut self, event: StampedEvent) -> Vec<ClusterChange> {
        match event.event {
            ResourceEvent::Pod(e) => self.apply_pod_event(event.at, *e),
            ResourceEvent::EndpointSlice(e) => self.apply_slice_event(event.at, *e),
            ResourceEvent::SliceScope(node) => {
                self.endpoints.set_keep_node(node);
                Vec::new()
            }
        }
    }

    pub fn apply_pod_event(&mut self, at: MonoTime, event: Event<Pod>) -> Vec<ClusterChange> {
        let mut out = Vec::new();
        match event {
            Event::Apply(pod) => {
                if let Some(snapshot) = self.parse_pod(&pod) {
                    self.upsert_pod(snapshot, at, Source::Watch, &mut out);
                }
            }
            Event::Delete(pod) => {
                if let Some(snapshot) = self.parse_pod(&pod) {
                    let uid = snapshot.uid.clone();
                    self.upsert_pod(snapshot, at, Source::Watch, &mut out);
                    self.remove_pod(&uid, at, false, &mut out);
                }
            }
            Event::Init => self.pod_relist = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let Some(snapshot) = self.parse_pod(&pod) {
                    self.pod_relist
                        .get_or_insert_default()
                        .insert(snapshot.uid.clone());
                    self.upsert_pod(snapshot, at, Source::List, &mut out);
                }
            }
            Event::InitDone => {
                let listed = self.pod_relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .pods
                    .values()
                    .filter(|p| p.removal.is_none() && !listed.contains(&p.uid))
                    .map(|p| p.uid.clone())
                    .collect();
                for uid in gone {
                    self.remove_pod(&uid, at, true, &mut out);
                }
                let relist = self.pods_synced;
                self.pods_synced = true;
                out.push(ClusterChange {
                    at,
                    kind: ChangeKind::Resynced {
                        resource: WatchedResource::Pods,
                        relist,
                    },
                });
            }
        }
        out
    }

    pub fn apply_slice_event(
        &mut self,
        at: MonoTime,
        event: Event<EndpointSlice>,
    ) -> Vec<ClusterChange> {
        match event {
            Event::Apply(slice) => match self.parse_slice(&slice) {
                Some(state) => {
                    let id = state.id();
                    self.endpoints.set_slice(&id, Some(state), at, false)
                }
                None => Vec::new(),
            },
            Event::Delete(slice) => {
                let id = slice_id(&slice);
                self.endpoints.set_slice(&id, None, at, false)
            }
            Event::Init => {
                self.slice_relist = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply(slice) => {
                // Buffered until InitDone: applying slices one by one would
                // show an address that moved between slices as removed and
                // re-added.
                if let Some(state) = self.parse_slice(&slice) {
                    self.slice_relist
                        .get_or_insert_default()
                        .insert(state.id(), state);
                }
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.slice_relist.take().unwrap_or_default();
                let mut out = self.endpoints.replace_all(listed, at);
                let relist = self.slices_synced;
                self.slices_synced = true;
                out.push(ClusterChange {
                    at,
                    kind: ChangeKind::Resynced {
                        resource: WatchedResource::EndpointSlices,
                        relist,
                    },
                });
                out
            }
        }
    }

    fn upsert_pod(
        &mut self,
        snapshot: PodSnapshot,
        at: MonoTime,
        source: Source,
        out: &mut Vec<ClusterChange>,
    ) {
        let uid = snapshot.uid.clone();
        if let Some(node) = &snapshot.node {
            for ip in &snapshot.host_ips {
                if self.nodes_by_ip.get(ip) != Some(node) {
                    self.nodes_by_ip.insert(*ip, node.clone());
                }
            }
        }
        let mut first_sight = false;
        if !self.pods.contains_key(&uid) {
            first_sight = true;
            out.push(ClusterChange {
                at,
                kind: ChangeKind::PodSeen {
                    pod: snapshot.pod_ref(),
                },
            });
            self.pod_names.insert(
                format!("{}/{}", snapshot.namespace, snapshot.name),
                uid.clone(),
            );
            self.pods
                .insert(uid.clone(), Box::new(snapshot.clone().into_record(at)));
        }
        let Some(record) = self.pods.get_mut(&uid) else {
            return;
        };
        if record.removal.is_some() {
            // A removed uid never comes back; a late duplicate changes nothing.
            return;
        }
        if !first_sight
            && let (Some(before), Some(now)) = (record.ready, snapshot.ready)
            && before != now
        {
            out.push(ClusterChange {
                at,
                kind: ChangeKind::PodReadyChanged {
                    pod: record.pod_ref(),
                    ready: now,
                },
            });
        }
        record.node = snapshot.node.or(record.node.take());
        // Unchanged values keep their old allocations: a relist of every
        // pod then frees the fresh copies at once instead of scattering
        // long-lived ones across the heap.
        if record.labels != snapshot.labels {
            record.labels = snapshot.labels;
        }
        record.host_network |= snapshot.host_network;
        record.phase = snapshot.phase.or(record.phase);
        record.ready = snapshot.ready.or(record.ready);
        if record.containers != snapshot.containers {
            record.containers = snapshot.containers;
        }
        record.termination_grace_period_seconds = snapshot
            .termination_grace_period_seconds
            .or(record.termination_grace_period_seconds);
        // A hostNetwork pod's IP is the node's: claiming it would hand the
        // node's address from one such pod to the next (each closing the
        // others' windows as reused) and watch the node's own traffic.
        let ips = if record.host_network {
            Vec::new()
        } else {
            snapshot.ips
        };
        for ip in ips {
            if record.ips.contains(&ip) {
                continue;
            }
            record.ips.push(ip);
            self.ips.claim(ip, &uid, at);
            out.push(ClusterChange {
                at,
                kind: ChangeKind::PodIpAssigned {
                    pod: record.pod_ref(),
                    ip,
                },
            });
        }
        if let Some(deletion_timestamp) = snapshot.deletion_timestamp {
            match &mut record.deletion {
                Some(deletion) => {
                    deletion.deletion_grace_period_seconds = snapshot
                        .deletion_grace_period_seconds
                        .or(deletion.deletion_grace_period_seconds);
                }
                None => {
                    let observed_late = first_sight || source == Source::List;
                    record.deletion = Some(Deletion {
                        deletion_seen: at,
                        observed_late,
                        deletion_timestamp: Some(deletion_timestamp),
                        deletion_grace_period_seconds: snapshot.deletion_grace_period_seconds,
                    });
                    out.push(ClusterChange {
                        at,
                        kind: ChangeKind::PodTerminating {
                            pod: record.pod_ref(),
                            deletion_seen: at,
                            observed_late,
                            deletion_timestamp: Some(deletion_timestamp),
                            deletion_grace_period_seconds: snapshot.deletion_grace_period_seconds,
                        },
                    });
                }
            }
        }
    }

    fn remove_pod(
        &mut self,
        uid: &str,
        at: MonoTime,
        while_unwatched: bool,
        out: &mut Vec<ClusterChange>,
    ) {
        let Some(record) = self.pods.get_mut(uid) else {
            return;
        };
        if record.removal.is_some() {
            return;
        }
        if record.deletion.is_none() && !while_unwatched {
            // Deleted without a graceful phase (force delete, or the
            // terminating update was coalesced away): termination is seen
            // only now.
            record.deletion = Some(Deletion {
                deletion_seen: at,
                observed_late: true,
                deletion_timestamp: None,
                deletion_grace_period_seconds: None,
            });
            out.push(ClusterChange {
                at,
                kind: ChangeKind::PodTerminating {
                    pod: record.pod_ref(),
                    deletion_seen: at,
                    observed_late: true,
                    deletion_timestamp: None,
                    deletion_grace_period_seconds: None,
                },
            });
        }
        record.removal = Some(Removal {
            at,
            while_unwatched,
        });
        let pod = record.pod_ref();
        let name = format!("{}/{}", pod.namespace, pod.name);
        if self.pod_names.get(&name).is_some_and(|u| u == uid) {
            self.pod_names.remove(&name);
        }
        let kind = if while_unwatched {
            ChangeKind::PodRemovedWhileUnwatched { pod }
        } else {
            ChangeKind::PodRemoved { pod }
        };
        out.push(ClusterChange { at, kind });
    }

    fn parse_pod(&mut self, pod: &Pod) -> Option<PodSnapshot> {
        PodSnapshot::from_pod(pod).map_err(|e| self.skip(e)).ok()
    }

    fn parse_slice(&mut self, slice: &EndpointSlice) -> Option<SliceState> {
        SliceState::from_slice(slice, self.endpoints.keep_node())
            .map_err(|e| self.skip(e))
            .ok()
    }

    /// Logs a malformed object once and counts it.
    fn skip(&mut self, error: MalformedObject) {
        self.skipped_objects += 1;
        if self.warned.len() < MAX_WARNED && self.warned.insert(error.to_string()) {
            warn!(object = %error.object(), "skipping malformed object: {error}");
        }
    }

    // ---- lookups for the correlation engine ----

    pub fn pod(&self, uid: &str) -> Option<&PodRecord> {
        self.pods.get(uid).map(|p| &**p)
    }

    /// The pod currently holding `namespace/name` (not removed).
    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<&PodRecord> {
        self.pod_names
            .get(&format!("{namespace}/{name}"))
            .and_then(|uid| self.pod(uid))
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.values().map(|p| &**p)
    }

    /// The pod that held `ip` at local time `t`. Attribution is by tenure
    /// interval: a pod that later reuses the IP never receives earlier
    /// connects, and vice versa.
    /// The node that has `ip` as one of its addresses, as its pods report
    /// it (`status.hostIPs`).
    pub fn node_with_ip(&self, ip: IpAddr) -> Option<&str> {
        self.nodes_by_ip.get(&ip).map(String::as_str)
    }

    pub fn pod_for_ip_at(&self, ip: IpAddr, t: MonoTime) -> Option<&PodRecord> {
        self.ips.holder_at(ip, t).and_then(|uid| self.pod(uid))
    }

    /// Every tenure of `ip`, oldest first.
    pub fn ip_claims(&self, ip: IpAddr) -> &[IpClaim] {
        self.ips.claims(ip)
    }

    /// The current or latest tenure of a Service address.
    pub fn endpoint(&self, key: &EndpointKey) -> Option<&EndpointRecord> {
        self.endpoints.latest(key)
    }

    /// Every tenure of a Service address, oldest first.
    pub fn endpoint_history(&self, key: &EndpointKey) -> &[EndpointRecord] {
        self.endpoints.history(key)
    }

    /// The Service addresses of a pod: by `targetRef.uid`, or for slices
    /// without one, by the pod's IPs and tenure.
    pub fn endpoints_of_pod(&self, uid: &str) -> Vec<&EndpointRecord> {
        let Some(pod) = self.pods.get(uid) else {
            return Vec::new();
        };
        pod.ips
            .iter()
            .flat_map(|ip| self.endpoints.records_on_ip(*ip))
            .filter(|r| match &r.pod_uid {
                Some(owner) => owner == uid,
                None => self.ips.holder_at(r.key.ip, r.first_seen) == Some(uid),
            })
            .collect()
    }

    /// Every tenure of every Service address on `ip`, oldest first per
    /// Service: how an address whose pod this agent does not watch (a pod
    /// on another node, with node-scoped watches) is still named.
    pub fn endpoints_on_ip(&self, ip: IpAddr) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.records_on_ip(ip)
    }

    /// `(namespace, service)` of a Service that lists `ip` at `at`: from the
    /// address's tenures, or for an address on another node when the model
    /// keeps only its own node's endpoints whole, from the slices that list
    /// it now.
    pub fn service_of_ip_at(&self, ip: IpAddr, at: MonoTime) -> Option<(&str, &str)> {
        let tenure = self
            .endpoints
            .records_on_ip(ip)
            .find(|e| e.first_seen <= at && e.endpoint_removed.is_none_or(|removed| removed >= at));
        match tenure {
            Some(e) => Some((&e.key.namespace, &e.key.service)),
            None => self.endpoints.service_elsewhere(ip),
        }
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.endpoints.records()
    }

    /// The TCP ports the pod's Services advertise for it (what `last_connect`
    /// counts), falling back to the ports its containers declare.
    pub fn advertised_ports(&self, uid: &str) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .endpoints_of_pod(uid)
            .iter()
            .flat_map(|r| r.ports.iter().copied())
            .collect();
        if ports.is_empty()
            && let Some(pod) = self.pods.get(uid)
        {
            ports.extend(pod.tcp_ports());
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Both resources have completed their first list.
    pub fn is_synced(&self) -> bool {
        self.pods_synced && self.slices_synced
    }

    /// Forgets pods and endpoint tenures that left the API before `t`
    /// (the engine calls this once their measurement windows closed).
    pub fn prune_removed_before(&mut self, t: MonoTime) {
        let gone: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.removal.is_some_and(|r| r.at < t))
            .map(|p| p.uid.clone())
            .collect();
        for uid in gone {
            if let Some(pod) = self.pods.remove(&uid) {
                for ip in pod.ips {
                    self.ips.forget(ip, &uid);
                }
            }
        }
        self.endpoints.prune_removed_before(t);
    }

    pub fn stats(&self) -> ModelStats {
        ModelStats {
            pods: self.pods.len(),
            pods_removed: self.pods.values().filter(|p| p.removal.is_some()).count(),
            ips: self.ips.len(),
            endpoint_records: self.endpoints.records().count(),
            skipped_objects: self.skipped_objects,
            estimated_heap_bytes: self.estimated_heap_bytes(),
        }
    }

    /// Rough heap footprint of everything stored (table slots, records and
    /// their strings), for the memory figure.
    pub fn estimated_heap_bytes(&self) -> usize {
        let pods: usize = self
            .pods
            .iter()
            .map(|(uid, p)| uid.capacity() + size_of::<PodRecord>() + p.heap_bytes())
            .sum::<usize>()
            + self.pods.capacity() * (size_of::<String>() + size_of::<Box<PodRecord>>() + 1);
        let names: usize = self
            .pod_names
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity())
            .sum::<usize>()
            + self.pod_names.capacity() * (2 * size_of::<String>() + 1);
        pods + names + self.ips.heap_bytes() + self.endpoints.heap_bytes()
    }
}

fn slice_id(slice: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        slice.metadata.namespace.as_deref().unwrap_or_default(),
        slice.metadata.name.as_deref().unwrap_or_default()
    )
}
