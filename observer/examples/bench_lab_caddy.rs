//! Run by `cargo xtask bench lab` (release build, root): the lab's Caddy
//! family, the Go data plane that retries after a backoff on any thread.
//! Each point is a real rolling update (2 pods, 1 rollout, 200 qps)
//! through Caddy, its upstreams changed over its admin API, measured by
//! the agent's own pipeline (`EngineMeasure`) and compared with Caddy's own
//! log of every try (which tells a retry from a choice), then rerun with
//! the recommended preStop. Caddy's `lb_try_interval` at 25, 100 and
//! 250 ms; delays 0.5–10 s, with and without jitter, IPv4 and IPv6; Go's
//! connection pools on (the lab's default keep-alive).
//!
//! Per termination: the measured gap within 50 ms of the last choice in
//! Caddy's log. The hidden-failure split is printed next to Caddy's own
//! count. Exits 2 when a termination misses or a verify run is not clean
//! (the table is still printed).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use observer::lab::scenario::IngressKind;
use observer::lab::{EngineMeasure, LabReport, LabScenario, run_lab};

const TARGET_MS: f64 = 50.0;
const TRY_INTERVALS_MS: [u64; 3] = [25, 100, 250];
/// (IPv6, delay ms, jitter ms) at each try interval.
const POINTS: [(bool, u64, u64); 4] = [
    (false, 500, 0),
    (false, 2_000, 1_000),
    (true, 2_000, 0),
    (false, 10_000, 5_000),
];

/// |measured gap − Caddy's last choice| per termination: how many missed
/// the target, and the largest.
fn misses(report: &LabReport) -> (usize, f64) {
    let mut missed = 0;
    let mut worst = 0.0f64;
    for t in &report.terminations {
        let error = match (t.truth_gap_ms, t.measured_gap_ms) {
            (Some(truth), Some(measured)) => (measured - truth).abs(),
            _ => f64::INFINITY,
        };
        worst = worst.max(error);
        if error > TARGET_MS {
            missed += 1;
        }
    }
    (missed, worst)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut table = String::from(
        "| try interval ms | family | delay ms | jitter ms | terminations | last choice p50 ms | measured gap p50 ms | max \\|measured − last choice\\| ms | failed connects | retried: measured / Caddy | not retried: measured / Caddy | client errors | verify: recommended preStop s, failed connects, client errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let (mut terminations, mut missed, mut worst, mut unclean) = (0, 0, 0.0f64, 0);
    let mut seed = 300;
    for try_interval_ms in TRY_INTERVALS_MS {
        for (ipv6, delay_ms, jitter_ms) in POINTS {
            seed += 1;
            let scenario = LabScenario {
                pods: 2,
                rollouts: 1,
                propagation_delay: Duration::from_millis(delay_ms),
                jitter: Duration::from_millis(jitter_ms),
                seed,
                ipv6,
                ingress: IngressKind::Caddy,
                lb_try_interval: Duration::from_millis(try_interval_ms),
                ..LabScenario::default()
            };
            let family = if ipv6 { "IPv6" } else { "IPv4" };
            eprintln!(
                "bench lab caddy: try interval {try_interval_ms} ms, {family} delay {delay_ms} ms ± {jitter_ms} ms"
            );
            let report = run_lab(&scenario, true, EngineMeasure::default)
                .await
                .with_context(|| {
                    format!("Caddy lab at {try_interval_ms} ms, {delay_ms} ms ± {jitter_ms} ms")
                })?;
            let (point_missed, point_worst) = misses(&report);
            terminations += report.terminations.len();
            missed += point_missed;
            worst = worst.max(point_worst);
            let mut choices: Vec<f64> = report
                .terminations
                .iter()
                .filter_map(|t| t.truth_gap_ms)
                .collect();
            let mut gaps: Vec<f64> = report
                .terminations
                .iter()
                .filter_map(|t| t.measured_gap_ms)
                .collect();
            let verify = report.verify.context("verified")?;
            if verify.failed_connects > 0 || verify.client_errors > 0 {
                unclean += 1;
            }
            let h = &report.hidden;
            let _ = writeln!(
                table,
                "| {try_interval_ms} | {family} | {delay_ms} | ±{jitter_ms} | {} | {} | {} | {point_worst:.1} | {} | {} / {} | {} / {} | {} | {} s, {}, {} |",
                report.terminations.len(),
                median(&mut choices),
                median(&mut gaps),
                report.failed_connects(),
                h.measured_retried,
                h.truth_retried,
                h.measured_not_retried,
                h.truth_not_retried,
                report.client.errors,
                verify.prestop_seconds,
                verify.failed_connects,
                verify.client_errors,
            );
        }
    }
    let _ = writeln!(
        table,
        "\n{} of {terminations} terminations within {TARGET_MS:.0} ms of Caddy's last choice; the \
         largest error was {worst:.1} ms; {unclean} verify runs not clean.",
        terminations - missed,
    );
    println!("{table}");
    if missed > 0 || unclean > 0 {
        eprintln!("bench lab caddy: {missed} terminations missed, {unclean} verify runs unclean");
        std::process::exit(2);
    }
    Ok(())
}

fn median(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    values.sort_by(f64::total_cmp);
    format!("{:.0}", values[values.len() / 2])
}
