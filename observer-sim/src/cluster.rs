//! A scripted cluster on top of the store: Deployments with rolling updates,
//! a kubelet per pod, and an EndpointSlice controller per Service, all driven
//! by real (tokio) time.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::{broadcast, watch};

use super::ipam::IpPool;
pub use super::standalone::StandalonePod;
use super::store::{Store, wait_closed};
use super::{SimError, endpoints, kubelet};

/// Settings shared by everything the scripted cluster runs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub namespace: String,
    pub node_name: String,
    /// Pod IPs come from here, IPv4 ("10.244.1.0/24") or IPv6 ("fd00::/112").
    pub pod_cidr: String,
    /// Hand a freed IP to the next pod that starts.
    pub ip_reuse: bool,
    /// How long the EndpointSlice controller takes to reflect a pod change.
    pub endpoint_delay: Duration,
    /// From pod creation to the pod running with an IP.
    pub start_delay: Duration,
    /// From running to Ready.
    pub ready_delay: Duration,
    /// From the kubelet seeing a pod's deletion to its preStop hook (or
    /// SIGTERM) starting: a real kubelet's pod worker and container runtime
    /// take tens of milliseconds, while this one sees the deletion in the
    /// store itself, with no watch between.
    pub stop_delay: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            node_name: "sim-node".into(),
            pod_cidr: "10.244.1.0/24".into(),
            ip_reuse: true,
            endpoint_delay: Duration::from_millis(50),
            start_delay: Duration::from_millis(20),
            ready_delay: Duration::from_millis(50),
            stop_delay: Duration::ZERO,
        }
    }
}

/// A port the Service and its EndpointSlice advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: i32,
}

/// A Deployment and the Service in front of it.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub name: String,
    pub replicas: u32,
    /// Pod labels and the Service selector; `app=<name>` by default.
    pub labels: BTreeMap<String, String>,
    /// The Service whose EndpointSlice the controller maintains; None for no Service.
    pub service: Option<String>,
    pub ports: Vec<ServicePort>,
    pub max_surge: u32,
    pub max_unavailable: u32,
    /// The preStop hook's duration (a sleep), run before SIGTERM.
    pub pre_stop: Duration,
    /// terminationGracePeriodSeconds, rounded up to whole seconds (at least 1).
    pub termination_grace: Duration,
    /// How long the app takes to exit after SIGTERM, for the built-in runtime.
    pub exit_delay: Duration,
}

impl DeploymentSpec {
    /// `replicas` pods labelled `app=<name>`, a Service of the same name on
    /// port 80, maxSurge 1, maxUnavailable 0, no preStop, 30 s grace.
    pub fn new(name: &str, replicas: u32) -> Self {
        Self {
            name: name.into(),
            replicas,
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            service: Some(name.into()),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
            }],
            max_surge: 1,
            max_unavailable: 0,
            pre_stop: Duration::ZERO,
            termination_grace: Duration::from_secs(30),
            exit_delay: Duration::ZERO,
        }
    }

    fn grace_seconds(&self) -> i64 {
        let ms = self.termination_grace.as_millis().max(1);
        i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
    }
}

/// What the kubelet hands to a [`PodRuntime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: IpAddr,
    pub deployment: String,
    pub revision: u64,
    pub ports: Vec<ServicePort>,
}

/// An error from a [`PodRuntime`].
pub type RuntimeError = Box<dyn StdError + Send + Sync>;

/// The container side of the kubelet, for a lab to run real workloads.
pub trait PodRuntime: Send + Sync + 'static {
    /// Starts the workload at `pod.ip`; the pod can turn Ready once this returns Ok.
    fn start<'a>(&'a self, pod: &'a PodInfo) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// SIGTERM after preStop: returns when the workload has exited. The
    /// kubelet stops waiting at the end of the grace period (SIGKILL).
    fn stop<'a>(&'a self, pod: &'a PodInfo) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// The pod's readiness as the runtime's prober sees it, from start
    /// until its container exits (the sender drops). None (the default):
    /// the kubelet marks the pod Ready `ready_delay` after start.
    fn readiness(&self, _pod: &PodInfo) -> Option<watch::Receiver<bool>> {
        None
    }
}

/// Runs nothing: pods live only in the API.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopRuntime;

impl PodRuntime for NoopRuntime {
    fn start<'a>(&'a self, _pod: &'a PodInfo) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
    fn stop<'a>(&'a self, _pod: &'a PodInfo) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A pod's lifecycle as the kubelet and controllers drive it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The Deployment controller created the pod (no IP yet).
    PodCreated {
        name: String,
    },
    /// The pod got its IP; the runtime is starting it.
    PodStarting {
        name: String,
        ip: IpAddr,
    },
    PodReady {
        name: String,
        ip: IpAddr,
    },
    /// The kubelet saw deletionTimestamp; preStop begins.
    PodTerminating {
        name: String,
        ip: IpAddr,
    },
    /// preStop is over; SIGTERM goes to the workload.
    PodSigterm {
        name: String,
        ip: IpAddr,
    },
    /// The workload has exited (or was killed at the grace deadline).
    PodKilled {
        name: String,
        ip: IpAddr,
    },
    /// The pod is gone from the API and its IP is free.
    PodDeleted {
        name: String,
        ip: Option<IpAddr>,
    },
    /// The EndpointSlice of `service` was written.
    EndpointsUpdated {
        service: String,
        resource_version: u64,
    },
}

