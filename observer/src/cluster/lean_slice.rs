//! EndpointSlices decoded straight into what the model reads.
//!
//! Every agent watches every EndpointSlice of the cluster, so on a node
//! without an ingress this stream is most of the agent's work. The API
//! server sends each slice whole: its `managedFields` (a tree of field
//! names as large as the object's shape), every label and annotation, each
//! endpoint's hostname, zone and hints. Decoded as k8s-openapi's
//! `EndpointSlice`, all of that is built, allocation by allocation, only
//! for [`prune_slice`](super::prune::prune_slice) to drop it. Here serde
//! steps over what the model does not read without building it, and the
//! result is the pruned slice itself (a unit test holds the two equal).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::endpoints::{SERVICE_NAME_LABEL, TRIGGER_TIME_ANNOTATION};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::prune::prune_slice;

    const FIXTURE: &str = include_str!("fixtures/endpointslice.json");

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
