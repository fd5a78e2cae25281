//! The agent side of the soak, in its own process: the real watchers
//! (kube-rs over HTTP to the simulator) and `agent::EngineLoop` with the
//! NDJSON sink, as `observer agent` runs them, plus a steady synthetic
//! connect load in place of the probe. It stops when its stdin closes,
//! closing every open window as the agent does on SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use observer::agent::{EngineLoop, Input, NdjsonSink, Sink, feed_watch_events};
use observer::clock::MonoTime;
use observer::cluster::{self, ClientSource, PodScope, WatchConfig, WatchCounters};
use observer::engine::{Engine, EngineConfig, IngressConfig};
use observer::probe::decode::{ConnectRecord, FailureClass, Outcome};
use tokio::sync::mpsc;

use super::churn::PORT;

pub const INGRESS_COMM: &str = "soak-ingress";
const TICK: Duration = Duration::from_millis(250);
/// Per tick: connects to watched addresses (terminating and starting
/// pods) and to ready pods: 1 000 connects a second in all.
const WATCHED_PER_TICK: usize = 50;
const READY_PER_TICK: usize = 200;
/// How often the list of ready pods' addresses is refreshed from the model.
const READY_REFRESH_TICKS: u64 = 20;

/// Synthetic connects from the ingress: watched addresses get SYNs that
/// succeed, one in five refused; ready pods get successes.
struct Load {
    rng: u64,
    port: u16,
    ready: Vec<IpAddr>,
}

impl Load {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn connect(&mut self, dst: IpAddr, watched: bool, refused: bool) -> ConnectRecord {
        self.port = self.port.wrapping_add(1).max(32_768);
        let now = MonoTime::now();
        ConnectRecord {
            ts: now,
            syn: Some(now),
            src: SocketAddr::new([10, 0, 0, 1].into(), self.port),
            dst: SocketAddr::new(dst, PORT),
            pid: 4242,
            tid: 4242,
            comm: INGRESS_COMM.into(),
            cgroup_id: 1,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched,
            outcome: if refused {
                Outcome::Failed {
                    class: FailureClass::Refused,
                    errno: 111,
                    waited_ns: 50_000,
                    synchronous: false,
                }
            } else {
                Outcome::Established { latency_ns: 80_000 }
            },
        }
    }

    fn tick(&mut self, engine: &Engine, refresh: bool, out: &mut Vec<Input>) {
        if refresh {
            self.ready = engine
                .model()
                .pods()
                .filter(|p| p.removal.is_none() && p.deletion.is_none() && p.ready == Some(true))
                .flat_map(|p| p.ips.iter().copied())
                .collect();
        }
        let watched: Vec<IpAddr> = engine.watched().copied().collect();
        if !watched.is_empty() {
            for _ in 0..WATCHED_PER_TICK {
                let pick = (self.next() % watched.len() as u64) as usize;
                let dst = watched[pick];
                let refused = self.next().is_multiple_of(5);
                out.push(Input::Connect(self.connect(dst, true, refused)));
            }
        }
        if !self.ready.is_empty() {
            for _ in 0..READY_PER_TICK {
                let pick = (self.next() % self.ready.len() as u64) as usize;
                let dst = self.ready[pick];
                out.push(Input::Connect(self.connect(dst, false, false)));
            }
        }
    }
}

/// Runs the agent until stdin closes. Prints `synced` on stdout once both
/// watches have listed, and `done <connects>` at the end. With `node`, it
/// is the agent of a node without an ingress: it watches that node's pods
/// (and every EndpointSlice) and no ingress connects.
pub fn run(kubeconfig: PathBuf, output: PathBuf, node: Option<String>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(agent(kubeconfig, output, node))
}

async fn agent(kubeconfig: PathBuf, output: PathBuf, node: Option<String>) -> anyhow::Result<()> {
    let client = cluster::connect(&ClientSource::Kubeconfig(kubeconfig))
        .await?
        .context("no client")?;
    let config = EngineConfig {
        ingress: IngressConfig {
            comms: if node.is_some() {
                Vec::new()
            } else {
                vec![INGRESS_COMM.into()]
            },
            node: node.clone(),
            ..IngressConfig::default()
        },
        ..EngineConfig::default()
    };
    let watch = WatchConfig {
        pod_scope: match &node {
            Some(node) => PodScope::Node(node.clone()),
            None => PodScope::Cluster,
        },
        ..WatchConfig::default()
    };
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(NdjsonSink::create(&output)?)];
    let mut engine_loop = EngineLoop::new(Engine::new(config), sinks);
    let counters = Arc::new(WatchCounters::default());
    // The watchers are fed to the engine's loop as in the agent: a node
    // agent's on a thread of their own, in batches of what is ready.
    let (tx, mut rx) = mpsc::channel::<Vec<Input>>(4_096);
    feed_watch_events(&client, &watch, counters.clone(), tx).context("starting the watches")?;
    // Stdin is read on a thread of its own: its end is the signal to stop.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if line.is_err() {
                break;
            }
        }
        let _ = stop_tx.send(());
    });
    // Ticked as `observer agent` ticks: every TICK while the engine has a
    // window open or an address watched, once a second otherwise. The
    // ingress node's agent keeps TICK: its synthetic load comes per tick.
    let next_tick = tokio::time::sleep(TICK);
    tokio::pin!(next_tick);
    let mut load = Load {
        // Each ingress agent its own sequence: two ingress nodes do not
        // send the same connects. (Never zero: a pid is below 2^22.)
        rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
        port: 32_768,
        ready: Vec::new(),
    };
    let mut synced = false;
    let mut ticks = 0u64;
    let mut connects = 0u64;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            inputs = rx.recv() => {
                let Some(inputs) = inputs else { break };
                for input in inputs {
                    engine_loop.feed(input, None)?;
                }
            }
            () = &mut next_tick => {
                ticks += 1;
                if synced && node.is_none() {
                    load.tick(engine_loop.engine(), ticks % READY_REFRESH_TICKS == 1, &mut batch);
                    for input in batch.drain(..) {
                        connects += 1;
                        engine_loop.feed(input, None)?;
                    }
                }
                let now = MonoTime::now();
                engine_loop.feed(Input::Tick(now), None)?;
                let period = match node {
                    Some(_) => engine_loop.next_tick_in(now, TICK),
                    None => TICK,
                };
                next_tick.as_mut().reset(tokio::time::Instant::now() + period);
                engine_loop.flush()?;
                if !synced && engine_loop.engine().model().is_synced() {
                    synced = true;
                    println!("synced");
                }
            }
        }
    }
    engine_loop.finish(MonoTime::now(), None)?;
    let pods = counters.pods.snapshot();
    let slices = counters.endpoint_slices.snapshot();
    let sizes = engine_loop.engine().model().stats();
    println!(
        "done connects={connects} pod_lists={} slice_lists={} pod_restarts={} slice_restarts={} watch_errors={} model={sizes:?}",
        pods.lists,
        slices.lists,
        pods.restarts,
        slices.restarts,
        pods.errors + slices.errors
    );
    Ok(())
}
