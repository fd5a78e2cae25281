//! The measurement side of the lab, behind [`LabMeasure`] so the real agent
//! pipeline (probe + kube watchers + correlation engine) and simpler
//! measurements plug in the same way. The lab compares what a measurement
//! reports with its own ground truth.
//!
//! [`ProbeOnlyMeasure`] is the self-contained measurement: the kernel probe
//! for connects, a kube-rs Pod watcher for deletion_seen, and per pod the
//! last SYN to its IP after deletion_seen (until another pod takes the IP).
//! It sees connects only: a request sent on a pooled connection makes no
//! SYN, so it measures only with upstream keep-alive off, and it recommends
//! nothing (the recommendation is the engine's). Nor can it tell a retry
//! from a choice, so its last SYN is the pod's *last send* (with keep-alive
//! off), and its gap includes the retry tail when nginx retried later.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::connectors::Connectors;
pub use super::connectors::{ConnectorsByPod, TerminationConnectors};
use super::netns::PodSubnet;
use super::report::{FailureCounts, Recommendation};
use super::{LabError, Result};
use crate::clock::MonoTime;
use crate::probe::{ConnectRecord, EventReader, FailureClass, Outcome, Probe, ProbeOptions};

/// What a measurement gets to watch the lab's cluster.
#[derive(Clone)]
pub struct LabContext {
    /// A client of the simulator's API server.
    pub client: kube::Client,
    /// The same, with the configuration it was built from, for the watches.
    pub kube: crate::cluster::Kube,
    /// The same, as a kubeconfig file (for an agent run as a process).
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub pod_cidr: String,
    /// The node the lab's pods and its ingress run on (the ingress node a
    /// measurement stands on).
    pub node_name: String,
    /// The ingress controller's pod; nginx's connects carry its cgroup.
    /// With a load balancer outside the cluster, the load balancer's own
    /// cgroup (no Pod object: no node's probe would see its sockets).
    pub ingress_pod: KnownPod,
    /// The address of the load balancer outside the cluster, when the
    /// lab runs one instead of an ingress.
    pub external_lb: Option<IpAddr>,
    /// The ingress sends to a Service's ClusterIP: its sending side never
    /// sees a connect to a pod's address.
    pub via_service: bool,
    /// The bystander (`monitoring/prometheus-0`), when it runs.
    pub bystander_pod: Option<KnownPod>,
    /// Idle connections each nginx worker keeps to the pods; 0: every
    /// request opens a connection, so every send is a SYN.
    pub upstream_keepalive: u32,
    /// Where the measurement writes the connect records it measured from
    /// (NDJSON, as `observer trace --json` prints them), with
    /// `--keep-logs`: next to nginx's logs, so a miss can be read later.
    pub records: Option<PathBuf>,
}

/// A pod outside the measured Deployment, known by its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownPod {
    /// `namespace/name`.
    pub name: String,
    pub uid: String,
    /// The inode of its container's cgroup v2 directory.
    pub cgroup_id: u64,
}

/// One terminated pod as measured.
#[derive(Clone, Debug, PartialEq)]
pub struct PodMeasurement {
    pub pod: String,
    pub ip: IpAddr,
    /// The propagation gap: last choice − deletion_seen.
    pub measured_gap_ms: Option<f64>,
    /// last_send − deletion_seen (retries and pooled sends included); None
    /// when the measurement cannot tell.
    pub measured_last_send_ms: Option<f64>,
    /// The destination side: the last arrival at the pod from the lab's
    /// ingress (or external load balancer) − deletion_seen; None where the
    /// measurement has no destination-side view.
    pub measured_last_arrival_ms: Option<f64>,
    /// The ingress's sender-side last send against its destination-side
    /// last arrival (the same packets), where both exist.
    pub views_apart_ms: Option<f64>,
    pub failures: FailureCounts,
    /// Of `failures`, those the ingress retried elsewhere (hidden); None
    /// when the measurement cannot tell.
    pub failures_retried: Option<u64>,
}

