//! Telling a proxy's retries from its choices, from the kernel's view.
//!
//! A proxy retries a failed try in the same event-loop turn in which it
//! learns of the failure, on the thread that made the try: a SYN (or a
//! request over a pooled connection) that follows, on that thread and
//! within the retry window, a failure of that thread's own to another
//! destination is a retry, not a choice (docs/ENGINE.md, "Choices and
//! retries").
//!
//! Each failure licenses one retry. A worker learns of failures in bursts
//! (a neighbour entry expiring fails every connect to that address in one
//! softirq) and retries each request in turn, so the burst's retries go to
//! every destination, including one that failed in the same burst for
//! another request: pairing each retry with the *oldest* unused failure to
//! another destination is what tells them all apart.
//!
//! A failure the proxy declared itself, closing a connect it gave up on
//! (its own connect timeout: the kernel's `aborted`), is different: the
//! proxy handles such failures one at a time, each retry in the same call
//! as its close. So a SYN that retries one takes the *newest* such failure
//! of its thread, and every older one of that thread still untaken is
//! spent: its request had no try left (nginx answered 504) and it
//! licenses nothing. Otherwise a worker timing out every few milliseconds
//! on an old upstream list, half of those timeouts ending their request,
//! keeps a spent failure within the window at all times, and takes its
//! first tries of a pod for retries. (The window itself cannot be
//! shorter: on a loaded node the retry trails its close by a scheduler
//! tick now and then, 4 ms here.)
//!
//! A pooled connection is seen once, when it closes, with the time of its
//! last send (jiffy resolution). That send was a retry when a failure of
//! the connection's owner thread, not already taken by a SYN, lies just
//! before it; so failures are kept for a while after their SYN window.
//! A connection opened before its pod was watched (the usual pooled
//! connection) was not followed, so its owner thread is not known: its
//! send is then matched against the failures of every thread of its
//! connector (the socket's cgroup, the ingress pod), each still licensing
//! one retry. Failures are kept per connector for that reason; a thread
//! always belongs to one.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;

/// How soon after its own failed connect a thread's next SYN, to another
/// destination, is taken for a retry rather than a choice of its pod.
/// Proxies retry in the same event-loop turn in which they learn of the
/// failure: tens of microseconds after the kernel reported it (30–150 µs
/// in the lab), yet on a loaded node a scheduler tick later now and then
/// (1.8 and 4 ms in the lab). A retry taken for a choice can end a gap
/// seconds late; a choice taken for a retry ends it at most one request
/// early, so the gap's window is the wide one.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_millis(5);

/// How soon after its failure (or its thread's latest counted retry) a
/// retry counts that failure as *retried*, hidden from users. The window
/// must stay under the time between two requests on one worker: a failure
/// that ended its request (a 502) is followed by the next request's first
/// try, and at 200 requests a second on one nginx worker that came
/// 4.5–5 ms later; within [`DEFAULT_RETRY_WINDOW`] a third of those first
/// tries counted their 502's failure as retried. A retry later than this
/// is still a retry for the gap, and its failure counts as not retried.
/// A worker retrying a burst of failures one request after another keeps
/// the window open: it runs from the thread's latest counted retry.
pub const COUNTED_RETRY_WINDOW: Duration = Duration::from_millis(1);

/// How long a failure stays available to a pooled connection's last send.
/// Such a send is reported when its connection closes, which an ingress
/// does at the latest when its idle keep-alive timeout runs out (nginx:
/// 60 s by default).
const KEPT_FOR_POOLED_SENDS: Duration = Duration::from_secs(120);

/// Failures remembered per connector, at most (the newest are kept).
const MAX_FAILURES_PER_CONNECTOR: usize = 1024;

/// Connectors whose failures are remembered, at most.
const MAX_FAILING_CONNECTORS: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Failure {
    at: MonoTime,
    /// The connecting application closed it (its own timeout).
    closed_by_app: bool,
    dst: SocketAddr,
    /// The failing thread; 0 when the kernel could not tell.
    tid: u32,
    /// The last time its thread was seen retrying at or after it (at
    /// first `at`): the window runs from here, as a worker retrying a
    /// burst of failures one request after another is still in the event
    /// loop turn that learned of them.
    turn: MonoTime,
    /// A retry has been paired with it, or it was spent (its request had
    /// no try left): either way it licenses nothing more.
    taken: bool,
}

