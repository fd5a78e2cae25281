//! The lab's container runtime: the simulator's kubelet calls
//! [`LabPods::start`] and [`LabPods::stop`]; each pod is a network namespace
//! with the pod's IP and a small HTTP server answering `GET /` with 200 and
//! the pod's name.
//!
//! The app ([`super::app`]) serves HTTP/1.1 keep-alive. On SIGTERM it
//! either exits at once (the naive app: its listener and every established
//! connection close, so later connects are refused and nginx's pooled
//! connections are cut) or keeps serving, on new and existing connections,
//! for `drain` and then exits. After
//! the app has exited, the pod's sandbox lingers for `sandbox_linger` (the
//! kubelet noticing the exit and tearing the sandbox down), still refusing,
//! and then the namespace is removed: connects after that meet a vanished IP
//! (unreachable, or a timeout). If the kubelet gives up waiting at the grace
//! deadline (SIGKILL), the teardown happens at once.
//!
//! With a probe period, the kubelet's readiness probe ([`super::prober`])
//! runs from start until the app exits — through the preStop — and its
//! results are the pod's readiness ([`PodRuntime::readiness`]). With
//! scrape [`Targets`], each pod is listed there while its sandbox exists.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::app::{self, Served};
use super::neighbours::Targets;
use super::netns::{LabNet, Netns};
use super::prober::{ProbeSpec, Prober};
use super::{LabError, Result};
use observer_sim::{PodInfo, PodRuntime, RuntimeError};

/// How a pod's app behaves on SIGTERM, how its sandbox goes away, and how
/// the kubelet probes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodBehaviour {
    /// Keep serving this long after SIGTERM; zero for the naive app.
    pub drain: Duration,
    /// How long the app takes to answer each request.
    pub app_latency: Duration,
    /// From the app's exit to the namespace's removal.
    pub sandbox_linger: Duration,
    /// The readiness probe's period; zero for no probe (the simulator then
    /// marks pods Ready on its own, shortly after start).
    pub probe_period: Duration,
}

impl Default for PodBehaviour {
    fn default() -> Self {
        Self {
            drain: Duration::ZERO,
            app_latency: Duration::ZERO,
            sandbox_linger: Duration::from_secs(1),
            probe_period: Duration::ZERO,
        }
    }
}

/// A pod whose app is running.
struct RunningPod {
    name: String,
    ip: IpAddr,
    ns: Option<Netns>,
    /// Tells the app to exit: its listener and every connection close.
    close: watch::Sender<bool>,
    server: JoinHandle<()>,
    /// The kubelet's readiness probe, until the container exits.
    prober: Option<Prober>,
    /// Where scrapers find the pod while its sandbox exists.
    targets: Option<Arc<Targets>>,
}

impl RunningPod {
    /// The app exits: the listener and every established connection close.
    fn exit_app(&self) {
        self.close.send_replace(true);
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.exit_app();
        self.server.abort();
        drop(self.prober.take());
        // Removing the namespace kills the pod's IP: late connects now fail
        // as they would to a deleted pod.
        drop(self.ns.take());
        if let Some(targets) = &self.targets {
            targets.set(&self.name, None);
        }
    }
}

/// The [`PodRuntime`] of the lab.
pub struct LabPods {
    net: Arc<LabNet>,
    behaviour: PodBehaviour,
    targets: Option<Arc<Targets>>,
    next_index: AtomicU32,
    running: Mutex<HashMap<String, RunningPod>>,
    /// Probe results of started pods, until the kubelet asks for them.
    readiness: Mutex<HashMap<String, watch::Receiver<bool>>>,
    served: Served,
}

impl LabPods {
    /// With `targets`, each running pod's address is listed there for
    /// scrapers.
    pub fn new(
        net: Arc<LabNet>,
        behaviour: PodBehaviour,
        targets: Option<Arc<Targets>>,
    ) -> LabPods {
        LabPods {
            net,
            behaviour,
            targets,
            next_index: AtomicU32::new(0),
            running: Mutex::default(),
            readiness: Mutex::default(),
            served: Served::default(),
        }
    }

