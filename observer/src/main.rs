//! The observer command line.

mod cli;

use clap::{Parser, Subcommand};
#[cfg(feature = "lab")]
use cli::lab::LabArgs;
use cli::{
    agent::{AgentArgs, RecordArgs},
    cluster::ClusterArgs,
    replay::ReplayArgs,
    trace::TraceArgs,
    tui::TuiArgs,
};
use tracing_subscriber::EnvFilter;

// The lab's lines of the examples below; a macro because `concat!` takes
// only literals.
#[cfg(feature = "lab")]
macro_rules! lab_examples {
    () => {
        "  \
        sudo observer lab                        # a rolling update here: measured gaps and recommended preStop\n  \
        sudo observer lab --prestop 3s --verify  # check a preStop, then the recommended one\n  \
        sudo observer lab --tui                  # the same, watched live in the TUI\n"
    };
}

#[cfg(not(feature = "lab"))]
macro_rules! lab_examples {
    () => {
        ""
    };
}

/// Measures how long your ingress keeps connecting to Kubernetes pods after
/// they start terminating (the endpoint-propagation gap), from the kernel's
/// view of TCP connects, and recommends preStop durations from the data.
#[derive(Debug, Parser)]
#[command(name = "observer", version, about, long_about = None)]
#[command(after_help = concat!("Examples:\n", lab_examples!(), "  \
    sudo observer trace                      # failed connects on this node, as they happen\n  \
    sudo observer trace --watch 10.1.2.3     # also every connect to one pod IP\n  \
    sudo observer trace --json --failures-only --port 8080\n  \
    sudo observer agent --output gaps.ndjson  # measure, serve :9990/metrics and /api/v1\n  \
    observer replay rollout.rec               # re-run a recording through the engine\n\n\
    Logs go to stderr; set RUST_LOG=debug for more."))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a real rolling update on this machine (pods are network
    /// namespaces, the ingress is nginx, the control plane a simulator),
    /// measure it with the probe, and print the gaps and the recommended
    /// preStop next to the lab's own ground truth. Needs root.
    #[cfg(feature = "lab")]
    Lab(LabArgs),
    /// Print TCP connect outcomes as they happen (failures on every
    /// destination; successes for --watch addresses). Needs root or
    /// CAP_BPF + CAP_PERFMON.
    Trace(TraceArgs),
    /// Run headless on an ingress node (the DaemonSet mode): measure every
    /// pod termination, export NDJSON, Prometheus /metrics and a JSON API.
    /// Runs until SIGTERM, then flushes and exits 0.
    Agent(AgentArgs),
    /// Watch rollouts live: on this node (probe, watchers and engine in
    /// this process), or across agents with --agents URL[,URL...].
    Tui(TuiArgs),
    /// The cluster-wide view: read every agent (--agents URL,... or
    /// --service the headless Service) and print one row per termination,
    /// the pod's node's view (what arrived) next to each ingress node's
    /// (its gap and failures), as NDJSON or JSON.
    Cluster(ClusterArgs),
    /// Capture the raw inputs (probe events, watch events) to a file.
    Record(RecordArgs),
    /// Run a recording through the engine; the NDJSON output is the same,
    /// byte for byte, every time.
    Replay(ReplayArgs),
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The TUI owns the terminal: it sends logs to a file instead.
    let tui_owns_terminal = match &cli.command {
        Command::Tui(_) => true,
        #[cfg(feature = "lab")]
        Command::Lab(args) => args.tui,
        _ => false,
    };
    if !tui_owns_terminal {
        init_logging();
    }
    // Two workers, whatever the node's size: the agent's work is a few
    // sequential tasks (the ring's reader, the engine, the watches, the
    // HTTP API), and each idle worker of tokio's default (one per core)
    // would be woken to look for work on every event.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            #[cfg(feature = "lab")]
            Command::Lab(args) => args.run().await,
            Command::Trace(args) => args.run().await,
            Command::Agent(args) => args.run().await,
            Command::Record(args) => args.run().await,
            Command::Tui(args) => args.run().await,
            Command::Cluster(args) => args.run().await,
            Command::Replay(args) => args.run(),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