/// The failure a retry was paired with: its destination and the time of
/// its failure record (`ConnectRecord::ts`), which together name it. The
/// engine counts that failure as *retried*: hidden from the user by the
/// ingress (docs/ENGINE.md, "Hidden failures").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetriedFailure {
    pub dst: SocketAddr,
    pub at: MonoTime,
}

impl Failure {
    /// How long after it (or its thread's latest counted retry) a retry
    /// counts it as retried: a failure the proxy declared itself is retried
    /// in the same call as its close, so the whole retry window; one the
    /// kernel found, [`COUNTED_RETRY_WINDOW`].
    fn counted_window(&self, window: Duration) -> Duration {
        if self.closed_by_app {
            window
        } else {
            window.min(COUNTED_RETRY_WINDOW)
        }
    }

    fn retried(&self) -> RetriedFailure {
        RetriedFailure {
            dst: self.dst,
            at: self.at,
        }
    }
}

/// Whether a failure of thread `failed` may be retried by thread `trying`
/// (0: not known, so any thread of the connector).
fn same_thread(failed: u32, trying: u32) -> bool {
    failed == 0 || trying == 0 || failed == trying
}

/// A SYN that retries a failure: which one, and whether it counts that
/// failure as retried (hidden from users) or only marks the SYN as no
/// choice of its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynRetry {
    pub failure: RetriedFailure,
    /// Within [`COUNTED_RETRY_WINDOW`] of the failure or of its thread's
    /// latest counted retry (a proxy's own timeout: the retry window).
    pub counted: bool,
}

/// Thread `tid` retried at `at`: it is still working through the failures
/// it learned of, so those not yet retried stay open from here.
fn extend_turn(failures: &mut VecDeque<Failure>, tid: u32, at: MonoTime) {
    for f in failures.iter_mut().rev() {
        if f.at <= at && !f.taken && same_thread(f.tid, tid) {
            f.turn = f.turn.max(at);
        }
    }
}

/// Each connector's recent failures, and the pairing of retries with
/// them.
#[derive(Debug)]
pub struct RetryTracker {
    window: Duration,
    connectors: HashMap<u64, VecDeque<Failure>>,
}

impl Default for RetryTracker {
    fn default() -> Self {
        RetryTracker::new(DEFAULT_RETRY_WINDOW)
    }
}