/// Everything a measurement reports at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurements {
    pub pods: Vec<PodMeasurement>,
    pub recommendation: Option<Recommendation>,
}

/// A measurement of the lab's run: started once the cluster is up (before
/// any termination), finished after the quiet period.
pub trait LabMeasure: Send {
    fn start(&mut self, ctx: &LabContext) -> impl Future<Output = Result<()>> + Send;
    /// Extra time the measurement needs after the lab's quiet period before
    /// [`Self::finish`] (e.g. for its own measurement windows to close).
    fn settle_time(&self) -> Duration {
        Duration::ZERO
    }
    fn finish(&mut self) -> impl Future<Output = Result<Measurements>> + Send;
    /// Who connected to each terminated pod after its deletion, by pod
    /// name, once [`Self::finish`] has returned. Empty for a measurement
    /// that does not tell connectors apart.
    fn connectors(&self) -> ConnectorsByPod {
        ConnectorsByPod::new()
    }
}

/// A pod as the measurement's own Pod watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenPod {
    pub name: String,
    pub ip: IpAddr,
    /// When the watcher first saw the pod with this IP.
    pub first_seen: MonoTime,
    /// When the watcher first saw its deletionTimestamp.
    pub deletion_seen: Option<MonoTime>,
}

impl SeenPod {
    /// When the pod's IP passed to its next holder after `from`: what a
    /// connect to the IP means changes there.
    pub fn tenure_end(&self, pods: &[SeenPod], from: MonoTime) -> Option<MonoTime> {
        pods.iter()
            .filter(|o| o.name != self.name && o.ip == self.ip && o.first_seen > from)
            .map(|o| o.first_seen)
            .min()
    }
}

/// Per pod: the last SYN to its IP within [deletion_seen, next holder's
/// first_seen), and the failed connects in that window, by class —
/// counting only the records `is_ingress` accepts (the ingress's
/// connects; probes and scrapes never move the gap).
pub fn gaps_from_records(
    pods: &[SeenPod],
    records: &[ConnectRecord],
    is_ingress: impl Fn(&ConnectRecord) -> bool,
) -> Vec<PodMeasurement> {
    let mut out = Vec::new();
    for pod in pods {
        let Some(t0) = pod.deletion_seen else {
            continue;
        };
        let end = pod.tenure_end(pods, t0);
        let mut last: Option<MonoTime> = None;
        let mut failures = FailureCounts::default();
        let in_window = |t: MonoTime| t >= t0 && end.is_none_or(|end| t < end);
        for r in records
            .iter()
            .filter(|r| r.dst.ip() == pod.ip && !r.is_arrival() && is_ingress(r))
        {
            match r.outcome {
                // A reset cuts off a connection opened earlier: not a new
                // connect, but a failure of this termination when it falls
                // in the window.
                Outcome::Failed {
                    class: FailureClass::Reset,
                    ..
                } => {
                    if in_window(r.ts) {
                        failures.add(FailureClass::Reset);
                    }
                }
                ref outcome => {
                    // Without its SYN time (an error report whose close was
                    // lost) a failure counts but does not date a connect.
                    let syn = r.syn;
                    if !in_window(syn.unwrap_or(r.ts)) {
                        continue;
                    }
                    if let Outcome::Failed { class, .. } = outcome {
                        failures.add(*class);
                    }
                    last = last.max(syn);
                }
            }
        }
        out.push(PodMeasurement {
            pod: pod.name.clone(),
            ip: pod.ip,
            measured_gap_ms: last.map(|l| l.signed_since(t0) as f64 / 1e6),
            // SYNs alone say nothing of pooled sends.
            measured_last_send_ms: None,
            measured_last_arrival_ms: None,
            views_apart_ms: None,
            failures,
            failures_retried: None,
        });
    }
    out
}

