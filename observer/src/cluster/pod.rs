//! The trimmed, stored form of a Pod: only what measurement and reporting
//! need, so ten thousand of them stay small. Whole objects, annotations and
//! managedFields are never kept.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

use super::change::{ApiTime, PodRef};
use super::prestop::PreStop;
use crate::clock::MonoTime;

/// Why an object from the API was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedObject {
    #[error("{kind} {namespace}/{name} has no metadata.uid")]
    MissingUid {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{kind} {namespace}/{name} has no metadata.name")]
    MissingName {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{kind} {namespace}/{name} lists unparseable IP {ip:?}")]
    BadIp {
        kind: &'static str,
        namespace: String,
        name: String,
        ip: String,
    },
    #[error("EndpointSlice {namespace}/{name} has no kubernetes.io/service-name label")]
    NoService { namespace: String, name: String },
}

impl MalformedObject {
    /// `namespace/name` of the offending object, for warn-once bookkeeping.
    pub fn object(&self) -> String {
        match self {
            MalformedObject::MissingUid {
                namespace, name, ..
            }
            | MalformedObject::MissingName {
                namespace, name, ..
            }
            | MalformedObject::BadIp {
                namespace, name, ..
            }
            | MalformedObject::NoService { namespace, name } => format!("{namespace}/{name}"),
        }
    }
}

/// The workload a pod belongs to, from its controller ownerReference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// `Deployment` when a ReplicaSet owner's name carries the
    /// pod-template-hash suffix, otherwise the owner reference's kind.
    pub kind: String,
    pub name: String,
}

/// A port a container declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub port: u16,
    /// True for TCP (the default); observer measures TCP only.
    pub tcp: bool,
}

/// What is kept of one container (app containers and native sidecars,
/// i.e. init containers with `restartPolicy: Always`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub sidecar: bool,
    pub ports: Vec<ContainerPort>,
    pub pre_stop: PreStop,
    pub readiness_probe: bool,
}

/// Pod phase as stated by the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// When and how this agent learned the pod was terminating.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// Local time this agent first saw a deletionTimestamp (t0).
    pub deletion_seen: MonoTime,
    /// The deletion happened while unwatched; the true start is earlier.
    pub observed_late: bool,
    /// As stated by the API (server clock, 1 s resolution).
    pub deletion_timestamp: Option<ApiTime>,
    /// As stated by the API; the latest value seen.
    pub deletion_grace_period_seconds: Option<i64>,
}

/// When the pod left the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub at: MonoTime,
    /// Found missing by a relist rather than seen deleted.
    pub while_unwatched: bool,
}

/// The API-derived part of a pod: what one watch event says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSnapshot {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub owner: Option<Owner>,
    pub labels: BTreeMap<String, String>,
    pub node: Option<String>,
    /// The pod shares the node's network: its IP is the node's, which it
    /// never claims (every hostNetwork pod and the node itself use it).
    pub host_network: bool,
    pub ips: Vec<IpAddr>,
    /// The node's addresses (`status.hostIPs`, `status.hostIP`): what a
    /// node's own traffic (NodePort SNAT, a load balancer in instance
    /// mode) comes from. Unparsable ones are left out: they name no
    /// sender, and the pod is fine without them.
    pub host_ips: Vec<IpAddr>,
    pub containers: Vec<ContainerInfo>,
    pub termination_grace_period_seconds: Option<i64>,
    pub phase: Option<PodPhase>,
    pub ready: Option<bool>,
    pub deletion_timestamp: Option<ApiTime>,
    pub deletion_grace_period_seconds: Option<i64>,
}

/// Everything the model keeps about one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub owner: Option<Owner>,
    /// What the ingress selectors match against.
    pub labels: BTreeMap<String, String>,
    pub node: Option<String>,
    pub host_network: bool,
    /// Every IP the pod has been seen with (dual-stack: IPv4 and IPv6);
    /// always empty for a hostNetwork pod.
    pub ips: Vec<IpAddr>,
    pub containers: Vec<ContainerInfo>,
    pub termination_grace_period_seconds: Option<i64>,
    pub phase: Option<PodPhase>,
    pub ready: Option<bool>,
    /// Local time this agent first saw the pod.
    pub first_seen: MonoTime,
    pub deletion: Option<Deletion>,
    pub removal: Option<Removal>,
}

impl PodRecord {
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// `deletion_seen`, when termination has been seen.
    pub fn deletion_seen(&self) -> Option<MonoTime> {
        self.deletion.as_ref().map(|d| d.deletion_seen)
    }

    /// The longest preStop sleep of the pod's containers: the time the pod
    /// keeps serving after termination starts, as configured.
    pub fn pre_stop_sleep(&self) -> Option<std::time::Duration> {
        self.containers
            .iter()
            .filter_map(|c| c.pre_stop.sleep())
            .max()
    }

