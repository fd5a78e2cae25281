//! Pods that no Deployment owns: an ingress controller's pod, a scraper's.
//! They are created running (Ready, or not yet), on the cluster's node, and nothing
//! in the simulator terminates them: rollouts only touch their own
//! Deployment's pods.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::SimError;
use super::kubelet::condition;
use super::store::Store;

/// A running pod to create as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandalonePod {
    pub namespace: String,
    /// The full name; or, ending in '-', a generateName prefix.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub container: String,
    pub ports: Vec<i32>,
    pub ip: IpAddr,
    /// Its Ready condition. A running pod that is not Ready is one the
    /// agent watches (as it watches a starting pod).
    pub ready: bool,
}

pub(crate) fn create(store: &Store, node: &str, pod: StandalonePod) -> Result<Pod, SimError> {
    let (name, generate_name) = if pod.name.ends_with('-') {
        (None, Some(pod.name.clone()))
    } else {
        (Some(pod.name.clone()), None)
    };
    let now =
        Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH));
    let ports = pod
        .ports
        .iter()
        .map(|&p| ContainerPort {
            container_port: p,
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    let ip = pod.ip.to_string();
    let object = Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(pod.namespace.clone()),
            labels: Some(pod.labels.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            containers: vec![Container {
                name: pod.container.clone(),
                image: Some(format!("sim/{}", pod.container)),
                ports: Some(ports),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            host_ip: Some(
                if pod.ip.is_ipv6() {
                    "fd00::1"
                } else {
                    "192.0.2.1"
                }
                .into(),
            ),
            start_time: Some(now),
            conditions: Some(
                [
                    ("PodScheduled", true),
                    ("Initialized", true),
                    ("ContainersReady", pod.ready),
                    ("Ready", pod.ready),
                ]
                .into_iter()
                .map(|(t, on)| condition(t, on))
                .collect(),
            ),
            ..Default::default()
        }),
    };
    Ok(store.create(object)?)
}
