//! preStop recommendations from measured propagation gaps.

use serde::{Deserialize, Serialize};

use super::record::FailureCounts;

/// What the measurements say one group of pods needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub namespace: String,
    pub service: Option<String>,
    pub workload: Option<String>,
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub quantile: f64,
    pub margin_ms: u64,
    pub used_max: bool,
    pub recommended_prestop_seconds: u64,
    pub recommended_termination_grace_period_seconds: u64,
    pub configured_prestop_seconds: Option<f64>,
    pub configured_termination_grace_period_seconds: Option<i64>,
    pub failed_connects: FailureCounts,
    pub verdict: Vec<String>,
    pub yaml: String,
}
