//! Run by `cargo xtask bench probe` (release build, root): what the probe
//! costs, three ways.
//!
//! 1. [`loopback`]: connect storms on loopback, the probe's own cost per
//!    connect on the success and the failure path.
//! 2. [`ingress`]: an ingress node at production shape, nginx proxying to
//!    pods under wrk, with and without upstream keep-alive.
//! 3. [`ingress`] again, nginx sending through a Service's ClusterIP: an
//!    accept storm into the pods, which only the receiving side follows.
//! 4. [`agent_cpu`]: the agent's own CPU at 10 000 connects/s to 300
//!    destinations.
//!
//! Each compares tracers interleaved over several rounds in one run, as
//! ratios, because absolute figures on a shared machine mean little.
//! Prints Markdown on stdout, progress on stderr. The observer binary is
//! the first argument (default `target/release/observer`);
//! `OBSERVER_BENCH_ONLY=loopback|ingress|accept|agent` runs one part alone.

mod agent_cpu;
mod cluster;
mod ingress;
mod loopback;
mod own_cpu;
mod tracer;

use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    observer::privileges::require_root(
        "the probe benchmark loads eBPF programs and creates network namespaces; it",
    )?;
    let observer_bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/observer".into());
    if !std::path::Path::new(&observer_bin).exists() {
        bail!("{observer_bin} not found: build it first (`cargo build --release -p observer`)");
    }
    loopback::ensure_tracefs()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let dir = std::env::temp_dir().join(format!("observer-bench-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // One part alone, while working on it: OBSERVER_BENCH_ONLY=loopback,
    // ingress or agent.
    let only = std::env::var("OBSERVER_BENCH_ONLY").ok();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let result = (|| -> anyhow::Result<String> {
        let mut out = String::new();
        if wanted("loopback") {
            out += &format!(
                "Loopback connect storms:\n\n{}\n",
                loopback::run(&observer_bin)?
            );
        }
        if wanted("ingress") {
            let table = ingress::run(
                &observer_bin,
                runtime.handle(),
                &dir,
                &ingress::INGRESS_SHAPES,
            )?;
            out += &format!("An ingress node:\n\n{table}\n");
        }
        if wanted("accept") {
            let table = ingress::run(
                &observer_bin,
                runtime.handle(),
                &dir,
                &ingress::ACCEPT_SHAPES,
            )?;
            out += &format!("The receiving side: an accept storm into the pods:\n\n{table}\n");
        }
        if wanted("agent") {
            let table = agent_cpu::run(&observer_bin, runtime.handle(), &dir)?;
            out += &format!("The agent's own CPU:\n\n{table}");
        }
        if out.is_empty() {
            bail!("OBSERVER_BENCH_ONLY={only:?}: expected loopback, ingress, accept or agent");
        }
        Ok(out)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", result?);
    Ok(())
}

/// Runs `cmd` and fails with its stderr when it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