struct DeploymentState {
    spec: DeploymentSpec,
    revision: u64,
    /// Bumped by rollout(); the controller reconciles toward it.
    target: watch::Sender<u64>,
    /// The last revision fully rolled out.
    complete: watch::Sender<u64>,
}

pub(crate) struct Shared {
    pub store: Store,
    pub config: ClusterConfig,
    pub runtime: Arc<dyn PodRuntime>,
    pub events: broadcast::Sender<LifecycleEvent>,
    pub ips: Mutex<IpPool>,
    deployments: Mutex<HashMap<String, DeploymentState>>,
    stop: watch::Sender<bool>,
}

impl Shared {
    pub fn ips(&self) -> MutexGuard<'_, IpPool> {
        self.ips.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deployments(&self) -> MutexGuard<'_, HashMap<String, DeploymentState>> {
        self.deployments.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn emit(&self, e: LifecycleEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(e);
    }

    /// Resolves when the cluster is dropped or the store closes.
    pub async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = wait_closed(self.store.closed_signal()) => {}
        }
    }

    /// Runs `fut` until it ends or the cluster stops.
    pub fn spawn(self: &Arc<Self>, fut: impl Future<Output = ()> + Send + 'static) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = me.stopped() => {}
            }
        });
    }
}

/// Label naming the Deployment a pod belongs to.
pub(crate) const DEPLOYMENT_LABEL: &str = "sim.observer/deployment";
const HASH_LABEL: &str = "pod-template-hash";

