//! The lab's container runtime: the simulator's kubelet calls
//! [`LabPods::start`] and [`LabPods::stop`]; each pod is a network namespace
//! with the pod's IP and a small HTTP server answering `GET /` with 200 and
//! the pod's name.
//!
//! On SIGTERM the app either stops listening at once (the naive app: later
//! connects are refused) or keeps serving for `drain` and then stops. After
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::neighbours::Targets;
use super::netns::{LabNet, Netns};
use super::prober::{ProbeSpec, Prober};
use super::{LabError, Result};
use crate::sim::{PodInfo, PodRuntime, RuntimeError};

/// How a pod's app behaves on SIGTERM, how its sandbox goes away, and how
/// the kubelet probes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodBehaviour {
    /// Keep serving this long after SIGTERM; zero for the naive app.
    pub drain: Duration,
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
    /// Tells the server to stop listening.
    close: watch::Sender<bool>,
    server: JoinHandle<()>,
    /// The kubelet's readiness probe, until the container exits.
    prober: Option<Prober>,
    /// Where scrapers find the pod while its sandbox exists.
    targets: Option<Arc<Targets>>,
}

impl RunningPod {
    fn close_listener(&self) {
        self.close.send_replace(true);
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.close_listener();
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

/// Requests answered, by source address.
type Served = Arc<Mutex<HashMap<IpAddr, u64>>>;

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
        let server = tokio::spawn(serve(
            listener,
            pod.name.clone(),
            closed,
            self.served.clone(),
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
        running.close_listener();
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

/// Accepts until told to close; each connection gets one response.
async fn serve(
    listener: TcpListener,
    name: String,
    mut closed: watch::Receiver<bool>,
    served: Served,
) {
    let body: Arc<str> = Arc::from(format!("{name}\n"));
    loop {
        tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(answer(stream, body.clone(), peer.ip(), served.clone()));
                }
                Err(error) => tracing::debug!(%error, pod = %name, "lab pod: accept failed"),
            },
        }
    }
    // The listener drops here: from now on the pod's port refuses.
}

/// Reads one request head and answers 200 with the pod's name.
async fn answer(mut stream: TcpStream, body: Arc<str>, peer: IpAddr, served: Served) {
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    let read_head = async {
        while seen < buf.len() {
            match stream.read(&mut buf[seen..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen += n,
            }
            if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
        }
        false
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), read_head).await,
        Ok(true)
    ) {
        return;
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        *lock(&served).entry(peer).or_default() += 1;
    }
    let _ = stream.shutdown().await;
}
