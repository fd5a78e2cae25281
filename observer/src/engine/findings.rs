//! Failed connects outside a measurement window: which pod state they hit
//! and what that says (a not-ready pod, a readiness probe that passes too
//! early, a stale endpoint).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::recommend::READY_TOO_EARLY;
use super::record::{FindingKind, PodState};
use crate::clock::MonoTime;
use crate::cluster::ClusterModel;

/// Retired IPs remembered at most (oldest forgotten first).
pub const MAX_RETIRED_IPS: usize = 4096;

/// Who last held an IP whose pod is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Retired {
    namespace: String,
    pod: String,
    service: Option<String>,
    seq: u64,
}

/// IPs of pods whose windows closed, so a later failed connect to one is
/// recognised as a stale endpoint (the model forgets pruned pods).
#[derive(Debug, Default)]
pub struct RetiredIps {
    by_ip: BTreeMap<IpAddr, Retired>,
    seq: u64,
}

impl RetiredIps {
    pub fn insert(&mut self, ip: IpAddr, namespace: &str, pod: &str, service: Option<&str>) {
        self.seq += 1;
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= MAX_RETIRED_IPS {
            let oldest = self
                .by_ip
                .iter()
                .min_by_key(|(_, r)| r.seq)
                .map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                self.by_ip.remove(&oldest);
            }
        }
        self.by_ip.insert(
            ip,
            Retired {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                service: service.map(str::to_owned),
                seq: self.seq,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// Pods whose Ready condition turned true recently.
#[derive(Debug, Default)]
pub struct RecentlyReady {
    since: BTreeMap<String, MonoTime>,
}

impl RecentlyReady {
    pub fn set(&mut self, uid: &str, ready: bool, at: MonoTime) {
        if ready {
            self.since.insert(uid.to_owned(), at);
        } else {
            self.since.remove(uid);
        }
    }

    pub fn forget(&mut self, uid: &str) {
        self.since.remove(uid);
    }

    /// Drops pods that have been ready longer than the ready-too-early span.
    pub fn expire(&mut self, now: MonoTime) {
        self.since
            .retain(|_, at| now.saturating_since(*at) <= READY_TOO_EARLY);
    }

    fn just_became_ready(&self, uid: &str, t: MonoTime) -> bool {
        self.since
            .get(uid)
            .is_some_and(|at| t >= *at && t.saturating_since(*at) <= READY_TOO_EARLY)
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

/// What a failed connect hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    pub state: PodState,
    /// `None` for an address the cluster never mentioned (not a pod IP as
    /// far as this agent knows): counted, not reported.
    pub kind: Option<FindingKind>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub uid: Option<String>,
    pub services: Vec<String>,
    pub workload: Option<String>,
}

/// Classifies a failed connect to `ip` at `t` by the state its pod was in.
pub fn classify(
    model: &ClusterModel,
    retired: &RetiredIps,
    ready: &RecentlyReady,
    ip: IpAddr,
    t: MonoTime,
) -> Classified {
    let Some(pod) = model.pod_for_ip_at(ip, t) else {
        let known = retired.by_ip.get(&ip);
        let stale = known.is_some() || !model.ip_claims(ip).is_empty();
        return Classified {
            state: PodState::Unknown,
            kind: stale.then_some(FindingKind::StaleEndpoint),
            namespace: known.map(|r| r.namespace.clone()),
            pod: known.map(|r| r.pod.clone()),
            uid: None,
            services: known.and_then(|r| r.service.clone()).into_iter().collect(),
            workload: None,
        };
    };
    let (state, kind) = if pod.deletion_seen().is_some_and(|d| d <= t) || pod.removal.is_some() {
        (PodState::Terminating, FindingKind::ToTerminatingPod)
    } else if pod.ready != Some(true) {
        (PodState::NotReady, FindingKind::ToNotReadyPod)
    } else if ready.just_became_ready(&pod.uid, t) {
        (PodState::Ready, FindingKind::ReadyTooEarly)
    } else {
        (PodState::Ready, FindingKind::ToReadyPod)
    };
    let mut services: Vec<String> = model
        .endpoints_of_pod(&pod.uid)
        .iter()
        .map(|r| r.key.service.clone())
        .collect();
    services.sort_unstable();
    services.dedup();
    Classified {
        state,
        kind: Some(kind),
        namespace: Some(pod.namespace.clone()),
        pod: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
        services,
        workload: pod.owner.as_ref().map(|o| o.name.clone()),
    }
}
