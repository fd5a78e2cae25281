//! The lab's report: the scenario, per termination the truth next to the
//! measurement, what the users saw, the recommendation, and (with
//! `--verify`) what remained with the recommended preStop. Serialized as
//! JSON; [`render_summary`] gives the same as a table for people.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;

/// The scenario as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub pods: u32,
    pub rollouts: u32,
    pub propagation_delay_ms: u64,
    pub jitter_ms: u64,
    pub prestop_ms: u64,
    /// The pods' terminationGracePeriodSeconds, in ms.
    #[serde(default)]
    pub termination_grace_ms: u64,
    pub drain_ms: u64,
    /// How long the pods' app took to answer each request.
    #[serde(default)]
    pub app_latency_ms: u64,
    pub qps: u32,
    pub seed: u64,
    /// "ipv4" or "ipv6".
    pub ip_family: String,
    pub reuse_ips: bool,
    /// The kubelet's readiness probe period; 0: no probes.
    #[serde(default)]
    pub probe_period_ms: u64,
    /// The bystander's requests a second straight to pod IPs; 0: none.
    #[serde(default)]
    pub bystander_qps: u32,
    /// Idle connections each nginx worker keeps to the pods; 0: one
    /// connection per request (what reports without the field ran).
    #[serde(default)]
    pub upstream_keepalive: u32,
    /// The lab's ingress: `nginx` or `haproxy`.
    #[serde(default = "nginx")]
    pub ingress: String,
    /// The ingress sent through the Service's ClusterIP (`--via-service`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_service: bool,
}

fn nginx() -> String {
    "nginx".into()
}

pub use crate::engine::ConnectorActivity;
pub use crate::engine::connector::ConnectorRole;

/// A connector as reported: its last connect relative to deletion_seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectorReport {
    pub name: String,
    pub role: ConnectorRole,
    pub connects: u64,
    pub failures: u64,
    /// last connect − deletion_seen; null when it made none.
    pub last_connect_ms: Option<f64>,
}

impl ConnectorReport {
    pub fn new(a: &ConnectorActivity, deletion_seen: MonoTime) -> ConnectorReport {
        ConnectorReport {
            name: a.name.clone(),
            role: a.role,
            connects: a.connects,
            failures: a.failures,
            last_connect_ms: a
                .last_connect
                .map(|t| t.signed_since(deletion_seen) as f64 / 1e6),
        }
    }
}

/// Requests the pods answered, by who sent them: proof that the kubelet
/// and the bystander really ran next to the ingress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedReport {
    pub ingress: u64,
    pub kubelet: u64,
    pub bystander: u64,
    pub other: u64,
}

/// Failed connects by the kernel's class: the engine's own counts.
pub use crate::engine::FailureCounts;

/// One terminated pod: truth next to measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminationReport {
    pub pod: String,
    pub ip: IpAddr,
    /// The truth's choice gap (last choice − deletion), from nginx's access
    /// log; null when nginx chose the pod for no request after deletion.
    pub truth_gap_ms: Option<f64>,
    /// The truth's last send (any try, retries included) − deletion.
    #[serde(default)]
    pub truth_last_send_ms: Option<f64>,
    /// The truth's retries at the pod after deletion.
    #[serde(default)]
    pub retries: u64,
    /// The truth's tries at the pod over pooled connections after deletion.
    #[serde(default)]
    pub pooled_tries: u64,
    /// The truth's requests cut in flight at the pod after deletion.
    #[serde(default)]
    pub cut_requests: u64,
    /// From the measurement (its propagation gap); null when it saw no
    /// choice after deletion.
    pub measured_gap_ms: Option<f64>,
    /// The measurement's last send − deletion_seen, when it tells.
    #[serde(default)]
    pub measured_last_send_ms: Option<f64>,
    /// The destination side's view: the ingress's (or the external load
    /// balancer's) last arrival at the pod − deletion_seen, seen by the
    /// pod's node's kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_last_arrival_ms: Option<f64>,
    /// The sender side's last send against the destination side's last
    /// arrival of the same ingress (arrival − send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views_apart_ms: Option<f64>,
    pub failures: FailureCounts,
    /// Of `failures`, those the measurement found the ingress retried
    /// elsewhere (hidden from users), when it tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_retried: Option<u64>,
    /// The wire truth: the ingress's last SYN or data segment to the pod
    /// on the lab's bridge − deletion.
    #[serde(default)]
    pub wire_last_send_ms: Option<f64>,
    /// The wire saw the ingress ask for the pod's link address after its
    /// last segment: connects queued behind an unanswered neighbour
    /// solicitation never reach the wire, so the wire's last send is a
    /// lower bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wire_unresolved: bool,
    /// Who connected after the deletion, as the measurement tells them
    /// apart (empty when it does not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connectors: Vec<ConnectorReport>,
}

