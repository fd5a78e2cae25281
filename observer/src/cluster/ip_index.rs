//! Which pod held an IP at a given local time.
//!
//! Pod IPs are reused, sometimes within seconds during a rollout. A connect
//! is attributed by the interval during which a pod held the IP, never by
//! the IP alone: a pod's claim starts when this agent first sees the pod
//! with the IP and ends when the IP is first seen on another pod. A claim
//! does not end when its pod is deleted, because connects to a deleted
//! pod's IP (refused, unreachable, timed out) are exactly what is measured.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;

/// One pod's tenure of an IP: `[valid_from, valid_until)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpClaim {
    pub pod_uid: String,
    pub valid_from: MonoTime,
    /// `None` while no other pod has been seen with the IP.
    pub valid_until: Option<MonoTime>,
}

impl IpClaim {
    pub fn contains(&self, t: MonoTime) -> bool {
        self.valid_from <= t && self.valid_until.is_none_or(|until| t < until)
    }
}

/// IP → the claims on it, oldest first.
#[derive(Debug, Default)]
pub struct IpIndex {
    claims: HashMap<IpAddr, Vec<IpClaim>>,
}

impl IpIndex {
    /// Records that `pod_uid` holds `ip` from `at` on, ending any other
    /// pod's open claim at `at`. Returns false when the pod already holds
    /// the IP.
    pub fn claim(&mut self, ip: IpAddr, pod_uid: &str, at: MonoTime) -> bool {
        // Most addresses have one claim; a doubling Vec would reserve four.
        let claims = self
            .claims
            .entry(ip)
            .or_insert_with(|| Vec::with_capacity(1));
        if claims
            .iter()
            .any(|c| c.pod_uid == pod_uid && c.valid_until.is_none())
        {
            return false;
        }
        for claim in claims.iter_mut().filter(|c| c.valid_until.is_none()) {
            // Events of one watcher arrive in order; the max() only guards
            // against a claim interval that ends before it starts.
            claim.valid_until = Some(at.max(claim.valid_from));
        }
        claims.push(IpClaim {
            pod_uid: pod_uid.to_owned(),
            valid_from: at,
            valid_until: None,
        });
        true
    }

    /// The uid of the pod that held `ip` at `t`.
    pub fn holder_at(&self, ip: IpAddr, t: MonoTime) -> Option<&str> {
        self.claims
            .get(&ip)?
            .iter()
            .rev()
            .find(|c| c.contains(t))
            .map(|c| c.pod_uid.as_str())
    }

    /// All claims on `ip`, oldest first.
    pub fn claims(&self, ip: IpAddr) -> &[IpClaim] {
        self.claims.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// Drops the claims of the given pods (after they are pruned).
    pub fn forget(&mut self, ip: IpAddr, pod_uid: &str) {
        if let Some(claims) = self.claims.get_mut(&ip) {
            claims.retain(|c| c.pod_uid != pod_uid);
            if claims.is_empty() {
                self.claims.remove(&ip);
            } else {
                // The room a reuse made is not kept for the next one.
                claims.shrink_to_fit();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Rough heap footprint.
    pub fn heap_bytes(&self) -> usize {
        let table = self.claims.capacity() * (size_of::<IpAddr>() + size_of::<Vec<IpClaim>>() + 1);
        let claims: usize = self
            .claims
            .values()
            .map(|v| {
                v.capacity() * size_of::<IpClaim>()
                    + v.iter().map(|c| c.pod_uid.capacity()).sum::<usize>()
            })
            .sum();
        table + claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_splits_the_timeline() {
        let ip: IpAddr = "10.0.0.7".parse().expect("ip");
        let mut index = IpIndex::default();
        assert!(index.claim(ip, "old", MonoTime(100)));
        assert!(!index.claim(ip, "old", MonoTime(150)));
        assert!(index.claim(ip, "new", MonoTime(200)));
        assert_eq!(index.holder_at(ip, MonoTime(99)), None);
        assert_eq!(index.holder_at(ip, MonoTime(100)), Some("old"));
        assert_eq!(index.holder_at(ip, MonoTime(199)), Some("old"));
        assert_eq!(index.holder_at(ip, MonoTime(200)), Some("new"));
        assert_eq!(index.holder_at(ip, MonoTime(10_000)), Some("new"));
        assert_eq!(index.claims(ip).len(), 2);
        index.forget(ip, "old");
        assert_eq!(index.holder_at(ip, MonoTime(150)), None);
    }
}
