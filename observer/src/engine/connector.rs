//! Who connected, and whether it counts: the ingress measures the gap; the
//! kubelet's probes, scrapers, other pods and host processes are reported
//! beside it and never move it.
//!
//! A connect arrives with the pod UID its cgroup belongs to (or none, for a
//! host process) and the task's comm. A pod connector is the ingress when
//! its labels match one of the ingress selectors; a host process is the
//! ingress when its comm is one of the ingress comms (a proxy outside
//! Kubernetes or started by hand); a host process named `kubelet` is the
//! kubelet. Pure: the cluster model supplies the labels.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterModel;
use crate::cluster::selector::{LabelSelector, LabelSelectorError};
use crate::probe::ConnectRecord;

/// The labels the common ingress data planes' pods carry, as their charts
/// and operators set them. Any one matching makes a pod an ingress pod.
pub const DEFAULT_INGRESS_SELECTORS: &[&str] = &[
    // ingress-nginx (kubernetes/ingress-nginx chart and static manifests)
    "app.kubernetes.io/name=ingress-nginx,app.kubernetes.io/component=controller",
    // F5 NGINX Ingress Controller
    "app.kubernetes.io/name=nginx-ingress",
    // Envoy Gateway's envoy proxies
    "app.kubernetes.io/name=envoy,app.kubernetes.io/component=proxy",
    // Contour's envoy (Contour's own manifests, and the Bitnami chart)
    "app=envoy",
    "app.kubernetes.io/name=contour,app.kubernetes.io/component=envoy",
    // Traefik
    "app.kubernetes.io/name=traefik",
    // HAProxy Ingress, and HAProxy Technologies' Kubernetes Ingress
    "app.kubernetes.io/name=haproxy-ingress",
    "app.kubernetes.io/name=kubernetes-ingress",
    // Kong
    "app.kubernetes.io/name=kong",
    // Istio's ingress gateway
    "istio=ingressgateway",
];

/// The comm of the kubelet process, whose probes connect from the host.
pub const KUBELET_COMM: &str = "kubelet";

/// Distinct connectors the engine names (bounded); later ones share one
/// entry per role.
pub const MAX_CONNECTOR_NAMES: usize = 4_096;

/// What a connector is to the measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorRole {
    /// The ingress: its connects and sends measure the gap.
    Ingress,
    /// The kubelet (probes).
    Kubelet,
    /// Any other pod (scrapers, pod-to-pod traffic).
    Pod,
    /// Any other host process.
    Process,
}

impl ConnectorRole {
    pub const ALL: [ConnectorRole; 4] = [
        ConnectorRole::Ingress,
        ConnectorRole::Kubelet,
        ConnectorRole::Pod,
        ConnectorRole::Process,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorRole::Ingress => "ingress",
            ConnectorRole::Kubelet => "kubelet",
            ConnectorRole::Pod => "pod",
            ConnectorRole::Process => "process",
        }
    }
}

/// Which connectors are the ingress (`--ingress-selector`, `--ingress-comm`,
/// `NODE_NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressConfig {
    /// Label selectors; a pod matching any one is an ingress pod.
    pub selectors: Vec<String>,
    /// Host process names (comm) that are the ingress.
    pub comms: Vec<String>,
    /// This node: where the agent looks for ingress pods. `None`: any node
    /// (replays and tests).
    pub node: Option<String>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            selectors: DEFAULT_INGRESS_SELECTORS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            comms: Vec::new(),
            node: None,
        }
    }
}

impl IngressConfig {
    /// Parses every selector; the first that does not parse is the error.
    pub fn parsed_selectors(&self) -> Result<Vec<LabelSelector>, LabelSelectorError> {
        self.selectors
            .iter()
            .map(|s| LabelSelector::parse(s))
            .collect()
    }
}

/// Whether this node has an ingress, as far as the engine knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressStatus {
    /// Ingress pods on this node (`namespace/name`).
    pub pods: Vec<String>,
    /// Ingress host processes (`--ingress-comm`): declared by the user,
    /// so present whether or not they have connected yet.
    pub processes: Vec<String>,
}

impl IngressStatus {
    pub fn found(&self) -> bool {
        !self.pods.is_empty() || !self.processes.is_empty()
    }
}

/// Classifies connectors and names them, with a bounded name table so the
/// engine's per-connect facts stay fixed-size.
#[derive(Debug)]
pub struct Connectors {
    selectors: Vec<LabelSelector>,
    comms: BTreeSet<String>,
    node: Option<String>,
    names: Vec<(ConnectorRole, String)>,
    index: BTreeMap<(ConnectorRole, String), u16>,
}

impl Connectors {
    /// Selectors that do not parse are left out (the command line checks
    /// them before the engine starts).
    pub fn new(config: &IngressConfig) -> Connectors {
        Connectors {
            selectors: config
                .selectors
                .iter()
                .filter_map(|s| LabelSelector::parse(s).ok())
                .collect(),
            comms: config.comms.iter().cloned().collect(),
            node: config.node.clone(),
            names: Vec::new(),
            index: BTreeMap::new(),
        }
    }

    /// The role and name of whoever made `record`; returns the name's index.
    pub fn identify(
        &mut self,
        record: &ConnectRecord,
        model: &ClusterModel,
    ) -> (ConnectorRole, u16) {
        let (role, name) = match &record.pod_uid {
            Some(uid) => match model.pod(uid) {
                Some(pod) => {
                    let ingress = self.selectors.iter().any(|s| s.matches(&pod.labels));
                    let role = if ingress {
                        ConnectorRole::Ingress
                    } else {
                        ConnectorRole::Pod
                    };
                    (role, format!("{}/{}", pod.namespace, pod.name))
                }
                None => (ConnectorRole::Pod, format!("pod {uid}")),
            },
            None if self.comms.contains(&record.comm) => {
                (ConnectorRole::Ingress, record.comm.clone())
            }
            None if record.comm == KUBELET_COMM => (ConnectorRole::Kubelet, KUBELET_COMM.into()),
            None => (ConnectorRole::Process, record.comm.clone()),
        };
        (role, self.intern(role, name))
    }

    fn intern(&mut self, role: ConnectorRole, name: String) -> u16 {
        let key = (role, name);
        if let Some(index) = self.index.get(&key) {
            return *index;
        }
        if self.names.len() >= MAX_CONNECTOR_NAMES {
            let other = (role, format!("other {}", role.as_str()));
            if let Some(index) = self.index.get(&other) {
                return *index;
            }
            return self.push(other);
        }
        self.push(key)
    }

    fn push(&mut self, key: (ConnectorRole, String)) -> u16 {
        let index = self.names.len() as u16;
        self.names.push(key.clone());
        self.index.insert(key, index);
        index
    }

    /// The name interned at `index`.
    /// Whether `pod` is an ingress pod by the ingress selectors.
    pub fn is_ingress_pod(&self, pod: &crate::cluster::PodRecord) -> bool {
        self.selectors.iter().any(|s| s.matches(&pod.labels))
    }

    pub fn name(&self, index: u16) -> &str {
        self.names
            .get(usize::from(index))
            .map_or("unknown", |(_, name)| name.as_str())
    }

    /// What the engine knows of this node's ingress.
    pub fn status(&self, model: &ClusterModel) -> IngressStatus {
        let pods = model
            .pods()
            .filter(|p| p.removal.is_none())
            .filter(|p| match (&self.node, &p.node) {
                (Some(node), Some(on)) => node == on,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .filter(|p| self.selectors.iter().any(|s| s.matches(&p.labels)))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        IngressStatus {
            pods,
            processes: self.comms.iter().cloned().collect(),
        }
    }
}
