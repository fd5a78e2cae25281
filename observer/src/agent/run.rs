//! The live agent: probe and kube watchers in, engine in the middle,
//! NDJSON, metrics and the HTTP API out. Also `record` (the same sources,
//! written to a file) and `replay` (a file through the same engine).

use std::{
    fs::File,
    io::{BufReader, BufWriter, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::sync::mpsc;

use super::input::{Input, Recording, read_recording, write_ingress, write_input};
use crate::{
    clock::MonoTime,
    cluster::{self, ClientSource, WatchConfig, WatchCounters},
    connector::CgroupResolver,
    engine::{Engine, EngineConfig, IngressConfig, Output},
    export::{AgentState, HttpServer, Update},
    probe::{Probe, ProbeOptions},
    tui::feed::LocalFeed,
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Address of the HTTP port (metrics, health, API); `None` serves none.
    pub listen: Option<SocketAddr>,
    /// NDJSON output of closed terminations and findings; `-` is stdout.
    pub output: Option<PathBuf>,
    /// Also write every input to this recording (for `observer replay`).
    pub record: Option<PathBuf>,
    pub kube: ClientSource,
    pub watch: WatchConfig,
    pub engine: EngineConfig,
    pub probe: ProbeOptions,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// How often the engine is ticked and the snapshot refreshed.
    pub tick: Duration,
    /// The node's cgroup v2 hierarchy (connectors: which pod connected);
    /// `None` finds this system's mount.
    pub cgroup_root: Option<PathBuf>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            listen: None,
            output: None,
            record: None,
            kube: ClientSource::Infer,
            watch: WatchConfig::default(),
            engine: EngineConfig::default(),
            probe: ProbeOptions::default(),
            duration: None,
            tick: Duration::from_millis(250),
            cgroup_root: None,
        }
    }
}

/// Where the engine's outputs are written.
pub struct Sinks {
    ndjson: Option<Box<dyn Write + Send>>,
    recording: Option<BufWriter<File>>,
    pub state: AgentState,
}

fn open_output(path: &PathBuf) -> anyhow::Result<Box<dyn Write + Send>> {
    if path.as_os_str() == "-" {
        Ok(Box::new(std::io::stdout()))
    } else {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Box::new(BufWriter::new(file)))
    }
}

impl Sinks {
    pub fn new(
        state: AgentState,
        output: Option<&PathBuf>,
        record: Option<&PathBuf>,
    ) -> anyhow::Result<Sinks> {
        let ndjson = output.map(open_output).transpose()?;
        let recording = record
            .map(|path| {
                File::create(path)
                    .map(BufWriter::new)
                    .with_context(|| format!("creating recording {}", path.display()))
            })
            .transpose()?;
        Ok(Sinks {
            ndjson,
            recording,
            state,
        })
    }

    fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        if let Some(out) = self.ndjson.as_mut() {
            writeln!(out, "{line}").context("writing NDJSON output")?;
        }
        Ok(())
    }

    /// Starts the recording (if any) with the ingress configuration.
    pub fn record_ingress(&mut self, ingress: &IngressConfig) -> anyhow::Result<()> {
        if let Some(rec) = self.recording.as_mut() {
            write_ingress(rec, ingress)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(out) = self.ndjson.as_mut() {
            out.flush().context("flushing NDJSON output")?;
        }
        if let Some(rec) = self.recording.as_mut() {
            rec.flush().context("flushing the recording")?;
        }
        Ok(())
    }
}

/// Feeds one input to the engine and routes its outputs. `probe` receives
/// watch-map changes when present (live); replay has none.
pub fn process(
    engine: &mut Engine,
    input: Input,
    sinks: &mut Sinks,
    probe: Option<&mut Probe>,
    outputs: &mut Vec<Output>,
) -> anyhow::Result<()> {
    if let Some(rec) = sinks.recording.as_mut() {
        write_input(rec, &input)?;
    }
    match input {
        Input::Connect(record) => engine.on_connect(&record, outputs),
        Input::Cluster(event) => engine.on_cluster(event, outputs),
        Input::Tick(now) => engine.on_tick(now, outputs),
    }
    route(outputs, sinks, probe)
}

