//! The soak's checks and its table: the agent's terminations against the
//! simulator's log, memory samples, CPU per 1 000 terminations.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use observer::clock::MonoTime;
use observer::engine::PodTermination;

use observer_sim::RequestScope;

use super::churn::{self, TerminationLog};
use super::proc::{Usage, mib};
use super::{Run, Shape};

/// How the agent's record of one termination compares with the log.
#[derive(Default)]
struct Checks {
    terminations: usize,
    exactly_once: usize,
    missing: Vec<String>,
    duplicated: Vec<String>,
    unexpected: usize,
    in_order: usize,
    out_of_order: Vec<String>,
    /// Terminations whose not-ready or removal the agent did not see as a
    /// change of its own (both fell inside a watch outage).
    collapsed: usize,
    crossed: usize,
    deletion_lag_ms: Vec<f64>,
    removal_lag_ms: Vec<f64>,
}

fn ms(later: MonoTime, earlier: MonoTime) -> f64 {
    (later.0 as f64 - earlier.0 as f64) / 1e6
}

/// Each watch stream keeps the simulator's order (the pod's deletion on
/// the Pod watch; the endpoint's not-ready before its removal on the
/// EndpointSlice watch), and the agent sees no change before the
/// simulator made it.
fn in_order(seen: &PodTermination, made: &TerminationLog) -> bool {
    let after = |agent: Option<MonoTime>, sim: Option<MonoTime>| match (agent, sim) {
        (Some(a), Some(s)) => a >= s,
        _ => true,
    };
    let slice_stream = match (seen.endpoint_not_ready, seen.endpoint_removed) {
        (Some(not_ready), Some(removed)) => not_ready <= removed,
        _ => true,
    };
    seen.deletion_seen >= made.deleted
        && after(seen.endpoint_not_ready, made.not_ready)
        && after(seen.endpoint_removed, made.removed)
        && slice_stream
}

/// The endpoint's not-ready reached the agent before the pod's deletion:
/// the two watches are separate streams, and after an outage the
/// EndpointSlice watch may resume first.
fn streams_crossed(seen: &PodTermination) -> bool {
    seen.endpoint_not_ready
        .is_some_and(|not_ready| not_ready < seen.deletion_seen)
}

fn check(log: &[TerminationLog], output: &str) -> Checks {
    let mut seen: BTreeMap<String, Vec<PodTermination>> = BTreeMap::new();
    for line in output.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(t) = value.get("termination") else {
            continue;
        };
        if let Ok(t) = serde_json::from_value::<PodTermination>(t.clone()) {
            seen.entry(t.uid.clone()).or_default().push(t);
        }
    }
    let made = churn::names_by_uid(log);
    let mut checks = Checks {
        terminations: log.len(),
        unexpected: seen
            .keys()
            .filter(|uid| !made.contains_key(uid.as_str()))
            .count(),
        ..Checks::default()
    };
    for termination in log {
        match seen.get(&termination.uid).map(Vec::as_slice) {
            None | Some([]) => checks.missing.push(termination.name.clone()),
            Some([one]) => {
                checks.exactly_once += 1;
                if in_order(one, termination) {
                    checks.in_order += 1;
                } else {
                    checks.out_of_order.push(termination.name.clone());
                }
                if streams_crossed(one) {
                    checks.crossed += 1;
                }
                if one.endpoint_not_ready.is_none() || one.endpoint_removed.is_none() {
                    checks.collapsed += 1;
                }
                checks
                    .deletion_lag_ms
                    .push(ms(one.deletion_seen, termination.deleted));
                if let (Some(a), Some(m)) = (one.endpoint_removed, termination.removed) {
                    checks.removal_lag_ms.push(ms(a, m));
                }
            }
            Some(_) => checks.duplicated.push(termination.name.clone()),
        }
    }
    checks
}

fn quantiles(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:.1} / {:.1} / {:.1} ms",
        at(0.5),
        at(0.99),
        values[values.len() - 1]
    )
}

