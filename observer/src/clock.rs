//! The one clock every part of observer compares: CLOCK_MONOTONIC in
//! nanoseconds, the clock of `bpf_ktime_get_ns()`. Kernel timestamps and the
//! local receipt times of Kubernetes watch events are both in this clock, so
//! they subtract directly. API-server timestamps never are (see DESIGN).
//! [`WallClock`] turns them into times of day for display only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// How long from `self` to the next whole multiple of `period` on
    /// CLOCK_MONOTONIC (a full `period` when `self` is on one). Timers of
    /// one process that rest on this grid end together, and the runtime
    /// wakes once for all of them rather than once for each.
    pub fn until_beat(self, period: Duration) -> Duration {
        let period_ns = period.as_nanos().max(1) as u64;
        Duration::from_nanos(period_ns - self.0 % period_ns)
    }
}

/// One reading of CLOCK_MONOTONIC and of the wall clock, taken together, so
/// that monotonic times (which say nothing of the time of day) can be shown
/// as times of day: `observer trace`'s lines, the TUI's failure log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    mono: MonoTime,
    /// Nanoseconds since the Unix epoch when CLOCK_MONOTONIC read `mono`.
    unix_ns: u64,
}

impl WallClock {
    /// Reads both clocks now: exact for times of this machine.
    pub fn now() -> WallClock {
        let mono = MonoTime::now();
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        WallClock { mono, unix_ns }
    }

    /// `mono` taken as read at `unix_ms` on the wall clock; for another
    /// machine's monotonic clock (an agent's snapshot, dated when it was
    /// received).
    pub const fn new(mono: MonoTime, unix_ms: u64) -> WallClock {
        WallClock {
            mono,
            unix_ns: unix_ms.saturating_mul(1_000_000),
        }
    }

    /// Wall time of `at`, a time on the same monotonic clock as this
    /// reading, in milliseconds since the Unix epoch.
    pub fn unix_ms_of(&self, at: MonoTime) -> u64 {
        let delta_ms = at.signed_since(self.mono) / 1_000_000;
        (self.unix_ns / 1_000_000).saturating_add_signed(delta_ms)
    }

    /// `HH:MM:SS.mmm` UTC of `t`.
    pub fn format(&self, t: MonoTime) -> String {
        let wall_ns = self.unix_ns as i128 + (t.as_nanos() as i128 - self.mono.as_nanos() as i128);
        let ms_of_day = (wall_ns / 1_000_000).rem_euclid(86_400_000);
        let (h, m, s, ms) = (
            ms_of_day / 3_600_000,
            ms_of_day / 60_000 % 60,
            ms_of_day / 1000 % 60,
            ms_of_day % 1000,
        );
        format!("{h:02}:{m:02}:{s:02}.{ms:03}")
    }
}

/// The wall clock now, in milliseconds since the Unix epoch.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_fall_on_whole_multiples_of_the_period() {
        let second = Duration::from_secs(1);
        assert_eq!(
            MonoTime(5_250_000_000).until_beat(second),
            Duration::from_millis(750)
        );
        assert_eq!(MonoTime(5_000_000_000).until_beat(second), second);
        let quarter = Duration::from_millis(250);
        assert_eq!(
            MonoTime(5_100_000_000).until_beat(quarter),
            Duration::from_millis(150)
        );
        // A quarter-second grid holds every beat of the one-second grid.
        let t = MonoTime(7_654_321_000);
        let to_second = t.until_beat(second);
        let mut quarters = t.until_beat(quarter);
        while quarters < to_second {
            quarters += quarter;
        }
        assert_eq!(quarters, to_second);
    }

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

    #[test]
    fn wall_clock_places_monotonic_times_on_the_wall_clock() {
        // 12:00:00.000 UTC when CLOCK_MONOTONIC read 5 s.
        let clock = WallClock::new(MonoTime(5_000_000_000), 1_767_268_800_000);
        let later = MonoTime(6_500_000_000);
        assert_eq!(clock.unix_ms_of(later), 1_767_268_801_500);
        assert_eq!(clock.format(later), "12:00:01.500");
        let earlier = MonoTime(4_000_000_000);
        assert_eq!(clock.unix_ms_of(earlier), 1_767_268_799_000);
        assert_eq!(clock.format(earlier), "11:59:59.000");
    }

    #[test]
    fn wall_clock_now_agrees_with_the_system_clock() {
        let clock = WallClock::now();
        let unix_ms = clock.unix_ms_of(MonoTime::now());
        assert!(unix_ms.abs_diff(unix_ms_now()) < 1_000);
    }
}
