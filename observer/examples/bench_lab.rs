//! Run by `cargo xtask bench lab` (release build, root): the lab's accuracy
//! sweep. Each point is a real rolling update (2 pods, 1 rollout, the
//! default 200 qps) measured by the agent's own pipeline (`EngineMeasure`:
//! probe, kube watchers, engine) and compared with the lab's ground truth
//! from nginx's access log. The sweep covers propagation delays from 0.5 s
//! to 10 s, without jitter and with ± half the delay, IPv4 and IPv6.
//!
//! Then, for each delay (IPv4, no jitter), the recommendation is held
//! against the smallest whole-second preStop that leaves no failed connect
//! and no client error, found by running the lab with candidate preStops:
//! the recommendation must be safe (at least that) and tight (at most one
//! second more).
//!
//! Prints Markdown tables on stdout (progress on stderr); exits 2 when a
//! termination misses the 20 ms target or has no measurement, or a
//! recommendation is unsafe or more than a second above the smallest clean
//! preStop (the tables are still printed, so the miss is written down).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use observer::lab::{EngineMeasure, LabReport, LabScenario, run_lab};

/// How far a measured gap may be from the truth.
const TARGET_MS: f64 = 20.0;
const DELAYS_MS: [u64; 5] = [500, 1_000, 2_000, 5_000, 10_000];

struct Point {
    ipv6: bool,
    delay_ms: u64,
    jitter_ms: u64,
}

fn points() -> Vec<Point> {
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        for delay_ms in DELAYS_MS {
            for jitter_ms in [0, delay_ms / 2] {
                out.push(Point {
                    ipv6,
                    delay_ms,
                    jitter_ms,
                });
            }
        }
    }
    out
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

fn row(point: &Point, report: &LabReport, out: &mut String) -> (usize, usize, f64) {
    let mut truths: Vec<f64> = report
        .terminations
        .iter()
        .filter_map(|t| t.truth_gap_ms)
        .collect();
    let mut measured: Vec<f64> = report
        .terminations
        .iter()
        .filter_map(|t| t.measured_gap_ms)
        .collect();
    let complete = report
        .terminations
        .iter()
        .filter(|t| t.truth_gap_ms.is_some() && t.measured_gap_ms.is_some())
        .count();
    let within = report
        .terminations
        .iter()
        .filter(|t| t.truth_gap_ms.is_some() && t.measured_gap_ms.is_some())
        .filter(|t| t.error_ms() <= TARGET_MS)
        .count();
    let max_error = report.max_error_ms().unwrap_or(f64::NAN);
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    let _ = writeln!(
        out,
        "| {} | {} | ±{} | {} | {} | {} | {:.1} | {} | {} |",
        if point.ipv6 { "IPv6" } else { "IPv4" },
        point.delay_ms,
        point.jitter_ms,
        report.terminations.len(),
        fmt(median(&mut truths)),
        fmt(median(&mut measured)),
        max_error,
        report.failed_connects(),
        report.client.errors,
    );
    (report.terminations.len(), within.min(complete), max_error)
}

/// A rollout at `delay_ms` with `prestop_s`, measured by the engine.
async fn rollout(delay_ms: u64, prestop_s: u64, seed: u64) -> anyhow::Result<LabReport> {
    let scenario = LabScenario {
        pods: 2,
        rollouts: 1,
        propagation_delay: Duration::from_millis(delay_ms),
        prestop: Duration::from_secs(prestop_s),
        seed,
        ..LabScenario::default()
    };
    run_lab(&scenario, false, EngineMeasure::default)
        .await
        .with_context(|| format!("lab run at {delay_ms} ms with preStop {prestop_s} s"))
}

fn clean(report: &LabReport) -> bool {
    report.failed_connects() == 0 && report.client.errors == 0
}