    /// TCP ports any container declares.
    pub fn tcp_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter(|p| p.tcp)
            .map(|p| p.port)
    }

    /// Rough heap footprint, for the memory figure in metrics and docs.
    pub fn heap_bytes(&self) -> usize {
        let labels: usize = self
            .labels
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity() + 3 * size_of::<usize>())
            .sum();
        let strings = labels
            + self.uid.capacity()
            + self.namespace.capacity()
            + self.name.capacity()
            + self
                .owner
                .as_ref()
                .map_or(0, |o| o.kind.capacity() + o.name.capacity())
            + self.node.as_ref().map_or(0, String::capacity);
        let containers: usize = self
            .containers
            .iter()
            .map(|c| {
                size_of::<ContainerInfo>()
                    + c.name.capacity()
                    + c.ports.capacity() * size_of::<ContainerPort>()
                    + match &c.pre_stop {
                        PreStop::Exec { program, .. } => program.capacity(),
                        PreStop::HttpGet { path, port } => {
                            path.as_ref().map_or(0, String::capacity) + port.capacity()
                        }
                        _ => 0,
                    }
            })
            .sum();
        strings + self.ips.capacity() * size_of::<IpAddr>() + containers
    }
}

impl PodSnapshot {
    /// Extracts the kept fields of a Pod; errors name what is missing.
    pub fn from_pod(pod: &Pod) -> Result<PodSnapshot, MalformedObject> {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let display_name = meta.name.clone().unwrap_or_default();
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            return Err(MalformedObject::MissingName {
                kind: "Pod",
                namespace,
                name: display_name,
            });
        };
        let Some(uid) = meta.uid.clone().filter(|u| !u.is_empty()) else {
            return Err(MalformedObject::MissingUid {
                kind: "Pod",
                namespace,
                name,
            });
        };
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        let listed = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str());
        // status.podIP alone is what older API servers and minimal objects carry.
        let single = status.and_then(|s| s.pod_ip.as_deref());
        for text in listed.chain(single) {
            if text.is_empty() {
                continue;
            }
            let ip: IpAddr = text.parse().map_err(|_| MalformedObject::BadIp {
                kind: "Pod",
                namespace: namespace.clone(),
                name: name.clone(),
                ip: text.to_owned(),
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips.shrink_to_fit();
        let mut host_ips: Vec<IpAddr> = status
            .and_then(|s| s.host_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|h| h.ip.as_str())
            .chain(status.and_then(|s| s.host_ip.as_deref()))
            .filter_map(|text| text.parse().ok())
            .collect();
        host_ips.dedup();
        let spec = pod.spec.as_ref();
        let mut containers: Vec<ContainerInfo> = Vec::new();
        if let Some(spec) = spec {
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(|c| container_info(c, true));
            containers.extend(sidecars);
            containers.extend(spec.containers.iter().map(|c| container_info(c, false)));
        }
        containers.shrink_to_fit();
        let phase = status.and_then(|s| s.phase.as_deref()).map(|p| match p {
            "Pending" => PodPhase::Pending,
            "Running" => PodPhase::Running,
            "Succeeded" => PodPhase::Succeeded,
            "Failed" => PodPhase::Failed,
            _ => PodPhase::Unknown,
        });
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        Ok(PodSnapshot {
            owner: owner_of(pod),
            labels: meta.labels.clone().unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            ips,
            host_ips,
            containers,
            termination_grace_period_seconds: spec.and_then(|s| s.termination_grace_period_seconds),
            phase,
            ready,
            deletion_timestamp: meta
                .deletion_timestamp
                .as_ref()
                .map(|t| ApiTime::from_timestamp(&t.0)),
            deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
            uid,
            namespace,
            name,
        })
    }

    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Starts a record from the first snapshot seen of a pod.
    pub fn into_record(self, first_seen: MonoTime) -> PodRecord {
        PodRecord {
            uid: self.uid,
            namespace: self.namespace,
            name: self.name,
            owner: self.owner,
            labels: self.labels,
            node: self.node,
            host_network: self.host_network,
            ips: Vec::new(),
            containers: self.containers,
            termination_grace_period_seconds: self.termination_grace_period_seconds,
            phase: self.phase,
            ready: self.ready,
            first_seen,
            deletion: None,
            removal: None,
        }
    }
}

fn container_info(c: &Container, sidecar: bool) -> ContainerInfo {
    let mut ports: Vec<ContainerPort> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.container_port).ok()?;
            Some(ContainerPort {
                port,
                tcp: p.protocol.as_deref().is_none_or(|proto| proto == "TCP"),
            })
        })
        .collect();
    ports.shrink_to_fit();
    ContainerInfo {
        name: c.name.clone(),
        sidecar,
        ports,
        pre_stop: PreStop::from_handler(c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())),
        readiness_probe: c.readiness_probe.is_some(),
    }
}

/// The controller owner; a ReplicaSet named `<deployment>-<pod-template-hash>`
/// is reported as its Deployment.
fn owner_of(pod: &Pod) -> Option<Owner> {
    let owners = pod.metadata.owner_references.as_ref()?;
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    if owner.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        let deployment = match hash {
            Some(hash) => owner
                .name
                .strip_suffix(hash.as_str())
                .and_then(|n| n.strip_suffix('-')),
            // Without the label, the suffix after the last dash is the hash
            // when it looks like one (Kubernetes' safe alphabet, no vowels).
            None => owner
                .name
                .rsplit_once('-')
                .filter(|(_, h)| looks_like_hash(h))
                .map(|(n, _)| n),
        };
        if let Some(deployment) = deployment.filter(|d| !d.is_empty()) {
            return Some(Owner {
                kind: "Deployment".into(),
                name: deployment.to_owned(),
            });
        }
    }
    Some(Owner {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    })
}

fn looks_like_hash(s: &str) -> bool {
    (5..=10).contains(&s.len()) && s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
}