impl RetryTracker {
    pub fn new(window: Duration) -> RetryTracker {
        RetryTracker {
            window,
            connectors: HashMap::new(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Remembers that a connect (or a pooled request) of thread `tid`
    /// (0: not known) of `connector` (a cgroup id) to `dst` failed at `at`;
    /// `closed_by_app`: the connecting application gave up on it and
    /// closed it (so its retry, if any, follows at once).
    /// Failures known to neither thread nor connector are not remembered.
    pub fn note_failure(
        &mut self,
        tid: u32,
        connector: u64,
        at: MonoTime,
        dst: SocketAddr,
        closed_by_app: bool,
    ) {
        if tid == 0 && connector == 0 {
            return;
        }
        if !self.connectors.contains_key(&connector)
            && self.connectors.len() >= MAX_FAILING_CONNECTORS
        {
            self.forget_before(at);
            if self.connectors.len() >= MAX_FAILING_CONNECTORS {
                self.connectors.clear();
            }
        }
        let failures = self.connectors.entry(connector).or_default();
        if failures.len() >= MAX_FAILURES_PER_CONNECTOR {
            failures.pop_front();
        }
        failures.push_back(Failure {
            at,
            closed_by_app,
            dst,
            tid,
            turn: at,
            taken: false,
        });
    }

    /// The failure of its own elsewhere that thread `tid`'s SYN to `dst`
    /// at `at` retries, if any; that failure is taken.
    pub fn syn_is_retry(
        &mut self,
        tid: u32,
        connector: u64,
        at: MonoTime,
        dst: SocketAddr,
    ) -> Option<SynRetry> {
        if tid == 0 {
            return None;
        }
        let window = self.window;
        let failures = self.connectors.get_mut(&connector)?;
        let fits = |f: &Failure| {
            !f.taken
                && f.dst != dst
                && same_thread(f.tid, tid)
                && at >= f.at
                && at.saturating_since(f.at) <= window
        };
        let counted = |f: &Failure| at.saturating_since(f.turn) <= f.counted_window(window);
        // The newest failure the proxy declared itself: this SYN is its
        // retry, and the thread's older ones were spent.
        let newest_own = failures
            .iter()
            .rposition(&fits)
            .filter(|&i| failures[i].closed_by_app);
        if let Some(i) = newest_own {
            let retry = SynRetry {
                failure: failures[i].retried(),
                counted: counted(&failures[i]),
            };
            for f in failures.iter_mut() {
                if f.closed_by_app && !f.taken && f.tid == tid && f.at <= retry.failure.at {
                    f.taken = true;
                }
            }
            if retry.counted {
                extend_turn(failures, tid, at);
            }
            return Some(retry);
        }
        // The oldest failure this SYN may count as retried; else the
        // oldest it may retry at all. Oldest first across the whole retry
        // window would hand a fresh failure's retry an older one that
        // ended its request (a 502) and leave the fresh one uncounted.
        let i = failures
            .iter()
            .position(|f| fits(f) && counted(f))
            .or_else(|| failures.iter().position(&fits))?;
        let failure = &mut failures[i];
        failure.taken = true;
        let retry = SynRetry {
            failure: failure.retried(),
            counted: counted(failure),
        };
        if retry.counted {
            extend_turn(failures, tid, at);
        }
        Some(retry)
    }

    /// The failure elsewhere that the last send of a pooled connection of
    /// thread `tid` (0: not known, any thread of `connector`) to `dst`,
    /// dated `last_send` to within `resolution` (a jiffy), retried, if
    /// any; that failure is taken.
    pub fn send_is_retry(
        &mut self,
        tid: u32,
        connector: u64,
        last_send: MonoTime,
        resolution: Duration,
        dst: SocketAddr,
    ) -> Option<RetriedFailure> {
        let slack = resolution.as_nanos() as u64;
        let reach = (self.window + resolution).as_nanos() as u64;
        self.take(tid, connector, dst, |failure| {
            last_send.0.saturating_add(slack) >= failure.at.0
                && last_send.0 <= failure.at.0.saturating_add(reach)
        })
    }

    /// Takes the oldest untaken failure of `connector` that thread `tid`
    /// may retry, to another destination than `dst`, whose time `fits`.
    fn take(
        &mut self,
        tid: u32,
        connector: u64,
        dst: SocketAddr,
        fits: impl Fn(&Failure) -> bool,
    ) -> Option<RetriedFailure> {
        let failure = self
            .connectors
            .get_mut(&connector)?
            .iter_mut()
            .find(|f| !f.taken && f.dst != dst && same_thread(f.tid, tid) && fits(f))?;
        failure.taken = true;
        Some(failure.retried())
    }

    /// Drops failures too old for any report still to come.
    pub fn forget_before(&mut self, now: MonoTime) {
        let Some(horizon) = now.0.checked_sub(KEPT_FOR_POOLED_SENDS.as_nanos() as u64) else {
            return;
        };
        self.connectors.retain(|_, failures| {
            while failures.front().is_some_and(|f| f.at.0 < horizon) {
                failures.pop_front();
            }
            !failures.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    /// The ingress pod's cgroup.
    const NGINX: u64 = 9;

    fn addr(last_octet: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last_octet], 8080))
    }

    #[test]
    fn each_failure_of_a_burst_licenses_one_retry_to_any_other_destination() {
        // One softirq fails five connects of thread 7: two to .3, three to
        // .2 (a neighbour entry expiring). The worker then retries each
        // request in turn, to whichever upstream comes next, including the
        // other failed one, which it does not know has failed yet.
        let mut tracker = RetryTracker::default();
        for (i, dst) in [3, 3, 2, 2, 2].into_iter().enumerate() {
            tracker.note_failure(
                7,
                NGINX,
                MonoTime(100 * MS + i as u64 * 10_000),
                addr(dst),
                false,
            );
        }
        let retries: Vec<bool> = [2, 2, 3, 3, 3, 3]
            .into_iter()
            .enumerate()
            .map(|(i, dst)| {
                tracker
                    .syn_is_retry(
                        7,
                        NGINX,
                        MonoTime(100 * MS + 300_000 + i as u64 * 50_000),
                        addr(dst),
                    )
                    .is_some()
            })
            .collect();
        // Five failures, five retries; the sixth SYN is a new choice.
        assert_eq!(retries, [true, true, true, true, true, false]);
    }

    #[test]
    fn a_long_burst_is_retried_in_one_turn_past_the_window() {
        // Forty requests' connects fail in one softirq; the worker retries
        // them one after another, 60 µs apart: 2.4 ms in all, more than
        // the counted window, but each retry follows the previous within it.
        let mut tracker = RetryTracker::default();
        for i in 0..40u64 {
            tracker.note_failure(7, NGINX, MonoTime(100 * MS + i * 1_000), addr(2), false);
        }
        let counted = (0..40u64)
            .filter(|i| {
                tracker
                    .syn_is_retry(7, NGINX, MonoTime(100 * MS + 100_000 + i * 60_000), addr(3))
                    .is_some_and(|r| r.counted)
            })
            .count();
        assert_eq!(counted, 40);
        // A failure 4 ms before a SYN: a retry for the gap (a retry that
        // trailed by a scheduler tick), but its failure is not counted as
        // retried.
        tracker.note_failure(7, NGINX, MonoTime(110 * MS), addr(3), false);
        let late = tracker.syn_is_retry(7, NGINX, MonoTime(114 * MS), addr(2));
        assert_eq!(late.map(|r| r.counted), Some(false));
    }

    #[test]
    fn the_next_requests_first_try_does_not_count_an_unretried_refusal_as_retried() {
        // nginx at 200 requests a second on one worker: request A's last
        // try is refused (A gets a 502), request B's first try comes 4.8 ms
        // later. A's earlier refusal was retried 60 µs after it.
        let mut tracker = RetryTracker::default();
        tracker.note_failure(7, NGINX, MonoTime(100 * MS), addr(2), false);
        let retry = tracker.syn_is_retry(7, NGINX, MonoTime(100 * MS + 60_000), addr(3));
        assert_eq!(retry.map(|r| r.counted), Some(true), "A's retry");
        tracker.note_failure(7, NGINX, MonoTime(100 * MS + 90_000), addr(3), false);
        let next = tracker.syn_is_retry(7, NGINX, MonoTime(104 * MS + 890_000), addr(2));
        // Within the retry window, so no choice for the gap (one request
        // early at most), but A's last failure stays not retried: A's user
        // got the 502.
        assert_eq!(next.map(|r| r.counted), Some(false), "B's first try");
    }

    #[test]
    fn a_fresh_failures_retry_counts_it_not_an_older_502s() {
        // Request A's last try failed at 100 ms (a 502). Request B's first
        // try fails 4.5 ms later and is retried 60 µs after that: the
        // retry counts B's failure; A's stays not retried.
        let mut tracker = RetryTracker::default();
        tracker.note_failure(7, NGINX, MonoTime(100 * MS), addr(4), false);
        tracker.note_failure(7, NGINX, MonoTime(104 * MS + 500_000), addr(2), false);
        let retry = tracker.syn_is_retry(7, NGINX, MonoTime(104 * MS + 560_000), addr(3));
        assert_eq!(
            retry,
            Some(SynRetry {
                failure: RetriedFailure {
                    dst: addr(2),
                    at: MonoTime(104 * MS + 500_000)
                },
                counted: true,
            })
        );
    }

    #[test]
    fn a_syn_is_a_retry_only_on_the_failing_thread_within_the_window() {
        let mut tracker = RetryTracker::new(Duration::from_millis(5));
        tracker.note_failure(7, NGINX, MonoTime(100 * MS), addr(2), false);
        assert!(
            tracker
                .syn_is_retry(8, NGINX, MonoTime(101 * MS), addr(3))
                .is_none(),
            "another thread"
        );
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(101 * MS), addr(2))
                .is_none(),
            "the same pod again"
        );
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(99 * MS), addr(3))
                .is_none(),
            "before the failure"
        );
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(106 * MS), addr(3))
                .is_none(),
            "after the window"
        );
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(104 * MS), addr(3))
                .is_some()
        );
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(104 * MS), addr(4))
                .is_none(),
            "already taken"
        );
    }

    #[test]
    fn a_proxys_own_timeouts_are_retried_one_at_a_time_and_older_ones_were_spent() {
        // An nginx worker whose old upstream list holds two vanished pods:
        // every try waits out its 5 s connect timeout, which the worker
        // declares by closing the connect. Request B's second try times out
        // with no try left (a 504, no retry); request A's first try times
        // out 1 ms later and is retried at once. Request C arrives 1 ms
        // after that and chooses .3: a first try, not B's retry.
        let mut tracker = RetryTracker::default();
        tracker.note_failure(7, NGINX, MonoTime(100 * MS), addr(2), true);
        tracker.note_failure(7, NGINX, MonoTime(101 * MS), addr(2), true);
        // The retry names the failure it hid: the newest, not the spent one.
        assert_eq!(
            tracker.syn_is_retry(7, NGINX, MonoTime(101 * MS + 40_000), addr(3)),
            Some(SynRetry {
                failure: RetriedFailure {
                    dst: addr(2),
                    at: MonoTime(101 * MS)
                },
                counted: true,
            })
        );
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(102 * MS), addr(3))
                .is_none(),
            "a new request's first try"
        );
        // A retry may trail its close by a scheduler tick on a loaded node.
        tracker.note_failure(7, NGINX, MonoTime(200 * MS), addr(2), true);
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(204 * MS), addr(3))
                .is_some()
        );
    }

    #[test]
    fn a_pooled_send_is_matched_to_an_untaken_failure_within_a_jiffy() {
        let jiffy = Duration::from_millis(4);
        let mut tracker = RetryTracker::default();
        tracker.note_failure(7, NGINX, MonoTime(1_000 * MS), addr(2), false);
        tracker.note_failure(7, NGINX, MonoTime(2_000 * MS), addr(2), false);
        // The first failure's retry was a SYN.
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(1_000 * MS + 100_000), addr(3))
                .is_some()
        );
        // Seen at the connection's close, seconds later: a send dated 3 ms
        // before the second failure (a jiffy's rounding) retried it.
        assert!(
            tracker
                .send_is_retry(7, NGINX, MonoTime(1_997 * MS), jiffy, addr(4))
                .is_some()
        );
        // A send near the first failure: that one was already retried.
        assert!(
            tracker
                .send_is_retry(7, NGINX, MonoTime(1_001 * MS), jiffy, addr(4))
                .is_none()
        );
        // Far from any failure: a choice.
        tracker.note_failure(7, NGINX, MonoTime(3_000 * MS), addr(2), false);
        assert!(
            tracker
                .send_is_retry(7, NGINX, MonoTime(3_020 * MS), jiffy, addr(4))
                .is_none()
        );
    }

    #[test]
    fn a_pooled_send_of_an_unknown_owner_may_retry_any_thread_of_its_connector() {
        let jiffy = Duration::from_millis(4);
        let mut tracker = RetryTracker::default();
        tracker.note_failure(7, NGINX, MonoTime(1_000 * MS), addr(2), false);
        // Another connector's send at that moment: not a retry of it.
        assert!(
            tracker
                .send_is_retry(0, 10, MonoTime(1_002 * MS), jiffy, addr(4))
                .is_none()
        );
        // The connection was opened before its pod was watched: owner
        // unknown, so any of the ingress's threads.
        assert!(
            tracker
                .send_is_retry(0, NGINX, MonoTime(1_002 * MS), jiffy, addr(4))
                .is_some()
        );
        // That failure licensed one retry only.
        assert!(
            tracker
                .send_is_retry(0, NGINX, MonoTime(1_002 * MS), jiffy, addr(5))
                .is_none()
        );
        // A failure whose thread is unknown (a cut seen in softirq) may be
        // retried by any thread of its connector, once.
        tracker.note_failure(0, NGINX, MonoTime(2_000 * MS), addr(2), false);
        assert!(
            tracker
                .syn_is_retry(8, NGINX, MonoTime(2_001 * MS), addr(3))
                .is_some()
        );
        assert!(
            tracker
                .syn_is_retry(7, NGINX, MonoTime(2_001 * MS), addr(3))
                .is_none()
        );
    }

    #[test]
    fn memory_stays_bounded_and_old_failures_go() {
        let mut tracker = RetryTracker::default();
        for connector in 1..=(MAX_FAILING_CONNECTORS as u64 + 10) {
            for i in 0..(MAX_FAILURES_PER_CONNECTOR as u64 + 5) {
                tracker.note_failure(1, connector, MonoTime(i * MS), addr(2), false);
            }
        }
        assert!(tracker.connectors.len() <= MAX_FAILING_CONNECTORS);
        assert!(
            tracker
                .connectors
                .values()
                .all(|f| f.len() <= MAX_FAILURES_PER_CONNECTOR)
        );
        tracker.forget_before(MonoTime(
            KEPT_FOR_POOLED_SENDS.as_nanos() as u64 + 10_000 * MS,
        ));
        assert!(tracker.connectors.is_empty());
    }
}