impl TerminationReport {
    /// |measured − truth| of the choice gap, in ms. "Nothing after the deletion" counts as a
    /// gap of 0 on either side (the engine reports it as 0).
    pub fn error_ms(&self) -> f64 {
        (self.measured_gap_ms.unwrap_or(0.0) - self.truth_gap_ms.unwrap_or(0.0)).abs()
    }

    /// |truth − wire| of the last send, in ms, where both exist and the
    /// wire saw every send.
    pub fn wire_error_ms(&self) -> Option<f64> {
        if self.wire_unresolved {
            return None;
        }
        Some((self.truth_last_send_ms? - self.wire_last_send_ms?).abs())
    }

    /// |destination side's last arrival − wire's last send|, in ms, where
    /// both exist and the wire saw every send ("nothing after the
    /// deletion" counts as 0).
    pub fn arrival_error_ms(&self) -> Option<f64> {
        if self.wire_unresolved {
            return None;
        }
        let arrival = self.measured_last_arrival_ms?;
        Some((arrival - self.wire_last_send_ms.unwrap_or(0.0)).abs())
    }

    /// |measured − truth| of the last send, in ms, when the measurement
    /// tells its last send ("nothing after the deletion" counts as 0).
    pub fn last_send_error_ms(&self) -> Option<f64> {
        let measured = self.measured_last_send_ms?;
        Some((measured - self.truth_last_send_ms.unwrap_or(0.0)).abs())
    }
}

pub use super::truth::TryTotals;

/// What the users saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientReport {
    pub requests: u64,
    pub errors: u64,
}

/// The preStop and grace period to configure: the engine's recommendation
/// (the lab has no formula of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    pub prestop_seconds: u64,
    pub termination_grace_period_seconds: u64,
}

/// The rerun with the recommended preStop and grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub prestop_seconds: u64,
    #[serde(default)]
    pub termination_grace_period_seconds: u64,
    pub failed_connects: u64,
    pub client_errors: u64,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabReport {
    pub scenario: ScenarioSummary,
    pub terminations: Vec<TerminationReport>,
    pub client: ClientReport,
    /// Every try in nginx's log over the run (the truth's raw material).
    #[serde(default)]
    pub ingress: TryTotals,
    #[serde(default)]
    pub served: ServedReport,
    pub recommendation: Option<Recommendation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
    /// The ingress's failures: hidden by its retries or seen by users.
    #[serde(default)]
    pub hidden: HiddenReport,
    /// How the wire capture went.
    #[serde(default)]
    pub wire: WireReport,
}

/// Failed connects the ingress retried elsewhere (hidden: users got a
/// slower answer) and those it did not (users got an error), as measured
/// and as the ingress's own records tell (nginx: its access log's tries;
/// HAProxy: its log's connect retries and server-side failures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiddenReport {
    pub measured_retried: u64,
    pub measured_not_retried: u64,
    pub truth_retried: u64,
    pub truth_not_retried: u64,
    /// Of `truth_retried`, the retries that went over a pooled connection
    /// (nginx tells; HAProxy's log does not, and its lab pools nothing):
    /// they make no connect, so the kernel counts their failures as not
    /// retried.
    #[serde(default)]
    pub truth_retried_pooled: u64,
}

impl HiddenReport {
    /// |measured − truth| / truth of the retried count, in percent (0 when
    /// both are 0).
    pub fn retried_error_percent(&self) -> f64 {
        percent_off(self.measured_retried, self.truth_retried)
    }

    pub fn not_retried_error_percent(&self) -> f64 {
        percent_off(self.measured_not_retried, self.truth_not_retried)
    }