/// The table, and whether every check passed.
pub fn report(run: &Run, log: &[TerminationLog], output: &str) -> (String, bool) {
    let mut c = check(log, output);
    let churn_s = run.churn.as_secs_f64();
    let churn_cpu = run.at_end.cpu_s - run.at_sync.cpu_s;
    let max_rss = run
        .samples
        .iter()
        .map(|(_, u)| u.rss_kib)
        .max()
        .unwrap_or(0);
    let first_rss = run.samples.first().map_or(0, |(_, u)| u.rss_kib);
    let last_rss = run.samples.last().map_or(0, |(_, u)| u.rss_kib);
    let memory_ok = run.at_end.hwm_kib <= 64 * 1024;
    let passed = c.missing.is_empty()
        && c.duplicated.is_empty()
        && c.unexpected == 0
        && c.out_of_order.is_empty()
        && memory_ok;
    let mut t = String::new();
    let _ = writeln!(t, "| figure | value |\n|---|---|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "| {k} | {v} |");
    };
    row(
        "cluster",
        format!(
            "{} pods, {} EndpointSlices, {} Services (created in {:.1} s)",
            churn::PODS,
            churn::PODS / churn::ENDPOINTS_PER_SLICE,
            churn::SERVICES,
            run.populate.as_secs_f64()
        ),
    );
    row(
        "churn",
        format!(
            "{:.0} s at {:.0} terminations/min; faults: {} dropped watches, {} refusals, {} refusals with compaction (410)",
            churn_s,
            c.terminations as f64 * 60.0 / churn_s,
            run.faults[0],
            run.faults[1],
            run.faults[2]
        ),
    );
    row("agent at the end", format!("`{}`", run.agent_summary));
    row(
        "initial list (to synced)",
        format!(
            "{:.1} s, {:.2} s CPU, RSS {}",
            run.sync.as_secs_f64(),
            run.at_sync.cpu_s,
            mib(run.at_sync.rss_kib)
        ),
    );
    row(
        "**terminations in the output exactly once**",
        format!(
            "**{} of {}** (missing {}, twice or more {}, not made by the simulator {})",
            c.exactly_once,
            c.terminations,
            c.missing.len(),
            c.duplicated.len(),
            c.unexpected
        ),
    );
    row(
        "transitions in the simulator's order on each watch, none before the write",
        format!(
            "{} of {}; {} whose endpoint not-ready arrived before the pod's deletion (the \
             EndpointSlice watch resumed first after an outage); {} without a not-ready or \
             removal of their own (inside an outage)",
            c.in_order, c.exactly_once, c.crossed, c.collapsed
        ),
    );
    row(
        "deletion seen after the simulator's write (p50 / p99 / max)",
        quantiles(&mut c.deletion_lag_ms),
    );
    row(
        "endpoint removal seen after the write (p50 / p99 / max)",
        quantiles(&mut c.removal_lag_ms),
    );
    let samples: Vec<String> = run
        .samples
        .iter()
        .map(|(at, u)| {
            format!(
                "{:.0} s: {:.1}",
                at.as_secs_f64(),
                u.rss_kib as f64 / 1024.0
            )
        })
        .collect();
    row("agent RSS samples (MiB)", samples.join(", "));
    row(
        "**agent RSS: first / last / largest sample; peak (VmHWM)**",
        format!(
            "**{} / {} / {}; {}** (target ≤ 64 MiB)",
            mib(first_rss),
            mib(last_rss),
            mib(max_rss),
            mib(run.at_end.hwm_kib)
        ),
    );
    row(
        "**agent CPU per 1 000 terminations**",
        format!(
            "**{:.1} s** ({:.1} s over the churn, {:.1} % of one core, connect load included)",
            churn_cpu * 1000.0 / c.terminations.max(1) as f64,
            churn_cpu,
            churn_cpu * 100.0 / (churn_s + super::SETTLE.as_secs_f64())
        ),
    );
    for (what, names) in [
        ("missing", &c.missing),
        ("duplicated", &c.duplicated),
        ("out of order", &c.out_of_order),
    ] {
        if !names.is_empty() {
            let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
            eprintln!(
                "soak: {what}: {} (first: {})",
                names.len(),
                shown.join(", ")
            );
        }
    }
    (t, passed)
}

/// An ingress node's agent beyond the first: its output and usage.
pub struct IngressAgent {
    pub name: String,
    pub at_sync: Usage,
    pub at_end: Usage,
    pub output: String,
    /// The agent's `done …` line.
    pub summary: String,
}

/// A row per further ingress node's agent: each must report every
/// termination exactly once, as the first does, within the same memory
/// target.
pub fn other_ingress_agents(
    agents: &[IngressAgent],
    log: &[TerminationLog],
    churn: std::time::Duration,
) -> (String, bool) {
    let mut t = String::new();
    let mut passed = true;
    for agent in agents {
        let c = check(log, &agent.output);
        let memory_ok = agent.at_end.hwm_kib <= 64 * 1024;
        passed &= c.missing.is_empty()
            && c.duplicated.is_empty()
            && c.unexpected == 0
            && c.out_of_order.is_empty()
            && memory_ok;
        let churn_cpu = agent.at_end.cpu_s - agent.at_sync.cpu_s;
        let _ = writeln!(
            t,
            "| **{} (another ingress node, its own connects): terminations exactly once; peak RSS; CPU per 1 000 terminations** | **{} of {}** (missing {}, twice or more {}, out of order {}); **{}**; {:.1} s over {:.0} s of churn |",
            agent.name,
            c.exactly_once,
            c.terminations,
            c.missing.len(),
            c.duplicated.len(),
            c.out_of_order.len(),
            mib(agent.at_end.hwm_kib),
            churn_cpu * 1000.0 / c.terminations.max(1) as f64,
            churn.as_secs_f64()
        );
        if !agent.summary.starts_with("done") {
            eprintln!("soak: {} reported no summary", agent.name);
        }
    }
    (t, passed)
}

/// One node-scoped agent's run.
pub struct NodeAgent {
    pub node: String,
    pub at_sync: Usage,
    pub at_end: Usage,
    pub output: String,
    /// The agent's `done …` line: its model's sizes.
    pub summary: String,
}