pub(crate) fn template_hash(name: &str, revision: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(revision.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// A running scripted cluster. Dropping it stops its controllers.
pub struct Cluster {
    shared: Arc<Shared>,
}

impl Cluster {
    /// Starts with pods living only in the API.
    pub fn start(store: Store, config: ClusterConfig) -> Result<Self, SimError> {
        Self::with_runtime(store, config, Arc::new(NoopRuntime))
    }

    /// Starts with a runtime that runs real workloads for the pods.
    pub fn with_runtime(
        store: Store,
        config: ClusterConfig,
        runtime: Arc<dyn PodRuntime>,
    ) -> Result<Self, SimError> {
        let ips = IpPool::new(&config.pod_cidr, config.ip_reuse)?;
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                config,
                runtime,
                events: broadcast::channel(4096).0,
                ips: Mutex::new(ips),
                deployments: Mutex::default(),
                stop: watch::channel(false).0,
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Lifecycle events from now on.
    pub fn events(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.shared.events.subscribe()
    }

    /// Creates a Deployment at revision 1 (and its Service's EndpointSlice
    /// controller); use [`Self::wait_rollout`] to wait for it to be available.
    pub fn apply_deployment(&self, spec: DeploymentSpec) -> Result<(), SimError> {
        if spec.max_surge == 0 && spec.max_unavailable == 0 {
            return Err(SimError::InvalidDeployment(
                "maxSurge and maxUnavailable may not both be 0".into(),
            ));
        }
        let name = spec.name.clone();
        {
            let mut deps = self.shared.deployments();
            if deps.contains_key(&name) {
                return Err(SimError::InvalidDeployment(format!(
                    "{name} already exists"
                )));
            }
            deps.insert(
                name.clone(),
                DeploymentState {
                    spec: spec.clone(),
                    revision: 1,
                    target: watch::channel(1).0,
                    complete: watch::channel(0).0,
                },
            );
        }
        if let Some(svc) = &spec.service {
            let sh = self.shared.clone();
            let (svc, labels, ports) = (svc.clone(), spec.labels.clone(), spec.ports.clone());
            self.shared.spawn(endpoints::run(sh, svc, labels, ports));
        }
        let sh = self.shared.clone();
        self.shared.spawn(run_deployment(sh, name));
        Ok(())
    }

    /// Starts a rolling update to a new revision; returns the revision.
    pub fn rollout(&self, name: &str) -> Result<u64, SimError> {
        let mut deps = self.shared.deployments();
        let d = deps
            .get_mut(name)
            .ok_or_else(|| SimError::UnknownDeployment(name.into()))?;
        d.revision += 1;
        d.target.send_replace(d.revision);
        Ok(d.revision)
    }

    /// Waits until the current revision is fully rolled out: all replicas of
    /// it Ready and every older pod gone from the API.
    pub async fn wait_rollout(&self, name: &str) -> Result<(), SimError> {
        let (mut complete, target) = {
            let deps = self.shared.deployments();
            let d = deps
                .get(name)
                .ok_or_else(|| SimError::UnknownDeployment(name.into()))?;
            (d.complete.subscribe(), d.revision)
        };
        tokio::select! {
            r = complete.wait_for(|c| *c >= target) => r.map(|_| ()).map_err(|_| SimError::Closed),
            _ = self.shared.stopped() => Err(SimError::Closed),
        }
    }

    /// Takes `ip` out of the pod CIDR's pool: something other than a
    /// Deployment's pod holds it (see [`Self::add_standalone_pod`]).
    pub fn reserve_ip(&self, ip: IpAddr) -> Result<(), SimError> {
        if self.shared.ips().reserve(ip) {
            Ok(())
        } else {
            Err(SimError::InvalidDeployment(format!(
                "{ip} is already reserved"
            )))
        }
    }

    /// Creates a running pod (Ready or not, as `pod.ready` says) that no
    /// Deployment owns and no rollout touches (an ingress controller, a
    /// scraper), on this cluster's node.
    /// Returns it as stored, with its uid.
    pub fn add_standalone_pod(&self, pod: StandalonePod) -> Result<Pod, SimError> {
        super::standalone::create(&self.shared.store, &self.shared.config.node_name, pod)
    }

    /// The node every pod of this cluster runs on.
    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    /// The Deployment's pods, ordered by name.
    pub fn pods(&self, name: &str) -> Vec<Pod> {
        deployment_pods(&self.shared.store, &self.shared.config.namespace, name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

fn deployment_pods(store: &Store, ns: &str, name: &str) -> Vec<Pod> {
    store
        .list::<Pod>()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(DEPLOYMENT_LABEL))
                .map(String::as_str)
                == Some(name)
        })
        .collect()
}

pub(crate) fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn new_pod(config: &ClusterConfig, spec: &DeploymentSpec, revision: u64) -> Pod {
    let hash = template_hash(&spec.name, revision);
    let mut labels = spec.labels.clone();
    labels.insert(HASH_LABEL.into(), hash.clone());
    labels.insert(DEPLOYMENT_LABEL.into(), spec.name.clone());
    let ports = spec
        .ports
        .iter()
        .map(|p| ContainerPort {
            name: p.name.clone(),
            container_port: p.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-{hash}-", spec.name)),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(config.node_name.clone()),
            termination_grace_period_seconds: Some(spec.grace_seconds()),
            containers: vec![Container {
                name: "app".into(),
                image: Some(format!("sim/{}:{revision}", spec.name)),
                ports: Some(ports),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// One reconcile pass of the rolling update; returns true when complete.
fn reconcile(shared: &Arc<Shared>, spec: &DeploymentSpec, revision: u64) -> Result<bool, SimError> {
    let store = &shared.store;
    let hash = template_hash(&spec.name, revision);
    let pods = deployment_pods(store, &shared.config.namespace, &spec.name);
    let is_new =
        |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash);
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let (new, old): (Vec<&Pod>, Vec<&Pod>) = live.iter().partition(|p| is_new(p));
    let replicas = spec.replicas as usize;
    let available = live.iter().filter(|p| pod_ready(p)).count();
    let new_ready = new.iter().filter(|p| pod_ready(p)).count();

    let mut total = live.len();
    let mut new_count = new.len();
    while total < replicas + spec.max_surge as usize && new_count < replicas {
        let pod = store.create(new_pod(&shared.config, spec, revision))?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        shared.emit(LifecycleEvent::PodCreated { name: name.clone() });
        let sh = shared.clone();
        let (ns, spec) = (shared.config.namespace.clone(), spec.clone());
        shared.spawn(kubelet::run(sh, ns, name, spec, revision));
        total += 1;
        new_count += 1;
    }

    // Old pods that are not Ready cost no availability; ready ones only as
    // far as maxUnavailable allows.
    let min_available = replicas.saturating_sub(spec.max_unavailable as usize);
    let mut budget = available.saturating_sub(min_available);
    let mut victims: Vec<&Pod> = old.iter().filter(|p| !pod_ready(p)).copied().collect();
    for p in old.iter().filter(|p| pod_ready(p)) {
        if budget == 0 {
            break;
        }
        budget -= 1;
        victims.push(p);
    }
    // Surplus new pods (e.g. after a scale-down) go the same way.
    victims.extend(new.iter().skip(replicas).copied());
    for p in victims {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let name = p.metadata.name.as_deref().unwrap_or_default();
        match store.delete::<Pod>(ns, name, None) {
            Ok(_) | Err(super::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(old.is_empty() && new_count == replicas && new_ready == replicas && pods.len() == new.len())
}

async fn run_deployment(shared: Arc<Shared>, name: String) {
    let (mut target, complete) = {
        let deps = shared.deployments();
        let Some(d) = deps.get(&name) else { return };
        (d.target.subscribe(), d.complete.clone())
    };
    let mut changes = shared.store.subscribe();
    loop {
        changes.borrow_and_update();
        let revision = *target.borrow_and_update();
        let spec = match shared.deployments().get(&name) {
            Some(d) => d.spec.clone(),
            None => return,
        };
        match reconcile(&shared, &spec, revision) {
            Ok(true) => {
                complete.send_if_modified(|c| {
                    let bump = *c < revision;
                    *c = (*c).max(revision);
                    bump
                });
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(deployment = %name, error = %e, "sim: rollout step failed"),
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = target.changed() => if r.is_err() { return },
        }
    }
}
