//! The agent's own pipeline as a lab measurement: the kernel probe and the
//! kube watchers feed the correlation engine, which asks for pod IPs to be
//! watched and closes one termination record per pod. What the lab checks
//! against its truth is then exactly what `observer` reports on a node.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::connectors::{ConnectorsByPod, TerminationConnectors};
use super::measure::{LabContext, LabMeasure, Measurements, PodMeasurement};
use super::report::Recommendation;
use super::{LabError, Result};
use crate::clock::MonoTime;
use crate::cluster::{WatchConfig, WatchCounters, stamped_events};
use crate::connector::CgroupResolver;
use crate::engine::{Engine, EngineConfig, Output, PodTermination};
use crate::probe::Probe;
use crate::tui::LocalFeed;

/// How often an attached TUI gets a fresh snapshot.
const FEED_SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// What the engine task hands back: the measurements and every closed
/// termination (for its connectors).
type Finished = (Measurements, Vec<PodTermination>);

/// Runs [`Engine`] on the probe's records and the watchers' events.
pub struct EngineMeasure {
    config: EngineConfig,
    /// Every closed termination's connectors, once finished.
    connectors: ConnectorsByPod,
    feed: Option<LocalFeed>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<Finished>>>,
}

impl EngineMeasure {
    pub fn new(config: EngineConfig) -> EngineMeasure {
        EngineMeasure {
            config,
            connectors: ConnectorsByPod::new(),
            feed: None,
            stop: None,
            task: None,
        }
    }

    /// Also shows the engine's state live in a TUI (`observer lab --tui`).
    pub fn with_feed(config: EngineConfig, feed: LocalFeed) -> EngineMeasure {
        EngineMeasure {
            feed: Some(feed),
            ..EngineMeasure::new(config)
        }
    }
}

impl Default for EngineMeasure {
    fn default() -> Self {
        EngineMeasure::new(EngineConfig::default())
    }
}

impl LabMeasure for EngineMeasure {
    async fn start(&mut self, ctx: &LabContext) -> Result<()> {
        let (probe, mut reader) = super::measure::load_probe()?;
        let resolver = CgroupResolver::discover()
            .map_err(|e| LabError::Measure(format!("connectors: {e}")))?;
        reader.resolve_connectors(resolver);
        // Every namespace: the ingress's pod, whose labels make its connects
        // the ingress's, lives outside the workload's namespace.
        let events = stamped_events(
            &ctx.client,
            &WatchConfig::default(),
            Arc::new(WatchCounters::default()),
        );
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        // The ingress is found as on a node: by its pod's labels, among
        // the pods of the lab's node.
        self.config.ingress.node = Some(ctx.node_name.clone());
        let engine = Engine::new(self.config.clone());
        let feed = self.feed.take();
        let records = match &ctx.records {
            Some(path) => Some(RecordLog::create(path)?),
            None => None,
        };
        self.task = Some(tokio::spawn(drive(
            engine, probe, reader, events, stopped, feed, records,
        )));
        Ok(())
    }

    /// A window closes only after the engine's quiet period without a
    /// connect; one closed at shutdown does not feed recommendations.
    fn settle_time(&self) -> Duration {
        self.config.quiet_period + Duration::from_secs(1)
    }

    async fn finish(&mut self) -> Result<Measurements> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let (measurements, closed) = self
            .task
            .take()
            .ok_or_else(|| LabError::Measure("finish before start".into()))?
            .await
            .map_err(|e| LabError::Measure(format!("engine task: {e}")))??;
        self.connectors = closed
            .into_iter()
            .map(|t| {
                let connectors = TerminationConnectors {
                    deletion_seen: t.deletion_seen,
                    connectors: t.connectors,
                };
                (t.pod, connectors)
            })
            .collect();
        Ok(measurements)
    }

    fn connectors(&self) -> ConnectorsByPod {
        self.connectors.clone()
    }
}

/// Carries out the engine's outputs; keeps the closed terminations.
fn handle(probe: &mut Probe, out: &mut Vec<Output>, closed: &mut Vec<PodTermination>) {
    for output in out.drain(..) {
        let result = match output {
            Output::Watch(ip) => probe.watch(ip),
            Output::Unwatch(ip) => probe.unwatch(ip),
            Output::TerminationClosed(t) => {
                closed.push(t);
                Ok(())
            }
            Output::TerminationOpened(_) | Output::Finding(_) => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(%error, "lab engine measure: watch map update failed");
        }
    }
}