/// Node-scoped agents' memory and CPU (targets: 16 MiB and 2 mCPU each),
/// that each reported exactly its node's terminations, and what the
/// simulator served by scope.
pub fn node_agents(
    agents: &[NodeAgent],
    log: &[TerminationLog],
    shape: Shape,
    churn: std::time::Duration,
    watches: &BTreeMap<(String, RequestScope), u64>,
    sent: &BTreeMap<(String, RequestScope), u64>,
) -> (String, bool) {
    let seconds = churn.as_secs_f64() + super::SETTLE.as_secs_f64();
    let mut exactly = 0;
    let mut expected = 0;
    let mut hwm_kib = Vec::new();
    let mut mcpu = Vec::new();
    // Split by whether one of the node's own pods terminated: those agents
    // read every change promptly while it did.
    let mut mcpu_quiet = Vec::new();
    let mut mcpu_local = Vec::new();
    let mut rss_at_sync = Vec::new();
    let mut model_heap = Vec::new();
    for agent in agents {
        rss_at_sync.push(agent.at_sync.rss_kib);
        if let Some(bytes) = estimated_heap(&agent.summary) {
            model_heap.push(bytes);
        }
        let own: Vec<TerminationLog> = log
            .iter()
            .filter(|t| {
                churn::slot_of_name(&t.name).map(|slot| churn::node_of(slot, shape.nodes))
                    == Some(agent.node.clone())
            })
            .cloned()
            .collect();
        let c = check(&own, &agent.output);
        expected += own.len();
        if c.missing.is_empty() && c.duplicated.is_empty() && c.unexpected == 0 {
            exactly += c.exactly_once;
        }
        hwm_kib.push(agent.at_end.hwm_kib);
        let agent_mcpu = (agent.at_end.cpu_s - agent.at_sync.cpu_s) * 1000.0 / seconds;
        mcpu.push(agent_mcpu);
        if own.is_empty() {
            mcpu_quiet.push(agent_mcpu);
        } else {
            mcpu_local.push(agent_mcpu);
        }
    }
    let max_hwm = hwm_kib.iter().copied().max().unwrap_or(0);
    let largest_and_mean = |values: &[f64]| {
        (
            values.iter().copied().fold(0.0, f64::max),
            values.iter().sum::<f64>() / values.len().max(1) as f64,
        )
    };
    let (max_mcpu, mean_mcpu) = largest_and_mean(&mcpu);
    let (max_quiet, mean_quiet) = largest_and_mean(&mcpu_quiet);
    let (max_local, mean_local) = largest_and_mean(&mcpu_local);
    let count = |map: &BTreeMap<(String, RequestScope), u64>, resource: &str| {
        RequestScope::ALL
            .iter()
            .filter_map(|scope| {
                let n = map.get(&(resource.to_owned(), *scope)).copied()?;
                Some(format!("{} {n}", scope.as_str()))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pod_events: u64 = sent
        .iter()
        .filter(|((resource, _), _)| resource == "pods")
        .map(|(_, n)| n)
        .sum();
    let passed = exactly == expected && max_hwm <= 16 * 1024 && max_mcpu <= 2.0;
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "| {k} | {v} |");
    };
    row(
        "layout",
        format!(
            "{} pods on {} nodes; {} ingress nodes' agents (every pod, each with its own \
             connects) and {} node agents (their node's pods, every EndpointSlice)",
            churn::PODS,
            shape.nodes,
            super::INGRESS_NODES,
            agents.len()
        ),
    );
    row("Pod watches opened, by scope", count(watches, "pods"));
    row(
        "EndpointSlice watches opened, by scope",
        count(watches, "endpointslices"),
    );
    row(
        "Pod change events sent, by watch scope",
        format!(
            "{}; {:.2} per termination over all watches",
            count(sent, "pods"),
            pod_events as f64 / log.len().max(1) as f64
        ),
    );
    row(
        "**node agents: their node's terminations in their output exactly once**",
        format!("**{exactly} of {expected}**"),
    );
    row(
        "node agent RSS when listed, largest; its model's estimated heap at the end, largest",
        format!(
            "{}; {:.1} MB",
            mib(rss_at_sync.iter().copied().max().unwrap_or(0)),
            model_heap.iter().copied().max().unwrap_or(0) as f64 / 1e6
        ),
    );
    row(
        "**node agent peak RSS (VmHWM), largest**",
        format!("**{}** (target ≤ 16 MiB)", mib(max_hwm)),
    );
    row(
        "**node agent CPU over the churn, largest / mean**",
        format!("**{max_mcpu:.2} / {mean_mcpu:.2} mCPU** (target ≤ 2 mCPU)"),
    );
    row(
        "node agent CPU, largest / mean: nodes none of whose pods terminated; nodes with one or more",
        format!(
            "{max_quiet:.2} / {mean_quiet:.2} mCPU ({} agents); {max_local:.2} / {mean_local:.2} mCPU ({} agents)",
            mcpu_quiet.len(),
            mcpu_local.len()
        ),
    );
    (t, passed)
}

/// `estimated_heap_bytes` from an agent's `done … model=ModelStats { … }`.
fn estimated_heap(summary: &str) -> Option<u64> {
    let rest = summary.split("estimated_heap_bytes: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
