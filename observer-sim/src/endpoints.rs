//! The EndpointSlice controller: one slice per Service, with the conditions
//! and labels the real controller writes, applied after a configurable delay.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use super::cluster::{LifecycleEvent, ServicePort, Shared, pod_ready};
use super::{StoreError, store::Store};

pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub(crate) const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Endpoints as the controller derives them from pods: `ready` only for a
/// Ready pod that is not terminating, `serving` follows pod readiness even
/// while terminating, pods without an IP left out.
fn desired(store: &Store, ns: &str, selector: &BTreeMap<String, String>) -> Vec<Endpoint> {
    store
        .list::<Pod>()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns) && selects(selector, p))
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()?
                .pod_ip
                .clone()
                .filter(|ip| !ip.is_empty())?;
            let ready = pod_ready(&p);
            let terminating = p.metadata.deletion_timestamp.is_some();
            Some(Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready && !terminating),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: p.metadata.namespace.clone(),
                    name: p.metadata.name.clone(),
                    uid: p.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect()
}

fn ports(ports: &[ServicePort]) -> Vec<EndpointPort> {
    ports
        .iter()
        .map(|p| EndpointPort {
            name: Some(p.name.clone().unwrap_or_default()),
            port: Some(p.port),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect()
}

/// Writes the slice if its endpoints differ; returns the new resourceVersion.
fn sync(
    shared: &Shared,
    slice_name: &mut Option<String>,
    svc: &str,
    selector: &BTreeMap<String, String>,
    svc_ports: &[ServicePort],
    trigger: Timestamp,
) -> Result<Option<u64>, StoreError> {
    let store = &shared.store;
    let ns = shared.config.namespace.as_str();
    let endpoints = desired(store, ns, selector);
    let address_type = if shared.ips().is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    };
    let existing = slice_name
        .as_deref()
        .and_then(|n| store.get::<EndpointSlice>(ns, n));
    let mut slice = match existing {
        Some(s) if s.endpoints.as_deref().unwrap_or_default() == endpoints.as_slice() => {
            return Ok(None);
        }
        Some(s) => s,
        None => EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{svc}-")),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.to_string(), svc.to_string()),
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                ])),
                ..Default::default()
            },
            address_type: address_type.into(),
            ..Default::default()
        },
    };
    slice
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TRIGGER_TIME_ANNOTATION.into(), trigger.to_string());
    slice.endpoints = Some(endpoints);
    slice.ports = Some(ports(svc_ports));
    let written = if slice.metadata.resource_version.is_some() {
        store.update(slice)?
    } else {
        store.create(slice)?
    };
    *slice_name = written.metadata.name.clone();
    Ok(written
        .metadata
        .resource_version
        .and_then(|rv| rv.parse().ok()))
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    svc: String,
    selector: BTreeMap<String, String>,
    svc_ports: Vec<ServicePort>,
) {
    let mut changes = shared.store.subscribe();
    let mut slice_name: Option<String> = None;
    let mut trigger = Timestamp::now();
    loop {
        changes.borrow_and_update();
        match sync(
            &shared,
            &mut slice_name,
            &svc,
            &selector,
            &svc_ports,
            trigger,
        ) {
            Ok(Some(rv)) => shared.emit(LifecycleEvent::EndpointsUpdated {
                service: svc.clone(),
                resource_version: rv,
            }),
            Ok(None) => {}
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => tracing::warn!(service = %svc, error = %e, "sim: endpoint sync failed"),
        }
        if changes.changed().await.is_err() {
            return;
        }
        trigger = Timestamp::now();
        tokio::time::sleep(shared.config.endpoint_delay).await;
    }
}
