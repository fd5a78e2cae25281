//! preStop recommendations from measured propagation gaps.
//!
//! The preStop sleep must outlast the propagation gap: the time after
//! termination starts during which this node's ingress still opens new
//! connections to the pod. Per group, the recommendation is the chosen
//! quantile of the gap over the last N closed terminations (the maximum
//! while there are too few for a quantile to mean anything), plus a
//! margin, rounded up to whole seconds.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::RecommendConfig;
use super::record::FailureCounts;
use super::samples::{GroupKey, Sample};
use crate::probe::decode::FailureClass;

/// Within this long after a pod became ready, a failed connect to it means
/// the readiness probe reported ready too early.
pub const READY_TOO_EARLY: Duration = Duration::from_secs(2);

/// terminationGracePeriodSeconds when a pod spec leaves it unset.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What the measurements say one group of pods needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub namespace: String,
    /// Set for a per-Service recommendation.
    pub service: Option<String>,
    /// The workload of a per-workload recommendation; for a per-Service one,
    /// the workload when all of the Service's samples share one.
    pub workload: Option<String>,
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub quantile: f64,
    pub margin_ms: u64,
    /// Fewer than `min_samples`: the maximum gap was used, not the quantile.
    pub used_max: bool,
    pub recommended_prestop_seconds: u64,
    pub recommended_termination_grace_period_seconds: u64,
    /// From the most recent termination of the group.
    pub configured_prestop_seconds: Option<f64>,
    pub configured_termination_grace_period_seconds: Option<i64>,
    /// Failed connects after deletion, summed over the samples.
    pub failed_connects: FailureCounts,
    pub verdict: Vec<String>,
    /// A PodSpec fragment to merge into the workload's pod template.
    pub yaml: String,
    /// The same protection for an app that cannot have a preStop hook:
    /// delay its own shutdown after SIGTERM.
    #[serde(default)]
    pub sigterm_delay: String,
    /// Which view measured the gaps: `sender` (an ingress on the node),
    /// `destination` (what arrived at the pods, where no ingress measured
    /// a gap), or `both`.
    #[serde(default)]
    pub gap_view: GapView,
}

/// Which view a recommendation's gaps came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapView {
    #[default]
    Sender,
    Destination,
    Both,
}

impl GapView {
    pub fn as_str(self) -> &'static str {
        match self {
            GapView::Sender => "sender",
            GapView::Destination => "destination",
            GapView::Both => "both",
        }
    }

    fn of(samples: &[&Sample]) -> GapView {
        let from_arrivals = samples.iter().filter(|s| s.from_arrivals).count();
        match from_arrivals {
            0 => GapView::Sender,
            n if n == samples.len() => GapView::Destination,
            _ => GapView::Both,
        }
    }
}

/// The samples of one group, as [`recommend`] reads them.
pub struct Group<'a> {
    pub key: &'a GroupKey,
    /// Oldest first.
    pub samples: &'a [&'a Sample],
    pub ready_too_early: u64,
}

