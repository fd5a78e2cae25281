//! One lab run, end to end: network, nginx, the simulator with the lab's pod
//! runtime, the ingress controller, load, `rollouts` rolling updates, a
//! quiet period, then truth against measurement. [`run_lab`] adds the
//! `--verify` rerun with the recommended preStop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::cgroup;
use super::ingress::{DataPlane, IngressConfig, IngressController};
use super::load::{LoadClient, LoadConfig};
use super::measure::{ConnectorsByPod, KnownPod, LabContext, LabMeasure, Measurements};
use super::neighbours::{self, Bystander, NeighbourPod, Targets};
use super::netns::{BRIDGE, LabNet, Registry};
use super::plane::{self, POD_PORT, blocking};
use super::pod::{LabPods, PodBehaviour};
use super::report::{
    ClientReport, ConnectorReport, FailureCounts, HiddenReport, LabReport, ScenarioSummary,
    ServedReport, TerminationReport, VerifyReport, WireReport,
};
use super::service::ClusterIp;
use super::truth::{PodTruth, TimelineRecorder, TryTotals, WallToMono};
use super::wire::{Sender, WireCapture};
use super::{LabError, Result};
use crate::cluster::Kube;
use observer_sim::{Cluster, ClusterConfig, DeploymentSpec, ServicePort, SimServer};

const NAMESPACE: &str = "lab";
const DEPLOYMENT: &str = "web";
/// nginx's address inside the ingress namespace.
const NGINX_LISTEN: &str = "127.0.0.1:8000";

pub use super::plane::IngressKind;

/// What to run. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabScenario {
    pub pods: u32,
    pub rollouts: u32,
    /// How long the ingress takes to apply an EndpointSlice change.
    pub propagation_delay: Duration,
    /// ± this much, uniformly, per change (seeded by `seed`).
    pub jitter: Duration,
    /// The pods' preStop sleep.
    pub prestop: Duration,
    /// The pods' terminationGracePeriodSeconds; None for preStop + drain +
    /// 30 s. The verify run sets the recommended one.
    pub termination_grace: Option<Duration>,
    /// How long the app keeps serving after SIGTERM (zero: it stops at once).
    pub drain: Duration,
    /// How long the pods' app takes to answer each request; zero answers at
    /// once. A request is in flight for this long, so an app that exits
    /// meanwhile cuts it.
    pub app_latency: Duration,
    pub qps: u32,
    pub seed: u64,
    pub ipv6: bool,
    /// Hand a freed pod IP to the next pod.
    pub reuse_ips: bool,
    /// After the last rollout, before load stops; None for
    /// `propagation_delay + jitter + 6 s` (nginx's 5 s connect timeout must
    /// have run out for late failures to be classified).
    pub quiet_period: Option<Duration>,
    /// From the app's exit to the removal of the pod's namespace.
    pub sandbox_linger: Duration,
    /// Keeps concurrent labs apart: namespaces are `obslab<id>-…` and the
    /// pod CIDR is 10.247.<id>.0/24 or fd00:247:<id>::/120.
    pub lab_id: u8,
    /// Copy nginx's access and error logs here at the end of the run (the
    /// raw material of the truth), named `<prefix>-access.log` and
    /// `<prefix>-error.log`.
    pub keep_logs: Option<std::path::PathBuf>,
    /// The kubelet's readiness probe period (GET / on every pod, from the
    /// node, until the container exits); zero turns probing off.
    pub probe_period: Duration,
    /// Requests a second, in total, from the bystander pod
    /// `monitoring/prometheus-0` straight to the pods' IPs; zero: none.
    pub bystander_qps: u32,
    /// Idle connections each nginx worker keeps to the pods (nginx's
    /// `keepalive`); later requests go over them without a connect. Zero:
    /// one new connection per request.
    pub upstream_keepalive: u32,
    pub ingress: IngressKind,
    /// The external load balancer's health-check interval (it marks a
    /// target down after two failed checks).
    pub lb_health_interval: Duration,
    /// With Caddy: its wait between two tries of a request
    /// (`lb_try_interval`) and how long it tries one (`lb_try_duration`).
    pub lb_try_interval: Duration,
    pub lb_try_duration: Duration,
    /// The ingress sends to the Service's ClusterIP, which the node DNATs
    /// to the ready endpoints as kube-proxy's nftables mode does (changed
    /// after the propagation delay), instead of to the pods' addresses.
    pub via_service: bool,
}

