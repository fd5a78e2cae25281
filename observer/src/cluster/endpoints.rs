//! Endpoint addresses as the EndpointSlices of each Service advertise them.
//!
//! An address is tracked per Service, across all of its slices: the
//! EndpointSlice controller moves addresses between slices, so an address
//! is removed only when no slice of the Service lists it, and its
//! conditions are the merge of every slice that lists it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};

use super::change::{ApiTime, ChangeKind, ClusterChange, EndpointConditions, EndpointKey};
use super::pod::MalformedObject;
use super::small_set::SmallSet;
use crate::clock::MonoTime;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A B-tree entry of `(IpAddr, u32) → u16` with its share of the node.
const ELSEWHERE_ENTRY_BYTES: usize = 40;

/// How many condition transitions an endpoint record keeps.
const MAX_TRANSITIONS: usize = 16;

/// One endpoint entry of one slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub conditions: EndpointConditions,
    /// `targetRef.uid` when the target is a Pod.
    pub pod_uid: Option<String>,
}

/// The kept part of one EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceState {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub ports: Vec<u16>,
    pub trigger_time: Option<ApiTime>,
    pub endpoints: Vec<SliceEndpoint>,
    /// Addresses of endpoints on other nodes than the one whose endpoints
    /// are kept whole (see [`EndpointTable::keep_node`]): only their
    /// Service is remembered, to name them as senders.
    pub elsewhere: Vec<IpAddr>,
}

impl SliceState {
    /// Extracts the kept fields. FQDN slices yield no endpoints; an
    /// unparseable address makes the slice malformed. With `keep_node`,
    /// endpoints whose `nodeName` is another node keep only their address
    /// (in `elsewhere`); endpoints without a `nodeName` are kept whole.
    pub fn from_slice(
        slice: &EndpointSlice,
        keep_node: Option<&str>,
    ) -> Result<SliceState, MalformedObject> {
        let meta = &slice.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            return Err(MalformedObject::MissingName {
                kind: "EndpointSlice",
                namespace,
                name: String::new(),
            });
        };
        let Some(service) = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty())
        else {
            return Err(MalformedObject::NoService { namespace, name });
        };
        let trigger_time = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
            .and_then(|t| ApiTime::parse(t));
        let mut ports: Vec<u16> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let mut endpoints = Vec::new();
        let mut elsewhere = Vec::new();
        if matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            for endpoint in slice.endpoints.iter().flatten() {
                let on_other_node = keep_node.is_some_and(|keep| {
                    endpoint
                        .node_name
                        .as_deref()
                        .is_some_and(|node| node != keep)
                });
                if on_other_node {
                    for address in &endpoint.addresses {
                        elsewhere.push(parse_ip(address, &namespace, &name)?);
                    }
                    continue;
                }
                let c = endpoint.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let conditions = EndpointConditions {
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                };
                let pod_uid = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                    .and_then(|r| r.uid.clone());
                for address in &endpoint.addresses {
                    let ip = parse_ip(address, &namespace, &name)?;
                    endpoints.push(SliceEndpoint {
                        ip,
                        conditions,
                        pod_uid: pod_uid.clone(),
                    });
                }
            }
        }
        Ok(SliceState {
            namespace,
            name,
            service: service.clone(),
            ports,
            trigger_time,
            endpoints,
            elsewhere,
        })
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn key(&self, ip: IpAddr) -> EndpointKey {
        EndpointKey {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            ip,
        }
    }
}

fn parse_ip(address: &str, namespace: &str, name: &str) -> Result<IpAddr, MalformedObject> {
    address.parse().map_err(|_| MalformedObject::BadIp {
        kind: "EndpointSlice",
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ip: address.to_owned(),
    })
}

/// A condition change of an endpoint address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionTransition {
    pub at: MonoTime,
    pub conditions: EndpointConditions,
    pub trigger_time: Option<ApiTime>,
}

