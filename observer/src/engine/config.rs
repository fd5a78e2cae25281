//! Engine settings. Defaults are what a user gets without flags; every one
//! is a trade-off named in its comment.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::arrivals::ExternalSender;
use super::connector::IngressConfig;

/// How the engine closes measurement windows and recommends preStop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// A window closes when the pod is gone from the API and no connect to
    /// its IPs has been seen for this long. Longer catches stragglers from
    /// slow ingresses; shorter frees watch slots sooner. It must outlast
    /// the ingress's connect timeout: a connect that hangs is seen only when
    /// it fails, and its retry after it (5 s by default in ingress-nginx,
    /// Envoy and HAProxy setups).
    pub quiet_period: Duration,
    pub recommend: RecommendConfig,
    /// Which connectors are the ingress; only theirs measure the gap.
    pub ingress: IngressConfig,
    /// Named address ranges of senders outside the cluster
    /// (`--external-sender`).
    pub external_senders: Vec<ExternalSender>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            quiet_period: Duration::from_secs(10),
            recommend: RecommendConfig::default(),
            ingress: IngressConfig::default(),
            external_senders: Vec::new(),
        }
    }
}

/// How a preStop duration is derived from measured propagation gaps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecommendConfig {
    /// Which quantile of the propagation_gap the preStop must cover.
    pub quantile: f64,
    /// Added to the quantile before rounding up to whole seconds.
    pub margin: Duration,
    /// Rolling window: the last N closed terminations per group.
    pub window: usize,
    /// Below this many samples a quantile is noise: the maximum is used.
    pub min_samples: usize,
    /// Time the application needs to drain after SIGTERM; added to the
    /// preStop for terminationGracePeriodSeconds.
    pub drain: Duration,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            quantile: 0.99,
            margin: Duration::from_secs(1),
            window: 200,
            min_samples: 20,
            drain: Duration::from_secs(5),
        }
    }
}
