//! The one clock every part of observer compares: CLOCK_MONOTONIC in
//! nanoseconds, the clock of `bpf_ktime_get_ns()`. Kernel timestamps and the
//! local receipt times of Kubernetes watch events are both in this clock, so
//! they subtract directly. API-server timestamps never are (see DESIGN).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A CLOCK_MONOTONIC instant in nanoseconds since boot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MonoTime(pub u64);

impl MonoTime {
    /// Reads CLOCK_MONOTONIC. Only the edges (watchers, the probe reader,
    /// the lab) call this; the engine is handed times.
    pub fn now() -> MonoTime {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is
        // always supported on Linux, so the call cannot fail.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        MonoTime(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    pub fn from_nanos(ns: u64) -> MonoTime {
        MonoTime(ns)
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self - earlier` as signed nanoseconds (negative when `earlier` is later).
    pub fn signed_since(self, earlier: MonoTime) -> i64 {
        self.0 as i64 - earlier.0 as i64
    }

    /// `self - earlier`, saturating at zero.
    pub fn saturating_since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    pub fn saturating_add(self, d: Duration) -> MonoTime {
        MonoTime(self.0.saturating_add(d.as_nanos() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_monotonic_and_matches_std_instant_rate() {
        let a = MonoTime::now();
        let start = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = MonoTime::now();
        let elapsed = start.elapsed();
        assert!(b > a);
        let diff = b.saturating_since(a);
        assert!(diff >= Duration::from_millis(20));
        assert!(diff <= elapsed + Duration::from_millis(5));
    }

    #[test]
    fn signed_since_is_negative_for_later_reference() {
        assert_eq!(MonoTime(5).signed_since(MonoTime(8)), -3);
        assert_eq!(
            MonoTime(8).saturating_since(MonoTime(5)),
            Duration::from_nanos(3)
        );
        assert_eq!(MonoTime(5).saturating_since(MonoTime(8)), Duration::ZERO);
    }
}