/// One tenure of an address in a Service: from first listed until no slice
/// lists it (or it is listed for a different pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub key: EndpointKey,
    pub pod_uid: Option<String>,
    /// TCP ports the Service's slices advertise for the address.
    pub ports: Vec<u16>,
    pub conditions: EndpointConditions,
    pub first_seen: MonoTime,
    /// Start of the current advertised-ready period.
    pub ready_since: Option<MonoTime>,
    /// Start of the current not-ready period that followed a ready one (or
    /// first sight of a terminating address). Terminating addresses never
    /// turn ready again, so for a terminating pod this is the first time.
    pub endpoint_not_ready: Option<MonoTime>,
    pub not_ready_observed_late: bool,
    pub endpoint_removed: Option<MonoTime>,
    pub removed_while_unwatched: bool,
    /// `endpoints.kubernetes.io/last-change-trigger-time` of the slice
    /// whose update last changed this address.
    pub last_change_trigger_time: Option<ApiTime>,
    /// Most recent condition changes, oldest first.
    pub transitions: Vec<ConditionTransition>,
}

impl EndpointRecord {
    fn heap_bytes(&self) -> usize {
        size_of::<EndpointRecord>()
            + self.key.namespace.capacity()
            + self.key.service.capacity()
            + self.pod_uid.as_ref().map_or(0, String::capacity)
            + self.ports.capacity() * 2
            + self.transitions.capacity() * size_of::<ConditionTransition>()
    }
}

/// What all slices listing an address say about it, merged.
struct Merged {
    conditions: EndpointConditions,
    ports: Vec<u16>,
    pod_uid: Option<String>,
    trigger_time: Option<ApiTime>,
}

/// All slices and the addresses they list.
#[derive(Debug, Default)]
pub struct EndpointTable {
    slices: HashMap<String, SliceState>,
    /// Which slices list each address.
    listed_in: HashMap<EndpointKey, SmallSet<String>>,
    /// Tenures per address, oldest first; the last may be current.
    records: HashMap<EndpointKey, Vec<EndpointRecord>>,
    by_ip: HashMap<IpAddr, SmallSet<EndpointKey>>,
    /// Every tenure's removal, earliest first, so pruning visits only the
    /// addresses it frees: a scan of every address on each tick was most
    /// of a node agent's CPU.
    removals: BinaryHeap<Reverse<(MonoTime, EndpointKey)>>,
    /// The node whose endpoints are kept whole; `None` keeps every node's.
    keep_node: Option<String>,
    /// Addresses on other nodes, by Service (an index into `services`),
    /// with how many slices list each: a node agent without an ingress
    /// names its remote senders from these, and holding whole records for
    /// every endpoint of the cluster was most of its memory.
    elsewhere: BTreeMap<(IpAddr, u32), u16>,
    /// `(namespace, service)` of the Services seen on other nodes. Never
    /// shrinks: a cluster has far fewer Services than endpoints.
    services: Vec<(String, String)>,
    service_ids: HashMap<(String, String), u32>,
}

impl EndpointTable {
    /// Replaces (or with `None` removes) one slice and reconciles every
    /// address it listed before or lists now.
    pub fn set_slice(
        &mut self,
        id: &str,
        slice: Option<SliceState>,
        at: MonoTime,
        late: bool,
    ) -> Vec<ClusterChange> {
        let mut affected = BTreeSet::new();
        self.unlist(id, &mut affected);
        if let Some(slice) = slice {
            self.list(id, slice, &mut affected);
        }
        let mut changes = Vec::new();
        for key in affected {
            self.reconcile(&key, at, late, &mut changes);
        }
        changes
    }

    /// Replaces the whole slice set at once (after a relist), so an address
    /// that moved between slices while unwatched is not seen as removed.
    pub fn replace_all(
        &mut self,
        slices: HashMap<String, SliceState>,
        at: MonoTime,
    ) -> Vec<ClusterChange> {
        let mut affected = BTreeSet::new();
        let old: Vec<String> = self.slices.keys().cloned().collect();
        for id in old {
            self.unlist(&id, &mut affected);
        }
        for (id, slice) in slices {
            self.list(&id, slice, &mut affected);
        }
        let mut changes = Vec::new();
        for key in affected {
            self.reconcile(&key, at, true, &mut changes);
        }
        changes
    }

    pub fn slice_ids(&self) -> impl Iterator<Item = &String> {
        self.slices.keys()
    }

    /// The node whose endpoints are kept whole, if only one node's are.
    pub fn keep_node(&self) -> Option<&str> {
        self.keep_node.as_deref()
    }

