//! Failure storms: what the kernel counted instead of sending.
//!
//! When a backend dies and a proxy hammers it, failures arrive at tens of
//! thousands a second. Past a per-destination budget (`storm::
//! EVENTS_PER_WINDOW` per `storm::WINDOW_NS`, for each destination and
//! connector) the kernel counts failures in its `STORMS` map by class,
//! with the latest failure and SYN times, instead of sending one event
//! each. Its counts only grow; the reader looks at the map a few times a
//! second and turns what grew since its last look into one record per
//! destination, connector and class, carrying the count. Nothing is lost
//! but the individual 4-tuples and times of the counted failures.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use observer_common::{AF_INET6, StormKey, StormStats};

use super::decode::{ConnectRecord, FailureClass, Outcome, ip_from};
use crate::clock::MonoTime;

/// Reads one class's count out of the kernel's stats.
type ClassCount = fn(&StormStats) -> u64;

/// The classes the kernel counts, with the field holding each and the
/// errno a record of that class carries.
const CLASSES: [(FailureClass, ClassCount, i32); 6] = [
    (FailureClass::Refused, |s| s.refused, libc::ECONNREFUSED),
    (
        FailureClass::HostUnreachable,
        |s| s.host_unreachable,
        libc::EHOSTUNREACH,
    ),
    (
        FailureClass::NetUnreachable,
        |s| s.net_unreachable,
        libc::ENETUNREACH,
    ),
    (FailureClass::TimedOut, |s| s.timed_out, libc::ETIMEDOUT),
    (FailureClass::Aborted, |s| s.aborted, 0),
    (FailureClass::Other, |s| s.other_error, 0),
];

/// One storm's counts over every CPU: counts add up, times are the latest.
pub fn combine_cpus<'a>(per_cpu: impl Iterator<Item = &'a StormStats>) -> StormStats {
    per_cpu.fold(StormStats::default(), |sum, cpu| StormStats {
        window_start_ns: sum.window_start_ns.max(cpu.window_start_ns),
        sent_in_window: sum.sent_in_window + cpu.sent_in_window,
        refused: sum.refused + cpu.refused,
        host_unreachable: sum.host_unreachable + cpu.host_unreachable,
        net_unreachable: sum.net_unreachable + cpu.net_unreachable,
        timed_out: sum.timed_out + cpu.timed_out,
        aborted: sum.aborted + cpu.aborted,
        other_error: sum.other_error + cpu.other_error,
        last_failure_ns: sum.last_failure_ns.max(cpu.last_failure_ns),
        last_syn_ns: sum.last_syn_ns.max(cpu.last_syn_ns),
    })
}

/// What the reader has already turned into records, per storm.
#[derive(Debug, Default)]
pub struct StormLedger {
    seen: HashMap<StormKey, StormStats>,
}

impl StormLedger {
    /// Appends a record for each class of `key` whose count grew since
    /// `current` was last seen. An entry the kernel evicted and made
    /// anew starts again from zero: its counts are then all new.
    pub fn fold(&mut self, key: &StormKey, current: &StormStats, out: &mut Vec<ConnectRecord>) {
        let previous = self.seen.get(key).copied().unwrap_or_default();
        let restarted = CLASSES
            .iter()
            .any(|(_, count, _)| count(current) < count(&previous));
        let base = if restarted {
            StormStats::default()
        } else {
            previous
        };
        for (class, count, errno) in CLASSES {
            let grown = count(current).saturating_sub(count(&base));
            if grown > 0
                && let Some(record) = aggregate(key, current, class, errno, grown)
            {
                out.push(record);
            }
        }
        self.seen.insert(*key, *current);
    }

    /// Forgets storms the kernel no longer holds (evicted entries).
    pub fn retain(&mut self, live: impl Fn(&StormKey) -> bool) {
        self.seen.retain(|key, _| live(key));
    }
}

