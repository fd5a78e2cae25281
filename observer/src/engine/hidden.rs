//! Hidden failures: which of the ingress's failed connects it retried to
//! another endpoint (the user got an answer, later) and which it could not
//! hide (the user got an error).
//!
//! The decoder pairs each retry with the failure it retried
//! (`probe::retry`, `ConnectRecord::retried`). A window counts a failure
//! as retried when that pairing names it. The two arrive in either order:
//! a refused connect is reported at once and its retry a moment later,
//! while a connect the proxy gave up on is reported `aborted` only after
//! the decoder's grace period, by which time its retry has long been
//! seen. Retries that name a failure no window has counted yet wait here.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::MonoTime;
use crate::probe::retry::RetriedFailure;

/// How long a retry waits for the failure it names: past the decoder's
/// abort grace (200 ms) and the replay of connects into a window that
/// opens late (5 s).
pub const CREDIT_HORIZON: Duration = Duration::from_secs(10);

/// Most retries kept waiting, whatever their age.
pub const CREDIT_CAPACITY: usize = 16_384;

/// Failures named by a retry, keyed by time first so the oldest go first.
#[derive(Clone, Debug, Default)]
pub struct FailureSet {
    keys: BTreeSet<(MonoTime, SocketAddr)>,
}

impl FailureSet {
    /// Adds `failure`, dropping the oldest beyond `capacity`.
    pub fn insert(&mut self, failure: RetriedFailure, capacity: usize) {
        self.keys.insert((failure.at, failure.dst));
        while self.keys.len() > capacity {
            self.keys.pop_first();
        }
    }

    /// Removes `failure`; whether it was there.
    pub fn remove(&mut self, failure: RetriedFailure) -> bool {
        self.keys.remove(&(failure.at, failure.dst))
    }

    /// Forgets failures dated before `horizon`.
    pub fn forget_before(&mut self, horizon: MonoTime) {
        while self.keys.first().is_some_and(|(at, _)| *at < horizon) {
            self.keys.pop_first();
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Retries whose failure no window has counted (yet).
#[derive(Debug, Default)]
pub struct RetryCredits {
    waiting: FailureSet,
}

impl RetryCredits {
    pub fn remember(&mut self, failure: RetriedFailure) {
        self.waiting.insert(failure, CREDIT_CAPACITY);
    }

    /// Whether a retry named `failure` (it is then used up).
    pub fn take(&mut self, failure: RetriedFailure) -> bool {
        self.waiting.remove(failure)
    }

    pub fn expire(&mut self, now: MonoTime) {
        let horizon = MonoTime(now.0.saturating_sub(CREDIT_HORIZON.as_nanos() as u64));
        self.waiting.forget_before(horizon);
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(ms: u64, last_octet: u8) -> RetriedFailure {
        RetriedFailure {
            dst: SocketAddr::from(([10, 0, 0, last_octet], 8080)),
            at: MonoTime(ms * 1_000_000),
        }
    }

    #[test]
    fn a_credit_is_used_once_and_expires() {
        let mut credits = RetryCredits::default();
        credits.remember(failure(1_000, 2));
        assert!(!credits.take(failure(1_000, 3)), "another destination");
        assert!(!credits.take(failure(1_001, 2)), "another failure");
        assert!(credits.take(failure(1_000, 2)));
        assert!(!credits.take(failure(1_000, 2)), "used up");
        credits.remember(failure(1_000, 2));
        credits.expire(MonoTime(
            1_000_000_000 + CREDIT_HORIZON.as_nanos() as u64 + 1,
        ));
        assert!(credits.is_empty());
    }

    #[test]
    fn the_set_stays_bounded_dropping_the_oldest() {
        let mut set = FailureSet::default();
        for ms in 0..100 {
            set.insert(failure(ms, 2), 10);
        }
        assert_eq!(set.len(), 10);
        assert!(!set.remove(failure(89, 2)));
        assert!(set.remove(failure(90, 2)));
    }
}