    /// The retries a connect-level view can see: those that opened a
    /// connection.
    pub fn visible_retried(&self) -> u64 {
        self.truth_retried - self.truth_retried_pooled.min(self.truth_retried)
    }

    /// |measured − truth| / truth of the retried count, against the
    /// retries that opened a connection.
    pub fn visible_retried_error_percent(&self) -> f64 {
        percent_off(self.measured_retried, self.visible_retried())
    }

    /// |measured − truth| / truth of the not-retried count, with the
    /// pooled retries' failures counted where the kernel counts them.
    pub fn visible_not_retried_error_percent(&self) -> f64 {
        let pooled = self.truth_retried - self.visible_retried();
        percent_off(self.measured_not_retried, self.truth_not_retried + pooled)
    }
}

fn percent_off(measured: u64, truth: u64) -> f64 {
    if measured == truth {
        return 0.0;
    }
    (measured as f64 - truth as f64).abs() * 100.0 / (truth.max(1) as f64)
}

/// The wire capture's own account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReport {
    /// Frames the kernel dropped from the capture (the truth is incomplete
    /// when not zero).
    pub dropped: u64,
    /// How far realtime − monotonic moved over the capture, ns.
    pub clock_drift_ns: i64,
}

impl LabReport {
    /// Failed connects over every termination.
    pub fn failed_connects(&self) -> u64 {
        self.terminations.iter().map(|t| t.failures.total()).sum()
    }

    /// Requests cut in flight over the run (the truth's).
    pub fn cut_requests(&self) -> u64 {
        self.ingress.cut_requests
    }

    /// Every failed connect was hidden by a retry: users saw no error, but
    /// the rollout was not clean (their answers were slower).
    pub fn only_hidden_failures(&self) -> bool {
        self.client.errors == 0 && self.failed_connects() > 0
    }

    /// The largest |measured − truth| over terminations where both exist.
    pub fn max_error_ms(&self) -> Option<f64> {
        self.terminations
            .iter()
            .map(TerminationReport::error_ms)
            .reduce(f64::max)
    }

    /// The largest |destination-side last arrival − wire last send| over
    /// the terminations where both tell.
    pub fn max_arrival_error_ms(&self) -> Option<f64> {
        self.terminations
            .iter()
            .filter_map(TerminationReport::arrival_error_ms)
            .reduce(f64::max)
    }
}