/// Nearest-rank quantile of ascending `sorted`: the smallest value with at
/// least `q` of the values at or below it. Never interpolates below an
/// observed gap.
pub fn nearest_rank(sorted: &[i64], q: f64) -> i64 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    // The epsilon keeps 0.9 × 10 = 9.000000000000002 at rank 9.
    let rank = (q.clamp(0.0, 1.0) * n as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Whole seconds, rounded up.
fn ceil_seconds(ns: i64) -> u64 {
    (ns.max(0) as u64).div_ceil(1_000_000_000)
}

/// Seconds for sentences, rounded up to a tenth so a displayed gap is never
/// smaller than the measured one; whole numbers without a decimal.
fn fmt_seconds(ns: i64) -> String {
    let tenths = (ns.max(0) as u64).div_ceil(100_000_000);
    if tenths.is_multiple_of(10) {
        format!("{}", tenths / 10)
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

fn fmt_config_seconds(seconds: f64) -> String {
    if seconds.fract() == 0.0 {
        format!("{seconds:.0}")
    } else {
        format!("{seconds:.1}")
    }
}

/// `p99`, `p99.5`, `p50`.
fn quantile_label(q: f64) -> String {
    let percent = q * 100.0;
    if (percent - percent.round()).abs() < 1e-9 {
        format!("p{}", percent.round() as i64)
    } else {
        format!("p{}", (percent * 10.0).round() / 10.0)
    }
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

pub fn recommend(group: &Group<'_>, config: &RecommendConfig) -> Recommendation {
    let mut gaps: Vec<i64> = group.samples.iter().map(|s| s.gap_ns.max(0)).collect();
    gaps.sort_unstable();
    let n = gaps.len();
    let max = gaps.last().copied().unwrap_or(0);
    let used_max = n < config.min_samples;
    let covered = if used_max {
        max
    } else {
        nearest_rank(&gaps, config.quantile)
    };
    let margin_ns = i64::try_from(config.margin.as_nanos()).unwrap_or(i64::MAX);
    let prestop = ceil_seconds(covered.saturating_add(margin_ns));
    let drain = ceil_seconds(i64::try_from(config.drain.as_nanos()).unwrap_or(i64::MAX));
    let grace = prestop + drain;
    let latest = group.samples.last();
    let configured_prestop = latest
        .and_then(|s| s.configured_prestop_ms)
        .map(|ms| ms as f64 / 1000.0);
    let configured_grace = latest
        .and_then(|s| s.termination_grace_period_seconds)
        .map(i64::from);
    let mut failed = FailureCounts::default();
    let mut served = 0;
    for s in group.samples {
        s.failures.add_to(&mut failed);
        served += u64::from(s.served_after_deletion);
    }
    let (namespace, service, workload) = match group.key {
        GroupKey::Service { namespace, service } => {
            let first = group.samples.first().and_then(|s| s.workload.clone());
            let shared = group.samples.iter().all(|s| s.workload == first);
            let workload = first.filter(|_| shared).map(|w| w.to_string());
            (namespace, Some(service.clone()), workload)
        }
        GroupKey::Workload {
            namespace,
            workload,
        } => (namespace, None, Some(workload.clone())),
    };
    let measure = Measure {
        samples: n,
        covered_ns: covered,
        used_max,
        label: if used_max {
            "max".to_owned()
        } else {
            quantile_label(config.quantile)
        },
        prestop,
        drain,
        grace,
        margin_ns,
    };
    let verdict = verdict(
        &measure,
        config,
        configured_prestop,
        configured_grace,
        &failed,
        served,
        group.ready_too_early,
    );
    let target = service
        .as_deref()
        .map(|s| format!("service {namespace}/{s}"))
        .or_else(|| {
            workload
                .as_deref()
                .map(|w| format!("workload {namespace}/{w}"))
        })
        .unwrap_or_else(|| namespace.clone());
    let container = latest
        .and_then(|s| s.container.as_deref())
        .unwrap_or("app")
        .to_owned();
    let yaml = pod_spec_yaml(&measure, &target, &container);
    let sigterm_delay = sigterm_delay_paragraph(&measure);
    Recommendation {
        namespace: namespace.clone(),
        service,
        workload,
        samples: n,
        p50_ms: ms(nearest_rank(&gaps, 0.50)),
        p90_ms: ms(nearest_rank(&gaps, 0.90)),
        p99_ms: ms(nearest_rank(&gaps, 0.99)),
        max_ms: ms(max),
        quantile: config.quantile,
        margin_ms: config.margin.as_millis() as u64,
        used_max,
        recommended_prestop_seconds: prestop,
        recommended_termination_grace_period_seconds: grace,
        configured_prestop_seconds: configured_prestop,
        configured_termination_grace_period_seconds: configured_grace,
        failed_connects: failed,
        verdict,
        yaml,
        sigterm_delay,
        gap_view: GapView::of(group.samples),
    }
}

/// For apps without a preStop hook: the same duration, spent by the app.
fn sigterm_delay_paragraph(m: &Measure) -> String {
    format!(
        "Without a preStop hook (an image with no sleep binary before Kubernetes 1.30, or a \
         platform that runs no hooks), the app can protect itself: when SIGTERM arrives, keep \
         the listener open and keep serving for {} s, the time this node's ingress still chose \
         the pod after termination began (plus margin); then stop accepting, let requests in \
         flight finish within the {} s drain, and exit. Keep terminationGracePeriodSeconds at {}.",
        m.prestop, m.drain, m.grace
    )
}

/// The figures the sentences and the YAML are made of.
struct Measure {
    samples: usize,
    /// The gap the preStop must cover (quantile, or max).
    covered_ns: i64,
    used_max: bool,
    /// `p99` or `max`.
    label: String,
    prestop: u64,
    drain: u64,
    grace: u64,
    margin_ns: i64,
}

fn verdict(
    m: &Measure,
    config: &RecommendConfig,
    configured_prestop: Option<f64>,
    configured_grace: Option<i64>,
    failed: &FailureCounts,
    served: u64,
    ready_too_early: u64,
) -> Vec<String> {
    let mut out = Vec::new();
    let gap = fmt_seconds(m.covered_ns);
    let label = &m.label;
    let r = m.prestop;
    if m.used_max {
        out.push(format!(
            "only {} terminations measured (fewer than {}): the maximum gap is used instead of the {}",
            m.samples,
            config.min_samples,
            quantile_label(config.quantile)
        ));
    }
    match configured_prestop {
        // Without a preStop, connects after deletion that all succeeded
        // mean the app keeps serving after SIGTERM by itself.
        None if m.covered_ns > 0 && served > 0 && failed.total() == 0 => out.push(format!(
            "no preStop sleep configured, but the app kept accepting connects after termination began ({served} served, none failed): it delays its own shutdown after SIGTERM; keep that delay at {r} s or more, or move it into a preStop sleep of {r} s"
        )),
        None if m.covered_ns > 0 => out.push(format!(
            "no preStop sleep configured but the {label} gap is {gap} s: expect refused connects; set preStop to {r} s"
        )),
        None => out.push(format!(
            "no preStop sleep configured and no connect arrived after termination began: {r} s adds a safety margin"
        )),
        Some(c) => {
            let c_ns = (c * 1e9) as i64;
            let cs = fmt_config_seconds(c);
            if c_ns < m.covered_ns {
                out.push(format!(
                    "preStop {cs} s < {label} gap {gap} s: expect refused connects; raise it to {r} s"
                ));
            } else if c_ns < m.covered_ns.saturating_add(m.margin_ns) {
                out.push(format!(
                    "preStop {cs} s covers the {label} gap {gap} s but not the {} s margin: raise it to {r} s",
                    fmt_seconds(m.margin_ns)
                ));
            } else if c > r as f64 {
                out.push(format!(
                    "preStop {cs} s covers the {label} gap {gap} s; {r} s would do and end terminations {} s sooner",
                    fmt_config_seconds(c - r as f64)
                ));
            } else {
                out.push(format!("preStop {cs} s covers the {label} gap {gap} s"));
            }
        }
    }
    let (g, default_note) = match configured_grace {
        Some(g) => (g, ""),
        None => (DEFAULT_GRACE_SECONDS, " (the default)"),
    };
    if g < m.grace as i64 {
        out.push(format!(
            "terminationGracePeriodSeconds {g}{default_note} < preStop {r} s + drain {} s: the app is killed before it finishes draining; set it to {}",
            m.drain, m.grace
        ));
    } else {
        out.push(format!(
            "terminationGracePeriodSeconds {g}{default_note} covers preStop {r} s + drain {} s",
            m.drain
        ));
    }
    if failed.total() > 0 {
        let by_class: Vec<String> = FailureClass::ALL
            .iter()
            .filter(|c| failed.get(**c) > 0)
            .map(|c| format!("{} {}", failed.get(*c), c.as_str()))
            .collect();
        out.push(format!(
            "{} connects failed after termination began ({})",
            failed.total(),
            by_class.join(", ")
        ));
    }
    if ready_too_early > 0 {
        out.push(format!(
            "{ready_too_early} connects failed within {} s of a pod becoming ready: the readiness probe reports ready before the app accepts connections",
            READY_TOO_EARLY.as_secs()
        ));
    }
    out
}

/// A PodSpec fragment (`spec.template.spec` of the workload) with the
/// native sleep action, and the exec variant for clusters before 1.30 as
/// a commented-out alternative of the same shape.
fn pod_spec_yaml(m: &Measure, target: &str, container: &str) -> String {
    let mut y = String::new();
    let covered = fmt_seconds(m.covered_ns);
    let margin = fmt_seconds(m.margin_ns);
    let _ = writeln!(
        y,
        "# {target}: preStop = {} gap {covered} s + {margin} s margin, rounded up;",
        m.label
    );
    let _ = writeln!(
        y,
        "# terminationGracePeriodSeconds = preStop + {} s drain. Merge into spec.template.spec.",
        m.drain
    );
    let _ = writeln!(y, "terminationGracePeriodSeconds: {}", m.grace);
    let _ = writeln!(y, "containers:");
    let _ = writeln!(y, "  - name: {container}");
    let _ = writeln!(y, "    lifecycle:");
    let _ = writeln!(y, "      preStop:");
    let _ = writeln!(y, "        sleep:");
    let _ = writeln!(y, "          seconds: {}", m.prestop);
    let _ = writeln!(
        y,
        "# Kubernetes < 1.30 has no sleep action; use an exec hook (the image needs a sleep binary):"
    );
    let _ = writeln!(y, "# terminationGracePeriodSeconds: {}", m.grace);
    let _ = writeln!(y, "# containers:");
    let _ = writeln!(y, "#   - name: {container}");
    let _ = writeln!(y, "#     lifecycle:");
    let _ = writeln!(y, "#       preStop:");
    let _ = writeln!(y, "#         exec:");
    let _ = writeln!(y, "#           command: [\"sleep\", \"{}\"]", m.prestop);
    let _ = writeln!(
        y,
        "# No preStop hook possible (no sleep binary, a runtime without hooks)? Delay the"
    );
    let _ = writeln!(
        y,
        "# shutdown in the app: on SIGTERM keep accepting and serving for {} s, then close the",
        m.prestop
    );
    let _ = writeln!(
        y,
        "# listener, finish requests in flight (up to {} s) and exit. Same terminationGracePeriodSeconds.",
        m.drain
    );
    y
}
