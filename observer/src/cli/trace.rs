//! `observer trace`: prints TCP connect outcomes as they happen.

use std::{io::Write, net::IpAddr, time::Duration};

use anyhow::Context as _;
use clap::Args;
use observer::{
    clock::{MonoTime, WallClock},
    connector::CgroupResolver,
    probe::{ConnectRecord, Outcome, Probe, ProbeOptions},
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
    if !args.port.is_empty() && !args.port.contains(&record.dst.port()) {
        return false;
    }
    match record.outcome {
        Outcome::Failed { .. } => true,
        // Successes only reach user space for watched destinations.
        Outcome::Connect | Outcome::Established { .. } | Outcome::Sent { .. } => {
            !args.failures_only
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use observer::probe::FailureClass;

    fn refused() -> ConnectRecord {
        ConnectRecord {
            ts: MonoTime(2_500_000),
            syn: Some(MonoTime(2_000_000)),
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
            pid: 42,
            tid: 42,
            comm: "nginx".into(),
            cgroup_id: 0,
            pod_uid: None,
            container_id: None,
            retry: false,
            count: 1,
            watched: false,
            outcome: Outcome::Failed {
                class: FailureClass::Refused,
                errno: 111,
                waited_ns: 500_000,
                synchronous: false,
            },
        }
    }

    #[test]
    fn filters_by_port_and_failures_only() {
        let mut args = TraceArgs {
            json: false,
            failures_only: true,
            watch: vec![],
            port: vec![8080],
            count: None,
            duration: None,
            probe: ProbeArgs::default(),
            hooks_only: false,
        };
        let mut record = refused();
        assert!(wanted(&args, &record));
        record.outcome = Outcome::Established { latency_ns: 1 };
        assert!(!wanted(&args, &record));
        args.failures_only = false;
        assert!(wanted(&args, &record));
        args.port = vec![9090];
        assert!(!wanted(&args, &record));
    }
}
