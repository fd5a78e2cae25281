//! The failure-storm budget: past it, failures are counted, not sent.

use observer_common::{StormKey, StormStats, storm};

use crate::*;

/// A failure storm must not make an incident worse: past
/// `storm::EVENTS_PER_WINDOW` failures of one destination and connector in
/// a `storm::WINDOW_NS` window, failures are counted in `STORMS` (by
/// class, with the latest failure and SYN times) instead of sent, and user
/// space reads the counts. Returns whether this failure was counted so.
/// The budget and counts are per CPU (user space sums the CPUs), so a
/// storm from every CPU at once shares no cache line.
#[inline(never)]
pub(crate) fn storm_absorbs(key: &StormKey, errno: i32, now: u64, syn_ns: u64) -> bool {
    let Some(ptr) = STORMS.get_ptr_mut(key) else {
        let fresh = StormStats {
            window_start_ns: now,
            sent_in_window: 1,
            ..StormStats::default()
        };
        let _ = STORMS.insert(key, &fresh, 0);
        return false;
    };
    // SAFETY: a valid pointer to a map value returned by the kernel.
    let stats = unsafe { &mut *ptr };
    if now.saturating_sub(stats.window_start_ns) >= storm::WINDOW_NS {
        stats.window_start_ns = now;
        stats.sent_in_window = 1;
        return false;
    }
    if stats.sent_in_window < storm::EVENTS_PER_WINDOW {
        stats.sent_in_window += 1;
        return false;
    }
    match errno {
        0 => add(&mut stats.aborted),
        ECONNREFUSED => add(&mut stats.refused),
        EHOSTUNREACH => add(&mut stats.host_unreachable),
        ENETUNREACH => add(&mut stats.net_unreachable),
        ETIMEDOUT => add(&mut stats.timed_out),
        _ => add(&mut stats.other_error),
    }
    stats.last_failure_ns = now;
    if syn_ns > stats.last_syn_ns {
        stats.last_syn_ns = syn_ns;
    }
    true
}