/// Per connector name: its role and its latest last connect over every
/// termination, relative to that termination's deletion_seen.
fn render_connectors(out: &mut String, report: &LabReport) {
    let mut latest: std::collections::BTreeMap<(ConnectorRole, &str), Option<f64>> =
        Default::default();
    for c in report.terminations.iter().flat_map(|t| &t.connectors) {
        let slot = latest.entry((c.role, c.name.as_str())).or_default();
        *slot = match (*slot, c.last_connect_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    if latest.is_empty() {
        out.push_str("connectors: none told apart by this measurement\n");
        return;
    }
    out.push_str("connectors:\n");
    for ((role, name), last) in latest {
        let until = last.map_or_else(
            || "no connect after deletion".to_string(),
            |ms| format!("until {:+.1} s", ms / 1e3),
        );
        let _ = writeln!(out, "  {name} ({}) {until}", role.as_str());
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

/// A table for people: one row per termination, then the totals.
pub fn render_summary(report: &LabReport) -> String {
    let s = &report.scenario;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab ({}{}): {} pods, {} rollouts, propagation delay {} ms ± {} ms, preStop {} ms, grace {} s, drain {} ms, app latency {} ms, {} qps, {}{}, {}; probes every {} ms, bystander {} qps",
        s.ingress,
        if s.via_service {
            " via a ClusterIP"
        } else {
            ""
        },
        s.pods,
        s.rollouts,
        s.propagation_delay_ms,
        s.jitter_ms,
        s.prestop_ms,
        s.termination_grace_ms / 1000,
        s.drain_ms,
        s.app_latency_ms,
        s.qps,
        s.ip_family,
        if s.reuse_ips { ", IPs reused" } else { "" },
        if s.upstream_keepalive == 0 {
            "keep-alive 0 (a connection per request)".to_string()
        } else {
            format!("keep-alive {}", s.upstream_keepalive)
        },
        s.probe_period_ms,
        s.bystander_qps,
    );
    // CHOICE and LAST SEND are the truth's (nginx's log); MEASURED and
    // ERR compare the measurement's gap with the truth's choice gap.
    let _ = writeln!(
        out,
        "{:<28} {:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6} {:>5} {:>8} {:>8} {:>6}",
        "POD",
        "IP",
        "CHOICE ms",
        "LAST SEND",
        "WIRE",
        "ARRIVAL",
        "MEASURED",
        "ERR ms",
        "RETRY",
        "POOLED",
        "CUT",
        "REFUSED",
        "UNREACH",
        "OTHER"
    );
    for t in &report.terminations {
        let f = &t.failures;
        let _ = writeln!(
            out,
            "{:<28} {:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6} {:>5} {:>8} {:>8} {:>6}",
            t.pod,
            t.ip.to_string(),
            ms(t.truth_gap_ms),
            ms(t.truth_last_send_ms),
            format!(
                "{}{}",
                ms(t.wire_last_send_ms),
                if t.wire_unresolved { "+" } else { "" }
            ),
            ms(t.measured_last_arrival_ms),
            ms(t.measured_gap_ms),
            ms(Some(t.error_ms())),
            t.retries,
            t.pooled_tries,
            t.cut_requests,
            f.refused,
            f.host_unreachable + f.net_unreachable,
            f.timed_out + f.aborted + f.reset + f.cut + f.other,
        );
    }
    let _ = writeln!(
        out,
        "client: {} requests, {} errors; requests cut in flight: {}; failed connects: {}; largest error: {} ms",
        report.client.requests,
        report.client.errors,
        report.cut_requests(),
        report.failed_connects(),
        ms(report.max_error_ms()),
    );
    if let Some(largest) = report.max_arrival_error_ms() {
        let apart = report
            .terminations
            .iter()
            .filter_map(|t| t.views_apart_ms)
            .map(f64::abs)
            .reduce(f64::max);
        let _ = writeln!(
            out,
            "destination side (ARRIVAL: the {} last SYN or request that reached the pod, seen by the pod's node): largest error against the wire {} ms{}",
            if s.ingress == "external" {
                "load balancer's"
            } else {
                "ingress's"
            },
            ms(Some(largest)),
            match apart {
                Some(apart) => format!(
                    "; sender and destination views at most {} ms apart",
                    ms(Some(apart))
                ),
                None => String::new(),
            }
        );
    }
    let n = &report.ingress;
    if s.ingress == "nginx" {
        let _ = writeln!(
            out,
            "nginx: {} requests, {} tries: {} pooled, {} on new connections, {} retries, {} cut in flight",
            n.requests, n.tries, n.pooled_tries, n.new_connection_tries, n.retries, n.cut_requests
        );
    } else {
        let _ = writeln!(
            out,
            "{}: {} requests, {} connect retries",
            s.ingress, n.requests, n.retries
        );
    }
    let h = &report.hidden;
    let _ = writeln!(
        out,
        "failed connects: {} retried elsewhere (hidden), {} not retried; the ingress's own records: {} retried, {} not retried",
        h.measured_retried, h.measured_not_retried, h.truth_retried, h.truth_not_retried
    );
    if h.truth_retried_pooled > 0 {
        let _ = writeln!(
            out,
            "  of the retries, {} went over pooled connections: no connect, so the kernel counts their failures as not retried",
            h.truth_retried_pooled
        );
    }
    if report.only_hidden_failures() {
        out.push_str(
            "hidden failures: users saw no error, but every failed connect cost a retry \
             (a slower answer); this rollout was not clean\n",
        );
    }
    let w = &report.wire;
    let _ = writeln!(
        out,
        "wire: {} frames dropped, clock drift {} µs over the capture (WIRE + : the pod's address stopped resolving, a lower bound)",
        w.dropped,
        w.clock_drift_ns / 1000
    );
    let sv = &report.served;
    let _ = writeln!(
        out,
        "pods served: {} via the ingress, {} kubelet probes, {} bystander requests, {} other",
        sv.ingress, sv.kubelet, sv.bystander, sv.other
    );
    render_connectors(&mut out, report);
    match &report.recommendation {
        Some(r) => {
            let _ = writeln!(
                out,
                "recommendation: preStop sleep {} s, terminationGracePeriodSeconds {}",
                r.prestop_seconds, r.termination_grace_period_seconds
            );
        }
        None => out.push_str("recommendation: none from this measurement\n"),
    }
    if let Some(v) = &report.verify {
        let _ = writeln!(
            out,
            "verify with preStop {} s, terminationGracePeriodSeconds {}: {} failed connects, {} client errors",
            v.prestop_seconds,
            v.termination_grace_period_seconds,
            v.failed_connects,
            v.client_errors
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabReport {
        LabReport {
            scenario: ScenarioSummary {
                pods: 2,
                rollouts: 1,
                propagation_delay_ms: 1000,
                jitter_ms: 0,
                prestop_ms: 0,
                termination_grace_ms: 30_000,
                drain_ms: 0,
                app_latency_ms: 0,
                qps: 100,
                seed: 1,
                ip_family: "ipv4".into(),
                reuse_ips: false,
                probe_period_ms: 500,
                bystander_qps: 20,
                upstream_keepalive: 32,
                ingress: "nginx".into(),
                via_service: false,
            },
            terminations: vec![
                TerminationReport {
                    pod: "web-1".into(),
                    ip: "10.247.1.2".parse().unwrap(),
                    truth_gap_ms: Some(1010.0),
                    truth_last_send_ms: Some(1890.0),
                    retries: 7,
                    pooled_tries: 55,
                    cut_requests: 2,
                    measured_gap_ms: Some(1012.5),
                    measured_last_send_ms: None,
                    measured_last_arrival_ms: Some(1890.9),
                    views_apart_ms: None,
                    failures_retried: Some(40),
                    wire_last_send_ms: Some(1890.4),
                    wire_unresolved: false,
                    failures: FailureCounts {
                        refused: 40,
                        host_unreachable: 2,
                        ..Default::default()
                    },
                    connectors: vec![
                        ConnectorReport {
                            name: "ingress-nginx/ingress-nginx-controller-x".into(),
                            role: ConnectorRole::Ingress,
                            connects: 90,
                            failures: 42,
                            last_connect_ms: Some(1012.5),
                        },
                        ConnectorReport {
                            name: "kubelet".into(),
                            role: ConnectorRole::Kubelet,
                            connects: 16,
                            failures: 0,
                            last_connect_ms: Some(7950.0),
                        },
                    ],
                },
                TerminationReport {
                    pod: "web-2".into(),
                    ip: "10.247.1.3".parse().unwrap(),
                    truth_gap_ms: None,
                    truth_last_send_ms: None,
                    retries: 0,
                    pooled_tries: 0,
                    cut_requests: 1,
                    measured_gap_ms: None,
                    measured_last_send_ms: None,
                    measured_last_arrival_ms: None,
                    views_apart_ms: None,
                    failures: FailureCounts::default(),
                    failures_retried: Some(0),
                    wire_last_send_ms: None,
                    wire_unresolved: false,
                    connectors: vec![ConnectorReport {
                        name: "kubelet".into(),
                        role: ConnectorRole::Kubelet,
                        connects: 17,
                        failures: 0,
                        last_connect_ms: Some(8420.0),
                    }],
                },
            ],
            client: ClientReport {
                requests: 900,
                errors: 3,
            },
            ingress: TryTotals {
                requests: 900,
                tries: 960,
                retries: 60,
                pooled_tries: 850,
                new_connection_tries: 47,
                cut_requests: 3,
                failed_retried: 41,
                failed_not_retried: 2,
                failed_retried_pooled: 5,
            },
            served: ServedReport {
                ingress: 900,
                kubelet: 40,
                bystander: 120,
                other: 0,
            },
            recommendation: Some(Recommendation {
                prestop_seconds: 3,
                termination_grace_period_seconds: 33,
            }),
            verify: None,
            hidden: HiddenReport {
                measured_retried: 40,
                measured_not_retried: 2,
                truth_retried: 41,
                truth_not_retried: 2,
                truth_retried_pooled: 5,
            },
            wire: WireReport::default(),
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["scenario"]["ip_family"], "ipv4");
        assert_eq!(v["scenario"]["propagation_delay_ms"], 1000);
        assert_eq!(v["terminations"][0]["failures"]["refused"], 40);
        assert_eq!(v["terminations"][0]["failures"]["timed_out"], 0);
        assert_eq!(v["terminations"][0]["failures"]["other"], 0);
        assert!(v["terminations"][1]["truth_gap_ms"].is_null());
        assert_eq!(v["terminations"][0]["truth_last_send_ms"], 1890.0);
        assert_eq!(v["terminations"][0]["retries"], 7);
        assert_eq!(v["terminations"][0]["pooled_tries"], 55);
        assert_eq!(v["terminations"][0]["cut_requests"], 2);
        assert_eq!(v["scenario"]["upstream_keepalive"], 32);
        assert_eq!(v["ingress"]["pooled_tries"], 850);
        assert_eq!(v["client"]["errors"], 3);
        assert_eq!(v["recommendation"]["prestop_seconds"], 3);
        assert!(v.get("verify").is_none(), "verify only when run");
        assert_eq!(v["scenario"]["probe_period_ms"], 500);
        assert_eq!(v["served"]["kubelet"], 40);
        let c = &v["terminations"][0]["connectors"][1];
        assert_eq!(c["role"], "kubelet");
        assert_eq!(c["last_connect_ms"], 7950.0);
        let back: LabReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn summary_shows_rows_errors_and_totals() {
        let mut report = sample();
        report.verify = Some(VerifyReport {
            prestop_seconds: 3,
            termination_grace_period_seconds: 33,
            failed_connects: 0,
            client_errors: 0,
        });
        let text = render_summary(&report);
        assert!(text.contains("lab (nginx): 2 pods, 1 rollouts, propagation delay 1000 ms"));
        assert!(text.contains(
            "failed connects: 40 retried elsewhere (hidden), 2 not retried; the ingress's own records: 41 retried, 2 not retried"
        ), "{text}");
        assert!(!text.contains("hidden failures:"), "users saw 3 errors");
        assert!((report.hidden.retried_error_percent() - 100.0 / 41.0).abs() < 1e-9);
        let row = text.lines().find(|l| l.starts_with("web-1")).unwrap();
        assert!(row.contains("1010.0") && row.contains("1012.5") && row.contains("2.5"));
        assert!(row.contains("1890.0") && row.contains(" 55 "), "{row}");
        assert!(text.contains(", ipv4, keep-alive 32;"), "{text}");
        assert!(text.contains("requests cut in flight: 3;"), "{text}");
        assert!(text.contains(
            "nginx: 900 requests, 960 tries: 850 pooled, 47 on new connections, 60 retries, 3 cut in flight"
        ));
        assert!(row.contains("40"));
        let empty = text.lines().find(|l| l.starts_with("web-2")).unwrap();
        assert!(empty.contains(" - ") && empty.contains("0.0"));
        assert!(text.contains("failed connects: 42"));
        assert!(text.contains("largest error: 2.5 ms"));
        assert!(text.contains("preStop sleep 3 s, terminationGracePeriodSeconds 33"));
        assert!(text.contains(
            "verify with preStop 3 s, terminationGracePeriodSeconds 33: 0 failed connects, 0 client errors"
        ));
        assert_eq!(report.failed_connects(), 42);
        assert!(
            text.contains("pods served: 900 via the ingress, 40 kubelet probes, 120 bystander")
        );
        assert!(text.contains("  ingress-nginx/ingress-nginx-controller-x (ingress) until +1.0 s"));
        assert!(
            text.contains("  kubelet (kubelet) until +8.4 s"),
            "the latest: {text}"
        );
        let row = text.lines().find(|l| l.starts_with("web-1")).unwrap();
        assert!(row.contains("1890.4"), "the wire's last send: {row}");
    }

    #[test]
    fn failures_users_never_saw_are_reported_as_hidden_not_clean() {
        let mut report = sample();
        report.client.errors = 0;
        let text = render_summary(&report);
        assert!(report.only_hidden_failures());
        assert!(
            text.contains("hidden failures: users saw no error"),
            "{text}"
        );
    }
}
