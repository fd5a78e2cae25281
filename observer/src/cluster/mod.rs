//! The Kubernetes side: pod-termination and EndpointSlice tracking.
//!
//! [`watch`] receives Pod and EndpointSlice watch events and stamps each
//! with its local receipt time; [`model::ClusterModel`] turns stamped events
//! into normalized [`change::ClusterChange`]s and answers lookups (which pod
//! held an IP at a time, an address's endpoint_not_ready and
//! endpoint_removed times, a pod's deletion_seen and preStop).

pub mod change;
pub mod client;
pub mod endpoints;
pub mod ip_index;
pub mod lean;
pub mod model;
pub mod paced_socket;
pub mod pod;
pub mod pod_watch;
pub mod prestop;
pub mod prune;
pub mod slice_pace;
pub mod slice_watch;
mod small_set;
pub mod watch;

/// Label selectors: in their own crate, which the API simulator shares.
pub use observer_selector as selector;

pub use change::{
    ApiTime, ChangeKind, ClusterChange, EndpointConditions, EndpointKey, PodRef, WatchedResource,
};
pub use client::{ClientSource, ConnectError, Kube, connect};
pub use endpoints::{ConditionTransition, EndpointRecord};
pub use ip_index::IpClaim;
pub use model::{ClusterModel, ModelStats, ResourceEvent, StampedEvent};
pub use pod::{
    ContainerInfo, ContainerPort, Deletion, MalformedObject, Owner, PodPhase, PodRecord, Removal,
};
pub use pod_watch::{PodScope, ScopeNow};
pub use prestop::PreStop;
pub use watch::{ClusterHandle, WatchConfig, WatchCounters, run, stamped_events};

/// Re-exported so users of this module (and its tests) build objects and
/// events with the same versions.
pub use k8s_openapi;
pub use kube;

#[cfg(test)]
mod tests;
