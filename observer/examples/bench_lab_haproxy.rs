//! Run by `cargo xtask bench lab` (release build, root): the lab's HAProxy
//! family. Each point is a real rolling update (2 pods, 1 rollout, 200 qps)
//! through HAProxy updated over its runtime API, measured by the agent's
//! own pipeline (`EngineMeasure`) and compared with the wire truth (every
//! SYN and request HAProxy put on the lab's bridge), then rerun with the
//! recommended preStop. Delays 0.5–5 s, without jitter and with ± half the
//! delay, IPv4 and IPv6; HAProxy pools its server connections (the lab's
//! default keep-alive). The sandboxes linger past the delay so the wire
//! sees every send.
//!
//! Per termination: the measured last send within 20 ms of the wire's,
//! and the measured gap (the last choice) at or before it (+20 ms): the
//! wire cannot tell HAProxy's retries from its choices. The hidden-failure
//! split is printed next to HAProxy's own log. Exits 2 when a termination
//! misses or a verify run is not clean (the table is still printed).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use observer::lab::scenario::IngressKind;
use observer::lab::{EngineMeasure, LabReport, LabScenario, run_lab};

const TARGET_MS: f64 = 20.0;
const DELAYS_MS: [u64; 4] = [500, 1_000, 2_000, 5_000];

/// |measured last send − wire| and whether the gap ends by the wire's
/// last send, per termination the wire saw whole.
fn misses(report: &LabReport) -> (usize, f64) {
    let mut missed = 0;
    let mut worst = 0.0f64;
    for t in &report.terminations {
        let wire = t.wire_last_send_ms.unwrap_or(0.0);
        let send = t.measured_last_send_ms.unwrap_or(0.0);
        let gap = t.measured_gap_ms.unwrap_or(0.0);
        let error = (send - wire).abs();
        worst = worst.max(error);
        if t.wire_unresolved || error > TARGET_MS || gap > wire + TARGET_MS {
            missed += 1;
        }
    }
    (missed, worst)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut table = String::from(
        "| family | delay ms | jitter ms | terminations | wire last send p50 ms | measured gap p50 ms | max \\|measured − wire\\| last send ms | failed connects | retried: measured / HAProxy | not retried: measured / HAProxy | client errors | verify: recommended preStop s, failed connects, client errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let (mut terminations, mut missed, mut worst, mut unclean) = (0, 0, 0.0f64, 0);
    let mut seed = 100;
    for ipv6 in [false, true] {
        for delay_ms in DELAYS_MS {
            for jitter_ms in [0, delay_ms / 2] {
                seed += 1;
                let linger = Duration::from_millis(delay_ms + jitter_ms + 1_000);
                let scenario = LabScenario {
                    pods: 2,
                    rollouts: 1,
                    propagation_delay: Duration::from_millis(delay_ms),
                    jitter: Duration::from_millis(jitter_ms),
                    sandbox_linger: linger,
                    seed,
                    ipv6,
                    ingress: IngressKind::Haproxy,
                    ..LabScenario::default()
                };
                let family = if ipv6 { "IPv6" } else { "IPv4" };
                eprintln!("bench lab haproxy: {family} delay {delay_ms} ms ± {jitter_ms} ms");
                let report = run_lab(&scenario, true, EngineMeasure::default)
                    .await
                    .with_context(|| format!("HAProxy lab at {delay_ms} ms ± {jitter_ms} ms"))?;
                let (point_missed, point_worst) = misses(&report);
                terminations += report.terminations.len();
                missed += point_missed;
                worst = worst.max(point_worst);
                let mut wire: Vec<f64> = report
                    .terminations
                    .iter()
                    .filter_map(|t| t.wire_last_send_ms)
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
                    "| {family} | {delay_ms} | ±{jitter_ms} | {} | {} | {} | {point_worst:.1} | {} | {} / {} | {} / {} | {} | {} s, {}, {} |",
                    report.terminations.len(),
                    median(&mut wire),
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
    }
    let _ = writeln!(
        table,
        "\n{} of {terminations} terminations within {TARGET_MS:.0} ms of the wire (last send; the \
         gap ending by it); the largest last-send error was {worst:.1} ms; {unclean} verify runs \
         not clean.",
        terminations - missed,
    );
    println!("{table}");
    if missed > 0 || unclean > 0 {
        eprintln!("bench lab haproxy: {missed} terminations missed, {unclean} verify runs unclean");
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