    /// Keeps one node's endpoints whole (`Some`), or every node's. Slices
    /// already held keep the shape they were parsed with until they are
    /// listed again, as after a relist.
    pub fn set_keep_node(&mut self, node: Option<String>) {
        self.keep_node = node;
    }

    /// The Service of an address on another node, from the slices that
    /// list it now.
    pub fn service_elsewhere(&self, ip: IpAddr) -> Option<(&str, &str)> {
        let ((_, service), _) = self.elsewhere.range((ip, 0)..=(ip, u32::MAX)).next()?;
        let (namespace, name) = self.services.get(*service as usize)?;
        Some((namespace, name))
    }

    fn service_id(&mut self, namespace: &str, service: &str) -> u32 {
        let key = (namespace.to_owned(), service.to_owned());
        if let Some(id) = self.service_ids.get(&key) {
            return *id;
        }
        let id = u32::try_from(self.services.len()).unwrap_or(u32::MAX);
        self.services.push(key.clone());
        self.service_ids.insert(key, id);
        id
    }

    fn unlist(&mut self, id: &str, affected: &mut BTreeSet<EndpointKey>) {
        let Some(old) = self.slices.remove(id) else {
            return;
        };
        if !old.elsewhere.is_empty() {
            let service = self.service_id(&old.namespace, &old.service);
            for ip in &old.elsewhere {
                if let Some(count) = self.elsewhere.get_mut(&(*ip, service)) {
                    *count -= 1;
                    if *count == 0 {
                        self.elsewhere.remove(&(*ip, service));
                    }
                }
            }
        }
        for endpoint in &old.endpoints {
            let key = old.key(endpoint.ip);
            if let Some(ids) = self.listed_in.get_mut(&key) {
                ids.remove(id);
                if ids.is_empty() {
                    self.listed_in.remove(&key);
                }
            }
            affected.insert(key);
        }
    }

    fn list(&mut self, id: &str, slice: SliceState, affected: &mut BTreeSet<EndpointKey>) {
        if !slice.elsewhere.is_empty() {
            let service = self.service_id(&slice.namespace, &slice.service);
            for ip in &slice.elsewhere {
                *self.elsewhere.entry((*ip, service)).or_default() += 1;
            }
        }
        for endpoint in &slice.endpoints {
            let key = slice.key(endpoint.ip);
            self.listed_in
                .entry(key.clone())
                .or_default()
                .insert(id.to_owned());
            affected.insert(key);
        }
        self.slices.insert(id.to_owned(), slice);
    }

    fn merged(&self, key: &EndpointKey) -> Option<Merged> {
        let ids = self.listed_in.get(key)?;
        let mut merged: Option<Merged> = None;
        for slice in ids.iter().filter_map(|id| self.slices.get(id)) {
            for endpoint in slice.endpoints.iter().filter(|e| e.ip == key.ip) {
                let c = endpoint.conditions;
                match &mut merged {
                    None => {
                        merged = Some(Merged {
                            conditions: c,
                            ports: slice.ports.clone(),
                            pod_uid: endpoint.pod_uid.clone(),
                            trigger_time: slice.trigger_time,
                        })
                    }
                    // Advertised by any slice counts as advertised:
                    // consumers merge slices the same way.
                    Some(m) => {
                        m.conditions.ready |= c.ready;
                        m.conditions.serving |= c.serving;
                        m.conditions.terminating &= c.terminating;
                        m.ports.extend(&slice.ports);
                        m.pod_uid = m.pod_uid.take().or_else(|| endpoint.pod_uid.clone());
                        m.trigger_time = m.trigger_time.max(slice.trigger_time);
                    }
                }
            }
        }
        if let Some(m) = &mut merged {
            m.ports.sort_unstable();
            m.ports.dedup();
        }
        merged
    }

