//! Run by `cargo xtask bench lab` (release build, root): the lab's accuracy
//! sweep. Each point is a real rolling update (2 pods, 1 rollout, the
//! default 200 qps) measured by the agent's own pipeline (`EngineMeasure`:
//! probe, kube watchers, engine) and compared with the lab's ground truth
//! from nginx's access log. The sweep covers propagation delays from 0.5 s
//! to 10 s, without jitter and with ± half the delay, IPv4 and IPv6.
//!
//! Prints a Markdown table on stdout (progress on stderr); exits 2 when a
//! termination misses the 50 ms target or has no measurement (the table is
//! still printed, so the miss is written down).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use observer::lab::{EngineMeasure, LabReport, LabScenario, run_lab};

/// How far a measured gap may be from the truth.
const TARGET_MS: f64 = 50.0;
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
    println!("{table}");
    if within < terminations {
        eprintln!(
            "bench lab: {} terminations missed the target",
            terminations - within
        );
        std::process::exit(2);
    }
    Ok(())
}
