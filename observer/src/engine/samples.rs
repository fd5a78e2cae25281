//! Rolling windows of closed terminations, per Service and per workload:
//! what recommendations are computed from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::config::RecommendConfig;
use super::recommend::{Group, Recommendation, recommend};
use super::record::{FailureCounts, PodTermination};
use super::window::PodConfig;
use crate::probe::FailureClass;

/// Groups kept at most; beyond this the least recently updated is dropped,
/// so a cluster that churns through Services does not grow memory.
pub const MAX_GROUPS: usize = 4096;

/// What one closed termination contributes. A cluster's groups hold up to
/// `window` of these each (200 Services and 200 workloads at the default
/// 200: 80 000, 7.7 MB at 96 bytes), so a sample carries no allocation of
/// its own (its names share the group's previous sample's) and its counts
/// are 32-bit (saturating; one termination's counts do not reach 4 billion).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub gap_ns: i64,
    pub failures: SampleFailures,
    /// The ingress's connects to the pod after deletion that succeeded.
    pub served_after_deletion: u32,
    pub configured_prestop_ms: Option<u32>,
    pub termination_grace_period_seconds: Option<u32>,
    pub workload: Option<Arc<str>>,
    pub container: Option<Arc<str>>,
    /// The gap is the destination side's arrival gap (no ingress on the
    /// node measured one).
    pub from_arrivals: bool,
}

// A full window's memory is this times `window` times the group count.
const _: () = assert!(std::mem::size_of::<Sample>() <= 96);

/// One termination's failed connects by class, in [`FailureClass::ALL`]
/// order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleFailures([u32; FailureClass::ALL.len()]);

impl SampleFailures {
    pub fn of(counts: &FailureCounts) -> SampleFailures {
        SampleFailures(FailureClass::ALL.map(|class| saturate(counts.get(class))))
    }

    /// Adds these counts to `total`.
    pub fn add_to(&self, total: &mut FailureCounts) {
        for (class, n) in FailureClass::ALL.into_iter().zip(self.0) {
            total.add_n(class, u64::from(n));
        }
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A recommendation group: a Service or a workload in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    Service { namespace: String, service: String },
    Workload { namespace: String, workload: String },
}

#[derive(Debug, Default)]
struct GroupSamples {
    samples: VecDeque<Sample>,
    ready_too_early: u64,
    last_update: u64,
}

#[derive(Debug, Default)]
pub struct Samples {
    groups: BTreeMap<GroupKey, GroupSamples>,
    updates: u64,
}

fn keys_of(namespace: &str, services: &[String], workload: Option<&str>) -> Vec<GroupKey> {
    let mut keys: Vec<GroupKey> = services
        .iter()
        .map(|s| GroupKey::Service {
            namespace: namespace.to_owned(),
            service: s.clone(),
        })
        .collect();
    if let Some(workload) = workload {
        keys.push(GroupKey::Workload {
            namespace: namespace.to_owned(),
            workload: workload.to_owned(),
        });
    }
    keys
}

/// `value`, sharing `previous` when it says the same.
fn shared(previous: Option<&Arc<str>>, value: Option<&str>) -> Option<Arc<str>> {
    let value = value?;
    Some(match previous {
        Some(previous) if **previous == *value => previous.clone(),
        _ => Arc::from(value),
    })
}

impl Samples {
    /// Adds a closed termination to each of its groups, keeping the last
    /// `window` per group.
    pub fn add(&mut self, termination: &PodTermination, config: &PodConfig, window: usize) {
        self.add_sample(termination, config, window, false);
    }

    /// Adds a closed termination whose `propagation_gap_ns` carries the
    /// destination side's arrival gap (no ingress measured one).
    pub fn add_from_arrivals(
        &mut self,
        termination: &PodTermination,
        config: &PodConfig,
        window: usize,
    ) {
        self.add_sample(termination, config, window, true);
    }

    fn add_sample(
        &mut self,
        termination: &PodTermination,
        config: &PodConfig,
        window: usize,
        from_arrivals: bool,
    ) {
        let keys = keys_of(
            &termination.namespace,
            &termination.services,
            termination.workload.as_deref(),
        );
        let previous = keys
            .first()
            .and_then(|key| self.groups.get(key))
            .and_then(|group| group.samples.back());
        let sample = Sample {
            gap_ns: termination.propagation_gap_ns.unwrap_or(0).max(0),
            failures: SampleFailures::of(&termination.failures),
            served_after_deletion: saturate(termination.served_after_deletion),
            configured_prestop_ms: termination.configured_prestop_ms.map(saturate),
            termination_grace_period_seconds: termination
                .termination_grace_period_seconds
                .and_then(|seconds| u32::try_from(seconds).ok()),
            workload: shared(
                previous.and_then(|s| s.workload.as_ref()),
                termination.workload.as_deref(),
            ),
            container: shared(
                previous.and_then(|s| s.container.as_ref()),
                config.container.as_deref(),
            ),
            from_arrivals,
        };
        for key in keys {
            let group = self.group(key);
            group.samples.push_back(sample.clone());
            while group.samples.len() > window.max(1) {
                group.samples.pop_front();
            }
            // Growth doubles the buffer (200 samples would sit in room for
            // 256); a full window keeps exactly its own room.
            if group.samples.len() == window.max(1) {
                group.samples.shrink_to_fit();
            }
        }
    }

    /// Counts a failed connect right after a pod of these groups became ready.
    pub fn note_ready_too_early(
        &mut self,
        namespace: &str,
        services: &[String],
        workload: Option<&str>,
    ) {
        for key in keys_of(namespace, services, workload) {
            self.group(key).ready_too_early += 1;
        }
    }

    fn group(&mut self, key: GroupKey) -> &mut GroupSamples {
        self.updates += 1;
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            let stalest = self
                .groups
                .iter()
                .min_by_key(|(_, g)| g.last_update)
                .map(|(k, _)| k.clone());
            if let Some(stalest) = stalest {
                self.groups.remove(&stalest);
            }
        }
        let group = self.groups.entry(key).or_default();
        group.last_update = self.updates;
        group
    }

    /// One recommendation per group with at least one sample, Services
    /// first, each in name order.
    pub fn recommendations(&self, config: &RecommendConfig) -> Vec<Recommendation> {
        self.groups
            .iter()
            .filter(|(_, g)| !g.samples.is_empty())
            .map(|(key, g)| {
                let samples: Vec<&Sample> = g.samples.iter().collect();
                recommend(
                    &Group {
                        key,
                        samples: &samples,
                        ready_too_early: g.ready_too_early,
                    },
                    config,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_failures_keep_every_class_and_saturate() {
        let mut counts = FailureCounts::default();
        for (n, class) in FailureClass::ALL.into_iter().enumerate() {
            counts.add_n(class, n as u64 + 1);
        }
        let mut total = FailureCounts::default();
        SampleFailures::of(&counts).add_to(&mut total);
        SampleFailures::of(&counts).add_to(&mut total);
        for (n, class) in FailureClass::ALL.into_iter().enumerate() {
            assert_eq!(total.get(class), 2 * (n as u64 + 1), "{class:?}");
        }
        let huge = FailureCounts {
            refused: u64::MAX,
            ..FailureCounts::default()
        };
        let mut total = FailureCounts::default();
        SampleFailures::of(&huge).add_to(&mut total);
        assert_eq!(total.refused, u64::from(u32::MAX));
    }
}