/// The recommendation from a rollout without preStop, and the smallest
/// whole-second preStop that ran clean. Returns whether the recommendation
/// is safe and within a second of it.
async fn tightness(delay_ms: u64, out: &mut String) -> anyhow::Result<bool> {
    eprintln!("bench lab: recommendation at {delay_ms} ms");
    let unprotected = rollout(delay_ms, 0, 1).await?;
    let recommended = unprotected
        .recommendation
        .map(|r| r.prestop_seconds)
        .context("the engine recommended nothing")?;
    // Start near the delay and walk to the boundary: failures stop once
    // the preStop covers the gap.
    let mut candidate = delay_ms / 1_000;
    let mut results: Vec<(u64, bool)> = Vec::new();
    let smallest = loop {
        eprintln!("bench lab: {delay_ms} ms with preStop {candidate} s");
        let ok = clean(&rollout(delay_ms, candidate, candidate + 2).await?);
        results.push((candidate, ok));
        let below = results.iter().find(|(c, _)| *c + 1 == candidate);
        let above = results.iter().find(|(c, _)| *c == candidate + 1);
        match (ok, below, above) {
            (true, Some((_, false)), _) => break Some(candidate),
            (true, _, _) if candidate == 0 => break Some(0),
            (true, _, _) => candidate -= 1,
            (false, _, Some((_, true))) => break Some(candidate + 1),
            (false, _, _) if candidate > recommended + 5 => break None,
            (false, _, _) => candidate += 1,
        }
    };
    let tried: Vec<String> = results
        .iter()
        .map(|(c, ok)| format!("{c} s {}", if *ok { "clean" } else { "failed" }))
        .collect();
    let good = smallest.is_some_and(|s| recommended >= s && recommended <= s + 1);
    let _ = writeln!(
        out,
        "| {delay_ms} | {} | {recommended} | {} | {} | {} |",
        unprotected.failed_connects(),
        smallest.map_or("none ≤ recommended + 5".to_string(), |s| s.to_string()),
        tried.join(", "),
        if good { "yes" } else { "no" },
    );
    Ok(good)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut table = String::from(
        "| family | delay ms | jitter ms | terminations | truth gap p50 ms | measured gap p50 ms | max \\|measured − truth\\| ms | failed connects | client errors |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let (mut terminations, mut within, mut worst) = (0, 0, 0.0f64);
    for (i, point) in points().iter().enumerate() {
        let scenario = LabScenario {
            pods: 2,
            rollouts: 1,
            propagation_delay: Duration::from_millis(point.delay_ms),
            jitter: Duration::from_millis(point.jitter_ms),
            seed: i as u64 + 1,
            ipv6: point.ipv6,
            // Each point's nginx logs and measured records, to read a miss.
            keep_logs: Some(std::path::PathBuf::from(format!(
                "target/bench-lab/{}-{}ms-{}ms",
                if point.ipv6 { "ipv6" } else { "ipv4" },
                point.delay_ms,
                point.jitter_ms
            ))),
            ..LabScenario::default()
        };
        eprintln!(
            "bench lab: {} delay {} ms ± {} ms",
            if point.ipv6 { "IPv6" } else { "IPv4" },
            point.delay_ms,
            point.jitter_ms
        );
        let report = run_lab(&scenario, false, EngineMeasure::default)
            .await
            .with_context(|| format!("lab run {}", i + 1))?;
        let (n, ok, max_error) = row(point, &report, &mut table);
        terminations += n;
        within += ok;
        worst = worst.max(max_error);
    }
    let _ = writeln!(
        table,
        "\n{within} of {terminations} terminations measured within {TARGET_MS:.0} ms of the \
         truth; the largest error was {worst:.1} ms.",
    );
    let mut tight = String::from(
        "| delay ms | failed connects without preStop | recommended preStop s | smallest clean preStop s | tried | within 1 s |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut all_tight = true;
    for delay_ms in DELAYS_MS {
        all_tight &= tightness(delay_ms, &mut tight).await?;
    }
    println!("{table}\n{tight}");
    if within < terminations {
        eprintln!(
            "bench lab: {} terminations missed the target",
            terminations - within
        );
        std::process::exit(2);
    }
    if !all_tight {
        eprintln!("bench lab: a recommendation was unsafe or more than 1 s above the smallest");
        std::process::exit(2);
    }
    Ok(())
}
