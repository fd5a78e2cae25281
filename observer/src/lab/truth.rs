//! Ground truth, independent of the probe: when the lab deleted each pod
//! (the kubelet's PodTerminating, stamped on CLOCK_MONOTONIC as it happens)
//! and every try nginx made at that pod's IP after it (from nginx's access
//! log): whether it was a *choice* (the request's first try, on a new or a
//! pooled connection) or a *retry* (made only because an earlier try of the
//! same request failed), whether it went over a pooled connection, and
//! whether it was cut in flight. `truth_gap = last choice − deletion`;
//! `truth_last_send = last try of any kind − deletion`.
//!
//! nginx logs wall-clock times with millisecond resolution; they are
//! converted to CLOCK_MONOTONIC with an offset measured once per run. A try
//! belongs to a pod from its deletion until another pod takes its IP (IP
//! reuse), never by IP alone.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::nginx::AccessEntry;
use super::wire::{WireLog, WireSends};
use crate::clock::MonoTime;
use observer_sim::LifecycleEvent;

/// Converts CLOCK_REALTIME nanoseconds to CLOCK_MONOTONIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallToMono {
    /// realtime − monotonic, in nanoseconds.
    offset_ns: i64,
}

fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl WallToMono {
    /// Reads both clocks back to back, keeping the tightest of a few pairs.
    pub fn measure() -> WallToMono {
        let mut best: Option<(i64, i64)> = None;
        for _ in 0..5 {
            let before = MonoTime::now().as_nanos() as i64;
            let wall = realtime_ns();
            let after = MonoTime::now().as_nanos() as i64;
            let width = after - before;
            let offset = wall - (before + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        WallToMono {
            offset_ns: best.map_or(0, |(_, o)| o),
        }
    }

    pub fn from_offset_ns(offset_ns: i64) -> WallToMono {
        WallToMono { offset_ns }
    }

    /// realtime − monotonic, in nanoseconds.
    pub fn offset_ns(self) -> i64 {
        self.offset_ns
    }

    pub fn to_mono(self, wall_ns: u64) -> MonoTime {
        MonoTime((wall_ns as i64 - self.offset_ns).max(0) as u64)
    }
}

/// One pod's life as the lab saw it, in CLOCK_MONOTONIC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodTimeline {
    pub name: String,
    pub ip: Option<IpAddr>,
    pub starting: Option<MonoTime>,
    pub ready: Option<MonoTime>,
    /// The kubelet saw the deletion: preStop begins.
    pub terminating: Option<MonoTime>,
    pub sigterm: Option<MonoTime>,
    pub deleted: Option<MonoTime>,
}

/// Follows the cluster's lifecycle events and stamps each as it arrives.
pub struct TimelineRecorder {
    pods: Arc<Mutex<Vec<PodTimeline>>>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TimelineRecorder {
    pub fn start(mut events: broadcast::Receiver<LifecycleEvent>) -> TimelineRecorder {
        let pods: Arc<Mutex<Vec<PodTimeline>>> = Arc::default();
        let shared = pods.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => record(&mut lock(&shared), event, MonoTime::now()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "lab: lifecycle events were missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        TimelineRecorder { pods, task }
    }

    pub fn timelines(&self) -> Vec<PodTimeline> {
        lock(&self.pods).clone()
    }
}

impl Drop for TimelineRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies one lifecycle event stamped `at`.
pub fn record(pods: &mut Vec<PodTimeline>, event: LifecycleEvent, at: MonoTime) {
    let (name, ip) = match &event {
        LifecycleEvent::PodCreated { name } => (name, None),
        LifecycleEvent::PodStarting { name, ip }
        | LifecycleEvent::PodReady { name, ip }
        | LifecycleEvent::PodTerminating { name, ip }
        | LifecycleEvent::PodSigterm { name, ip }
        | LifecycleEvent::PodKilled { name, ip } => (name, Some(*ip)),
        LifecycleEvent::PodDeleted { name, ip } => (name, *ip),
        LifecycleEvent::EndpointsUpdated { .. } => return,
    };
    let index = match pods.iter().position(|p| &p.name == name) {
        Some(i) => i,
        None => {
            pods.push(PodTimeline {
                name: name.clone(),
                ..Default::default()
            });
            pods.len() - 1
        }
    };
    let pod = &mut pods[index];
    if ip.is_some() {
        pod.ip = ip;
    }
    let slot = match event {
        LifecycleEvent::PodStarting { .. } => &mut pod.starting,
        LifecycleEvent::PodReady { .. } => &mut pod.ready,
        LifecycleEvent::PodTerminating { .. } => &mut pod.terminating,
        LifecycleEvent::PodSigterm { .. } => &mut pod.sigterm,
        LifecycleEvent::PodDeleted { .. } => &mut pod.deleted,
        _ => return,
    };
    slot.get_or_insert(at);
}

/// The truth for one terminated pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodTruth {
    pub pod: String,
    pub ip: IpAddr,
    pub deletion: MonoTime,
    /// The latest start of a try at the pod after its deletion that was its
    /// request's first try (a new connection or a pooled one).
    pub last_choice: Option<MonoTime>,
    /// The latest start of any try at the pod after its deletion, retries
    /// included.
    pub last_send: Option<MonoTime>,
    /// `last_choice − deletion` in milliseconds: the propagation gap. None
    /// when nginx chose the pod for no request after the deletion.
    pub truth_gap_ms: Option<f64>,
    /// `last_send − deletion` in milliseconds; None when nginx sent nothing
    /// after the deletion.
    pub truth_last_send_ms: Option<f64>,
    pub tries_after_deletion: u64,
    /// Tries after the deletion that nginx logged as failed (502/504).
    pub failed_tries: u64,
    /// Tries after the deletion that were retries of a failed try.
    pub retries: u64,
    /// Tries after the deletion that went over a pooled connection (the
    /// pod answered them as a later request of their connection).
    pub pooled_tries: u64,
    /// Requests cut in flight after the deletion: nginx had a connection
    /// and sent the request, and the connection closed before any answer.
    /// Counted by when the cut happened (the try's end), since a request
    /// sent just before the deletion is cut by the app's exit after it.
    pub cut_requests: u64,
    /// What the wire saw the ingress send to the pod's address from the
    /// deletion until another pod took it.
    pub wire: WireSends,
}

impl PodTruth {
    /// For an ingress whose log does not say where each try went
    /// (HAProxy): the wire is the truth. It cannot tell a retry from a
    /// choice, so the last send is taken for both.
    pub fn take_wire_as_truth(&mut self) {
        self.last_send = self.wire.last_send();
        self.last_choice = self.last_send;
        self.truth_gap_ms = ms_since(self.last_choice, self.deletion);
        self.truth_last_send_ms = ms_since(self.last_send, self.deletion);
    }

    /// The wire's last send − deletion, in ms.
    pub fn wire_last_send_ms(&self) -> Option<f64> {
        ms_since(self.wire.last_send(), self.deletion)
    }
}

/// Every try in nginx's log over the whole run: how much it pooled,
/// retried, and how many requests the pods' exits cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryTotals {
    /// Requests nginx logged.
    pub requests: u64,
    /// Tries at an upstream (a request has one or more).
    pub tries: u64,
    pub retries: u64,
    /// Tries the pods answered on a pooled connection.
    pub pooled_tries: u64,
    /// Tries the pods answered as the first request of a new connection.
    pub new_connection_tries: u64,
    /// Tries cut in flight.
    pub cut_requests: u64,
    /// Failed tries nginx retried on another upstream (hidden from the
    /// user), and failed tries that were their request's last (the user
    /// got the error).
    #[serde(default)]
    pub failed_retried: u64,
    #[serde(default)]
    pub failed_not_retried: u64,
    /// Of the retried failures, those whose retry went over a pooled
    /// connection: no connect, so the kernel cannot see the retry
    /// (docs/ENGINE.md, "Hidden failures").
    #[serde(default)]
    pub failed_retried_pooled: u64,
}

impl TryTotals {
    pub fn from_log(log: &[AccessEntry]) -> TryTotals {
        let mut t = TryTotals {
            requests: log.len() as u64,
            ..TryTotals::default()
        };
        for entry in log {
            let last = entry.tries.len().saturating_sub(1);
            for (i, try_) in entry.tries.iter().enumerate() {
                if try_.failed() {
                    if i < last {
                        t.failed_retried += 1;
                        let next = &entry.tries[i + 1];
                        t.failed_retried_pooled += u64::from(next.pooled == Some(true));
                    } else {
                        t.failed_not_retried += 1;
                    }
                }
            }
        }
        for try_ in log.iter().flat_map(|e| &e.tries) {
            t.tries += 1;
            t.retries += u64::from(try_.retry);
            t.cut_requests += u64::from(try_.cut());
            match (try_.answered, try_.pooled) {
                (true, Some(true)) => t.pooled_tries += 1,
                (true, Some(false)) => t.new_connection_tries += 1,
                _ => {}
            }
        }
        t
    }
}

fn ms_since(t: Option<MonoTime>, since: MonoTime) -> Option<f64> {
    t.map(|t| t.signed_since(since) as f64 / 1e6)
}

/// How far a time computed from nginx's log (a start and a duration, each
/// in whole milliseconds) can lie before the event.
const LOG_RESOLUTION_NS: u64 = 2_000_000;

/// Computes each terminated pod's truth from its timeline and the log.
pub fn compute_truth(
    pods: &[PodTimeline],
    log: &[AccessEntry],
    clock: WallToMono,
    wire: &WireLog,
) -> Vec<PodTruth> {
    let mut out = Vec::new();
    for pod in pods {
        let (Some(ip), Some(deletion)) = (pod.ip, pod.terminating) else {
            continue;
        };
        // The window ends when another pod starts on the same IP.
        let end = pods
            .iter()
            .filter(|o| o.name != pod.name && o.ip == Some(ip))
            .filter_map(|o| o.starting)
            .filter(|&s| s > deletion)
            .min();
        let mut truth = PodTruth {
            pod: pod.name.clone(),
            ip,
            deletion,
            last_choice: None,
            last_send: None,
            truth_gap_ms: None,
            truth_last_send_ms: None,
            tries_after_deletion: 0,
            failed_tries: 0,
            retries: 0,
            pooled_tries: 0,
            cut_requests: 0,
            wire: wire.sends_to(ip, deletion, end),
        };
        for try_ in log.iter().flat_map(|e| &e.tries) {
            if try_.addr.ip() != ip {
                continue;
            }
            let in_window = |t: MonoTime| t >= deletion && end.is_none_or(|end| t < end);
            // nginx logs its times in whole milliseconds: a cut by the
            // app's exit a moment after the deletion can read as ending
            // up to two of them before it.
            let ended = clock.to_mono(
                try_.start_wall_ns
                    .saturating_add(try_.duration_ns)
                    .saturating_add(LOG_RESOLUTION_NS),
            );
            truth.cut_requests += u64::from(try_.cut() && in_window(ended));
            let at = clock.to_mono(try_.start_wall_ns);
            if !in_window(at) {
                continue;
            }
            truth.tries_after_deletion += 1;
            truth.failed_tries += u64::from(try_.failed());
            truth.pooled_tries += u64::from(try_.pooled == Some(true));
            if try_.retry {
                truth.retries += 1;
            } else {
                truth.last_choice = truth.last_choice.max(Some(at));
            }
            truth.last_send = truth.last_send.max(Some(at));
        }
        truth.truth_gap_ms = ms_since(truth.last_choice, deletion);
        truth.truth_last_send_ms = ms_since(truth.last_send, deletion);
        out.push(truth);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::nginx::UpstreamTry;

    const MS: u64 = 1_000_000;

    fn entry(tries: &[(&str, u64, u16)]) -> AccessEntry {
        AccessEntry {
            end_wall_ns: 0,
            status: 200,
            tries: tries
                .iter()
                .enumerate()
                .map(|(i, (a, t, s))| UpstreamTry {
                    addr: a.parse().unwrap(),
                    start_wall_ns: *t,
                    duration_ns: 0,
                    status: Some(*s),
                    retry: i > 0,
                    connected: *s == 200,
                    answered: *s == 200,
                    pooled: Some(false),
                })
                .collect(),
        }
    }

    fn timeline(name: &str, ip: &str, starting: u64, terminating: Option<u64>) -> PodTimeline {
        PodTimeline {
            name: name.into(),
            ip: Some(ip.parse().unwrap()),
            starting: Some(MonoTime(starting)),
            terminating: terminating.map(MonoTime),
            ..Default::default()
        }
    }

    #[test]
    fn gap_is_last_choice_after_deletion() {
        // Wall clock runs 1000 s ahead of the monotonic one.
        let clock = WallToMono::from_offset_ns(1_000_000 * MS as i64);
        let wall = |mono_ms: u64| (1_000_000 + mono_ms) * MS;
        let pods = vec![
            timeline("a", "10.0.0.2", 0, Some(5_000 * MS)),
            timeline("b", "10.0.0.3", 0, None),
        ];
        let log = vec![
            entry(&[("10.0.0.2:8080", wall(4_000), 200)]),
            entry(&[
                ("10.0.0.2:8080", wall(6_000), 502),
                ("10.0.0.3:8080", wall(6_000), 200),
            ]),
            entry(&[("10.0.0.2:8080", wall(7_250), 502)]),
            entry(&[("10.0.0.3:8080", wall(9_000), 200)]),
        ];
        let truth = compute_truth(&pods, &log, clock, &WireLog::default());
        assert_eq!(truth.len(), 1, "only terminated pods have a truth");
        assert_eq!(truth[0].pod, "a");
        assert_eq!(truth[0].truth_gap_ms, Some(2_250.0));
        assert_eq!(truth[0].tries_after_deletion, 2);
        assert_eq!(truth[0].failed_tries, 2);
    }

    /// Lines from a lab run with keep-alive 32 and no preStop (nginx 1.22):
    /// the pods' exit at the deletion turns pooled sends into refused
    /// connects, retried on the other pod, and cuts one request.
    const REAL_LOG: &str = r#"1796182004.200 0.001 200 "10.247.31.2:8080" "0.000" "200" "0.000" "0.000" "103"
1796182004.204 0.000 200 "10.247.31.3:8080, 10.247.31.2:8080" "0.000, 0.000" "502, 200" "-, 0.000" "-, 0.000" "104"
1796182004.245 0.001 502 "10.247.31.3:8080, 10.247.31.2:8080, pods" "0.000, 0.000, 0.000" "502, 502, 502" "-, 0.000, -" "-, -, -" "-"
1796182011.244 5.024 200 "10.247.31.2:8080, 10.247.31.4:8080" "5.023, 0.000" "504, 200" "-, 0.000" "-, 0.000" "1"
1796182071.851 0.000 200 "10.247.31.4:8080" "0.000" "200" "0.000" "0.000" "1""#;

    #[test]
    fn real_log_lines_mark_retries_pooled_and_cut_tries() {
        let log: Vec<AccessEntry> = REAL_LOG
            .lines()
            .map(|l| crate::lab::nginx::parse_access_line(l).unwrap())
            .collect();
        let answered_pooled = &log[0].tries[0];
        assert!(!answered_pooled.retry && answered_pooled.pooled == Some(true));
        let [refused, retried] = log[1].tries.as_slice() else {
            panic!("two tries: {:?}", log[1]);
        };
        assert!(!refused.retry && !refused.connected && refused.failed());
        assert_eq!(refused.pooled, Some(false), "a failed connect is new");
        assert!(retried.retry && retried.answered && retried.pooled == Some(true));
        let [first, cut] = log[2].tries.as_slice() else {
            panic!("two tries and the group: {:?}", log[2]);
        };
        assert!(!first.cut() && cut.cut() && cut.retry);
        assert_eq!(cut.pooled, None, "a cut try's connection age is unknown");
        let timed_out = &log[3].tries[0];
        assert_eq!(timed_out.status, Some(504));
        assert!(!timed_out.connected && !timed_out.retry);
        assert_eq!(log[3].tries[1].pooled, Some(false), "answered first");
        assert_eq!(log[3].tries[1].start_wall_ns, 1_796_182_011_243_000_000);

        // .2 deleted just before the first line; .3 never.
        let clock = WallToMono::from_offset_ns(0);
        let deletion = 1_796_182_004_000 * MS;
        let pods = vec![timeline("p2", "10.247.31.2", 0, Some(deletion))];
        let truth = &compute_truth(&pods, &log, clock, &WireLog::default())[0];
        assert_eq!(truth.tries_after_deletion, 4);
        assert_eq!(truth.retries, 2);
        assert_eq!(truth.pooled_tries, 2);
        assert_eq!(truth.cut_requests, 1);
        assert_eq!(truth.failed_tries, 2);
        // The last choice is the 5 s connect that timed out; nothing later.
        assert_eq!(truth.truth_gap_ms, Some(2_220.0));
        assert_eq!(truth.truth_last_send_ms, Some(2_220.0));
        let totals = TryTotals::from_log(&log);
        assert_eq!(totals.requests, 5);
        assert_eq!(totals.tries, 8);
        assert_eq!(totals.retries, 3);
        assert_eq!(totals.pooled_tries, 2);
        assert_eq!(totals.new_connection_tries, 2);
        assert_eq!(totals.cut_requests, 1);
        // Three failed tries were retried: the second line's refused try,
        // whose retry went over a pooled connection, the third's refused
        // try (its retry was cut, connection age unknown) and the timed out
        // one (its retry on a new connection).
        assert_eq!(totals.failed_retried, 3);
        assert_eq!(totals.failed_retried_pooled, 1);
    }

    #[test]
    fn retries_move_the_last_send_not_the_choice() {
        let clock = WallToMono::from_offset_ns(0);
        let pods = vec![timeline("a", "10.0.0.2", 0, Some(1_000 * MS))];
        let log = vec![
            entry(&[("10.0.0.2:8080", 1_500 * MS, 502)]),
            // An old worker retries on its old list 5 s later.
            entry(&[
                ("10.0.0.9:8080", 2_000 * MS, 504),
                ("10.0.0.2:8080", 7_000 * MS, 200),
            ]),
        ];
        let truth = &compute_truth(&pods, &log, clock, &WireLog::default())[0];
        assert_eq!(truth.truth_gap_ms, Some(500.0));
        assert_eq!(truth.truth_last_send_ms, Some(6_000.0));
        assert_eq!(truth.retries, 1);
    }

    #[test]
    fn a_request_sent_before_the_deletion_and_cut_after_counts() {
        let clock = WallToMono::from_offset_ns(0);
        let pods = vec![timeline("a", "10.0.0.2", 0, Some(1_000 * MS))];
        // Sent 15 ms before the deletion, cut by the exit 5 ms after it.
        let line = r#"1.005 0.020 502 "10.0.0.2:8080, 10.0.0.3:8080" "0.020, 0.000" "502, 502" "0.000, -" "-, -" "-""#;
        let log = vec![crate::lab::nginx::parse_access_line(line).unwrap()];
        let truth = &compute_truth(&pods, &log, clock, &WireLog::default())[0];
        assert_eq!(truth.cut_requests, 1);
        assert_eq!(truth.tries_after_deletion, 0, "it started before");
        assert_eq!(truth.truth_gap_ms, None);
    }

    #[test]
    fn a_cut_logged_a_millisecond_before_the_deletion_is_the_exits() {
        let clock = WallToMono::from_offset_ns(0);
        let pods = vec![timeline("a", "10.0.0.2", 0, Some(1_000 * MS))];
        // The exit cut it just after the deletion; nginx's whole
        // milliseconds put its end at 0.999 s.
        let line = r#"0.999 0.020 502 "10.0.0.2:8080, 10.0.0.3:8080" "0.020, 0.000" "502, 502" "0.000, -" "-, -" "-""#;
        let log = vec![crate::lab::nginx::parse_access_line(line).unwrap()];
        let truth = &compute_truth(&pods, &log, clock, &WireLog::default())[0];
        assert_eq!(truth.cut_requests, 1);
        // One ended 5 ms before the deletion was no exit's.
        let line = r#"0.995 0.020 502 "10.0.0.2:8080, 10.0.0.3:8080" "0.020, 0.000" "502, 502" "0.000, -" "-, -" "-""#;
        let log = vec![crate::lab::nginx::parse_access_line(line).unwrap()];
        let truth = &compute_truth(&pods, &log, clock, &WireLog::default())[0];
        assert_eq!(truth.cut_requests, 0);
    }

    #[test]
    fn reused_ip_ends_the_window() {
        let clock = WallToMono::from_offset_ns(0);
        let pods = vec![
            timeline("old", "10.0.0.2", 0, Some(1_000 * MS)),
            timeline("new", "10.0.0.2", 3_000 * MS, None),
        ];
        let log = vec![
            entry(&[("10.0.0.2:8080", 2_000 * MS, 502)]),
            entry(&[("10.0.0.2:8080", 4_000 * MS, 200)]),
        ];
        let truth = compute_truth(&pods, &log, clock, &WireLog::default());
        assert_eq!(truth[0].truth_gap_ms, Some(1_000.0));
        assert_eq!(truth[0].tries_after_deletion, 1);
    }

    #[test]
    fn no_try_after_deletion_has_no_gap() {
        let pods = vec![timeline("a", "10.0.0.2", 0, Some(1_000 * MS))];
        let log = vec![entry(&[("10.0.0.2:8080", 500 * MS, 200)])];
        let truth = compute_truth(
            &pods,
            &log,
            WallToMono::from_offset_ns(0),
            &WireLog::default(),
        );
        assert_eq!(truth[0].truth_gap_ms, None);
    }

    #[test]
    fn events_fill_the_timeline() {
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let mut pods = Vec::new();
        let name = || "a".to_string();
        record(
            &mut pods,
            LifecycleEvent::PodCreated { name: name() },
            MonoTime(1),
        );
        record(
            &mut pods,
            LifecycleEvent::PodStarting { name: name(), ip },
            MonoTime(2),
        );
        record(
            &mut pods,
            LifecycleEvent::PodTerminating { name: name(), ip },
            MonoTime(3),
        );
        record(
            &mut pods,
            LifecycleEvent::PodDeleted {
                name: name(),
                ip: Some(ip),
            },
            MonoTime(4),
        );
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].ip, Some(ip));
        assert_eq!(pods[0].starting, Some(MonoTime(2)));
        assert_eq!(pods[0].terminating, Some(MonoTime(3)));
        assert_eq!(pods[0].deleted, Some(MonoTime(4)));
    }

    #[test]
    fn wall_to_mono_round_trips_now() {
        let clock = WallToMono::measure();
        let mono = MonoTime::now();
        let wall = realtime_ns() as u64;
        let back = clock.to_mono(wall);
        assert!(back.signed_since(mono).abs() < 5_000_000);
    }
}