fn route(
    outputs: &mut Vec<Output>,
    sinks: &mut Sinks,
    mut probe: Option<&mut Probe>,
) -> anyhow::Result<()> {
    for output in outputs.drain(..) {
        match output {
            Output::Watch(ip) => {
                if let Some(probe) = probe.as_deref_mut()
                    && let Err(error) = probe.watch(ip)
                {
                    tracing::warn!(%ip, %error, "could not watch address");
                }
            }
            Output::Unwatch(ip) => {
                if let Some(probe) = probe.as_deref_mut()
                    && let Err(error) = probe.unwatch(ip)
                {
                    tracing::warn!(%ip, %error, "could not unwatch address");
                }
            }
            Output::TerminationOpened(_) => {}
            Output::TerminationClosed(termination) => {
                sinks.write_line(&Update::Termination(&termination).to_line())?;
                sinks.state.publish_termination(&termination);
            }
            Output::Finding(finding) => {
                sinks.write_line(&Update::Finding(&finding).to_line())?;
                sinks.state.publish_finding(&finding);
            }
        }
    }
    Ok(())
}

/// Like [`process`], also handing findings to an in-process TUI.
fn process_feeding(
    engine: &mut Engine,
    input: Input,
    sinks: &mut Sinks,
    probe: &mut Probe,
    outputs: &mut Vec<Output>,
    feed: &mut LocalFeed,
) -> anyhow::Result<()> {
    if let Some(rec) = sinks.recording.as_mut() {
        write_input(rec, &input)?;
    }
    if let Input::Connect(record) = &input {
        engine.on_connect(record, outputs);
    }
    feed.findings_in(outputs);
    route(outputs, sinks, Some(probe))
}

/// Closes every open window and writes what remains.
pub fn finish(
    engine: &mut Engine,
    now: MonoTime,
    sinks: &mut Sinks,
    probe: Option<&mut Probe>,
) -> anyhow::Result<()> {
    let mut outputs = Vec::new();
    engine.finish(now, &mut outputs);
    route(&mut outputs, sinks, probe)?;
    sinks.state.set_snapshot(engine.snapshot(now));
    sinks.flush()
}

/// `observer replay FILE`: the recording through the engine, NDJSON out.
/// The recording's own ingress configuration is used unless
/// `ingress_from_flags` (the user named the ingress on the command line).
pub fn replay(
    recording: &PathBuf,
    output: Option<&PathBuf>,
    mut config: EngineConfig,
    ingress_from_flags: bool,
) -> anyhow::Result<()> {
    let file = File::open(recording).with_context(|| format!("opening {}", recording.display()))?;
    let Recording { ingress, inputs } = read_recording(BufReader::new(file))
        .with_context(|| format!("reading {}", recording.display()))?;
    if let Some(recorded) = ingress
        && !ingress_from_flags
    {
        config.ingress = recorded;
    }
    let mut engine = Engine::new(config);
    let stdout = PathBuf::from("-");
    let mut sinks = Sinks::new(
        AgentState::new(engine.snapshot(MonoTime(0))),
        Some(output.unwrap_or(&stdout)),
        None,
    )?;
    let mut last = MonoTime(0);
    let mut outputs = Vec::new();
    for input in inputs {
        last = last.max(input_time(&input));
        process(&mut engine, input, &mut sinks, None, &mut outputs)?;
    }
    finish(&mut engine, last, &mut sinks, None)
}

fn input_time(input: &Input) -> MonoTime {
    match input {
        Input::Connect(record) => record.ts,
        Input::Cluster(event) => event.at,
        Input::Tick(t) => *t,
    }
}

/// Starts the sources: the probe reader and (when a client is configured)
/// the kube watchers, both feeding `tx`.
async fn start_sources(
    options: &AgentOptions,
    probe: &mut Probe,
    tx: mpsc::Sender<Vec<Input>>,
) -> anyhow::Result<Option<Arc<WatchCounters>>> {
    let mut reader = probe.event_reader()?;
    let resolver = match &options.cgroup_root {
        Some(root) => Ok(CgroupResolver::at(root)),
        None => CgroupResolver::discover(),
    };
    match resolver {
        Ok(resolver) => {
            tracing::info!(root = %resolver.root().display(), "connectors from the cgroup hierarchy");
            reader.resolve_connectors(resolver);
        }
        Err(error) => tracing::warn!(
            %error,
            "pods cannot be told apart: only --ingress-comm processes count as the ingress"
        ),
    }
    let probe_tx = tx.clone();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        loop {
            if let Err(error) = reader
                .next_batch(Duration::from_millis(100), &mut batch)
                .await
            {
                tracing::error!(%error, "reading probe events stopped");
                return;
            }
            if batch.is_empty() {
                continue;
            }
            // A batch a message: one hand-off to the engine's loop per
            // read of the ring, not one per record.
            let inputs = batch.drain(..).map(Input::Connect).collect();
            if probe_tx.send(inputs).await.is_err() {
                return;
            }
        }
    });
    let client = cluster::connect(&options.kube)
        .await
        .context("connecting to Kubernetes")?;
    let Some(client) = client else {
        tracing::warn!("no Kubernetes configuration found: tracing only, pods show as unknown");
        return Ok(None);
    };
    let counters = Arc::new(WatchCounters::default());
    let mut events = Box::pin(cluster::stamped_events(
        &client,
        &options.watch,
        counters.clone(),
    ));
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if tx.send(vec![Input::Cluster(event)]).await.is_err() {
                return;
            }
        }
    });
    Ok(Some(counters))
}

