//! Watched objects decoded straight into what the model reads.
//!
//! Every agent watches every EndpointSlice of the cluster, and an ingress
//! node's agent every Pod. The API server sends each object whole: its
//! `managedFields` (a tree of field names as large as the object's shape),
//! every label and annotation, a Pod's environment, volumes and container
//! statuses, an endpoint's hostname, zone and hints. Decoded as
//! k8s-openapi's types, all of that is built, allocation by allocation,
//! only for [`super::prune`] to drop it; a relist page of 100 such Pods
//! was the ingress agent's memory peak. Here serde steps over what the
//! model does not read without building it. Each lean type keeps the
//! resourceVersion the watcher resumes from, and unit tests hold its
//! pruned form equal to the prune of the whole object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HostIP, Lifecycle, LifecycleHandler, ObjectReference, Pod,
    PodCondition, PodIP, PodSpec, PodStatus, Probe,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::watcher::Event;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::endpoints::{SERVICE_NAME_LABEL, TRIGGER_TIME_ANNOTATION};
use super::prune::prune_pod;

/// A watch event with its object turned into another type.
pub fn map_event<K, T>(event: Event<K>, map: impl FnOnce(K) -> T) -> Event<T> {
    match event {
        Event::Apply(k) => Event::Apply(map(k)),
        Event::Delete(k) => Event::Delete(map(k)),
        Event::InitApply(k) => Event::InitApply(map(k)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// An EndpointSlice as the watch decodes it: the fields
/// [`prune_slice`](super::prune::prune_slice) keeps, and the
/// resourceVersion the watcher resumes from.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "SliceWire")]
pub struct LeanSlice(EndpointSlice);

impl LeanSlice {
    /// The slice as the model and recordings take it: pruned, with no
    /// resourceVersion.
    pub fn into_pruned(self) -> EndpointSlice {
        let mut slice = self.0;
        slice.metadata.resource_version = None;
        slice
    }
}

impl k8s_openapi::Resource for LeanSlice {
    const API_VERSION: &'static str = <EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <EndpointSlice as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for LeanSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceWire {
    metadata: MetaWire,
    #[serde(default)]
    address_type: String,
    endpoints: Option<Vec<EndpointWire>>,
    ports: Option<Vec<PortWire>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaWire {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointWire {
    #[serde(default)]
    addresses: Vec<String>,
    conditions: Option<EndpointConditions>,
    node_name: Option<String>,
    target_ref: Option<TargetRefWire>,
}

#[derive(Deserialize)]
struct TargetRefWire {
    kind: Option<String>,
    uid: Option<String>,
}

#[derive(Deserialize)]
struct PortWire {
    port: Option<i32>,
    protocol: Option<String>,
}

/// The one entry of `map` the model reads, as `prune_slice` keeps it.
fn keep_one(map: Option<BTreeMap<String, String>>, key: &str) -> Option<BTreeMap<String, String>> {
    map.map(|mut map| {
        let kept = map.remove_entry(key);
        kept.into_iter().collect()
    })
}

impl From<SliceWire> for LeanSlice {
    fn from(wire: SliceWire) -> Self {
        let meta = wire.metadata;
        LeanSlice(EndpointSlice {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                resource_version: meta.resource_version,
                labels: keep_one(meta.labels, SERVICE_NAME_LABEL),
                annotations: keep_one(meta.annotations, TRIGGER_TIME_ANNOTATION),
                ..ObjectMeta::default()
            },
            address_type: wire.address_type,
            endpoints: wire.endpoints.map(|endpoints| {
                endpoints
                    .into_iter()
                    .map(|e| Endpoint {
                        addresses: e.addresses,
                        conditions: e.conditions,
                        node_name: e.node_name,
                        target_ref: e.target_ref.map(|r| ObjectReference {
                            kind: r.kind,
                            uid: r.uid,
                            ..ObjectReference::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect()
            }),
            ports: wire.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| EndpointPort {
                        port: p.port,
                        protocol: p.protocol,
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
        })
    }
}

/// A Pod as the watch decodes it: the fields
/// [`prune_pod`] reads, and the resourceVersion the watcher resumes from.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "PodWire")]
pub struct LeanPod(Pod);

impl LeanPod {
    /// The decoded pod, before pruning: what the Pod watch's own checks
    /// read (its node and labels, for the ingress that widens it).
    pub fn into_pod(self) -> Pod {
        self.0
    }

    /// The pod as the model and recordings take it.
    pub fn into_pruned(self) -> Pod {
        prune_pod(&self.0)
    }
}

impl k8s_openapi::Resource for LeanPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for LeanPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[derive(Deserialize)]
struct PodWire {
    metadata: PodMetaWire,
    spec: Option<PodSpecWire>,
    status: Option<PodStatusWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodMetaWire {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerWire>>,
    deletion_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
}

#[derive(Deserialize)]
struct OwnerWire {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    controller: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecWire {
    node_name: Option<String>,
    host_network: Option<bool>,
    termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    containers: Vec<ContainerWire>,
    init_containers: Option<Vec<ContainerWire>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerWire {
    #[serde(default)]
    name: String,
    restart_policy: Option<String>,
    ports: Option<Vec<ContainerPort>>,
    lifecycle: Option<LifecycleWire>,
    /// Only its presence is read.
    readiness_probe: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleWire {
    pre_stop: Option<LifecycleHandler>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatusWire {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<PodIP>>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
    #[serde(rename = "hostIPs")]
    host_ips: Option<Vec<HostIP>>,
    conditions: Option<Vec<ConditionWire>>,
}

#[derive(Deserialize)]
struct ConditionWire {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

impl From<ContainerWire> for Container {
    fn from(c: ContainerWire) -> Self {
        Container {
            name: c.name,
            restart_policy: c.restart_policy,
            ports: c.ports,
            lifecycle: c.lifecycle.map(|l| Lifecycle {
                pre_stop: l.pre_stop,
                ..Lifecycle::default()
            }),
            readiness_probe: c.readiness_probe.map(|_| Probe::default()),
            ..Container::default()
        }
    }
}

impl From<PodWire> for LeanPod {
    fn from(wire: PodWire) -> Self {
        let meta = wire.metadata;
        LeanPod(Pod {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                resource_version: meta.resource_version,
                labels: meta.labels,
                owner_references: meta.owner_references.map(|owners| {
                    owners
                        .into_iter()
                        .map(|o| OwnerReference {
                            kind: o.kind,
                            name: o.name,
                            controller: o.controller,
                            ..OwnerReference::default()
                        })
                        .collect()
                }),
                deletion_timestamp: meta.deletion_timestamp,
                deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
                ..ObjectMeta::default()
            },
            spec: wire.spec.map(|spec| PodSpec {
                node_name: spec.node_name,
                host_network: spec.host_network,
                termination_grace_period_seconds: spec.termination_grace_period_seconds,
                containers: spec.containers.into_iter().map(Container::from).collect(),
                init_containers: spec
                    .init_containers
                    .map(|init| init.into_iter().map(Container::from).collect()),
                ..PodSpec::default()
            }),
            status: wire.status.map(|status| PodStatus {
                phase: status.phase,
                pod_ip: status.pod_ip,
                pod_ips: status.pod_ips,
                host_ip: status.host_ip,
                host_ips: status.host_ips,
                conditions: status.conditions.map(|conditions| {
                    conditions
                        .into_iter()
                        .map(|c| PodCondition {
                            type_: c.type_,
                            status: c.status,
                            ..PodCondition::default()
                        })
                        .collect()
                }),
                ..PodStatus::default()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::prune::prune_slice;

    const FIXTURE: &str = include_str!("fixtures/endpointslice.json");

    const POD_FIXTURES: [(&str, &str); 6] = [
        ("pod-bad-ip", include_str!("fixtures/pod-bad-ip.json")),
        (
            "pod-dual-stack",
            include_str!("fixtures/pod-dual-stack.json"),
        ),
        ("pod-minimal", include_str!("fixtures/pod-minimal.json")),
        (
            "pod-missing-uid",
            include_str!("fixtures/pod-missing-uid.json"),
        ),
        (
            "pod-prestop-forms",
            include_str!("fixtures/pod-prestop-forms.json"),
        ),
        (
            "pod-terminating",
            include_str!("fixtures/pod-terminating.json"),
        ),
    ];

    #[test]
    fn the_lean_pod_is_the_pruned_pod() {
        for (name, text) in POD_FIXTURES {
            let whole: Pod = serde_json::from_str(text).expect(name);
            let lean: LeanPod = serde_json::from_str(text).expect(name);
            assert_eq!(
                lean.0.metadata.resource_version, whole.metadata.resource_version,
                "{name}: the watcher resumes from it"
            );
            assert_eq!(lean.into_pruned(), prune_pod(&whole), "{name}");
        }
    }

    #[test]
    fn the_lean_slice_of_ipv6_is_the_pruned_slice() {
        let text = include_str!("fixtures/endpointslice-ipv6.json");
        let whole: EndpointSlice = serde_json::from_str(text).expect("fixture");
        let lean: LeanSlice = serde_json::from_str(text).expect("fixture");
        assert_eq!(lean.into_pruned(), prune_slice(&whole));
    }

    #[test]
    fn a_pods_unread_fields_are_not_decoded() {
        // An env value of the wrong type fails the whole decode, and the
        // lean one steps over it unread.
        let text = r#"{"metadata":{"name":"p","uid":"u","resourceVersion":"9",
            "managedFields":[{"manager":"kubelet","fieldsV1":{"f:status":{}}}]},
            "spec":{"nodeName":"n","containers":[{"name":"app","env":[{"name":"A","value":7}],
            "readinessProbe":{"exec":{"command":["cat","/secret"]}}}]}}"#;
        assert!(serde_json::from_str::<Pod>(text).is_err());
        let pod = serde_json::from_str::<LeanPod>(text)
            .expect("lean")
            .into_pruned();
        let container = &pod.spec.expect("spec").containers[0];
        assert_eq!(container.name, "app");
        assert_eq!(container.env, None);
        assert_eq!(container.readiness_probe, Some(Probe::default()));
    }

    #[test]
    fn the_lean_decode_is_the_pruned_slice() {
        let whole: EndpointSlice = serde_json::from_str(FIXTURE).expect("fixture decodes");
        let lean: LeanSlice = serde_json::from_str(FIXTURE).expect("fixture decodes lean");
        assert_eq!(
            lean.0.metadata.resource_version, whole.metadata.resource_version,
            "the watcher resumes from it"
        );
        assert!(
            whole.metadata.managed_fields.is_some(),
            "the fixture has them"
        );
        assert_eq!(lean.into_pruned(), prune_slice(&whole));
    }

    #[test]
    fn a_slice_with_nothing_optional_decodes() {
        let lean: LeanSlice = serde_json::from_str(
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                "metadata":{"name":"web-x","labels":null},"addressType":"IPv6",
                "endpoints":[{"addresses":["fd00::1"]}]}"#,
        )
        .expect("decodes");
        let slice = lean.into_pruned();
        assert_eq!(slice.address_type, "IPv6");
        assert_eq!(slice.metadata.labels, None);
        let endpoints = slice.endpoints.expect("endpoints");
        assert_eq!(endpoints[0].addresses, ["fd00::1"]);
        assert_eq!(endpoints[0].conditions, None);
    }

    #[test]
    fn a_malformed_slice_is_an_error() {
        let error = serde_json::from_str::<LeanSlice>(
            r#"{"metadata":{"name":"web-x"},"endpoints":[{"addresses":"10.0.0.1"}]}"#,
        )
        .expect_err("addresses must be a list");
        assert!(error.to_string().contains("sequence"), "{error}");
    }
}