/// Cloud load balancers check their targets every few seconds (GKE NEGs
/// every 5 s, with an unhealthy threshold of 2).
pub const DEFAULT_LB_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The name `--external-sender` gives the lab's external load balancer.
pub const EXTERNAL_LB_NAME: &str = "alb";

/// Real ingresses pool upstream connections by default (ingress-nginx keeps
/// up to 320 per worker); the lab's load needs far fewer.
pub const DEFAULT_UPSTREAM_KEEPALIVE: u32 = 32;

impl Default for LabScenario {
    fn default() -> Self {
        Self {
            pods: 3,
            rollouts: 2,
            propagation_delay: Duration::from_secs(2),
            jitter: Duration::ZERO,
            prestop: Duration::ZERO,
            termination_grace: None,
            drain: Duration::ZERO,
            app_latency: Duration::ZERO,
            qps: 200,
            seed: 1,
            ipv6: false,
            reuse_ips: false,
            quiet_period: None,
            sandbox_linger: PodBehaviour::default().sandbox_linger,
            lab_id: 0,
            keep_logs: None,
            probe_period: Duration::from_secs(1),
            bystander_qps: 5,
            upstream_keepalive: DEFAULT_UPSTREAM_KEEPALIVE,
            ingress: IngressKind::Nginx,
            lb_health_interval: DEFAULT_LB_HEALTH_INTERVAL,
            lb_try_interval: super::caddy::DEFAULT_LB_TRY_INTERVAL,
            lb_try_duration: super::caddy::DEFAULT_LB_TRY_DURATION,
            via_service: false,
        }
    }
}

impl LabScenario {
    /// The prefix of every namespace this lab makes.
    pub fn name_prefix(&self) -> String {
        format!("obslab{}", self.lab_id)
    }

    /// The node the lab's pods (and its ingress) run on: `obslab<id>-node`,
    /// the name of the node end's namespace too.
    pub fn node_name(&self) -> String {
        format!("{}-node", self.name_prefix())
    }

    /// The lab's directory under the cgroup v2 mount, holding its
    /// kubelet-shaped pod cgroups.
    pub fn cgroup_parent(&self) -> String {
        format!("{}.slice", self.name_prefix())
    }

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

    pub fn pod_cidr(&self) -> String {
        if self.ipv6 {
            format!("fd00:247:{:x}::/120", self.lab_id)
        } else {
            format!("10.247.{}.0/24", self.lab_id)
        }
    }

    pub fn quiet(&self) -> Duration {
        self.quiet_period
            .unwrap_or(self.propagation_delay + self.jitter + Duration::from_secs(6))
    }

    pub fn summary(&self) -> ScenarioSummary {
        ScenarioSummary {
            pods: self.pods,
            rollouts: self.rollouts,
            propagation_delay_ms: self.propagation_delay.as_millis() as u64,
            jitter_ms: self.jitter.as_millis() as u64,
            prestop_ms: self.prestop.as_millis() as u64,
            termination_grace_ms: self.grace().as_millis() as u64,
            drain_ms: self.drain.as_millis() as u64,
            app_latency_ms: self.app_latency.as_millis() as u64,
            qps: self.qps,
            seed: self.seed,
            ip_family: if self.ipv6 { "ipv6" } else { "ipv4" }.into(),
            reuse_ips: self.reuse_ips,
            probe_period_ms: self.probe_period.as_millis() as u64,
            bystander_qps: self.bystander_qps,
            upstream_keepalive: self.upstream_keepalive,
            ingress: self.ingress.as_str().into(),
            via_service: self.via_service,
        }
    }

    /// The pods' terminationGracePeriodSeconds.
    pub fn grace(&self) -> Duration {
        self.termination_grace
            .unwrap_or(self.prestop + self.drain + Duration::from_secs(30))
    }

