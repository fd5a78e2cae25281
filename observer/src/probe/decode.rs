//! Bytes from the kernel's ring buffer -> typed connect records.
//!
//! Pure: no I/O, no clock. [`decode_event`] turns one ring-buffer record into
//! a [`RawEvent`]; [`OutcomeJoiner`] joins the kernel's two-part failure
//! reports (the close of a SYN_SENT socket, then the error for it) into one
//! [`ConnectRecord`] per connect outcome.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use observer_common::{AF_INET, AF_INET6, ConnectEvent, drop_class, flags, kind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::retry::{RetriedFailure, RetryTracker};
use crate::clock::MonoTime;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record is {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// Why a connect failed, from the kernel's error code (never from HTTP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    Refused,
    HostUnreachable,
    NetUnreachable,
    TimedOut,
    /// The application gave up while the socket was in SYN_SENT.
    Aborted,
    /// RST on an established connection: an in-flight request was cut off.
    Reset,
    /// The peer closed (FIN) an established connection while a request
    /// was in flight on it: sent, and nothing answered since.
    Cut,
    /// Any other errno reported for a connect.
    Other,
}

impl FailureClass {
    pub const ALL: [FailureClass; 8] = [
        FailureClass::Refused,
        FailureClass::HostUnreachable,
        FailureClass::NetUnreachable,
        FailureClass::TimedOut,
        FailureClass::Aborted,
        FailureClass::Reset,
        FailureClass::Cut,
        FailureClass::Other,
    ];

    pub fn from_errno(errno: i32) -> FailureClass {
        match errno {
            libc::ECONNREFUSED => FailureClass::Refused,
            libc::EHOSTUNREACH => FailureClass::HostUnreachable,
            libc::ENETUNREACH => FailureClass::NetUnreachable,
            libc::ETIMEDOUT => FailureClass::TimedOut,
            libc::ECONNRESET => FailureClass::Reset,
            _ => FailureClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Refused => "refused",
            FailureClass::HostUnreachable => "host_unreachable",
            FailureClass::NetUnreachable => "net_unreachable",
            FailureClass::TimedOut => "timed_out",
            FailureClass::Aborted => "aborted",
            FailureClass::Reset => "reset",
            FailureClass::Cut => "cut",
            FailureClass::Other => "other",
        }
    }
}

/// One ring-buffer record, decoded but not yet joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub kind: u8,
    pub ts: MonoTime,
    pub syn: Option<MonoTime>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub errno: i32,
    pub watched: bool,
    /// `SENT` only: the kernel's jiffies at `ts`, and how many jiffies
    /// before `ts` the connection last sent data.
    pub jiffies: u64,
    pub since_send_jiffies: u32,
    /// `SENT` only: the peer closed while a request was in flight.
    pub cut: bool,
    /// `DROPPED` only: the packet was a SYN.
    pub opens_connection: bool,
}

pub(crate) fn ip_from(family: u16, bytes: [u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical()),
        other => Err(DecodeError::Family(other)),
    }
}

fn comm_from(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode_event(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    if bytes.len() != ConnectEvent::SIZE {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected: ConnectEvent::SIZE,
        });
    }
    // SAFETY: the length equals size_of::<ConnectEvent>(), ConnectEvent is
    // repr(C) plain data for which every bit pattern is valid, and
    // read_unaligned makes no alignment assumption about `bytes`.
    let event: ConnectEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_struct(&event)
}

