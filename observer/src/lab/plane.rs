//! The lab's traffic source: an in-cluster ingress (nginx or HAProxy in
//! the ingress controller's pod), or a load balancer outside the cluster
//! (HAProxy in a namespace of its own, routed through the pods' node).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use observer_sim::Cluster;

use super::cgroup;
use super::haproxy::{
    Haproxy, HaproxyPaths, HaproxyRole, HaproxySettings, HaproxyTotals, parse_log_line,
};
use super::ingress::DataPlane;
use super::neighbours::{self, NeighbourPod};
use super::netns::{LabNet, Netns, Registry};
use super::nginx::{Nginx, NginxPaths, parse_access_line};
use super::scenario::{IngressKind, LabScenario, POD_PORT, blocking};
use super::truth::{PodTimeline, PodTruth, TryTotals, WallToMono, compute_truth};
use super::wire::WireLog;
use super::{LabError, Result};

/// The lab's external load balancer's namespace suffix (its bridge port
/// is `v<suffix>`).
pub(super) const EXTERNAL_LB_SUFFIX: &str = "lb";

/// A load balancer outside the cluster: its address on the pods' network,
/// its namespace and its cgroup.
pub(super) struct ExternalLb {
    pub ip: IpAddr,
    pub ns: Arc<Netns>,
    pub cgroup: cgroup::PodCgroup,
}

/// The running ingress data plane.
pub(super) enum Plane {
    Nginx(Arc<Nginx>),
    Haproxy(Arc<Haproxy>),
}

impl Plane {
    pub(super) fn data_plane(&self) -> Arc<dyn DataPlane> {
        match self {
            Plane::Nginx(nginx) => nginx.clone(),
            Plane::Haproxy(haproxy) => haproxy.clone(),
        }
    }

    /// Its logs: (access, error).
    pub(super) fn logs(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        match self {
            Plane::Nginx(nginx) => (nginx.paths().access_log(), nginx.paths().error_log()),
            Plane::Haproxy(haproxy) => (haproxy.paths().access_log(), haproxy.paths().error_log()),
        }
    }
}

/// What [`start`] made: the ingress's pod (in-cluster) or the load
/// balancer (outside), the data plane, and the address clients send to.
pub(super) struct IngressSide {
    pub pod: Option<NeighbourPod>,
    pub lb: Option<ExternalLb>,
    pub plane: Plane,
    pub listen: SocketAddr,
}

/// Starts the scenario's traffic source; `cgroups` is the cgroup v2 mount
/// and the lab's directory under it.
pub(super) async fn start(
    scenario: &LabScenario,
    cluster: &Cluster,
    net: &Arc<LabNet>,
    registry: &Registry,
    cgroups: (&Path, &str),
    dir: &Path,
    listen: SocketAddr,
) -> Result<IngressSide> {
    let (cgroup_mount, cgroup_parent) = cgroups;
    // The ingress controller's pod exists (with its cgroup) before nginx
    // starts in it, as a kubelet would have it. A load balancer outside
    // the cluster has no pod: it runs in a namespace of its own, in a
    // cgroup of its own (whose sockets the measurement ignores, as no
    // node of the cluster would see them).
    let external = scenario.ingress == IngressKind::External;
    let ingress_pod = if external {
        None
    } else {
        Some(neighbours::ingress_pod(
            cluster,
            cgroup_mount,
            cgroup_parent,
            net.subnet.gateway,
            listen.port(),
        )?)
    };
    let lb = if external {
        let (node_end, lb_ip) = scenario.lb_link();
        let ns = {
            let net = net.clone();
            blocking(move || net.add_routed(EXTERNAL_LB_SUFFIX, node_end, lb_ip)).await?
        };
        let spec = cgroup::PodCgroupSpec::new(cgroup_parent, "external-load-balancer");
        let cgroup = cgroup::PodCgroup::create(cgroup_mount, &spec, cgroup::Leftovers::Kill)
            .map_err(|e| LabError::Invalid(format!("the load balancer's cgroup: {e}")))?;
        Some(ExternalLb {
            ip: lb_ip,
            ns: Arc::new(ns),
            cgroup,
        })
    } else {
        None
    };
    let listen = match &lb {
        Some(lb) => SocketAddr::new(lb.ip, listen.port()),
        None => listen,
    };
    let plane = {
        let (net, registry) = (net.clone(), registry.clone());
        let (cgroup, lb_ns) = match (&ingress_pod, &lb) {
            (Some(pod), _) => (pod.cgroup.path(), None),
            (None, Some(lb)) => (lb.cgroup.path(), Some(lb.ns.clone())),
            (None, None) => return Err(LabError::Invalid("no ingress".into())),
        };
        let keepalive = scenario.upstream_keepalive;
        let (kind, dir): (IngressKind, PathBuf) = (scenario.ingress, dir.to_path_buf());
        let pods = scenario.pods;
        let health_interval = scenario.lb_health_interval;
        blocking(move || {
            let haproxy = |ns: &Netns, role| {
                Haproxy::start(
                    ns,
                    HaproxyPaths::new(&dir),
                    listen,
                    HaproxySettings {
                        // A rollout surges to twice the pods at most.
                        pods: pods * 2,
                        port: POD_PORT,
                        keepalive,
                        role,
                    },
                    &registry,
                    Some(&cgroup),
                )
            };
            Ok(match (kind, lb_ns) {
                (IngressKind::Nginx, _) => Plane::Nginx(Arc::new(Nginx::start(
                    &net.ingress,
                    NginxPaths::new(&dir),
                    listen,
                    keepalive,
                    &registry,
                    Some(&cgroup),
                )?)),
                (IngressKind::External, Some(ns)) => Plane::Haproxy(Arc::new(haproxy(
                    &ns,
                    HaproxyRole::ExternalLb { health_interval },
                )?)),
                _ => Plane::Haproxy(Arc::new(haproxy(&net.ingress, HaproxyRole::Ingress)?)),
            })
        })
        .await?
    };
    Ok(IngressSide {
        pod: ingress_pod,
        lb,
        plane,
        listen,
    })
}

