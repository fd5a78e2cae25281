//! The observer command line.

use clap::{Parser, Subcommand};
use observer::trace::{self, TraceArgs};
use tracing_subscriber::EnvFilter;

/// Measures how long your ingress keeps connecting to Kubernetes pods after
/// they start terminating (the endpoint-propagation gap), from the kernel's
/// view of TCP connects, and recommends preStop durations from the data.
#[derive(Debug, Parser)]
#[command(name = "observer", version, about, long_about = None)]
#[command(after_help = "Examples:\n  \
    sudo observer trace                      # failed connects on this node, as they happen\n  \
    sudo observer trace --watch 10.1.2.3     # also every connect to one pod IP\n  \
    sudo observer trace --json --failures-only --port 8080\n\n\
    Logs go to stderr; set RUST_LOG=debug for more.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print TCP connect outcomes as they happen (failures on every
    /// destination; successes for --watch addresses). Needs root or
    /// CAP_BPF + CAP_PERFMON.
    Trace(TraceArgs),
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
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            Command::Trace(args) => trace::run(args).await,
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
