//! `observer trace`: prints TCP connect outcomes as they happen.

use std::{io::Write, net::IpAddr, time::Duration};

use anyhow::Context as _;
use clap::Args;
use observer::{
    clock::{MonoTime, WallClock},
    connector::CgroupResolver,
    probe::{ConnectRecord, Probe, ProbeOptions},
    trace::format_line,
};

use super::{ProbeArgs, parse_duration};

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print failed connects only (also for watched addresses).
    #[arg(long)]
    pub failures_only: bool,
    /// Also print every connect (SYN and success) to these addresses.
    /// Failures are printed for every destination regardless.
    #[arg(long, value_delimiter = ',', value_name = "IP[,IP...]")]
    pub watch: Vec<IpAddr>,
    /// Print only connects to these destination ports.
    #[arg(long, value_delimiter = ',', value_name = "PORT[,PORT...]")]
    pub port: Vec<u16>,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit after this long, e.g. `30s`, `5m`.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Attach every hook with programs that return at once (prints
    /// nothing): what `cargo xtask bench probe` uses to measure the hooks'
    /// own cost.
    #[arg(long, hide = true)]
    pub hooks_only: bool,
}

fn wanted(args: &TraceArgs, record: &ConnectRecord) -> bool {
    observer::trace::shown(record, &args.port, args.failures_only)
}

impl TraceArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let mut probe = Probe::load(&ProbeOptions {
            hooks_only: self.hooks_only,
            ..self.probe.options()
        })
        .context("cannot start the probe")?;
        probe.forward_kernel_logs();
        for ip in &self.watch {
            probe.watch(*ip).with_context(|| format!("watching {ip}"))?;
        }
        let mut reader = probe.event_reader()?;
        // Best effort: without a cgroup v2 mount, lines carry no pod.
        match CgroupResolver::discover() {
            Ok(resolver) => reader.resolve_connectors(resolver),
            Err(error) => tracing::debug!(%error, "connect lines will name no pod"),
        }
        let clock = WallClock::now();
        let deadline = self.duration.map(|d| MonoTime::now().saturating_add(d));
        let mut printed = 0u64;
        let mut batch = Vec::new();
        let stdout = std::io::stdout();
        // On stderr so it never mixes with NDJSON; scripts wait for it.
        eprintln!("tracing TCP connect outcomes; Ctrl-C to stop");
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        'outer: loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                result = reader.next_batch(Duration::from_millis(100), &mut batch) => result?,
            }
            // One write per batch, not per line: stdout alone flushes at every
            // newline, a syscall per event under a storm of failures.
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            for record in batch.drain(..) {
                if !wanted(&self, &record) {
                    continue;
                }
                let written = if self.json {
                    serde_json::to_writer(&mut out, &record)
                        .map_err(std::io::Error::from)
                        .and_then(|()| writeln!(out))
                } else {
                    writeln!(out, "{}", format_line(&clock, &record))
                };
                if let Err(error) = written {
                    if error.kind() == std::io::ErrorKind::BrokenPipe {
                        break 'outer;
                    }
                    return Err(error).context("writing to stdout");
                }
                printed += 1;
                if self.count.is_some_and(|n| printed >= n) {
                    break 'outer;
                }
            }
            match out.flush() {
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
                flushed => flushed.context("writing to stdout")?,
            }
            if deadline.is_some_and(|d| MonoTime::now() >= d) {
                break;
            }
        }
        let counters = probe.counters()?;
        if counters.ringbuf_drops > 0 {
            eprintln!(
                "warning: {} events were lost because the ring buffer was full (raise --ring-bytes)",
                counters.ringbuf_drops
            );
        }
        Ok(())
    }
}
