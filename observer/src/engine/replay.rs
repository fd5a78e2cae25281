//! A bounded buffer of recent connects, replayed when a termination opens.
//!
//! The probe and the watchers are separate streams: a connect made after a
//! pod's deletion_seen can reach the engine before the watch event that
//! carries the deletion. Such connects wait here and are replayed into the
//! window when it opens. The buffer is bounded both by age and by count,
//! so its memory does not grow with the event rate.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use super::connect::ConnectFact;
use crate::clock::MonoTime;

/// How far back a late deletion event can reach.
pub const REPLAY_HORIZON: Duration = Duration::from_secs(5);
/// Most connects kept, whatever their age.
pub const REPLAY_CAPACITY: usize = 65_536;

#[derive(Debug)]
pub struct ReplayBuffer {
    facts: VecDeque<ConnectFact>,
    horizon: Duration,
    capacity: usize,
}

impl Default for ReplayBuffer {
    fn default() -> Self {
        ReplayBuffer::new(REPLAY_HORIZON, REPLAY_CAPACITY)
    }
}

impl ReplayBuffer {
    pub fn new(horizon: Duration, capacity: usize) -> ReplayBuffer {
        ReplayBuffer {
            facts: VecDeque::with_capacity(capacity.min(4096)),
            horizon,
            capacity,
        }
    }

    /// Remembers a connect, dropping those older than the horizon at `now`.
    pub fn push(&mut self, fact: ConnectFact, now: MonoTime) {
        if self.facts.len() >= self.capacity {
            self.facts.pop_front();
        }
        self.facts.push_back(fact);
        self.expire(now);
    }

    /// Drops connects older than the horizon at `now`. Facts arrive roughly
    /// in time order, so expiring from the front is enough.
    pub fn expire(&mut self, now: MonoTime) {
        while let Some(front) = self.facts.front() {
            if now.saturating_since(front.ts) > self.horizon {
                self.facts.pop_front();
            } else {
                break;
            }
        }
    }

    /// Buffered connects to any of `ips` at or after `since`, oldest first.
    pub fn to_ips_since<'a>(
        &'a self,
        ips: &'a [IpAddr],
        since: MonoTime,
    ) -> impl Iterator<Item = &'a ConnectFact> + 'a {
        self.facts
            .iter()
            .filter(move |f| f.at >= since && ips.contains(&f.ip))
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::decode::{ConnectRecord, Outcome};

    fn fact(ip: &str, ts_s: u64) -> ConnectFact {
        let record = ConnectRecord {
            ts: MonoTime(ts_s * 1_000_000_000),
            syn: None,
            src: "10.0.0.1:40000".parse().expect("addr"),
            dst: format!("{ip}:8080").parse().expect("addr"),
            pid: 1,
            tid: 1,
            comm: "nginx".into(),
            cgroup_id: 0,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched: false,
            outcome: Outcome::Connect,
        };
        ConnectFact::from_record(&record, crate::engine::connector::ConnectorRole::Ingress, 0)
    }

    #[test]
    fn keeps_only_the_horizon_and_the_capacity() {
        let mut buffer = ReplayBuffer::new(Duration::from_secs(5), 3);
        for s in 0..10 {
            buffer.push(fact("10.0.0.9", s), MonoTime(s * 1_000_000_000));
        }
        // Capacity 3 wins over the 5 s horizon here.
        assert_eq!(buffer.len(), 3);
        let ips = ["10.0.0.9".parse().expect("ip")];
        let times: Vec<u64> = buffer
            .to_ips_since(&ips, MonoTime(8_000_000_000))
            .map(|f| f.ts.0 / 1_000_000_000)
            .collect();
        assert_eq!(times, [8, 9]);
        buffer.expire(MonoTime(20_000_000_000));
        assert!(buffer.is_empty());
    }
}
