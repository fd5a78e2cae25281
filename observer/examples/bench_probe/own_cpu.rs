//! What a tracer itself spends: its process's CPU time plus the run time
//! of the eBPF programs it loaded (`kernel.bpf_stats_enabled`). Measured
//! directly, this is steadier than the difference between two loaded
//! runs, which on a shared machine varies by more than a tracer costs.

use std::collections::BTreeSet;

use anyhow::Context as _;

use crate::tracer::{Tracing, process_cpu_us};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on while it lives, restored after. It adds
/// a clock read (about 20 ns) to every program run, which the figures
/// include.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> anyhow::Result<BpfStats> {
        let old =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// (program id, cumulative run time in ns) of every loaded program.
fn program_run_times() -> anyhow::Result<Vec<(u32, u64)>> {
    aya::programs::loaded_programs()
        .map(|info| {
            let info = info.context("reading a loaded program's info")?;
            Ok((info.id(), info.run_time().as_nanos() as u64))
        })
        .collect()
}

/// The programs loaded before a tracer started: not its own.
pub struct Baseline(BTreeSet<u32>);

impl Baseline {
    pub fn now() -> anyhow::Result<Baseline> {
        Ok(Baseline(
            program_run_times()?.into_iter().map(|(id, _)| id).collect(),
        ))
    }

    fn own_run_time_ns(&self) -> anyhow::Result<u64> {
        Ok(program_run_times()?
            .into_iter()
            .filter(|(id, _)| !self.0.contains(id))
            .map(|(_, ns)| ns)
            .sum())
    }
}

/// A running tracer's spending since [`OwnCpu::start`].
pub struct OwnCpu {
    baseline: Baseline,
    pid: Option<u32>,
    cpu_before_us: u64,
    programs_before_ns: u64,
}

impl OwnCpu {
    /// `baseline` taken before the tracer started.
    pub fn start(baseline: Baseline, tracing: &Tracing) -> anyhow::Result<OwnCpu> {
        let pid = tracing.pid();
        Ok(OwnCpu {
            programs_before_ns: baseline.own_run_time_ns()?,
            cpu_before_us: pid.map_or(0, process_cpu_us),
            baseline,
            pid,
        })
    }

    /// (process CPU µs, programs' run time µs) since the start.
    pub fn spent_us(&self) -> anyhow::Result<(f64, f64)> {
        let cpu = self
            .pid
            .map_or(0, process_cpu_us)
            .saturating_sub(self.cpu_before_us);
        let programs = self
            .baseline
            .own_run_time_ns()?
            .saturating_sub(self.programs_before_ns);
        Ok((cpu as f64, programs as f64 / 1_000.0))
    }
}