    fn validate(&self) -> Result<()> {
        if self.pods == 0 || self.qps == 0 {
            return Err(LabError::Invalid("pods and qps must be at least 1".into()));
        }
        if self.pods > 200 {
            return Err(LabError::Invalid("at most 200 pods".into()));
        }
        if !self.probe_period.is_zero() && self.probe_period < Duration::from_millis(50) {
            return Err(LabError::Invalid(
                "the probe period is 0 (off) or at least 50 ms".into(),
            ));
        }
        if self.bystander_qps > 1000 {
            return Err(LabError::Invalid("at most 1000 bystander qps".into()));
        }
        if self.app_latency > Duration::from_secs(10) {
            return Err(LabError::Invalid("an app latency of at most 10 s".into()));
        }
        if self.via_service && self.ingress == IngressKind::External {
            return Err(LabError::Invalid(
                "--via-service routes an in-cluster ingress through a ClusterIP; an external \
                 load balancer sends to pod IPs"
                    .into(),
            ));
        }
        if self.lb_health_interval < Duration::from_millis(100) {
            return Err(LabError::Invalid(
                "the load balancer's health-check interval is at least 100 ms".into(),
            ));
        }
        if self.lb_try_interval.is_zero() || self.lb_try_duration < self.lb_try_interval {
            return Err(LabError::Invalid(
                "Caddy's try interval is above zero and its try duration at least one interval"
                    .into(),
            ));
        }
        if self.upstream_keepalive > 10_000 {
            return Err(LabError::Invalid(
                "at most 10000 upstream keep-alive connections".into(),
            ));
        }
        Ok(())
    }

    /// The longest a rollout may take before the lab gives up.
    fn rollout_bound(&self) -> Duration {
        Duration::from_secs(30)
            + Duration::from_secs(2) * self.pods
            + self.prestop
            + self.drain
            + self.sandbox_linger
    }
}

/// Runs the scenario, then (with `verify`) reruns it with the recommended
/// preStop and terminationGracePeriodSeconds and reports the failures that
/// remain. `make_measure` gives a fresh measurement for each run; only a
/// measurement that recommends (the engine's) can be verified.
pub async fn run_lab<M: LabMeasure>(
    scenario: &LabScenario,
    verify: bool,
    mut make_measure: impl FnMut() -> M,
) -> Result<LabReport> {
    let mut report = run_scenario(scenario, make_measure()).await?;
    if verify {
        let Some(rec) = report.recommendation else {
            return Err(LabError::Invalid(
                "--verify needs the engine's recommendation, and the measurement recommended \
                 nothing"
                    .into(),
            ));
        };
        let again = LabScenario {
            prestop: Duration::from_secs(rec.prestop_seconds),
            termination_grace: Some(Duration::from_secs(rec.termination_grace_period_seconds)),
            ..scenario.clone()
        };
        let rerun = run_scenario(&again, make_measure()).await?;
        report.verify = Some(VerifyReport {
            prestop_seconds: rec.prestop_seconds,
            termination_grace_period_seconds: rec.termination_grace_period_seconds,
            failed_connects: rerun.failed_connects(),
            client_errors: rerun.client.errors,
        });
    }
    Ok(report)
}

/// Runs one scenario with `measure` and reports truth against measurement.
/// Everything the lab made is removed when this returns, fails, panics or
/// is interrupted with Ctrl-C.
pub async fn run_scenario(scenario: &LabScenario, measure: impl LabMeasure) -> Result<LabReport> {
    scenario.validate()?;
    let registry = Registry::default();
    let _cleanup = registry.guard();
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = run(scenario, measure, &registry) => r,
        _ = interrupted => Err(LabError::Interrupted),
    }
}