    /// Brings the record of `key` in line with what the slices say now,
    /// emitting the transitions.
    fn reconcile(
        &mut self,
        key: &EndpointKey,
        at: MonoTime,
        late: bool,
        out: &mut Vec<ClusterChange>,
    ) {
        let merged = self.merged(key);
        // Most addresses have one tenure; a doubling Vec would reserve four.
        let history = self
            .records
            .entry(key.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        let current = history.last_mut().filter(|r| r.endpoint_removed.is_none());
        let emit = |out: &mut Vec<ClusterChange>, kind| out.push(ClusterChange { at, kind });
        let Some(merged) = merged else {
            if let Some(record) = current {
                close(record, at, late, out);
                self.removals.push(Reverse((at, key.clone())));
            }
            return;
        };
        let same_pod = |r: &EndpointRecord| {
            r.pod_uid.is_none() || merged.pod_uid.is_none() || r.pod_uid == merged.pod_uid
        };
        match current {
            Some(record) if same_pod(record) => {
                record.ports = merged.ports;
                if record.pod_uid.is_none() {
                    record.pod_uid = merged.pod_uid;
                }
                let from = record.conditions;
                let to = merged.conditions;
                if from == to {
                    return;
                }
                record.conditions = to;
                record.last_change_trigger_time = merged.trigger_time;
                push_transition(
                    record,
                    ConditionTransition {
                        at,
                        conditions: to,
                        trigger_time: merged.trigger_time,
                    },
                );
                emit(
                    out,
                    ChangeKind::EndpointConditionsChanged {
                        endpoint: key.clone(),
                        pod_uid: record.pod_uid.clone(),
                        from,
                        to,
                        trigger_time: merged.trigger_time,
                    },
                );
                if from.advertised_ready() && !to.advertised_ready() {
                    record.endpoint_not_ready = Some(at);
                    record.not_ready_observed_late = late;
                    record.ready_since = None;
                    emit(
                        out,
                        ChangeKind::EndpointNotReady {
                            endpoint: key.clone(),
                            pod_uid: record.pod_uid.clone(),
                            endpoint_not_ready: at,
                            observed_late: late,
                        },
                    );
                } else if !from.advertised_ready() && to.advertised_ready() {
                    record.ready_since = Some(at);
                    record.endpoint_not_ready = None;
                    record.not_ready_observed_late = false;
                }
            }
            current => {
                // The address now belongs to another pod: the old tenure ends.
                if let Some(record) = current {
                    close(record, at, late, out);
                    self.removals.push(Reverse((at, key.clone())));
                }
                let c = merged.conditions;
                let mut record = EndpointRecord {
                    key: key.clone(),
                    pod_uid: merged.pod_uid,
                    ports: merged.ports,
                    conditions: c,
                    first_seen: at,
                    ready_since: c.advertised_ready().then_some(at),
                    endpoint_not_ready: None,
                    not_ready_observed_late: false,
                    endpoint_removed: None,
                    removed_while_unwatched: false,
                    last_change_trigger_time: merged.trigger_time,
                    transitions: Vec::with_capacity(1),
                };
                push_transition(
                    &mut record,
                    ConditionTransition {
                        at,
                        conditions: c,
                        trigger_time: merged.trigger_time,
                    },
                );
                emit(
                    out,
                    ChangeKind::EndpointSeen {
                        endpoint: key.clone(),
                        pod_uid: record.pod_uid.clone(),
                        conditions: c,
                        ports: record.ports.clone(),
                        trigger_time: merged.trigger_time,
                    },
                );
                if c.terminating {
                    // First seen already terminating: it stopped being
                    // ready before we looked.
                    record.endpoint_not_ready = Some(at);
                    record.not_ready_observed_late = true;
                    emit(
                        out,
                        ChangeKind::EndpointNotReady {
                            endpoint: key.clone(),
                            pod_uid: record.pod_uid.clone(),
                            endpoint_not_ready: at,
                            observed_late: true,
                        },
                    );
                }
                history.push(record);
                self.by_ip.entry(key.ip).or_default().insert(key.clone());
            }
        }
    }

    /// The current or latest tenure of an address.
    pub fn latest(&self, key: &EndpointKey) -> Option<&EndpointRecord> {
        self.records.get(key)?.last()
    }

    pub fn history(&self, key: &EndpointKey) -> &[EndpointRecord] {
        self.records.get(key).map_or(&[], Vec::as_slice)
    }

    /// Every tenure of every Service address on `ip`.
    pub fn records_on_ip(&self, ip: IpAddr) -> impl Iterator<Item = &EndpointRecord> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .flat_map(|key| self.history(key))
    }