/// Said once: without an ingress, no gap is measured here, and the
/// kubelet's probes must not be mistaken for one.
fn warn_no_ingress(config: &IngressConfig) {
    tracing::warn!(
        node = config.node.as_deref().unwrap_or("(any: NODE_NAME not set)"),
        selectors = %config.selectors.join(" | "),
        "no ingress found on this node: no propagation gap will be measured here (other \
         connectors are still reported). If an ingress runs here, pass --ingress-selector with \
         its pods' labels (and watch its namespace), or --ingress-comm for a host process"
    );
}

/// `observer agent`: runs until SIGTERM/SIGINT (or `duration`), then
/// detaches the probe, flushes its outputs and returns.
pub async fn run_agent(
    options: AgentOptions,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    mut feed: Option<LocalFeed>,
) -> anyhow::Result<()> {
    let mut probe = Probe::load(&options.probe).context("cannot start the probe")?;
    probe.forward_kernel_logs();
    let mut engine = Engine::new(options.engine.clone());
    let state = AgentState::new(engine.snapshot(MonoTime::now()));
    state.set_probe_attached(true);
    state.with_metrics(|m| m.set_sync_failure_hook(probe.sync_failure_hook()));
    let http = match options.listen {
        Some(addr) => Some(HttpServer::start(addr, Arc::new(state.clone())).await?),
        None => None,
    };
    if let Some(server) = &http {
        tracing::info!(addr = %server.local_addr, "serving /metrics and /api/v1");
    }
    let mut sinks = Sinks::new(
        state.clone(),
        options.output.as_ref(),
        options.record.as_ref(),
    )?;
    sinks.record_ingress(&options.engine.ingress)?;
    let (tx, mut rx) = mpsc::channel::<Vec<Input>>(4_096);
    let watch_counters = start_sources(&options, &mut probe, tx).await?;
    if watch_counters.is_none() {
        state.set_not_ready(None);
    }
    if let (Some(tx), Some(server)) = (ready, &http) {
        let _ = tx.send(server.local_addr);
    }
    let deadline = options.duration.map(|d| MonoTime::now().saturating_add(d));
    // Both streams live for the whole loop: a `ctrl_c()` future made anew
    // each turn would miss a SIGINT that arrives while the loop is busy
    // with events, and the agent would not stop.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(options.tick);
    let mut outputs = Vec::new();
    let mut processed = 0u64;
    let mut ingress_warned = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            inputs = rx.recv() => {
                let Some(inputs) = inputs else { break };
                for input in inputs {
                    processed += 1;
                    if let (Some(feed), Input::Connect(_)) = (feed.as_mut(), &input) {
                        process_feeding(&mut engine, input, &mut sinks, &mut probe, &mut outputs, feed)?;
                    } else {
                        process(&mut engine, input, &mut sinks, Some(&mut probe), &mut outputs)?;
                    }
                }
            }
            _ = tick.tick() => {
                let now = MonoTime::now();
                process(&mut engine, Input::Tick(now), &mut sinks, Some(&mut probe), &mut outputs)?;
                let snapshot = engine.snapshot(now);
                if let Some(feed) = feed.as_mut() {
                    feed.snapshot(&snapshot);
                    if feed.is_closed() {
                        break;
                    }
                }
                state.set_snapshot(snapshot);
                let (restarts, errors, synced) = match &watch_counters {
                    Some(c) => {
                        let (p, s) = (c.pods.snapshot(), c.endpoint_slices.snapshot());
                        (p.restarts + s.restarts, p.errors + s.errors, engine.model().is_synced())
                    }
                    None => (0, 0, true),
                };
                state.with_metrics(|m| {
                    m.add_events(processed);
                    m.set_health(probe.counters().ok(), restarts, errors);
                });
                processed = 0;
                state.set_not_ready((!synced).then(|| "Kubernetes watches not listed yet".to_string()));
                if synced && !ingress_warned && !engine.ingress_status().found() {
                    ingress_warned = true;
                    warn_no_ingress(&options.engine.ingress);
                }
                sinks.flush()?;
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
            }
        }
    }
    tracing::info!("stopping: flushing measurements");
    finish(&mut engine, MonoTime::now(), &mut sinks, Some(&mut probe))?;
    drop(probe);
    if let Some(server) = http {
        server.shutdown().await;
    }
    Ok(())
}