type Collected = (Vec<SeenPod>, Vec<ConnectRecord>);

/// Loads the probe and opens its event ring, for a measurement.
pub(super) fn load_probe() -> Result<(Probe, EventReader)> {
    let mut probe = Probe::load(&ProbeOptions::default())
        .map_err(|e| LabError::Measure(format!("loading the probe: {e}")))?;
    let reader = probe
        .event_reader()
        .map_err(|e| LabError::Measure(format!("probe events: {e}")))?;
    Ok((probe, reader))
}

/// The probe and a Pod watcher, correlated directly (no engine). Only the
/// ingress pod's connects (by cgroup) measure the gap; every connector is
/// reported ([`LabMeasure::connectors`]).
#[derive(Default)]
pub struct ProbeOnlyMeasure {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<Collected>>>,
    known: Option<Connectors>,
    connectors: ConnectorsByPod,
    /// Only without upstream keep-alive is the last SYN the last send.
    every_send_connects: bool,
}

impl ProbeOnlyMeasure {
    pub fn new() -> ProbeOnlyMeasure {
        ProbeOnlyMeasure::default()
    }
}

impl LabMeasure for ProbeOnlyMeasure {
    async fn start(&mut self, ctx: &LabContext) -> Result<()> {
        let (probe, reader) = load_probe()?;
        self.known = Some(Connectors::new(ctx));
        self.every_send_connects = ctx.upstream_keepalive == 0;
        let subnet = Subnet::parse(&ctx.pod_cidr)?;
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(collect(probe, reader, pods, subnet, stopped)));
        Ok(())
    }

    async fn finish(&mut self) -> Result<Measurements> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self
            .task
            .take()
            .ok_or_else(|| LabError::Measure("finish before start".into()))?;
        let (pods, records) = task
            .await
            .map_err(|e| LabError::Measure(format!("collector: {e}")))??;
        let known = self
            .known
            .take()
            .ok_or_else(|| LabError::Measure("finish before start".into()))?;
        self.connectors = known.by_pod(&pods, &records);
        let mut pods = gaps_from_records(&pods, &records, |r| known.is_ingress(r));
        if self.every_send_connects {
            for p in &mut pods {
                p.measured_last_send_ms = p.measured_gap_ms;
            }
        }
        // The lab has no formula of its own: only the engine recommends.
        Ok(Measurements {
            recommendation: None,
            pods,
        })
    }

    fn connectors(&self) -> ConnectorsByPod {
        self.connectors.clone()
    }
}

/// An address range, to keep only connects to pod IPs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Subnet {
    base: u128,
    mask: u128,
    v6: bool,
}

impl Subnet {
    pub(super) fn parse(cidr: &str) -> Result<Subnet> {
        PodSubnet::parse(cidr)?;
        let bad = || LabError::Invalid(format!("pod CIDR {cidr:?}"));
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        let (raw, bits, v6) = match addr.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32, false),
            IpAddr::V6(a) => (u128::from(a), 128, true),
        };
        let host_bits = bits - len.min(bits);
        let mask = if host_bits >= 128 {
            0
        } else {
            !((1u128 << host_bits) - 1)
        };
        Ok(Subnet {
            base: raw & mask,
            mask,
            v6,
        })
    }

    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        let (raw, v6) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), false),
            IpAddr::V6(a) => (u128::from(a), true),
        };
        v6 == self.v6 && raw & self.mask == self.base
    }
}

