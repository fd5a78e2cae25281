//! The agent's own CPU on a busy node: 10 000 connects a second, spread
//! over 300 destinations (loopback addresses, each a pod in the
//! simulator), for a bounded time. Measured as the agent process's CPU
//! time plus its eBPF programs' run time (`kernel.bpf_stats_enabled`,
//! switched on for this part only and restored after), in mCPU.
//!
//! Twice: in steady state (every pod Ready, nothing watched: the probe
//! only looks for failures) and with every destination watched (every pod
//! not Ready, as if all 300 were terminating at once: every connect is
//! followed and measured).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::runtime::Handle;

use crate::cluster::SimCluster;
use crate::own_cpu::{Baseline, BpfStats, OwnCpu};
use crate::tracer::{Tracer, median, reset_on_close, start};

const DESTINATIONS: usize = 300;
const CONNECTS_PER_SEC: u64 = 10_000;
const RUN: Duration = Duration::from_secs(10);
const ROUNDS: usize = 3;
const PORT: u16 = 8080;
/// Coroot's node agent, as its authors publish it: about 200 mCPU at
/// 10 000 requests a second.
const PEER_MCPU: f64 = 200.0;

struct Row {
    watched: bool,
    connects_per_sec: f64,
    agent_mcpu: f64,
    programs_mcpu: f64,
}

pub fn run(observer_bin: &str, runtime: &Handle, dir: &Path) -> anyhow::Result<String> {
    let destinations: Vec<SocketAddr> = (0..DESTINATIONS)
        .map(|i| {
            let ip = Ipv4Addr::new(127, 0, 2 + (i / 250) as u8, 1 + (i % 250) as u8);
            SocketAddr::new(IpAddr::V4(ip), PORT)
        })
        .collect();
    let _acceptors = Acceptors::start(runtime, &destinations)?;
    let _stats = BpfStats::enable()?;
    let ips: Vec<IpAddr> = destinations.iter().map(SocketAddr::ip).collect();
    let mut rows = Vec::new();
    for watched in [false, true] {
        let cluster = SimCluster::start(runtime, dir, &ips, PORT, !watched)?;
        let (mut rates, mut agent, mut programs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let sample = measure(observer_bin, &cluster, &destinations)?;
            eprintln!(
                "bench probe: agent CPU ({}) round {}: {:.0} connects/s, agent {:.1} mCPU, programs {:.1} mCPU",
                if watched {
                    "all watched"
                } else {
                    "none watched"
                },
                round + 1,
                sample.0,
                sample.1,
                sample.2,
            );
            rates.push(sample.0);
            agent.push(sample.1);
            programs.push(sample.2);
        }
        rows.push(Row {
            watched,
            connects_per_sec: median(&rates),
            agent_mcpu: median(&agent),
            programs_mcpu: median(&programs),
        });
    }
    Ok(render(&rows))
}

/// (connects/s, agent process mCPU, its programs' mCPU)
fn measure(
    observer_bin: &str,
    cluster: &SimCluster,
    destinations: &[SocketAddr],
) -> anyhow::Result<(f64, f64, f64)> {
    let baseline = Baseline::now()?;
    let tracing = start(Tracer::Agent, observer_bin, Some(&cluster.agent))?;
    let own = OwnCpu::start(baseline, &tracing)?;
    let started = Instant::now();
    let connects = paced_connects(destinations, CONNECTS_PER_SEC, RUN);
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_us, programs_us) = own.spent_us()?;
    drop(tracing);
    Ok((
        connects as f64 / elapsed,
        cpu_us / 1_000.0 / elapsed,
        programs_us / 1_000.0 / elapsed,
    ))
}

/// Connects round-robin over `destinations` at `rate` a second for `run`,
/// each closed with RST (no TIME_WAIT to exhaust ports). Returns how many.
fn paced_connects(destinations: &[SocketAddr], rate: u64, run: Duration) -> u64 {
    const TICK: Duration = Duration::from_millis(1);
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < run {
        // Catch up on whatever a late wake-up left due.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while done < due {
            let target = destinations[done as usize % destinations.len()];
            if let Ok(stream) = TcpStream::connect(target) {
                reset_on_close(&stream);
            }
            done += 1;
        }
        std::thread::sleep(TICK);
    }
    done
}

/// A listener on each destination, accepting and dropping.
struct Acceptors(Vec<tokio::task::JoinHandle<()>>);

impl Acceptors {
    fn start(runtime: &Handle, destinations: &[SocketAddr]) -> anyhow::Result<Acceptors> {
        let _in_runtime = runtime.enter();
        let mut tasks = Vec::new();
        for addr in destinations {
            let std_listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("listening on {addr}"))?;
            std_listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            tasks.push(runtime.spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            }));
        }
        Ok(Acceptors(tasks))
    }
}

impl Drop for Acceptors {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| destinations watched | connects/s | agent process | its eBPF programs | agent total | Coroot node agent (published) |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.1} mCPU | {:.1} mCPU | {:.1} mCPU | ~{PEER_MCPU:.0} mCPU at 10k requests/s |\n",
            if row.watched {
                format!("all {DESTINATIONS} (every pod terminating at once)")
            } else {
                format!("none of {DESTINATIONS} (steady state)")
            },
            row.connects_per_sec,
            row.agent_mcpu,
            row.programs_mcpu,
            row.agent_mcpu + row.programs_mcpu,
        ));
    }
    out.push_str(&format!(
        "\n{CONNECTS_PER_SEC} connects a second for {} s per round, round-robin over {DESTINATIONS} \
         loopback destinations, each a pod in the simulator the agent watches; medians of \
         {ROUNDS} rounds. Agent process: its user and system CPU time. Its eBPF programs: their \
         run time from `kernel.bpf_stats_enabled` (on for this part only). Target: at most 20 \
         mCPU in total.\n",
        RUN.as_secs()
    ));
    out
}
