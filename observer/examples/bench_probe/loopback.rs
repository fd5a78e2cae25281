//! What the probe costs a node that connects as fast as it can, on loopback.
//!
//! A connect storm on loopback (bounded in time), measured in connects per
//! second with no tracer, with `observer trace` running, and with a
//! bpftrace script that hooks the same tracepoints and prints every event.
//! The three are interleaved over several rounds in one run and compared as
//! ratios, because absolute rates on a shared machine mean little.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::tracer::{Tracer, median, process_cpu_us, reset_on_close, start, thread_cpu_us};

const ROUNDS: usize = 5;
const RUN: Duration = Duration::from_secs(3);
const CLIENT_THREADS: usize = 2;

const TRACERS: [Tracer; 4] = [
    Tracer::None,
    Tracer::HooksOnly,
    Tracer::Trace,
    Tracer::Bpftrace,
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Storm {
    /// Connect, then close with RST: the success path (kernel aggregation).
    Established,
    /// Connect to a closed port: the failure path (every one is an event).
    Refused,
}

/// One run: the rate, and the CPU time each connect cost the storm's own
/// threads plus the tracer's process (steal time on a shared machine does
/// not count, so this is the steadier figure).
#[derive(Clone, Copy, Debug)]
struct Sample {
    connects_per_sec: f64,
    cpu_us_per_connect: f64,
}

struct ProbeBench {
    rows: Vec<(Storm, [Sample; 4])>,
}

pub fn run(observer_bin: &str) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for storm in [Storm::Established, Storm::Refused] {
        let mut rates: [Vec<f64>; 4] = Default::default();
        let mut cpu: [Vec<f64>; 4] = Default::default();
        for round in 0..ROUNDS {
            for (i, tracer) in TRACERS.iter().enumerate() {
                if !crate::tracer::runs_in_round(*tracer, round) {
                    continue;
                }
                let sample = measure(*tracer, storm, observer_bin)
                    .with_context(|| format!("{storm:?} storm with {tracer:?}"))?;
                eprintln!(
                    "bench probe: loopback round {} {storm:?} {tracer:?}: {:.0} connects/s, {:.2} µs CPU per connect",
                    round + 1,
                    sample.connects_per_sec,
                    sample.cpu_us_per_connect,
                );
                rates[i].push(sample.connects_per_sec);
                cpu[i].push(sample.cpu_us_per_connect);
            }
        }
        let sample = |i: usize| Sample {
            connects_per_sec: median(&rates[i]),
            cpu_us_per_connect: median(&cpu[i]),
        };
        rows.push((storm, [sample(0), sample(1), sample(2), sample(3)]));
    }
    Ok(render(&ProbeBench { rows }))
}

/// bpftrace attaches classic tracepoints, which it finds in tracefs
/// (observer needs none: its tracepoints are raw).
pub fn ensure_tracefs() -> anyhow::Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    if std::path::Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    eprintln!("bench probe: mounting tracefs at {TRACEFS} for bpftrace");
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mounting tracefs at {TRACEFS} failed ({status}); bpftrace needs it");
    }
    Ok(())
}

fn render(bench: &ProbeBench) -> String {
    let mut out = String::from(
        "| storm | no tracer | observer's hooks alone | observer | bpftrace | hooks-alone cost | observer cost | bpftrace cost |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (storm, [none, hooks, observer, bpftrace]) in &bench.rows {
        let rate_cost =
            |with: &Sample| (1.0 - with.connects_per_sec / none.connects_per_sec) * 100.0;
        let cpu_cost =
            |with: &Sample| (with.cpu_us_per_connect / none.cpu_us_per_connect - 1.0) * 100.0;
        let cell = |s: &Sample| {
            format!(
                "{:.0} /s, {:.2} µs",
                s.connects_per_sec, s.cpu_us_per_connect
            )
        };
        let cost = |s: &Sample| format!("{:.1} % rate, {:.1} % CPU", rate_cost(s), cpu_cost(s));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            match storm {
                Storm::Established => "connect + RST close (success path)",
                Storm::Refused => "connect to a closed port (failure path)",
            },
            cell(none),
            cell(hooks),
            cell(observer),
            cell(bpftrace),
            cost(hooks),
            cost(observer),
            cost(bpftrace),
        ));
    }
    out.push_str(
        "\nCells: connects per second, and CPU time per connect (the storm's threads plus \
         the tracer's process). Costs: the rate lost, and the CPU added per connect. \
         \"Hooks alone\": observer's programs attached where observer attaches them, each \
         returning at once (`observer trace --hooks-only`).\n",
    );
    out
}

fn measure(tracer: Tracer, storm: Storm, observer_bin: &str) -> anyhow::Result<Sample> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener")?;
    let open = listener.local_addr()?;
    // std listens with a backlog of 128; a storm overflows it and the
    // dropped SYNs' 1 s retransmits would swamp the measurement.
    // SAFETY: a valid listening socket fd; listen() only resizes its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    // A port that was bound and released: nothing listens there.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let accept_stop = stop.clone();
    // A blocking accept keeps the backlog drained: a full backlog drops
    // SYNs, and their 1 s retransmit would swamp the measurement.
    let cpu_us = Arc::new(AtomicU64::new(0));
    let acceptor_cpu = cpu_us.clone();
    let acceptor = std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
            if accept_stop.load(Ordering::Relaxed) {
                break;
            }
        }
        acceptor_cpu.fetch_add(thread_cpu_us(), Ordering::Relaxed);
    });
    let _tracing = start(tracer, observer_bin, None)?;
    let target = match storm {
        Storm::Established => open,
        Storm::Refused => closed,
    };
    let tracer_pid = _tracing.pid();
    let tracer_cpu_before = tracer_pid.map_or(0, process_cpu_us);
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (stop, count, cpu_us) = (stop.clone(), count.clone(), cpu_us.clone());
            std::thread::spawn(move || {
                storm_loop(target, &stop, &count);
                cpu_us.fetch_add(thread_cpu_us(), Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    let elapsed = started.elapsed();
    let tracer_cpu = tracer_pid
        .map_or(0, process_cpu_us)
        .saturating_sub(tracer_cpu_before);
    // Wake the acceptor so it sees `stop`.
    let _ = TcpStream::connect(open);
    let _ = acceptor.join();
    let connects = count.load(Ordering::Relaxed).max(1) as f64;
    Ok(Sample {
        connects_per_sec: connects / elapsed.as_secs_f64(),
        cpu_us_per_connect: (cpu_us.load(Ordering::Relaxed) + tracer_cpu) as f64 / connects,
    })
}

fn storm_loop(target: SocketAddr, stop: &AtomicBool, count: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(stream) = TcpStream::connect(target) {
            reset_on_close(&stream);
        }
        count.fetch_add(1, Ordering::Relaxed);
    }
}
