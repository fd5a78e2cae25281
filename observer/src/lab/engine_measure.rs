//! The agent's own pipeline as a lab measurement: the kernel probe and the
//! kube watchers feed the correlation engine, which asks for pod IPs to be
//! watched and closes one termination record per pod. What the lab checks
//! against its truth is then exactly what `observer` reports on a node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::connectors::{ConnectorsByPod, TerminationConnectors};
use super::measure::{LabContext, LabMeasure, Measurements, PodMeasurement};
use super::report::Recommendation;
use super::scenario::EXTERNAL_LB_NAME;
use super::{LabError, Result};
use crate::agent::{EngineLoop, Input, Sink, SinkError, StateSink};
use crate::clock::MonoTime;
use crate::cluster::{WatchConfig, WatchCounters, stamped_events};
use crate::connector::CgroupResolver;
use crate::engine::arrivals::{ExternalSender, SenderKind};
use crate::engine::{Engine, EngineConfig, Output, PodTermination};
use crate::export::AgentState;
use crate::probe::Probe;

/// What the engine task hands back: the measurements and every closed
/// termination (for its connectors).
type Finished = (Measurements, Vec<PodTermination>);

/// Runs [`Engine`] on the probe's records and the watchers' events.
pub struct EngineMeasure {
    config: EngineConfig,
    /// Every closed termination's connectors, once finished.
    connectors: ConnectorsByPod,
    /// Shared with a TUI that follows the run (`observer lab --tui`).
    state: Option<AgentState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<Finished>>>,
    /// Reads the watches and stamps their events, apart from the engine.
    watchers: Option<JoinHandle<()>>,
    /// The lab's traffic comes from a load balancer outside the cluster.
    external: bool,
    /// The ingress sends through a ClusterIP.
    via_service: bool,
}

impl EngineMeasure {
    pub fn new(config: EngineConfig) -> EngineMeasure {
        EngineMeasure {
            config,
            connectors: ConnectorsByPod::new(),
            state: None,
            stop: None,
            task: None,
            watchers: None,
            external: false,
            via_service: false,
        }
    }

