//! The lab's traffic source: an in-cluster ingress (nginx, HAProxy or Caddy in
//! the ingress controller's pod), or a load balancer outside the cluster
//! (HAProxy in a namespace of its own, routed through the pods' node).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use observer_sim::Cluster;

use super::caddy::{Caddy, CaddyPaths, CaddySettings};
use super::cgroup;
use super::haproxy::{
    Haproxy, HaproxyPaths, HaproxyRole, HaproxySettings, HaproxyTotals, parse_log_line,
};
use super::ingress::DataPlane;
use super::neighbours::{self, NeighbourPod};
use super::netns::{LabNet, Netns, Registry};
use super::nginx::{AccessEntry, Nginx, NginxPaths, parse_access_line};
use super::truth::{PodTimeline, PodTruth, TryTotals, WallToMono, compute_truth};
use super::wire::WireLog;
use super::{LabError, Result};

/// The lab's ingress data plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressKind {
    /// nginx, its config rewritten and reloaded on every endpoint change
    /// (as ingress-nginx does without its Lua balancer).
    #[default]
    Nginx,
    /// HAProxy, its servers changed in place through the runtime API (as
    /// HAProxy- and Envoy-based ingresses do).
    Haproxy,
    /// Caddy, its upstreams changed in place through its admin API: a Go
    /// proxy (as Traefik is), whose retries come after a backoff
    /// (`--lb-try-interval`) and on any thread.
    Caddy,
    /// A load balancer outside the cluster sending straight to pod IPs
    /// (an ALB or NLB in IP mode, a GKE NEG): HAProxy in a namespace of
    /// its own that is no node, health-checking its targets, no retries.
    /// No probe attributes its sockets: only the pods' node's receiving
    /// side measures.
    External,
}

impl IngressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressKind::Nginx => "nginx",
            IngressKind::Haproxy => "haproxy",
            IngressKind::Caddy => "caddy",
            IngressKind::External => "external",
        }
    }
}

/// The pods' port.
pub(super) const POD_PORT: u16 = 8080;

/// What [`start`] needs of the scenario.
#[derive(Clone, Copy, Debug)]
pub(super) struct PlaneSettings {
    pub kind: IngressKind,
    /// The most pods the Deployment runs before a rollout surges.
    pub pods: u32,
    pub keepalive: u32,
    pub lb_health_interval: Duration,
    /// Caddy's wait between two tries of a request, and how long it tries.
    pub lb_try: (Duration, Duration),
    /// The node's end and the external load balancer's address.
    pub lb_link: (IpAddr, IpAddr),
}

/// Runs a blocking step (iproute2, nginx) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LabError::Invalid(format!("blocking lab step: {e}")))?
}

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
    Caddy(Arc<Caddy>),
}

impl Plane {
    pub(super) fn data_plane(&self) -> Arc<dyn DataPlane> {
        match self {
            Plane::Nginx(nginx) => nginx.clone(),
            Plane::Haproxy(haproxy) => haproxy.clone(),
            Plane::Caddy(caddy) => caddy.clone(),
        }
    }

    /// Its logs: (access, error).
    pub(super) fn logs(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        match self {
            Plane::Nginx(nginx) => (nginx.paths().access_log(), nginx.paths().error_log()),
            Plane::Haproxy(haproxy) => (haproxy.paths().access_log(), haproxy.paths().error_log()),
            Plane::Caddy(caddy) => (caddy.paths().access_log(), caddy.paths().error_log()),
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
    settings: PlaneSettings,
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
    let external = settings.kind == IngressKind::External;
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
        let (node_end, lb_ip) = settings.lb_link;
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
        let keepalive = settings.keepalive;
        let (kind, dir): (IngressKind, PathBuf) = (settings.kind, dir.to_path_buf());
        let pods = settings.pods;
        let health_interval = settings.lb_health_interval;
        let (try_interval, try_duration) = settings.lb_try;
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
                (IngressKind::Caddy, _) => Plane::Caddy(Arc::new(Caddy::start(
                    &net.ingress,
                    CaddyPaths::new(&dir),
                    listen,
                    CaddySettings {
                        keepalive,
                        try_interval,
                        try_duration,
                    },
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
            request_log_truth(&entries, via_service, timelines, clock, wire)
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
        Plane::Caddy(caddy) => {
            let log = read(caddy.paths().access_log())?;
            let lines: Vec<_> = log
                .lines()
                .filter_map(super::caddy::parse_log_line)
                .collect();
            let entries = super::caddy::access_entries(&lines);
            request_log_truth(&entries, via_service, timelines, clock, wire)
        }
    })
}

/// The truth from a log of every request's tries (nginx's, or Caddy's in
/// that shape), which tells a retry from a choice; through a ClusterIP the
/// log names the Service's address, so the wire is the truth then.
fn request_log_truth(
    entries: &[AccessEntry],
    via_service: bool,
    timelines: &[PodTimeline],
    clock: WallToMono,
    wire: &WireLog,
) -> PlaneTruth {
    let totals = TryTotals::from_log(entries);
    let truth = if via_service {
        let mut truth = compute_truth(timelines, &[], clock, wire);
        truth.iter_mut().for_each(PodTruth::take_wire_as_truth);
        truth
    } else {
        compute_truth(timelines, entries, clock, wire)
    };
    let hidden = (
        totals.failed_retried,
        totals.failed_not_retried,
        totals.failed_retried_pooled,
    );
    (truth, totals, hidden)
}