    pub fn records(&self) -> impl Iterator<Item = &EndpointRecord> {
        self.records.values().flatten()
    }

    /// Drops tenures removed before `t`.
    pub fn prune_removed_before(&mut self, t: MonoTime) {
        while let Some(Reverse((removed, _))) = self.removals.peek() {
            if *removed >= t {
                break;
            }
            let Some(Reverse((_, key))) = self.removals.pop() else {
                break;
            };
            let Some(history) = self.records.get_mut(&key) else {
                continue;
            };
            let before = history.len();
            history.retain(|r| r.endpoint_removed.is_none_or(|removed| removed >= t));
            // An address reused once would otherwise keep room for two
            // tenures for ever: across a cluster's addresses, megabytes.
            if history.len() < before {
                history.shrink_to_fit();
            }
            if history.is_empty() {
                self.records.remove(&key);
                if let Some(keys) = self.by_ip.get_mut(&key.ip) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.by_ip.remove(&key.ip);
                    }
                }
            }
        }
    }

    pub fn heap_bytes(&self) -> usize {
        let slices: usize = self
            .slices
            .iter()
            .map(|(id, s)| {
                id.capacity()
                    + size_of::<SliceState>()
                    + s.namespace.capacity()
                    + s.name.capacity()
                    + s.service.capacity()
                    + s.ports.capacity() * 2
                    + s.endpoints.capacity() * size_of::<SliceEndpoint>()
                    + s.elsewhere.capacity() * size_of::<IpAddr>()
                    + s.endpoints
                        .iter()
                        .map(|e| e.pod_uid.as_ref().map_or(0, String::capacity))
                        .sum::<usize>()
            })
            .sum();
        let key_bytes = |k: &EndpointKey| {
            size_of::<EndpointKey>() + k.namespace.capacity() + k.service.capacity()
        };
        let listed: usize = self
            .listed_in
            .iter()
            .map(|(k, ids)| key_bytes(k) + ids.len() * 48)
            .sum();
        let records: usize = self
            .records
            .iter()
            .map(|(k, h)| {
                key_bytes(k)
                    + h.capacity() * size_of::<EndpointRecord>()
                    + h.iter().map(|r| r.heap_bytes()).sum::<usize>()
            })
            .sum();
        let by_ip: usize = self
            .by_ip
            .values()
            .map(|keys| 16 + keys.iter().map(key_bytes).sum::<usize>())
            .sum();
        let removals: usize = self.removals.capacity()
            * size_of::<Reverse<(MonoTime, EndpointKey)>>()
            + self
                .removals
                .iter()
                .map(|Reverse((_, k))| key_bytes(k) - size_of::<EndpointKey>())
                .sum::<usize>();
        let elsewhere = self.elsewhere.len() * ELSEWHERE_ENTRY_BYTES
            + self
                .services
                .iter()
                .map(|(ns, name)| 2 * (ns.len() + name.len()) + 96)
                .sum::<usize>();
        slices + listed + records + by_ip + removals + elsewhere
    }
}

fn close(record: &mut EndpointRecord, at: MonoTime, late: bool, out: &mut Vec<ClusterChange>) {
    if record.conditions.advertised_ready() {
        record.endpoint_not_ready = Some(at);
        record.not_ready_observed_late = late;
        out.push(ClusterChange {
            at,
            kind: ChangeKind::EndpointNotReady {
                endpoint: record.key.clone(),
                pod_uid: record.pod_uid.clone(),
                endpoint_not_ready: at,
                observed_late: late,
            },
        });
    }
    record.endpoint_removed = Some(at);
    record.removed_while_unwatched = late;
    out.push(ClusterChange {
        at,
        kind: ChangeKind::EndpointRemoved {
            endpoint: record.key.clone(),
            pod_uid: record.pod_uid.clone(),
            endpoint_removed: at,
            while_unwatched: late,
        },
    });
}

fn push_transition(record: &mut EndpointRecord, transition: ConditionTransition) {
    if record.transitions.len() >= MAX_TRANSITIONS {
        record.transitions.remove(0);
    }
    record.transitions.push(transition);
}
