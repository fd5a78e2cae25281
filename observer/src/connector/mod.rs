//! Who made a connect: a pod's container, the kubelet, or another host
//! process.
//!
//! The kernel stamps each connect with the cgroup id of the socket (the
//! cgroup of the task that created it). [`resolver::CgroupResolver`] maps
//! that id to a pod UID and container id through the node's cgroup v2
//! hierarchy, whose paths the kubelet names after pod UIDs
//! ([`cgroup_path`]). Which connectors are the *ingress* is decided by the
//! engine, from the pod's labels (docs/ENGINE.md, "Connectors").

pub mod cgroup_path;
pub mod resolver;

pub use cgroup_path::{PodCgroup, parse_pod_cgroup};
pub use resolver::{CgroupResolver, ResolverError, cgroup2_mount, cgroup2_mount_from};