impl LabScenario {
    /// The Service's ClusterIP and port (`--via-service`), outside the pod
    /// CIDR.
    pub fn cluster_ip(&self) -> SocketAddr {
        let id = u16::from(self.lab_id);
        let ip = if self.ipv6 {
            IpAddr::V6(Ipv6Addr::from([0xfd00, 0x96, id, 0, 0, 0, 0, 0x10]))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 96, self.lab_id, 10))
        };
        SocketAddr::new(ip, 80)
    }

    /// The link between the node and the external load balancer: the
    /// node's end and the load balancer's address, outside the pod CIDR.
    pub fn lb_link(&self) -> (IpAddr, IpAddr) {
        let id = u16::from(self.lab_id);
        let end = |host: u8| {
            if self.ipv6 {
                IpAddr::V6(Ipv6Addr::from([
                    0xfd00,
                    0x248,
                    id,
                    0,
                    0,
                    0,
                    0,
                    u16::from(host),
                ]))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 248, self.lab_id, host))
            }
        };
        (end(1), end(2))
    }
}

/// The truth per termination, the ingress's own totals, and its own
/// account of the failures it hid: (retried, not retried, retried over
/// pooled connections).
pub(super) type PlaneTruth = (Vec<PodTruth>, TryTotals, (u64, u64, u64));

/// The truth from the data plane's log and the wire. nginx's log names
/// each try's pod, except through a ClusterIP (it names the Service's
/// address): the wire is the truth then, as for HAProxy.
pub(super) fn truth(
    plane: &Plane,
    via_service: bool,
    timelines: &[PodTimeline],
    clock: WallToMono,
    wire: &WireLog,
) -> Result<PlaneTruth> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(LabError::io(format!("reading {}", path.display())))
    };
    Ok(match plane {
        Plane::Nginx(nginx) => {
            let log = read(nginx.paths().access_log())?;
            let entries: Vec<_> = log.lines().filter_map(parse_access_line).collect();
            let totals = TryTotals::from_log(&entries);
            let truth = if via_service {
                let mut truth = compute_truth(timelines, &[], clock, wire);
                truth.iter_mut().for_each(PodTruth::take_wire_as_truth);
                truth
            } else {
                compute_truth(timelines, &entries, clock, wire)
            };
            let hidden = (
                totals.failed_retried,
                totals.failed_not_retried,
                totals.failed_retried_pooled,
            );
            (truth, totals, hidden)
        }
        Plane::Haproxy(haproxy) => {
            let log = read(haproxy.paths().access_log())?;
            let requests: Vec<_> = log.lines().filter_map(parse_log_line).collect();
            let own = HaproxyTotals::from_log(&requests);
            let mut truth = compute_truth(timelines, &[], clock, wire);
            truth.iter_mut().for_each(PodTruth::take_wire_as_truth);
            let totals = TryTotals {
                requests: own.requests,
                retries: own.retried,
                ..TryTotals::default()
            };
            (truth, totals, (own.retried, own.not_retried, 0))
        }
    })
}
