//! The outcome joiner under arbitrary event orders: closes without their
//! reports, reports without their closes, reused 4-tuples, time going
//! backwards, flushes at any time.
//!
//! Besides not panicking, the joiner must lose and invent nothing: the
//! target keeps its own count of the outcomes each event owes (a close
//! with no error owes one, paid by its report, by a later close of the
//! same 4-tuple, by a flush past the grace period or by the drain) and
//! compares it with what came out.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use observer::clock::MonoTime;
use observer::probe::decode::RawEvent;
use observer::probe::{ConnectRecord, Outcome, OutcomeJoiner};
use observer_common::kind;

/// Few addresses, threads and connectors, so events meet each other.
#[derive(Debug, Arbitrary)]
struct Event {
    kind: u8,
    ts: u64,
    syn: Option<u64>,
    src_port: u8,
    dst: u8,
    tid: u8,
    connector: u8,
    errno: i32,
    watched: bool,
    jiffies: u64,
    since_send_jiffies: u32,
    cut: bool,
    opens_connection: bool,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Push(Event),
    Flush(u64),
    /// Advance the flush clock by this many microseconds.
    FlushAfter(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    grace_ms: u16,
    retry_window_us: u16,
    fallback_hz: u32,
    steps: Vec<Step>,
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
}

fn raw(e: &Event) -> RawEvent {
    RawEvent {
        // Mostly the kinds the kernel sends; now and then another.
        kind: e.kind % (kind::LAST + 2),
        ts: MonoTime(e.ts),
        syn: e.syn.map(MonoTime),
        src: addr(1, 40_000 + u16::from(e.src_port % 4)),
        dst: addr(100 + e.dst % 4, 8080),
        tgid: u32::from(e.tid % 3),
        pid: u32::from(e.tid % 3),
        comm: "nginx".into(),
        cgroup_id: u64::from(e.connector % 3),
        errno: e.errno,
        watched: e.watched,
        jiffies: e.jiffies,
        since_send_jiffies: e.since_send_jiffies,
        cut: e.cut,
        opens_connection: e.opens_connection,
    }
}

fuzz_target!(|input: Input| {
    let grace = Duration::from_millis(u64::from(input.grace_ms));
    let mut joiner = OutcomeJoiner::new(grace)
        .with_retry_window(Duration::from_micros(u64::from(input.retry_window_us)))
        .with_fallback_hz(input.fallback_hz);
    let mut out: Vec<ConnectRecord> = Vec::new();
    // The model: closes waiting for their report, by 4-tuple, with their time.
    let mut waiting: HashMap<(SocketAddr, SocketAddr), MonoTime> = HashMap::new();
    let mut owed = 0usize;
    let mut clock = 0u64;
    for step in &input.steps {
        let flush_at = match step {
            Step::Push(_) => None,
            Step::Flush(now) => Some(*now),
            Step::FlushAfter(us) => Some(clock.saturating_add(u64::from(*us) * 1_000)),
        };
        if let Step::Push(e) = step {
            let raw = raw(e);
            let key = (raw.src, raw.dst);
            owed += match raw.kind {
                kind::CONNECT | kind::ESTABLISHED | kind::SYNC_FAILED | kind::RESET => 1,
                kind::SENT if raw.errno != 0 || raw.cut => 2,
                kind::SENT => 1,
                // The receiving side: one record each, none for a drop
                // class the decoder does not know.
                kind::ACCEPTED | kind::RECEIVED => 1,
                kind::DROPPED => usize::from((1..=4).contains(&raw.errno)),
                kind::SYN_CLOSED if raw.errno != 0 => 1,
                kind::SYN_CLOSED => usize::from(waiting.insert(key, raw.ts).is_some()),
                kind::ERROR => {
                    waiting.remove(&key);
                    1
                }
                _ => 0,
            };
            let before = out.len();
            joiner.push(raw, &mut out);
            for record in &out[before..] {
                if record.retry {
                    assert!(
                        matches!(record.outcome, Outcome::Connect | Outcome::Sent { .. }),
                        "only a SYN or a send can be a retry: {record:?}"
                    );
                }
            }
        }
        if let Some(now) = flush_at {
            clock = now;
            let now = MonoTime(now);
            let before = waiting.len();
            waiting.retain(|_, ts| now.saturating_since(*ts) < grace);
            owed += before - waiting.len();
            joiner.flush(now, &mut out);
        }
        assert_eq!(out.len(), owed, "outcomes out vs owed, after {step:?}");
        assert_eq!(
            joiner.pending(),
            waiting.len(),
            "closes waiting, after {step:?}"
        );
    }
    joiner.drain(&mut out);
    owed += waiting.len();
    assert_eq!(out.len(), owed, "every close ends in one outcome");
    assert_eq!(joiner.pending(), 0);
});