    /// Also publishes the engine's state to `state`, which a TUI can follow
    /// (`observer lab --tui`).
    pub fn with_state(config: EngineConfig, state: AgentState) -> EngineMeasure {
        EngineMeasure {
            state: Some(state),
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
            &ctx.kube,
            &WatchConfig::default(),
            Arc::new(WatchCounters::default()),
        );
        // The watchers run on a task of their own, as in the agent: an
        // event is stamped when it is read off the watch, so a loop busy
        // with the probe's records must not delay its reading (a late
        // deletion_seen would leave out what happened just after it).
        let (event_tx, event_rx) = tokio::sync::mpsc::unbounded_channel();
        self.watchers = Some(tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                if event_tx.send(event).is_err() {
                    break;
                }
            }
        }));
        let events = tokio_stream_from(event_rx);
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        // The ingress is found as on a node: by its pod's labels, among
        // the pods of the lab's node.
        self.config.ingress.node = Some(ctx.node_name.clone());
        // A load balancer outside the cluster: its address is named, and
        // its own sockets (on this machine only because the lab is one
        // machine) are no node's to see.
        let foreign_cgroup = ctx.external_lb.map(|ip| {
            self.config.external_senders.push(ExternalSender {
                network: ip,
                prefix: if ip.is_ipv4() { 32 } else { 128 },
                name: EXTERNAL_LB_NAME.into(),
            });
            ctx.ingress_pod.cgroup_id
        });
        self.external = ctx.external_lb.is_some();
        self.via_service = ctx.via_service;
        let closed = Arc::new(Mutex::new(Vec::new()));
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(ClosedTerminations(closed.clone()))];
        if let Some(path) = &ctx.records {
            sinks.push(Box::new(RecordLog::create(path)?));
        }
        if let Some(state) = self.state.take() {
            sinks.push(Box::new(StateSink::new(state)));
        }
        let engine_loop = EngineLoop::new(Engine::new(self.config.clone()), sinks);
        self.task = Some(tokio::spawn(drive(
            engine_loop,
            probe,
            reader,
            events,
            stopped,
            closed,
            Sources {
                foreign_cgroup,
                external: self.external,
                via_service: self.via_service,
            },
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
        let finished = self
            .task
            .take()
            .ok_or_else(|| LabError::Measure("finish before start".into()))?
            .await;
        if let Some(watchers) = self.watchers.take() {
            watchers.abort();
        }
        let (measurements, closed) =
            finished.map_err(|e| LabError::Measure(format!("engine task: {e}")))??;
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

/// Keeps every closed termination, for the measurements and connectors.
struct ClosedTerminations(Arc<Mutex<Vec<PodTermination>>>);

impl Sink for ClosedTerminations {
    fn output(&mut self, output: &Output) -> std::result::Result<(), SinkError> {
        if let Output::TerminationClosed(termination) = output {
            match self.0.lock() {
                Ok(mut closed) => closed.push(termination.clone()),
                Err(poisoned) => poisoned.into_inner().push(termination.clone()),
            }
        }
        Ok(())
    }
}

fn measure_error(error: SinkError) -> LabError {
    LabError::Measure(error.to_string())
}

/// The receiving end of a channel as a stream.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Where the lab's traffic comes from, as the measurement may know it.
#[derive(Clone, Copy, Debug)]
struct Sources {
    /// The cgroup of a sender outside the cluster: its sockets' records
    /// never reach the engine (the receiving side's do).
    foreign_cgroup: Option<u64>,
    /// The lab's traffic comes from a load balancer outside the cluster.
    external: bool,
    /// The ingress sends through a ClusterIP: only the pods see where.
    via_service: bool,
}

async fn drive(
    mut engine_loop: EngineLoop,
    mut probe: Probe,
    mut reader: crate::probe::EventReader,
    events: impl futures::Stream<Item = crate::cluster::StampedEvent> + Send + 'static,
    mut stopped: oneshot::Receiver<()>,
    closed: Arc<Mutex<Vec<PodTermination>>>,
    sources: Sources,
) -> Result<Finished> {
    let seen = |record: &crate::probe::ConnectRecord| {
        record.is_arrival() || sources.foreign_cgroup != Some(record.cgroup_id)
    };
    futures::pin_mut!(events);
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // After the stop request, keep measuring until every window has closed
    // on its own (bounded): windows closed at shutdown feed no
    // recommendation.
    let mut draining_until: Option<MonoTime> = None;
    loop {
        if let Some(deadline) = draining_until {
            let now = MonoTime::now();
            if engine_loop.engine().snapshot(now).open.is_empty() || now >= deadline {
                break;
            }
        }
        tokio::select! {
            _ = &mut stopped, if draining_until.is_none() => {
                draining_until = Some(MonoTime::now().saturating_add(Duration::from_secs(30)));
            }
            r = reader.next_batch(Duration::from_millis(50), &mut batch) => {
                r.map_err(|e| LabError::Measure(format!("reading probe events: {e}")))?;
                for record in batch.drain(..).filter(|r| seen(r)) {
                    engine_loop
                        .feed(Input::Connect(record), Some(&mut probe))
                        .map_err(measure_error)?;
                }
            }
            Some(event) = events.next() => {
                engine_loop.feed(Input::Cluster(event), Some(&mut probe)).map_err(measure_error)?;
            }
            _ = tick.tick() => {
                engine_loop.feed(Input::Tick(MonoTime::now()), Some(&mut probe)).map_err(measure_error)?;
            }
        }
    }
    reader.finish(&mut batch);
    for record in batch.drain(..).filter(|r| seen(r)) {
        engine_loop
            .feed(Input::Connect(record), Some(&mut probe))
            .map_err(measure_error)?;
    }
    engine_loop
        .finish(MonoTime::now(), Some(&mut probe))
        .map_err(measure_error)?;
    let recommendation = engine_loop
        .engine()
        .recommendations()
        .iter()
        .map(|r| Recommendation {
            prestop_seconds: r.recommended_prestop_seconds,
            termination_grace_period_seconds: r.recommended_termination_grace_period_seconds,
        })
        .max_by_key(|r| r.prestop_seconds);
    let closed = match closed.lock() {
        Ok(mut closed) => std::mem::take(&mut *closed),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let measurements = Measurements {
        pods: closed
            .iter()
            .filter_map(|t| to_measurement(t, sources))
            .collect(),
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
}

impl Sink for RecordLog {
    fn input(&mut self, input: &Input) -> std::result::Result<(), SinkError> {
        use std::io::Write as _;
        let Input::Connect(record) = input else {
            return Ok(());
        };
        let line = serde_json::to_string(record)
            .map_err(|e| SinkError::new("encoding a connect record", e))?;
        writeln!(self.out, "{line}")
            .map_err(|e| SinkError::new(format!("writing {}", self.path.display()), e))
    }

    fn flush(&mut self) -> std::result::Result<(), SinkError> {
        use std::io::Write as _;
        self.out
            .flush()
            .map_err(|e| SinkError::new(format!("writing {}", self.path.display()), e))
    }
}

fn to_measurement(t: &PodTermination, sources: Sources) -> Option<PodMeasurement> {
    let external = sources.external;
    let ms = |ns: i64| ns as f64 / 1e6;
    // The lab's traffic as it landed on the pod: the ingress's, or the
    // external load balancer's.
    let lab_sender = t.destination.as_ref().map(|view| {
        view.senders
            .iter()
            .find(|s| {
                if external {
                    s.kind == SenderKind::External && s.name == EXTERNAL_LB_NAME
                } else {
                    s.kind == SenderKind::Ingress
                }
            })
            .and_then(|s| s.arrival_gap_ns)
            .unwrap_or(0)
    });
    Some(PodMeasurement {
        pod: t.pod.clone(),
        ip: *t.ips.first()?,
        // The gap ends at the ingress's last choice; the last send
        // includes its retries. With no ingress, the load balancer's last
        // arrival at the pod is the gap (it retries nothing); through a
        // ClusterIP only the pod saw the ingress's choices.
        measured_gap_ms: if external || sources.via_service {
            lab_sender.map(ms)
        } else {
            t.propagation_gap_ns.map(ms)
        },
        measured_last_arrival_ms: lab_sender.map(ms),
        views_apart_ms: t
            .destination
            .as_ref()
            .and_then(|v| v.views_apart_ns)
            .map(ms),
        measured_last_send_ms: t
            .last_send
            .map(|last| last.signed_since(t.deletion_seen) as f64 / 1e6),
        failures: t.failures,
        failures_retried: Some(t.failures_retried),
    })
}