/// Decodes an already-copied kernel event.
pub fn decode_struct(event: &ConnectEvent) -> Result<RawEvent, DecodeError> {
    if !(kind::CONNECT..=kind::LAST).contains(&event.kind) {
        return Err(DecodeError::Kind(event.kind));
    }
    let src = SocketAddr::new(ip_from(event.family, event.saddr)?, event.sport);
    let dst = SocketAddr::new(ip_from(event.family, event.daddr)?, event.dport);
    // Both carry the kernel's jiffies in `syn_ns` and a jiffies distance.
    let sent = event.kind == kind::SENT || event.kind == kind::RECEIVED;
    Ok(RawEvent {
        kind: event.kind,
        ts: MonoTime(event.ts_ns),
        // A SENT event's `syn_ns` carries jiffies, not a time.
        syn: (event.syn_ns != 0 && !sent).then_some(MonoTime(event.syn_ns)),
        src,
        dst,
        tgid: event.tgid,
        pid: event.pid,
        comm: comm_from(&event.comm),
        cgroup_id: event.cgroup_id,
        errno: event.errno,
        watched: event.flags & flags::WATCHED != 0,
        jiffies: if sent { event.syn_ns } else { 0 },
        since_send_jiffies: if sent { event.since_send_jiffies } else { 0 },
        cut: event.kind == kind::SENT && event.flags & flags::CUT != 0,
        opens_connection: event.kind == kind::DROPPED && event.flags & flags::SYN != 0,
    })
}

/// Why the kernel of a pod's node dropped a packet addressed to the pod
/// (the receiving side; `observer_common::drop_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No socket took it: nothing listens on the port (a SYN is answered
    /// with an RST, a connect the pod refused) or the connection is gone.
    NoSocket,
    /// No route to the pod's address any more.
    NoRoute,
    /// The pod's address stopped answering neighbour resolution.
    Neighbour,
    /// The pod's address still resolved to its old link address, which
    /// nobody holds: the frame went to other hosts on the link, which
    /// dropped it (a bridge floods it to every port: one copy each).
    OtherHost,
}

impl DropReason {
    pub fn from_class(class: i32) -> Option<DropReason> {
        match class {
            drop_class::NO_SOCKET => Some(DropReason::NoSocket),
            drop_class::NO_ROUTE => Some(DropReason::NoRoute),
            drop_class::NEIGHBOUR => Some(DropReason::Neighbour),
            drop_class::OTHER_HOST => Some(DropReason::OtherHost),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoSocket => "no_socket",
            DropReason::NoRoute => "no_route",
            DropReason::Neighbour => "neighbour",
            DropReason::OtherHost => "other_host",
        }
    }
}

/// What happened to one connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A SYN to a watched destination; its outcome follows separately.
    Connect,
    Established {
        latency_ns: u64,
    },
    Failed {
        class: FailureClass,
        errno: i32,
        /// Time from the SYN (or the connect() call) to the failure.
        waited_ns: u64,
        /// connect() failed before any SYN left (no route).
        synchronous: bool,
    },
    /// A connection to a watched destination closed; it last sent data
    /// (a request, pooled or not) at `last_send`.
    Sent {
        last_send: MonoTime,
    },
    /// Receiving side (`src` is the sender, `dst` the pod on this node): the
    /// pod accepted a connection.
    Accepted,
    /// Receiving side: a connection the pod accepted closed; data (a
    /// request) last arrived on it at `last_arrival`.
    Received {
        last_arrival: MonoTime,
    },
    /// Receiving side: this node's kernel dropped a packet addressed to
    /// the pod. A SYN dropped for want of a socket was refused (RST).
    Dropped {
        reason: DropReason,
        opens_connection: bool,
    },
}

/// A connect outcome as the rest of observer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRecord {
    /// CLOCK_MONOTONIC ns of the outcome.
    pub ts: MonoTime,
    /// CLOCK_MONOTONIC ns of the SYN, when known.
    pub syn: Option<MonoTime>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Connecting process id (tgid) and thread id; 0 when not known.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The pod whose cgroup made the connect (`metadata.uid`), when the
    /// cgroup is a pod's; filled in from `cgroup_id` by the connector
    /// resolver, so recordings replay without the node's cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The container within that pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    pub watched: bool,
    /// A SYN this thread sent right after one of its own connects failed,
    /// to another destination, or a pooled connection whose last request
    /// was sent right after such a failure of its thread: the ingress
    /// retrying a request elsewhere, not choosing this pod (docs/ENGINE.md,
    /// "Choices and retries"; `probe::retry`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// The failure a retry was paired with (set with `retry`): that
    /// failure was hidden from the user, who got an answer from elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried: Option<RetriedFailure>,
    /// How many failures this record stands for: more than one for a
    /// failure storm the kernel counted instead of sending each failure
    /// (`probe::storm`); `ts` and `syn` are then the latest ones.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

