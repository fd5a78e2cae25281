//! Run by `cargo xtask bench soak` (release build): the agent's watchers
//! and engine loop at cluster scale for a bounded time, against the API
//! simulator in another process.
//!
//! This process is the simulator: 10 000 pods in 2 000 EndpointSlices
//! across 200 Services, 500 pod terminations a minute with IP reuse, and a
//! watch fault every 30 s (dropped streams; refused reconnects for 2 s;
//! refused reconnects with the history compacted meanwhile, so the watchers
//! resume into 410 Gone and relist). The agent is this same program run
//! again with `--agent` (`agent.rs`): the real kube-rs watchers over HTTP
//! and `agent::EngineLoop`, fed a steady synthetic connect load. Its
//! resident memory and CPU time are read from /proc/<pid>, so they are the
//! agent's alone.
//!
//! Afterwards every termination the simulator made must be in the agent's
//! output exactly once, with its transitions in the simulator's order.
//! Exit code 2: the run finished but a check failed (the table is still
//! printed).
//!
//! `--minutes N` sets the length of the churn (default 3). With
//! `SOAK_KEEP=FILE` the agent's output is kept in FILE and the simulator's
//! log beside it (`FILE` with the extension `.log`).

mod agent;
mod churn;
mod merged;
mod proc;
mod report;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use observer_sim::{SimConfig, SimServer};

use churn::Churn;
use proc::Usage;

const TERMINATION_EVERY: Duration = Duration::from_millis(120);
const FAULT_EVERY: Duration = Duration::from_secs(30);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Ingress nodes: each runs an agent that watches every pod and sends the
/// synthetic connect load (its own). The first one's figures fill the
/// table's agent rows; the others' get a row each.
const INGRESS_NODES: usize = 2;
/// After the last termination: the engine's quiet period (10 s) and a
/// margin, so that windows close on their own before the agent stops.
const SETTLE: Duration = Duration::from_secs(13);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--agent") {
        let (Some(kubeconfig), Some(output)) = (args.get(2), args.get(3)) else {
            anyhow::bail!("usage: bench_soak --agent KUBECONFIG OUTPUT [--node NAME]");
        };
        let node = (args.get(4).map(String::as_str) == Some("--node"))
            .then(|| args.get(5).cloned())
            .flatten();
        return agent::run(kubeconfig.into(), output.into(), node);
    }
    let number = |flag: &str, default: f64| -> anyhow::Result<f64> {
        match args.iter().position(|a| a == flag) {
            Some(i) => args
                .get(i + 1)
                .and_then(|m| m.parse().ok())
                .with_context(|| format!("{flag} takes a number")),
            None => Ok(default),
        }
    };
    let minutes = number("--minutes", 3.0)?;
    let shape = Shape {
        nodes: number("--nodes", 50.0)? as usize,
        node_agents: number("--node-agents", 0.0)? as usize,
    };
    anyhow::ensure!(shape.nodes >= 1, "--nodes takes at least 1");
    anyhow::ensure!(
        shape.node_agents <= shape.nodes,
        "--node-agents is at most --nodes"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let passed = runtime.block_on(soak(Duration::from_secs_f64(minutes * 60.0), shape))?;
    if !passed {
        std::process::exit(2);
    }
    Ok(())
}

/// How the cluster is laid out: pods spread over `nodes`, and how many of
/// those nodes (without an ingress) get an agent of their own beside the
/// ingress node's.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub nodes: usize,
    pub node_agents: usize,
}

/// One agent process and its stdout lines.
struct AgentProcess {
    child: std::process::Child,
    pid: u32,
    lines: mpsc::Receiver<String>,
    output: std::path::PathBuf,
}