fn aggregate(
    key: &StormKey,
    stats: &StormStats,
    class: FailureClass,
    errno: i32,
    count: u64,
) -> Option<ConnectRecord> {
    let ip = ip_from(key.family, key.addr).ok()?;
    // Many connections, none named: the source is the unspecified address.
    let unspecified = if key.family == AF_INET6 && ip.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let syn = (stats.last_syn_ns != 0).then_some(MonoTime(stats.last_syn_ns));
    let waited_ns = syn.map_or(0, |syn| stats.last_failure_ns.saturating_sub(syn.0));
    Some(ConnectRecord {
        ts: MonoTime(stats.last_failure_ns),
        syn,
        src: SocketAddr::new(unspecified, 0),
        dst: SocketAddr::new(ip, key.port),
        pid: 0,
        tid: 0,
        comm: String::new(),
        cgroup_id: key.cgroup_id,
        pod_uid: None,
        container_id: None,
        watched: false,
        retry: false,
        retried: None,
        count,
        outcome: Outcome::Failed {
            class,
            errno,
            waited_ns,
            synchronous: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::AF_INET;

    fn key() -> StormKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, 7]);
        StormKey {
            family: AF_INET,
            port: 8080,
            _pad: 0,
            addr,
            cgroup_id: 42,
        }
    }

    fn stats(refused: u64, timed_out: u64, last_ms: u64) -> StormStats {
        StormStats {
            refused,
            timed_out,
            last_failure_ns: last_ms * 1_000_000,
            last_syn_ns: last_ms * 1_000_000 - 300_000,
            ..StormStats::default()
        }
    }

    fn counts(out: &[ConnectRecord]) -> Vec<(FailureClass, u64)> {
        out.iter()
            .filter_map(|r| Some((r.failure_class()?, r.count)))
            .collect()
    }

    #[test]
    fn only_what_grew_since_the_last_look_is_sent_on() {
        let mut ledger = StormLedger::default();
        let mut out = Vec::new();
        ledger.fold(&key(), &stats(1_000, 0, 100), &mut out);
        assert_eq!(counts(&out), [(FailureClass::Refused, 1_000)]);
        let first = &out[0];
        assert_eq!(first.dst, "10.0.0.7:8080".parse().unwrap());
        assert_eq!(first.cgroup_id, 42);
        assert_eq!(first.ts, MonoTime(100_000_000));
        assert_eq!(first.syn, Some(MonoTime(99_700_000)));
        assert_eq!(first.pid, 0);
        out.clear();
        ledger.fold(&key(), &stats(1_000, 0, 100), &mut out);
        assert!(out.is_empty(), "nothing new");
        ledger.fold(&key(), &stats(1_500, 3, 200), &mut out);
        assert_eq!(
            counts(&out),
            [(FailureClass::Refused, 500), (FailureClass::TimedOut, 3)]
        );
    }

    #[test]
    fn the_cpus_counts_add_up_and_the_latest_times_win() {
        let cpus = [stats(10, 1, 100), stats(5, 0, 300), StormStats::default()];
        let all = combine_cpus(cpus.iter());
        assert_eq!((all.refused, all.timed_out), (15, 1));
        assert_eq!(all.last_failure_ns, 300_000_000);
        assert_eq!(all.last_syn_ns, 299_700_000);
    }

    #[test]
    fn an_entry_the_kernel_made_anew_counts_from_zero() {
        let mut ledger = StormLedger::default();
        let mut out = Vec::new();
        ledger.fold(&key(), &stats(1_000, 0, 100), &mut out);
        out.clear();
        // Evicted and recreated: its counts started again below ours.
        ledger.fold(&key(), &stats(40, 0, 900), &mut out);
        assert_eq!(counts(&out), [(FailureClass::Refused, 40)]);
    }

    #[test]
    fn an_aggregate_survives_a_recording() {
        let mut ledger = StormLedger::default();
        let mut out = Vec::new();
        ledger.fold(&key(), &stats(7, 0, 100), &mut out);
        let line = serde_json::to_string(&out[0]).unwrap();
        assert!(line.contains("\"count\":7"), "{line}");
        let back: ConnectRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, out[0]);
        // Single records leave the field out, and read back as one.
        let mut single = back.clone();
        single.count = 1;
        let line = serde_json::to_string(&single).unwrap();
        assert!(!line.contains("count"), "{line}");
        assert_eq!(
            serde_json::from_str::<ConnectRecord>(&line).unwrap().count,
            1
        );
    }
}