fn one() -> u64 {
    1
}

fn is_one(count: &u64) -> bool {
    *count == 1
}

impl ConnectRecord {
    /// What the receiving side saw land on a pod of this node (the
    /// destination-side view), rather than a connect this node made.
    pub fn is_arrival(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Accepted | Outcome::Received { .. } | Outcome::Dropped { .. }
        )
    }

    /// A SYN the pod's kernel answered with an RST: nothing listened.
    pub fn refused_by_pod(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Dropped {
                reason: DropReason::NoSocket,
                opens_connection: true
            }
        )
    }

    pub fn failure_class(&self) -> Option<FailureClass> {
        match self.outcome {
            Outcome::Failed { class, .. } => Some(class),
            _ => None,
        }
    }

    fn from_raw(raw: &RawEvent, outcome: Outcome) -> ConnectRecord {
        ConnectRecord {
            ts: raw.ts,
            syn: raw.syn,
            src: raw.src,
            dst: raw.dst,
            pid: raw.tgid,
            tid: raw.pid,
            comm: raw.comm.clone(),
            cgroup_id: raw.cgroup_id,
            pod_uid: None,
            container_id: None,
            watched: raw.watched,
            retry: false,
            retried: None,
            count: 1,
            outcome,
        }
    }
}

fn waited(raw: &RawEvent) -> u64 {
    raw.syn
        .map(|syn| raw.ts.saturating_since(syn).as_nanos() as u64)
        .unwrap_or(0)
}

/// How long a close waits for its error report before it is called
/// `aborted`. The report follows the close in the same kernel call chain,
/// so it is microseconds behind; the margin covers reader batching.
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_millis(200);

pub use super::retry::DEFAULT_RETRY_WINDOW;

/// Joins SYN_CLOSED and ERROR records into connect outcomes, marks
/// retries, and dates pooled sends.
#[derive(Debug)]
pub struct OutcomeJoiner {
    grace: Duration,
    pending: HashMap<(SocketAddr, SocketAddr), RawEvent>,
    /// Each thread's recent failures, for telling its retries apart.
    retries: RetryTracker,
    /// The kernel's tick rate, once known (see [`kernel_hz`]).
    hz: Option<u32>,
    /// What to assume when a SENT event cannot tell (see [`kernel_hz`]).
    fallback_hz: u32,
}

impl Default for OutcomeJoiner {
    fn default() -> Self {
        OutcomeJoiner::new(DEFAULT_ABORT_GRACE)
    }
}

impl OutcomeJoiner {
    pub fn new(grace: Duration) -> OutcomeJoiner {
        OutcomeJoiner {
            grace,
            pending: HashMap::new(),
            retries: RetryTracker::default(),
            hz: None,
            fallback_hz: 250,
        }
    }

    /// How soon after a thread's failed connect its next SYN elsewhere is
    /// taken for a retry.
    pub fn with_retry_window(mut self, window: Duration) -> OutcomeJoiner {
        self.retries = RetryTracker::new(window);
        self
    }

    /// The kernel's `CONFIG_HZ` where it is known (the kernel config),
    /// for SENT events that cannot tell it themselves.
    /// A rate of 0 (a damaged kernel config) keeps the default: it would
    /// divide by zero.
    pub fn with_fallback_hz(mut self, hz: u32) -> OutcomeJoiner {
        if hz > 0 {
            self.fallback_hz = hz;
        }
        self
    }

