//! `observer trace`: prints TCP connect outcomes as they happen.

use std::{
    io::Write,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::Args;

use crate::connector::CgroupResolver;
use crate::{
    clock::MonoTime,
    probe::{ConnectRecord, Outcome, Probe, ProbeOptions, SyncFailureHook},
};

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

/// The probe's settings, shared by `trace` and `agent`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Size of the kernel's event ring in bytes (power of two, >= 4096).
    #[arg(long, value_name = "BYTES")]
    pub ring_bytes: Option<u32>,
    /// How connect()'s failures before a SYN (no route) are seen.
    #[arg(long, value_enum, default_value_t = SyncFailureHook::Auto, value_name = "HOOK")]
    pub sync_failure_hook: SyncFailureHook,
    /// A SYN that a thread sends this soon after its own connect failed,
    /// to another destination, is a retry of that failure, not a choice
    /// of the pod (docs/ENGINE.md, "Choices and retries"). Proxies retry
    /// within microseconds; raise it on very loaded nodes.
    #[arg(long, default_value = "5ms", value_parser = parse_duration, value_name = "DURATION")]
    pub retry_window: Duration,
    /// Name the process on every failed connect, to any destination. By
    /// default only connects to watched destinations (terminating and
    /// not-ready pods) are followed from their SYN; a failure elsewhere is
    /// reported from its socket (class, addresses, SYN time, pod) and names
    /// its process only when the process gave up itself, since the kernel
    /// finds the others in softirq. This follows every connect instead, at
    /// the price of a socket-map entry per connect on the node
    /// (docs/BENCHMARKS.md). `agent --ingress-comm` turns it on: a host
    /// ingress is known by its process name only.
    #[arg(long)]
    pub full_attribution: bool,
}

impl Default for ProbeArgs {
    /// What the command line gives without flags.
    fn default() -> Self {
        ProbeArgs {
            ring_bytes: None,
            sync_failure_hook: SyncFailureHook::Auto,
            retry_window: crate::probe::decode::DEFAULT_RETRY_WINDOW,
            full_attribution: false,
        }
    }
}

impl ProbeArgs {
    pub fn options(&self) -> ProbeOptions {
        ProbeOptions {
            ring_bytes: self.ring_bytes,
            sync_failure_hook: self.sync_failure_hook,
            hooks_only: false,
            full_attribution: self.full_attribution,
            retry_window: Some(self.retry_window),
        }
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `3m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 2s, 1.5s, 3m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Converts CLOCK_MONOTONIC times to wall-clock for display.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let mono = MonoTime::now().as_nanos() as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        WallClock {
            offset_ns: wall - mono,
        }
    }

    /// `HH:MM:SS.mmm` UTC.
    pub fn format(&self, t: MonoTime) -> String {
        let wall_ns = t.as_nanos() as i128 + self.offset_ns;
        let ms_of_day = (wall_ns / 1_000_000).rem_euclid(86_400_000);
        let (h, m, s, ms) = (
            ms_of_day / 3_600_000,
            ms_of_day / 60_000 % 60,
            ms_of_day / 1000 % 60,
            ms_of_day % 1000,
        );
        format!("{h:02}:{m:02}:{s:02}.{ms:03}")
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// One human-readable line for a record.
pub fn format_line(clock: &WallClock, record: &ConnectRecord) -> String {
    let (what, detail) = match &record.outcome {
        Outcome::Connect => ("connect".to_string(), String::new()),
        Outcome::Sent { last_send } => (
            "closed".to_string(),
            format!(
                "last sent {} before",
                ms(record.ts.saturating_since(*last_send).as_nanos() as u64)
            ),
        ),
        Outcome::Established { latency_ns } => (
            "established".to_string(),
            format!("after {}", ms(*latency_ns)),
        ),
        Outcome::Failed {
            class,
            errno,
            waited_ns,
            synchronous,
        } => {
            let mut detail = if record.count > 1 {
                // A storm the kernel counted: the latest of them waited so.
                format!(
                    "{} failures counted, the latest after {}",
                    record.count,
                    ms(*waited_ns)
                )
            } else {
                format!("after {}", ms(*waited_ns))
            };
            if *errno != 0 {
                detail.push_str(&format!(" (errno {errno})"));
            }
            if *synchronous {
                detail.push_str(" before any SYN");
            }
            (class.as_str().to_string(), detail)
        }
    };
    let mut process = if record.pid == 0 {
        "pid ?".to_string()
    } else {
        format!("pid {} ({})", record.pid, record.comm)
    };
    if let Some(uid) = &record.pod_uid {
        process.push_str(&format!(" pod {uid}"));
    }
    format!(
        "{}  {:<16} {} -> {}  {}  {}",
        clock.format(record.ts),
        what,
        record.src,
        record.dst,
        process,
        detail
    )
    .trim_end()
    .to_string()
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

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let mut probe = Probe::load(&ProbeOptions {
        hooks_only: args.hooks_only,
        ..args.probe.options()
    })
    .context("cannot start the probe")?;
    probe.forward_kernel_logs();
    for ip in &args.watch {
        probe.watch(*ip).with_context(|| format!("watching {ip}"))?;
    }
    let mut reader = probe.event_reader()?;
    // Best effort: without a cgroup v2 mount, lines carry no pod.
    match CgroupResolver::discover() {
        Ok(resolver) => reader.resolve_connectors(resolver),
        Err(error) => tracing::debug!(%error, "connect lines will name no pod"),
    }
    let clock = WallClock::now();
    let deadline = args.duration.map(|d| MonoTime::now().saturating_add(d));
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
            if !wanted(&args, &record) {
                continue;
            }
            let written = if args.json {
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
            if args.count.is_some_and(|n| printed >= n) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::FailureClass;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert!(
            parse_duration("fast")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
    }

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
    fn human_line_names_class_addresses_process_and_wait() {
        let clock = WallClock { offset_ns: 0 };
        let line = format_line(&clock, &refused());
        assert_eq!(
            line,
            "00:00:00.002  refused          10.0.0.1:40000 -> 10.0.0.2:8080  pid 42 (nginx)  \
             after 0.500 ms (errno 111)"
        );
    }

    #[test]
    fn a_counted_storm_reads_as_a_count_without_a_process() {
        let clock = WallClock { offset_ns: 0 };
        let mut storm = refused();
        storm.count = 5_000;
        storm.pid = 0;
        storm.src = "0.0.0.0:0".parse().unwrap();
        assert_eq!(
            format_line(&clock, &storm),
            "00:00:00.002  refused          0.0.0.0:0 -> 10.0.0.2:8080  pid ?  \
             5000 failures counted, the latest after 0.500 ms (errno 111)"
        );
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