impl AgentProcess {
    fn spawn(
        kubeconfig: &std::path::Path,
        output: std::path::PathBuf,
        node: Option<&str>,
    ) -> anyhow::Result<AgentProcess> {
        let mut command = Command::new(std::env::current_exe().context("own path")?);
        command.arg("--agent").arg(kubeconfig).arg(&output);
        if let Some(node) = node {
            command.args(["--node", node]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting an agent process")?;
        let pid = child.id();
        let child_out = child.stdout.take().context("agent stdout")?;
        let (lines_tx, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(child_out).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(AgentProcess {
            child,
            pid,
            lines,
            output,
        })
    }

    /// Waits for the agent's `synced` line.
    async fn synced(&self) -> anyhow::Result<()> {
        let spawned = Instant::now();
        loop {
            match self.lines.try_recv() {
                Ok(line) if line == "synced" => return Ok(()),
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) => {
                    anyhow::ensure!(
                        spawned.elapsed() < Duration::from_secs(300),
                        "an agent did not list within 5 minutes"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => anyhow::bail!("an agent exited early"),
            }
        }
    }

    /// Stops it (closing stdin), and returns its `done` line and output.
    fn stop(mut self) -> anyhow::Result<(String, String)> {
        drop(self.child.stdin.take());
        let status = self.child.wait().context("waiting for an agent")?;
        anyhow::ensure!(status.success(), "an agent failed: {status}");
        let summary = self
            .lines
            .try_iter()
            .find(|l| l.starts_with("done"))
            .unwrap_or_default();
        let text = std::fs::read_to_string(&self.output).context("an agent's output")?;
        Ok((summary, text))
    }
}

/// What happened during the run, for the report.
pub struct Run {
    pub churn: Duration,
    pub populate: Duration,
    pub sync: Duration,
    pub at_sync: Usage,
    pub samples: Vec<(Duration, Usage)>,
    pub at_end: Usage,
    pub faults: [u32; 3],
    pub agent_summary: String,
}

async fn soak(churn_for: Duration, shape: Shape) -> anyhow::Result<bool> {
    // Bookmarks as the API server's watch cache sends them: about once a
    // minute to an idle watch (`defaultBookmarkFrequency`). A node's Pod
    // watch is idle nearly all the time, and the simulator's test default
    // (a second) would wake every node agent once a second for nothing.
    let sim = SimServer::start_with(SimConfig {
        bookmark_interval: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await?;
    let temp = tempfile::tempdir().context("temp dir")?;
    let kubeconfig = temp.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig)?;
    let started = Instant::now();
    let churn = Churn::populate(sim.store().clone(), shape.nodes)?;
    let populate = started.elapsed();
    eprintln!(
        "soak: {} pods in {} slices across {} services on {} nodes, created in {populate:.1?}",
        churn::PODS,
        churn::PODS / churn::ENDPOINTS_PER_SLICE,
        churn::SERVICES,
        shape.nodes
    );

    let spawned = Instant::now();
    let mut ingress_agents = Vec::new();
    for i in 0..INGRESS_NODES {
        let out = temp.path().join(format!("ingress-{i}.ndjson"));
        ingress_agents.push((
            merged::ingress_agent_name(i),
            AgentProcess::spawn(&kubeconfig, out, None)?,
        ));
    }
    let mut ingress_at_sync = Vec::new();
    for (_, agent) in &ingress_agents {
        agent.synced().await?;
        ingress_at_sync.push(proc::usage(agent.pid)?);
    }
    let sync = spawned.elapsed();
    let pid = ingress_agents[0].1.pid;
    let at_sync = ingress_at_sync[0];
    eprintln!(
        "soak: {INGRESS_NODES} ingress agents listed in {sync:.1?}, RSS {}; churning for {churn_for:?}",
        proc::mib(at_sync.rss_kib)
    );
    // The agents of nodes without an ingress: node-0, node-1, …
    let mut node_agents = Vec::new();
    for i in 0..shape.node_agents {
        let node = format!("node-{i}");
        let out = temp.path().join(format!("{node}.ndjson"));
        node_agents.push((
            node.clone(),
            AgentProcess::spawn(&kubeconfig, out, Some(&node))?,
        ));
    }
    let mut node_at_sync = Vec::new();
    for (_, agent) in &node_agents {
        agent.synced().await?;
        node_at_sync.push(proc::usage(agent.pid)?);
    }
    if !node_agents.is_empty() {
        eprintln!("soak: {} node agents listed", node_agents.len());
    }

    let order = churn::slot_order();
    let mut tasks = Vec::new();
    let mut samples = Vec::new();
    let mut faults = [0u32; 3];
    let churn_start = Instant::now();
    let mut next_termination = churn_start;
    let mut next_fault = churn_start + FAULT_EVERY;
    let mut next_sample = churn_start;
    let mut fault_kind = 0usize;
    while churn_start.elapsed() < churn_for {
        let now = Instant::now();
        if now >= next_sample {
            let usage = proc::usage(pid)?;
            eprintln!(
                "soak: {:>4.0} s  RSS {}  HWM {}  CPU {:.1} s  terminations {}",
                churn_start.elapsed().as_secs_f64(),
                proc::mib(usage.rss_kib),
                proc::mib(usage.hwm_kib),
                usage.cpu_s,
                tasks.len()
            );
            samples.push((churn_start.elapsed(), usage));
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_fault {
            inject(&sim, fault_kind);
            faults[fault_kind] += 1;
            fault_kind = (fault_kind + 1) % 3;
            next_fault += FAULT_EVERY;
        }
        if now >= next_termination {
            let slot = order[tasks.len() % order.len()];
            let churn = churn.clone();
            tasks.push(tokio::spawn(async move { churn.terminate(slot).await }));
            next_termination += TERMINATION_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let churn_elapsed = churn_start.elapsed();
    for task in tasks {
        task.await.context("termination task")??;
    }
    tokio::time::sleep(SETTLE).await;
    let at_end = proc::usage(pid)?;
    samples.push((churn_start.elapsed(), at_end));
    let mut nodes_report = Vec::new();
    for ((node, agent), at_sync) in node_agents.into_iter().zip(node_at_sync) {
        let at_end = proc::usage(agent.pid)?;
        let (summary, text) = agent.stop()?;
        nodes_report.push(report::NodeAgent {
            node,
            at_sync,
            at_end,
            output: text,
            summary,
        });
    }
    // Closing stdin stops an agent: it closes what is still open, flushes
    // and reports.
    let mut ingress_reports = Vec::new();
    for ((name, agent), at_sync) in ingress_agents.into_iter().zip(ingress_at_sync) {
        let at_end = proc::usage(agent.pid)?;
        let (summary, output) = agent.stop()?;
        ingress_reports.push(report::IngressAgent {
            name,
            at_sync,
            at_end,
            output,
            summary,
        });
    }
    let first = ingress_reports.remove(0);
    let (agent_summary, text) = (first.summary, first.output);
    if let Some(keep) = std::env::var_os("SOAK_KEEP") {
        std::fs::write(&keep, &text).context("keeping the agent's output")?;
        let log: Vec<String> = churn.log().iter().map(|t| format!("{t:?}")).collect();
        std::fs::write(
            std::path::Path::new(&keep).with_extension("log"),
            log.join("\n"),
        )?;
    }
    let run = Run {
        churn: churn_elapsed,
        populate,
        sync,
        at_sync,
        samples,
        at_end,
        faults,
        agent_summary,
    };
    let (mut table, mut passed) = report::report(&run, &churn.log(), &text);
    let (more, ok) = report::other_ingress_agents(&ingress_reports, &churn.log(), run.churn);
    table.push_str(&more);
    passed &= ok;
    if !nodes_report.is_empty() {
        let (more, ok) = report::node_agents(
            &nodes_report,
            &churn.log(),
            shape,
            run.churn,
            &sim.requests().watches_by_scope(),
            &sim.watch_events_sent(),
        );
        table.push_str(&more);
        passed &= ok;
        let node_outputs: Vec<(String, &str)> = nodes_report
            .iter()
            .map(|n| (n.node.clone(), n.output.as_str()))
            .collect();
        let mut ingress_outputs = vec![(first.name.clone(), text.as_str())];
        ingress_outputs.extend(
            ingress_reports
                .iter()
                .map(|a| (a.name.clone(), a.output.as_str())),
        );
        let (more, ok) =
            merged::check(&churn.log(), shape.nodes, &ingress_outputs, &node_outputs).rows();
        table.push_str(&more);
        passed &= ok;
    }
    let mut stdout = std::io::stdout();
    stdout.write_all(table.as_bytes())?;
    stdout.flush()?;
    sim.shutdown().await;
    Ok(passed)
}

/// One watch fault: 0 cuts every watch; 1 refuses connections for 2 s
/// (cutting the open ones); 2 does the same and compacts the history just
/// before the refusal ends, so the watchers' resume points are gone (410).
fn inject(sim: &SimServer, kind: usize) {
    let faults = sim.faults().clone();
    match kind {
        0 => faults.drop_watches(),
        1 => faults.refuse_connections(Duration::from_secs(2)),
        _ => {
            faults.refuse_connections(Duration::from_secs(2));
            let store = sim.store().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1_800)).await;
                store.compact();
            });
        }
    }
    eprintln!(
        "soak: fault: {}",
        [
            "watches dropped",
            "connections refused for 2 s",
            "refused for 2 s, history compacted (410)"
        ][kind.min(2)]
    );
}