    /// Remembers a failure of the event's thread, for telling its
    /// retries apart.
    fn note_failure(&mut self, raw: &RawEvent) {
        // A connect closed in SYN_SENT with no error the kernel found: the
        // application gave up on it (its own connect timeout).
        let closed_by_app = raw.kind == kind::SYN_CLOSED && raw.errno == 0;
        self.retries
            .note_failure(raw.pid, raw.cgroup_id, raw.ts, raw.dst, closed_by_app);
    }

    /// When a SENT event's connection last sent data (a RECEIVED one's,
    /// last received data).
    /// With the length of a jiffy: how precisely that time is known.
    fn last_send(&mut self, raw: &RawEvent) -> (MonoTime, Duration) {
        if self.hz.is_none() {
            self.hz = kernel_hz(raw.ts, raw.jiffies);
        }
        let hz = u64::from(self.hz.unwrap_or(self.fallback_hz));
        let ns = u64::from(raw.since_send_jiffies) * 1_000_000_000 / hz;
        let jiffy = Duration::from_nanos(1_000_000_000 / hz);
        (MonoTime(raw.ts.0.saturating_sub(ns)), jiffy)
    }

    /// Closes waiting for their error report.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one event; returns the outcomes it completes.
    pub fn push(&mut self, raw: RawEvent, out: &mut Vec<ConnectRecord>) {
        match raw.kind {
            kind::CONNECT => {
                let mut record = ConnectRecord::from_raw(&raw, Outcome::Connect);
                let retry = self
                    .retries
                    .syn_is_retry(raw.pid, raw.cgroup_id, raw.ts, raw.dst);
                record.retry = retry.is_some();
                record.retried = retry.filter(|r| r.counted).map(|r| r.failure);
                out.push(record);
            }
            kind::SENT => {
                let (last_send, jiffy) = self.last_send(&raw);
                let mut record = ConnectRecord::from_raw(&raw, Outcome::Sent { last_send });
                // The owner thread is the connecting one, where the socket
                // map knew it (nginx and Envoy keep a connection on the
                // worker that opened it); else any thread of its connector.
                record.retried =
                    self.retries
                        .send_is_retry(raw.pid, raw.cgroup_id, last_send, jiffy, raw.dst);
                record.retry = record.retried.is_some();
                out.push(record);
                // The connection ended with an error under a request (a
                // timeout, an unreachable pod), or the pod closed it with
                // the request in flight (cut): the request is lost, a
                // failure of the pod at the close, having waited since it
                // was sent. The worker learns of it then and retries: a
                // failure like a refused connect.
                let class = match raw.errno {
                    0 if raw.cut => Some(FailureClass::Cut),
                    0 => None,
                    errno => Some(FailureClass::from_errno(errno)),
                };
                if let Some(class) = class {
                    self.note_failure(&raw);
                    let outcome = Outcome::Failed {
                        class,
                        errno: raw.errno,
                        waited_ns: raw.ts.saturating_since(last_send).as_nanos() as u64,
                        synchronous: false,
                    };
                    out.push(ConnectRecord::from_raw(&raw, outcome));
                }
            }
            kind::ACCEPTED => out.push(ConnectRecord::from_raw(&raw, Outcome::Accepted)),
            kind::RECEIVED => {
                let (last_arrival, _) = self.last_send(&raw);
                out.push(ConnectRecord::from_raw(
                    &raw,
                    Outcome::Received { last_arrival },
                ));
            }
            kind::DROPPED => {
                if let Some(reason) = DropReason::from_class(raw.errno) {
                    let outcome = Outcome::Dropped {
                        reason,
                        opens_connection: raw.opens_connection,
                    };
                    out.push(ConnectRecord::from_raw(&raw, outcome));
                }
            }
            kind::ESTABLISHED => {
                let outcome = Outcome::Established {
                    latency_ns: waited(&raw),
                };
                out.push(ConnectRecord::from_raw(&raw, outcome));
            }
            kind::SYN_CLOSED if raw.errno != 0 => {
                self.note_failure(&raw);
                out.push(failed(&raw, raw.errno, false));
            }
            kind::SYN_CLOSED => {
                // Failed whatever the report says: the thread may retry
                // before the report (or the abort) is known.
                self.note_failure(&raw);
                // A reused 4-tuple replaces an older close that never got
                // its report: that one was aborted.
                if let Some(older) = self.pending.insert((raw.src, raw.dst), raw) {
                    out.push(aborted(&older));
                }
            }
            kind::ERROR => match self.pending.remove(&(raw.src, raw.dst)) {
                Some(closed) => out.push(failed(&closed, raw.errno, false)),
                // The close was lost (ring buffer full): report what is known.
                None => out.push(failed(&raw, raw.errno, false)),
            },
            kind::SYNC_FAILED => {
                self.note_failure(&raw);
                out.push(failed(&raw, raw.errno, true));
            }
            kind::RESET => {
                self.note_failure(&raw);
                let outcome = Outcome::Failed {
                    class: FailureClass::Reset,
                    errno: libc::ECONNRESET,
                    waited_ns: waited(&raw),
                    synchronous: false,
                };
                out.push(ConnectRecord::from_raw(&raw, outcome));
            }
            _ => {}
        }
    }

