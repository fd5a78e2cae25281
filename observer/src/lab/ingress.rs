//! The lab's ingress controller: watches the simulator's EndpointSlices with
//! the real kube-rs client (as ingress-nginx does) and applies each change
//! of the ready endpoint set to nginx after a propagation delay, plus or
//! minus a seeded jitter. Changes are applied in the order they were seen:
//! a jittered change never overtakes an earlier one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::MonoTime;

/// An ingress data plane the controller configures: nginx (rewritten and
/// reloaded) or HAProxy (changed in place through its runtime API).
pub trait DataPlane: Send + Sync + 'static {
    /// Routes to exactly `upstreams` from now on.
    fn apply(&self, upstreams: &[SocketAddr]) -> super::Result<()>;
}

/// How the controller lags behind the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressConfig {
    pub namespace: String,
    pub service: String,
    pub propagation_delay: Duration,
    /// Each change is delayed by `propagation_delay ± jitter` (uniform).
    pub jitter: Duration,
    pub seed: u64,
}

/// A deterministic source of jitter (splitmix64): the same seed gives the
/// same delays, run after run.
#[derive(Clone, Debug)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `delay` moved by a uniform offset in `[-jitter, +jitter]`, never
    /// below zero.
    pub fn delay(&mut self, delay: Duration, jitter: Duration) -> Duration {
        let span = jitter.as_nanos() as u64;
        if span == 0 {
            return delay;
        }
        let offset = self.next_u64() % (2 * span + 1);
        let nanos = (delay.as_nanos() as u64 + offset).saturating_sub(span);
        Duration::from_nanos(nanos)
    }
}

/// One configuration the data plane was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// When the controller saw the EndpointSlice change.
    pub seen: MonoTime,
    /// When the data plane was told (nginx: reloaded).
    pub applied: MonoTime,
    pub upstreams: Vec<SocketAddr>,
}

/// The ready addresses × ports of one slice, as an ingress would use them.
pub fn ready_upstreams(slice: &EndpointSlice) -> Vec<SocketAddr> {
    let ports: Vec<u16> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok()))
        .collect();
    let mut out = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        // A missing `ready` condition means ready, per the API.
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if !ready {
            continue;
        }
        for addr in &ep.addresses {
            if let Ok(ip) = addr.parse::<IpAddr>() {
                out.extend(ports.iter().map(|&port| SocketAddr::new(ip, port)));
            }
        }
    }
    out
}

/// The running controller; dropping it stops it.
pub struct IngressController {
    applied: watch::Receiver<Vec<SocketAddr>>,
    history: Arc<Mutex<Vec<Applied>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl IngressController {
    pub fn start(client: kube::Client, plane: Arc<dyn DataPlane>, config: IngressConfig) -> Self {
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let (applied_tx, applied) = watch::channel(Vec::new());
        let history = Arc::new(Mutex::new(Vec::new()));
        let api: Api<EndpointSlice> = Api::namespaced(client, &config.namespace);
        let selector = format!("kubernetes.io/service-name={}", config.service);
        let watch_task = tokio::spawn(watch_slices(api, selector, changes_tx));
        let apply_task = tokio::spawn(apply_changes(
            plane,
            config,
            changes_rx,
            applied_tx,
            history.clone(),
        ));
        IngressController {
            applied,
            history,
            tasks: vec![watch_task, apply_task],
        }
    }

    /// Waits until the data plane has been given an upstream set satisfying `f`.
    pub async fn wait_applied(&mut self, f: impl Fn(&[SocketAddr]) -> bool) -> bool {
        self.applied.wait_for(|set| f(set)).await.is_ok()
    }

    /// Every configuration applied so far.
    pub fn history(&self) -> Vec<Applied> {
        lock(&self.history).clone()
    }
}

impl Drop for IngressController {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Follows the Service's slices and sends each new ready set with the time
/// it was seen.
async fn watch_slices(
    api: Api<EndpointSlice>,
    selector: String,
    changes: mpsc::UnboundedSender<(MonoTime, Vec<SocketAddr>)>,
) {
    let stream =
        watcher::watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    futures::pin_mut!(stream);
    let mut slices: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Vec<SocketAddr>>> = None;
    let mut last: Option<Vec<SocketAddr>> = None;
    while let Some(event) = stream.next().await {
        let seen = MonoTime::now();
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(s)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(name(&s), ready_upstreams(&s));
                }
            }
            Ok(Event::InitDone) => slices = listing.take().unwrap_or_default(),
            Ok(Event::Apply(s)) => {
                slices.insert(name(&s), ready_upstreams(&s));
            }
            Ok(Event::Delete(s)) => {
                slices.remove(&name(&s));
            }
            Err(error) => {
                tracing::warn!(%error, "lab ingress: watch error (retrying)");
                continue;
            }
        }
        if listing.is_some() {
            continue;
        }
        let mut set: Vec<SocketAddr> = slices.values().flatten().copied().collect();
        set.sort();
        set.dedup();
        if last.as_ref() != Some(&set) {
            last = Some(set.clone());
            if changes.send((seen, set)).is_err() {
                return;
            }
        }
    }
}

/// Applies each change after its (jittered) delay, in order.
async fn apply_changes(
    plane: Arc<dyn DataPlane>,
    config: IngressConfig,
    mut changes: mpsc::UnboundedReceiver<(MonoTime, Vec<SocketAddr>)>,
    applied: watch::Sender<Vec<SocketAddr>>,
    history: Arc<Mutex<Vec<Applied>>>,
) {
    let mut jitter = Jitter::new(config.seed);
    let mut not_before = Instant::now();
    while let Some((seen, set)) = changes.recv().await {
        let delay = jitter.delay(config.propagation_delay, config.jitter);
        let waited = MonoTime::now().saturating_since(seen);
        let due = (Instant::now() + delay.saturating_sub(waited)).max(not_before);
        tokio::time::sleep_until(due).await;
        not_before = due;
        if let Err(error) = plane.apply(&set) {
            tracing::warn!(%error, "lab ingress: could not apply a configuration");
            continue;
        }
        lock(&history).push(Applied {
            seen,
            applied: MonoTime::now(),
            upstreams: set.clone(),
        });
        applied.send_replace(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let (delay, jitter) = (Duration::from_secs(2), Duration::from_millis(500));
        let a: Vec<Duration> = {
            let mut j = Jitter::new(7);
            (0..100).map(|_| j.delay(delay, jitter)).collect()
        };
        let b: Vec<Duration> = {
            let mut j = Jitter::new(7);
            (0..100).map(|_| j.delay(delay, jitter)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter()
                .all(|d| *d >= Duration::from_millis(1500) && *d <= Duration::from_millis(2500))
        );
        assert!(a.iter().any(|d| *d != a[0]), "jitter varies");
        let mut other = Jitter::new(8);
        assert_ne!(a[0], other.delay(delay, jitter));
        assert_eq!(Jitter::new(1).delay(delay, Duration::ZERO), delay);
        // Never negative.
        assert!(
            Jitter::new(3).delay(Duration::ZERO, Duration::from_millis(1))
                <= Duration::from_millis(1)
        );
    }

    #[test]
    fn only_ready_endpoints_become_upstreams() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.247.1.2"], "conditions": {"ready": true}},
                {"addresses": ["10.247.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.247.1.4"]}
            ]
        }))
        .unwrap();
        let ups = ready_upstreams(&slice);
        assert_eq!(
            ups,
            vec![
                "10.247.1.2:8080".parse::<SocketAddr>().unwrap(),
                "10.247.1.4:8080".parse().unwrap()
            ]
        );
    }
}