async fn drive(
    mut engine: Engine,
    mut probe: Probe,
    mut reader: crate::probe::EventReader,
    events: impl futures::Stream<Item = crate::cluster::StampedEvent> + Send + 'static,
    mut stopped: oneshot::Receiver<()>,
    mut feed: Option<LocalFeed>,
    mut records: Option<RecordLog>,
) -> Result<Finished> {
    futures::pin_mut!(events);
    let mut out = Vec::new();
    let mut closed = Vec::new();
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // After the stop request, keep measuring until every window has closed
    // on its own (bounded): windows closed at shutdown feed no
    // recommendation.
    let mut draining_until: Option<MonoTime> = None;
    let mut last_fed = MonoTime::from_nanos(0);
    loop {
        if let Some(deadline) = draining_until {
            let now = MonoTime::now();
            if engine.snapshot(now).open.is_empty() || now >= deadline {
                break;
            }
        }
        tokio::select! {
            _ = &mut stopped, if draining_until.is_none() => {
                draining_until = Some(MonoTime::now().saturating_add(Duration::from_secs(30)));
            }
            r = reader.next_batch(Duration::from_millis(50), &mut batch) => {
                r.map_err(|e| LabError::Measure(format!("reading probe events: {e}")))?;
                for record in batch.drain(..) {
                    if let Some(log) = records.as_mut() {
                        log.write(&record)?;
                    }
                    engine.on_connect(&record, &mut out);
                }
            }
            Some(event) = events.next() => engine.on_cluster(event, &mut out),
            _ = tick.tick() => {
                let now = MonoTime::now();
                engine.on_tick(now, &mut out);
                if let Some(feed) = feed.as_mut()
                    && now.saturating_since(last_fed) >= FEED_SNAPSHOT_EVERY
                {
                    feed.snapshot(&engine.snapshot(now));
                    last_fed = now;
                }
            }
        }
        if let Some(feed) = feed.as_mut() {
            feed.findings_in(&out);
        }
        handle(&mut probe, &mut out, &mut closed);
    }
    reader.finish(&mut batch);
    for record in batch.drain(..) {
        if let Some(log) = records.as_mut() {
            log.write(&record)?;
        }
        engine.on_connect(&record, &mut out);
    }
    if let Some(log) = records.as_mut() {
        log.flush()?;
    }
    let now = MonoTime::now();
    engine.finish(now, &mut out);
    if let Some(feed) = feed.as_mut() {
        feed.findings_in(&out);
        feed.snapshot(&engine.snapshot(now));
    }
    handle(&mut probe, &mut out, &mut closed);
    let recommendation = engine
        .recommendations()
        .iter()
        .map(|r| Recommendation {
            prestop_seconds: r.recommended_prestop_seconds,
            termination_grace_period_seconds: r.recommended_termination_grace_period_seconds,
        })
        .max_by_key(|r| r.prestop_seconds);
    let measurements = Measurements {
        pods: closed.iter().filter_map(to_measurement).collect(),
        recommendation,
    };
    Ok((measurements, closed))
}

/// The connect records a run was measured from, one JSON object a line
/// (`--keep-logs`).
struct RecordLog {
    path: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl RecordLog {
    fn create(path: &std::path::Path) -> Result<RecordLog> {
        let file = std::fs::File::create(path)
            .map_err(LabError::io(format!("creating {}", path.display())))?;
        Ok(RecordLog {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(file),
        })
    }

    fn write(&mut self, record: &crate::probe::ConnectRecord) -> Result<()> {
        use std::io::Write as _;
        let line = serde_json::to_string(record)
            .map_err(|e| LabError::Measure(format!("encoding a record: {e}")))?;
        writeln!(self.out, "{line}")
            .map_err(LabError::io(format!("writing {}", self.path.display())))
    }

    fn flush(&mut self) -> Result<()> {
        use std::io::Write as _;
        self.out
            .flush()
            .map_err(LabError::io(format!("writing {}", self.path.display())))
    }
}

fn to_measurement(t: &PodTermination) -> Option<PodMeasurement> {
    Some(PodMeasurement {
        pod: t.pod.clone(),
        ip: *t.ips.first()?,
        // The gap ends at the ingress's last choice; the last send
        // includes its retries.
        measured_gap_ms: t.propagation_gap_ns.map(|ns| ns as f64 / 1e6),
        measured_last_send_ms: t
            .last_send
            .map(|last| last.signed_since(t.deletion_seen) as f64 / 1e6),
        failures: t.failures,
    })
}