/// Removes the lab's directory on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(
    scenario: &LabScenario,
    mut measure: impl LabMeasure,
    registry: &Registry,
) -> Result<LabReport> {
    let prefix = scenario.name_prefix();
    let cidr = scenario.pod_cidr();
    let dir = WorkDir(std::env::temp_dir().join(format!("{prefix}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0)
        .map_err(LabError::io(format!("creating {}", dir.0.display())))?;

    let net = {
        let (prefix, cidr, registry) = (prefix.clone(), cidr.clone(), registry.clone());
        Arc::new(blocking(move || LabNet::create(&prefix, &cidr, &registry)).await?)
    };
    let cgroup_mount = cgroup::v2_mount().map_err(|e| LabError::Invalid(e.to_string()))?;
    let cgroup_parent = scenario.cgroup_parent();
    // A killed run's pod cgroups go first, as its namespaces did.
    cgroup::sweep(&cgroup_mount, &cgroup_parent);
    registry.add_cgroup_tree(&cgroup_mount, &cgroup_parent);
    let listen: SocketAddr = NGINX_LISTEN
        .parse()
        .map_err(|_| LabError::Invalid(NGINX_LISTEN.into()))?;

    let server = SimServer::start().await?;
    let kubeconfig = dir.0.join("sim.kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let kube = Kube::from_config(server.config().await?)?;
    let client = kube.client().clone();
    let targets = if scenario.bystander_qps > 0 {
        Some(Arc::new(Targets::create(dir.0.join("scrape-targets"))?))
    } else {
        None
    };
    let pods = Arc::new(LabPods::new(
        net.clone(),
        PodBehaviour {
            drain: scenario.drain,
            app_latency: scenario.app_latency,
            sandbox_linger: scenario.sandbox_linger,
            probe_period: scenario.probe_period,
        },
        targets.clone(),
    ));
    let cluster = Cluster::with_runtime(
        server.store().clone(),
        ClusterConfig {
            namespace: NAMESPACE.into(),
            node_name: scenario.node_name(),
            pod_cidr: cidr.clone(),
            ip_reuse: scenario.reuse_ips,
            ready_delay: Duration::from_millis(200),
            // A node's kubelet learns of the deletion through its own
            // watch and stops the container through the runtime; the
            // app's exit does not come the instant the API records the
            // deletion.
            stop_delay: Duration::from_millis(20),
            ..ClusterConfig::default()
        },
        pods.clone(),
    )?;
    // The node's end and the bystander hold the top of the pod CIDR.
    let bystander_ip = net.subnet.from_top(2);
    let net_ips = NetIps {
        gateway: net.subnet.gateway,
        node: net.node_ip(),
        bystander: bystander_ip,
    };
    cluster.reserve_ip(net.node_ip())?;
    cluster.reserve_ip(bystander_ip)?;

    let plane::IngressSide {
        pod: ingress_pod,
        lb,
        plane,
        listen,
    } = plane::start(
        plane::PlaneSettings {
            kind: scenario.ingress,
            pods: scenario.pods,
            keepalive: scenario.upstream_keepalive,
            lb_health_interval: scenario.lb_health_interval,
            lb_try: (scenario.lb_try_interval, scenario.lb_try_duration),
            lb_link: scenario.lb_link(),
        },
        &cluster,
        &net,
        registry,
        (&cgroup_mount, &cgroup_parent),
        &dir.0,
        listen,
    )
    .await?;
    let bystander = match &targets {
        Some(targets) => {
            let net = net.clone();
            let ns = blocking(move || net.add_client("mon", bystander_ip)).await?;
            let pod =
                neighbours::bystander_pod(&cluster, &cgroup_mount, &cgroup_parent, bystander_ip)?;
            Some(Bystander::start(
                ns,
                pod,
                targets.path(),
                scenario.bystander_qps,
                registry,
            )?)
        }
        None => None,
    };
    let timelines = TimelineRecorder::start(cluster.events());
    // Through a ClusterIP, the ingress is given the Service's address once
    // and the controller changes the node's DNAT rule instead.
    let cluster_ip = if scenario.via_service {
        let service = scenario.cluster_ip();
        let cluster_ip = Arc::new(ClusterIp::create(net.ingress.name(), BRIDGE, service)?);
        let data_plane = plane.data_plane();
        blocking(move || data_plane.apply(&[service])).await?;
        Some(cluster_ip)
    } else {
        None
    };
    let controlled: Arc<dyn DataPlane> = match &cluster_ip {
        Some(cluster_ip) => cluster_ip.clone(),
        None => plane.data_plane(),
    };
    let mut ingress = IngressController::start(
        client.clone(),
        controlled,
        IngressConfig {
            namespace: NAMESPACE.into(),
            service: DEPLOYMENT.into(),
            propagation_delay: scenario.propagation_delay,
            jitter: scenario.jitter,
            seed: scenario.seed,
        },
    );

    let mut spec = DeploymentSpec::new(DEPLOYMENT, scenario.pods);
    spec.ports = vec![ServicePort {
        name: Some("http".into()),
        port: i32::from(POD_PORT),
    }];
    spec.pre_stop = scenario.prestop;
    spec.termination_grace = scenario.grace();
    cluster.apply_deployment(spec)?;
    wait_rollout(&cluster, scenario.rollout_bound(), "the first rollout").await?;
    let want = scenario.pods as usize;
    let ingress_bound = scenario.propagation_delay + scenario.jitter + Duration::from_secs(15);
    tokio::time::timeout(ingress_bound, ingress.wait_applied(|s| s.len() == want))
        .await
        .map_err(|_| LabError::Timeout("the ingress to get the first pods".into()))?;

    let ctx = LabContext {
        client: client.clone(),
        kube,
        kubeconfig,
        namespace: NAMESPACE.into(),
        pod_cidr: cidr,
        node_name: scenario.node_name(),
        ingress_pod: match (&ingress_pod, &lb) {
            (Some(pod), _) => known(pod),
            (None, Some(lb)) => KnownPod {
                name: "external load balancer".into(),
                uid: String::new(),
                cgroup_id: lb.cgroup.id(),
            },
            (None, None) => return Err(LabError::Invalid("no ingress".into())),
        },
        external_lb: lb.as_ref().map(|lb| lb.ip),
        via_service: scenario.via_service,
        bystander_pod: bystander.as_ref().map(|b| known(b.pod())),
        upstream_keepalive: scenario.upstream_keepalive,
        records: kept_records(scenario)?,
    };
    measure.start(&ctx).await?;
    // Let the measurement's watchers list the cluster before anything ends.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let clock = WallToMono::measure();
    let wire = {
        let subnet = super::measure::Subnet::parse(&scenario.pod_cidr())?;
        let gateway = net.subnet.gateway;
        // The load balancer's packets are routed onto the bridge by the
        // node: they leave through the bridge device, from its address.
        let from = Sender {
            addr: lb.as_ref().map_or(gateway, |lb| lb.ip),
            link: gateway,
        };
        WireCapture::start(&net.ingress, BRIDGE, from, move |ip| {
            ip != gateway && subnet.contains(ip)
        })?
    };
    let run_bound = (scenario.rollout_bound() + scenario.propagation_delay) * scenario.rollouts
        + scenario.quiet()
        + Duration::from_secs(60);
    let load = LoadClient::start(
        &net.ingress,
        LoadConfig {
            target: listen,
            qps: scenario.qps,
            max_duration: run_bound,
            request_timeout: Duration::from_secs(20),
            max_in_flight: 4096,
        },
    )?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 0..scenario.rollouts {
        cluster.rollout(DEPLOYMENT)?;
        wait_rollout(
            &cluster,
            scenario.rollout_bound(),
            &format!("rollout {}", n + 1),
        )
        .await?;
        tracing::info!(rollout = n + 1, "lab: rollout complete");
    }
    tokio::time::sleep(scenario.quiet() + measure.settle_time()).await;
    let client_stats = load.stop().await?;
    let measured = measure.finish().await?;
    let connectors = measure.connectors();

    let wire = wire.stop()?;
    if let Some(dir) = &scenario.keep_logs {
        keep_logs(dir, &scenario.name_prefix(), &plane.logs())?;
    }
    let timelines = timelines.timelines();
    let (mut truth, totals, hidden_truth) =
        plane::truth(&plane, scenario.via_service, &timelines, clock, &wire)?;
    truth.sort_by_key(|t| t.deletion);

    // Tear down in order: the controllers first, then pods and nginx.
    drop(ingress);
    drop(cluster_ip);
    drop(cluster);
    server.shutdown().await;
    let pods_done = pods.clone();
    blocking(move || {
        pods_done.shutdown();
        Ok(())
    })
    .await?;
    drop(bystander);
    drop((plane, net));
    // Its cgroup goes last: nothing of nginx is left in it.
    drop(ingress_pod);
    drop(lb);

    let served = served_report(
        &pods.served_by_source(),
        net_ips.gateway,
        net_ips.node,
        net_ips.bystander,
    );
    let mut report = build_report(
        scenario,
        &truth,
        &measured,
        ClientReport {
            requests: client_stats.requests,
            errors: client_stats.errors,
        },
    );
    report.served = served;
    report.ingress = totals;
    report.hidden.truth_retried = hidden_truth.0;
    report.hidden.truth_not_retried = hidden_truth.1;
    report.hidden.truth_retried_pooled = hidden_truth.2;
    report.wire = WireReport {
        dropped: wire.dropped,
        clock_drift_ns: wire.clock_drift_ns,
    };
    add_connectors(&mut report, &connectors);
    Ok(report)
}

/// The lab's fixed addresses: nginx's (the bridge), the node's end, the
/// bystander's.
struct NetIps {
    gateway: IpAddr,
    node: IpAddr,
    bystander: IpAddr,
}

fn known(pod: &NeighbourPod) -> KnownPod {
    KnownPod {
        name: pod.full_name(),
        uid: pod.uid.clone(),
        cgroup_id: pod.cgroup.id(),
    }
}

fn served_report(
    by_source: &HashMap<IpAddr, u64>,
    gateway: IpAddr,
    node: IpAddr,
    bystander: IpAddr,
) -> ServedReport {
    let mut served = ServedReport::default();
    for (&ip, &n) in by_source {
        let slot = if ip == gateway {
            &mut served.ingress
        } else if ip == node {
            &mut served.kubelet
        } else if ip == bystander {
            &mut served.bystander
        } else {
            &mut served.other
        };
        *slot += n;
    }
    served
}

/// Puts each termination's connectors (from the measurement) into the
/// report, relative to that termination's deletion_seen.
pub fn add_connectors(report: &mut LabReport, connectors: &ConnectorsByPod) {
    for t in &mut report.terminations {
        if let Some(c) = connectors.get(&t.pod) {
            t.connectors = c
                .connectors
                .iter()
                .map(|a| ConnectorReport::new(a, c.deletion_seen))
                .collect();
        }
    }
}

/// Where the measurement's connect records go with `--keep-logs`.
fn kept_records(scenario: &LabScenario) -> Result<Option<std::path::PathBuf>> {
    let Some(dir) = &scenario.keep_logs else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    Ok(Some(dir.join(format!(
        "{}-records.ndjson",
        scenario.name_prefix()
    ))))
}

fn keep_logs(
    dir: &std::path::Path,
    prefix: &str,
    (access, error): &(std::path::PathBuf, std::path::PathBuf),
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    for (from, name) in [(access, "access"), (error, "error")] {
        let to = dir.join(format!("{prefix}-{name}.log"));
        std::fs::copy(from, &to).map_err(LabError::io(format!(
            "copying {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    Ok(())
}

async fn wait_rollout(cluster: &Cluster, bound: Duration, what: &str) -> Result<()> {
    tokio::time::timeout(bound, cluster.wait_rollout(DEPLOYMENT))
        .await
        .map_err(|_| LabError::Timeout(what.into()))??;
    Ok(())
}

/// Joins truth and measurement by pod name, in deletion order.
pub fn build_report(
    scenario: &LabScenario,
    truth: &[PodTruth],
    measured: &Measurements,
    client: ClientReport,
) -> LabReport {
    let terminations = truth
        .iter()
        .map(|t| {
            let m = measured.pods.iter().find(|m| m.pod == t.pod);
            TerminationReport {
                pod: t.pod.clone(),
                ip: t.ip,
                truth_gap_ms: t.truth_gap_ms,
                truth_last_send_ms: t.truth_last_send_ms,
                retries: t.retries,
                pooled_tries: t.pooled_tries,
                cut_requests: t.cut_requests,
                measured_gap_ms: m.and_then(|m| m.measured_gap_ms),
                measured_last_send_ms: m.and_then(|m| m.measured_last_send_ms),
                measured_last_arrival_ms: m.and_then(|m| m.measured_last_arrival_ms),
                views_apart_ms: m.and_then(|m| m.views_apart_ms),
                failures: m.map(|m| m.failures).unwrap_or_else(FailureCounts::default),
                failures_retried: m.and_then(|m| m.failures_retried),
                wire_last_send_ms: t.wire_last_send_ms(),
                wire_unresolved: t.wire.unresolved_after,
                connectors: Vec::new(),
            }
        })
        .collect();
    let mut hidden = HiddenReport::default();
    for m in &measured.pods {
        let retried = m.failures_retried.unwrap_or(0);
        hidden.measured_retried += retried;
        hidden.measured_not_retried += m.failures.total().saturating_sub(retried);
    }
    LabReport {
        hidden,
        wire: WireReport::default(),
        scenario: scenario.summary(),
        terminations,
        client,
        ingress: TryTotals::default(),
        served: ServedReport::default(),
        recommendation: measured.recommendation,
        verify: None,
    }
}

#[cfg(test)]
#[path = "scenario_tests.rs"]
mod tests;
