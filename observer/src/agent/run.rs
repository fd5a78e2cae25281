//! The live agent: probe and kube watchers in, engine in the middle,
//! NDJSON, metrics and the HTTP API out. Also `record` (the same sources,
//! written to a file) and `replay` (a file through the same engine).

use std::{fs::File, io::BufReader, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::engine_loop::{EngineLoop, Sink};
use super::input::{Input, Recording, read_recording};
use super::sinks::{NdjsonSink, RecordingSink, StateSink};
use super::watch_feed::feed_watch_events;
use crate::{
    clock::MonoTime,
    cluster::{self, ClientSource, ScopeNow, WatchConfig, WatchCounters},
    connector::CgroupResolver,
    engine::{Engine, EngineConfig, IngressConfig},
    export::watch_metrics::WatchReport,
    export::{AgentState, HttpConfig, HttpServer},
    probe::{Probe, ProbeOptions},
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Addresses of the HTTP port (metrics, health, API); empty serves
    /// none.
    pub listen: Vec<SocketAddr>,
    /// The HTTP server's limits and token.
    pub http: HttpConfig,
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
    /// How often the engine is ticked and the snapshot refreshed while it
    /// has a window open or an address watched (once a second otherwise).
    pub tick: Duration,
    /// The node's cgroup v2 hierarchy (connectors: which pod connected);
    /// `None` finds this system's mount.
    pub cgroup_root: Option<PathBuf>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            listen: Vec::new(),
            http: HttpConfig::default(),
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
    let stdout = PathBuf::from("-");
    let ndjson = NdjsonSink::create(output.unwrap_or(&stdout))?;
    let mut engine_loop = EngineLoop::new(Engine::new(config), vec![Box::new(ndjson)]);
    let mut last = MonoTime(0);
    for input in inputs {
        last = last.max(input_time(&input));
        engine_loop.feed(input, None)?;
    }
    engine_loop.finish(last, None)?;
    Ok(())
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
    match options.watch.pod_scope.node() {
        Some(node) => tracing::info!(
            node,
            "watching this node's pods (every pod once an ingress runs here) and every \
             EndpointSlice"
        ),
        None => tracing::info!("watching every pod and every EndpointSlice"),
    }
    // What the watches have ready goes to the engine's loop in one
    // message: a gathered batch of slice changes is then one wake-up of
    // the loop, not one per change. Each event is still stamped as the
    // watch yields it.
    feed_watch_events(&client, &options.watch, counters.clone(), tx)
        .context("starting the watches' thread")?;
    Ok(Some(counters))
}

/// The watches for `/metrics`: the Pod watch's scope follows its widening.
fn watch_reports(counters: &WatchCounters, watch: &WatchConfig) -> [WatchReport; 2] {
    let whole = if watch.namespace.is_some() {
        "namespace"
    } else {
        "cluster"
    };
    let pods = match counters.pod_scope.get() {
        ScopeNow::Node => "node",
        ScopeNow::Cluster => whole,
    };
    [
        WatchReport {
            resource: "pods",
            scope: pods,
            counts: counters.pods.snapshot(),
            socket_parks: 0,
        },
        WatchReport {
            resource: "endpointslices",
            scope: whole,
            counts: counters.endpoint_slices.snapshot(),
            socket_parks: counters
                .slice_socket_parks
                .load(std::sync::atomic::Ordering::Relaxed),
        },
    ]
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

/// `observer agent`: runs until SIGTERM/SIGINT, `duration`, or a stop
/// requested through `state` (an in-process TUI that quit), then detaches
/// the probe, flushes its outputs and returns. `state` is what the HTTP API
/// serves and an in-process TUI follows.
pub async fn run_agent(options: AgentOptions, state: AgentState) -> anyhow::Result<()> {
    let mut probe = Probe::load(&options.probe).context("cannot start the probe")?;
    probe.forward_kernel_logs();
    let engine = Engine::new(options.engine.clone());
    state.set_snapshot(engine.snapshot(MonoTime::now()));
    state.set_probe_attached(true);
    state.with_metrics(|m| m.set_sync_failure_hook(probe.sync_failure_hook()));
    let http = if options.listen.is_empty() {
        None
    } else {
        let server = HttpServer::start(
            &options.listen,
            Arc::new(state.clone()),
            options.http.clone(),
        )
        .await?;
        tracing::info!(
            addrs = ?server.local_addrs,
            token = options.http.token.is_some(),
            max_connections = options.http.limits.max_connections,
            "serving /metrics and /api/v1"
        );
        Some(server)
    };
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(StateSink::new(state.clone()))];
    if let Some(path) = &options.output {
        sinks.push(Box::new(NdjsonSink::create(path)?));
    }
    if let Some(path) = &options.record {
        sinks.push(Box::new(RecordingSink::create(
            path,
            &options.engine.ingress,
        )?));
    }
    let mut engine_loop = EngineLoop::new(engine, sinks);
    let (tx, mut rx) = mpsc::channel::<Vec<Input>>(4_096);
    let watch_counters = start_sources(&options, &mut probe, tx).await?;
    if watch_counters.is_none() {
        state.set_not_ready(None);
    }
    let deadline = options.duration.map(|d| MonoTime::now().saturating_add(d));
    // Both streams live for the whole loop: a `ctrl_c()` future made anew
    // each turn would miss a SIGINT that arrives while the loop is busy
    // with events, and the agent would not stop.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut stop_requested = state.stop_requested();
    let next_tick = tokio::time::sleep(options.tick);
    tokio::pin!(next_tick);
    let mut processed = 0u64;
    let mut ingress_warned = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = stop_requested.changed() => break,
            inputs = rx.recv() => {
                let Some(inputs) = inputs else { break };
                for input in inputs {
                    processed += 1;
                    engine_loop.feed(input, Some(&mut probe))?;
                }
            }
            () = &mut next_tick => {
                let now = MonoTime::now();
                engine_loop.feed(Input::Tick(now), Some(&mut probe))?;
                next_tick
                    .as_mut()
                    .reset(tokio::time::Instant::now() + engine_loop.next_tick_in(now, options.tick));
                let engine = engine_loop.engine();
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
                    if let Some(counters) = &watch_counters {
                        m.set_watches(&watch_reports(counters, &options.watch));
                    }
                });
                processed = 0;
                state.set_not_ready((!synced).then(|| "Kubernetes watches not listed yet".to_string()));
                if synced && !ingress_warned && !engine.ingress_status().found() {
                    ingress_warned = true;
                    warn_no_ingress(&options.engine.ingress);
                }
                engine_loop.flush()?;
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
            }
        }
    }
    tracing::info!("stopping: flushing measurements");
    engine_loop.finish(MonoTime::now(), Some(&mut probe))?;
    drop(probe);
    if let Some(server) = http {
        server.shutdown().await;
    }
    Ok(())
}