    /// Requests every pod answered so far, by source address.
    pub fn served_by_source(&self) -> HashMap<IpAddr, u64> {
        lock(&self.served).clone()
    }

    fn running(&self) -> MutexGuard<'_, HashMap<String, RunningPod>> {
        lock(&self.running)
    }

    /// Pods whose app is running.
    pub fn running_count(&self) -> usize {
        self.running().len()
    }

    /// Stops every pod and removes its namespace.
    pub fn shutdown(&self) {
        let pods: Vec<RunningPod> = self.running().drain().map(|(_, p)| p).collect();
        drop(pods);
    }

    async fn start_pod(&self, pod: &PodInfo) -> Result<()> {
        let port = pod
            .ports
            .first()
            .and_then(|p| u16::try_from(p.port).ok())
            .ok_or_else(|| LabError::Invalid(format!("pod {} has no port", pod.name)))?;
        // A previous holder of this IP (IP reuse) must be gone first, or two
        // namespaces would answer for one address on the bridge.
        let stale: Vec<RunningPod> = {
            let mut running = self.running();
            let names: Vec<String> = running
                .iter()
                .filter(|(_, p)| p.ip == pod.ip)
                .map(|(n, _)| n.clone())
                .collect();
            names.iter().filter_map(|n| running.remove(n)).collect()
        };
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let net = self.net.clone();
        let ip = pod.ip;
        let (ns, listener) = tokio::task::spawn_blocking(move || -> Result<_> {
            drop(stale);
            let ns = net.add_pod(index, ip)?;
            let listener = ns.run_in("lab-pod-listen", move || {
                let l = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })?;
            let listener = listener.map_err(LabError::io(format!("listening on {ip}:{port}")))?;
            Ok((ns, listener))
        })
        .await
        .map_err(|e| LabError::Invalid(format!("pod start task: {e}")))??;
        let listener =
            TcpListener::from_std(listener).map_err(LabError::io("registering a listener"))?;
        let (close, closed) = watch::channel(false);
        let server = tokio::spawn(app::serve(
            listener,
            pod.name.clone(),
            closed,
            self.served.clone(),
            self.behaviour.app_latency,
        ));
        let target = SocketAddr::new(ip, port);
        let prober = if self.behaviour.probe_period.is_zero() {
            None
        } else {
            let (ready, readiness) = watch::channel(false);
            let spec = ProbeSpec::every(self.behaviour.probe_period);
            let prober = Prober::start(&self.net.node, target, spec, ready)?;
            lock(&self.readiness).insert(pod.name.clone(), readiness);
            Some(prober)
        };
        if let Some(targets) = &self.targets {
            targets.set(&pod.name, Some(target));
        }
        self.running().insert(
            pod.name.clone(),
            RunningPod {
                name: pod.name.clone(),
                ip,
                ns: Some(ns),
                close,
                server,
                prober,
                targets: self.targets.clone(),
            },
        );
        Ok(())
    }

    async fn stop_pod(&self, pod: &PodInfo) {
        let Some(mut running) = self.running().remove(&pod.name) else {
            return;
        };
        lock(&self.readiness).remove(&pod.name);
        // Dropping `running` (here at the end, or earlier if the kubelet
        // abandons this future at the grace deadline) tears the pod down.
        tokio::time::sleep(self.behaviour.drain).await;
        running.exit_app();
        // The container has exited: the kubelet stops probing it.
        drop(running.prober.take());
        tokio::time::sleep(self.behaviour.sandbox_linger).await;
        let _ = tokio::task::spawn_blocking(move || drop(running)).await;
    }
}

impl Drop for LabPods {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl PodRuntime for LabPods {
    fn start<'a>(&'a self, pod: &'a PodInfo) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move { self.start_pod(pod).await.map_err(RuntimeError::from) })
    }

    fn stop<'a>(&'a self, pod: &'a PodInfo) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.stop_pod(pod).await;
            Ok(())
        })
    }

    fn readiness(&self, pod: &PodInfo) -> Option<watch::Receiver<bool>> {
        lock(&self.readiness).remove(&pod.name)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