    /// Reports as `aborted` every close older than the grace period at `now`.
    pub fn flush(&mut self, now: MonoTime, out: &mut Vec<ConnectRecord>) {
        self.retries.forget_before(now);
        let grace = self.grace;
        let mut expired: Vec<RawEvent> = Vec::new();
        self.pending.retain(|_, closed| {
            let keep = now.saturating_since(closed.ts) < grace;
            if !keep {
                expired.push(closed.clone());
            }
            keep
        });
        expired.sort_by_key(|e| e.ts);
        out.extend(expired.iter().map(aborted));
    }

    /// Reports every waiting close as `aborted` (at shutdown).
    pub fn drain(&mut self, out: &mut Vec<ConnectRecord>) {
        let mut rest: Vec<RawEvent> = self.pending.drain().map(|(_, v)| v).collect();
        rest.sort_by_key(|e| e.ts);
        out.extend(rest.iter().map(aborted));
    }
}

/// The kernel's tick rate from one (CLOCK_MONOTONIC, jiffies) pair. The
/// kernel starts jiffies at `2^32 − 300·HZ` (so that they wrap five
/// minutes after boot), and CLOCK_MONOTONIC at zero, so
/// `jiffies − 2^32 = HZ · (t − 300 s)`; the estimate is snapped to the
/// rates kernels are built with. `None` too close to the five-minute mark
/// to tell, or when nothing fits.
pub fn kernel_hz(monotonic: MonoTime, jiffies: u64) -> Option<u32> {
    let seconds = monotonic.0 as f64 / 1e9 - 300.0;
    if seconds.abs() < 30.0 {
        return None;
    }
    let estimate = (jiffies as f64 - 4_294_967_296.0) / seconds;
    [100u32, 250, 300, 1000]
        .into_iter()
        .find(|hz| (estimate / f64::from(*hz) - 1.0).abs() < 0.02)
}

fn failed(raw: &RawEvent, errno: i32, synchronous: bool) -> ConnectRecord {
    let outcome = Outcome::Failed {
        class: FailureClass::from_errno(errno),
        errno,
        waited_ns: waited(raw),
        synchronous,
    };
    ConnectRecord::from_raw(raw, outcome)
}

fn aborted(raw: &RawEvent) -> ConnectRecord {
    let outcome = Outcome::Failed {
        class: FailureClass::Aborted,
        errno: 0,
        waited_ns: waited(raw),
        synchronous: false,
    };
    ConnectRecord::from_raw(raw, outcome)
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
