//! A Kubernetes API simulator that speaks the list/watch protocol.
//!
//! No API server is needed to exercise the agent's watchers: [`SimServer`]
//! serves core/v1 pods and discovery.k8s.io/v1 endpointslices over plain
//! HTTP on loopback to the real kube-rs client, with the API server's
//! resourceVersion, pagination, selector, bookmark and 410 Gone semantics,
//! plus fault injection ([`Faults`]) and a request log ([`RequestLog`]).
//!
//! [`Store`] holds the objects; [`Cluster`] scripts Deployments with rolling
//! updates, a kubelet with preStop and grace periods, pod IP allocation with
//! reuse, and an EndpointSlice controller on top of it. A lab plugs its real
//! workloads in through [`PodRuntime`] or follows [`LifecycleEvent`]s.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use observer_sim::{Cluster, ClusterConfig, DeploymentSpec, SimServer};
//! let server = SimServer::start().await?;
//! let cluster = Cluster::start(server.store().clone(), ClusterConfig::default())?;
//! cluster.apply_deployment(DeploymentSpec::new("web", 5))?;
//! cluster.wait_rollout("web").await?;
//! cluster.rollout("web")?;
//! cluster.wait_rollout("web").await?;
//! let client = server.client().await?;
//! # let _ = client; Ok(()) }
//! ```
//!
//! See docs/SIMULATOR.md.

mod cluster;
mod endpoints;
mod faults;
mod ipam;
mod kubelet;
mod managed_fields;
mod protocol;
#[cfg(test)]
mod rollout_tests;
mod selector;
mod server;
mod standalone;
mod store;

pub use cluster::{
    Cluster, ClusterConfig, DeploymentSpec, LifecycleEvent, NoopRuntime, PodInfo, PodRuntime,
    RuntimeError, ServicePort, StandalonePod,
};
pub use faults::{Faults, RequestLog, RequestRecord, RequestScope, WatchTally};
pub use ipam::{IpPool, IpPoolError};
pub use selector::{FieldSelector, LabelSelector, SelectorError};
pub use server::{SimConfig, SimServer};
pub use store::{DEFAULT_MAX_HISTORY, Kind, SimResource, Store};

/// Errors from the object store, mirroring the API server's status reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{} \"{name}\" not found", kind.plural())]
    NotFound { kind: Kind, name: String },
    #[error("{} \"{name}\" already exists", kind.plural())]
    AlreadyExists { kind: Kind, name: String },
    #[error("the object has been modified: {} \"{name}\"", kind.plural())]
    Conflict { kind: Kind, name: String },
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("object encoding: {0}")]
    Encoding(String),
}

/// Errors from running the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kube client: {0}")]
    Client(#[from] kube::Error),
    #[error("kubeconfig encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ip(#[from] IpPoolError),
    #[error("no deployment named {0:?}")]
    UnknownDeployment(String),
    #[error("invalid deployment: {0}")]
    InvalidDeployment(String),
    #[error("pod runtime: {0}")]
    Runtime(String),
    #[error("the simulator has shut down")]
    Closed,
}