async fn collect(
    mut probe: Probe,
    mut reader: crate::probe::EventReader,
    pods: Api<Pod>,
    subnet: Subnet,
    mut stopped: oneshot::Receiver<()>,
) -> Result<Collected> {
    let events = watcher::watcher(pods, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let mut seen: Vec<SeenPod> = Vec::new();
    let mut current: HashMap<String, usize> = HashMap::new();
    let mut records = Vec::new();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            r = reader.next_batch(Duration::from_millis(50), &mut batch) => {
                r.map_err(|e| LabError::Measure(format!("reading probe events: {e}")))?;
                records.extend(batch.drain(..).filter(|r| subnet.contains(r.dst.ip())));
            }
            Some(event) = events.next() => {
                let at = MonoTime::now();
                let pod = match event {
                    Ok(Event::Apply(p) | Event::InitApply(p)) => p,
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "lab measure: pod watch error (retrying)");
                        continue;
                    }
                };
                let name = pod.metadata.name.clone().unwrap_or_default();
                let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|s| s.parse::<IpAddr>().ok()) else {
                    continue;
                };
                let index = *current.entry(name.clone()).or_insert_with(|| {
                    seen.push(SeenPod { name, ip, first_seen: at, deletion_seen: None });
                    seen.len() - 1
                });
                let entry = &mut seen[index];
                if pod.metadata.deletion_timestamp.is_some() && entry.deletion_seen.is_none() {
                    entry.deletion_seen = Some(at);
                    // Every connect to a terminating pod is reported, not
                    // only the failures.
                    if let Err(error) = probe.watch(ip) {
                        tracing::warn!(%error, %ip, "lab measure: cannot watch a pod IP");
                    }
                }
            }
        }
    }
    reader.finish(&mut batch);
    records.extend(batch.drain(..).filter(|r| subnet.contains(r.dst.ip())));
    Ok((seen, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn rec(dst: &str, syn_ms: u64, outcome: Outcome) -> ConnectRecord {
        ConnectRecord {
            ts: MonoTime(syn_ms * MS + 1),
            syn: Some(MonoTime(syn_ms * MS)),
            src: "10.247.1.1:40000".parse().unwrap(),
            dst: dst.parse().unwrap(),
            pid: 1,
            tid: 1,
            comm: "nginx".into(),
            cgroup_id: 0,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched: true,
            outcome,
        }
    }

    fn refused() -> Outcome {
        Outcome::Failed {
            class: FailureClass::Refused,
            errno: libc::ECONNREFUSED,
            waited_ns: 0,
            synchronous: false,
        }
    }

    #[test]
    fn gap_and_failures_stop_at_the_next_holder_of_the_ip() {
        let ip: IpAddr = "10.247.1.2".parse().unwrap();
        let pods = vec![
            SeenPod {
                name: "old".into(),
                ip,
                first_seen: MonoTime(0),
                deletion_seen: Some(MonoTime(1_000 * MS)),
            },
            SeenPod {
                name: "new".into(),
                ip,
                first_seen: MonoTime(4_000 * MS),
                deletion_seen: None,
            },
        ];
        let records = vec![
            rec("10.247.1.2:8080", 500, Outcome::Connect),
            rec("10.247.1.2:8080", 1_500, Outcome::Connect),
            rec("10.247.1.2:8080", 2_100, refused()),
            rec("10.247.1.3:8080", 2_900, refused()),
            rec("10.247.1.2:8080", 5_000, Outcome::Connect),
        ];
        let gaps = gaps_from_records(&pods, &records, |_| true);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].pod, "old");
        assert_eq!(gaps[0].measured_gap_ms, Some(1_100.0));
        assert_eq!(gaps[0].failures.refused, 1);
        assert_eq!(gaps[0].failures.total(), 1);
    }

    #[test]
    fn subnet_filters_pod_addresses() {
        let s = Subnet::parse("10.247.1.0/24").unwrap();
        assert!(s.contains("10.247.1.9".parse().unwrap()));
        assert!(!s.contains("10.247.2.9".parse().unwrap()));
        assert!(!s.contains("::1".parse().unwrap()));
        let s6 = Subnet::parse("fd00:247:1::/120").unwrap();
        assert!(s6.contains("fd00:247:1::5".parse().unwrap()));
        assert!(!s6.contains("fd00:247:1::1:5".parse().unwrap()));
    }
}
