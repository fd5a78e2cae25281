//! The correlation engine: connect records and cluster events in,
//! termination records, findings and recommendations out.
//!
//! Pure and synchronous: no I/O, no clock reads, no async. Every output
//! order is deterministic, so live runs, replays and tests agree.

pub mod config;
pub mod recommend;
pub mod record;

use crate::clock::MonoTime;
use crate::cluster::{ClusterModel, StampedEvent};
use crate::probe::decode::ConnectRecord;

pub use config::{EngineConfig, RecommendConfig};
pub use recommend::Recommendation;
pub use record::{
    CloseReason, Connector, EngineCounters, FailureCounts, Finding, FindingKind, Output, PodState,
    PodTermination, Snapshot,
};

/// The correlation engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    model: ClusterModel,
    counters: EngineCounters,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            model: ClusterModel::new(),
            counters: EngineCounters::default(),
        }
    }

    pub fn on_connect(&mut self, _record: &ConnectRecord, _out: &mut Vec<Output>) {
        self.counters.connects_seen += 1;
    }

    pub fn on_cluster(&mut self, event: StampedEvent, _out: &mut Vec<Output>) {
        self.counters.cluster_events += 1;
        self.model.apply(event);
    }

    pub fn on_tick(&mut self, _now: MonoTime, _out: &mut Vec<Output>) {}

    pub fn finish(&mut self, _now: MonoTime, _out: &mut Vec<Output>) {}

    pub fn model(&self) -> &ClusterModel {
        &self.model
    }

    pub fn snapshot(&self, now: MonoTime) -> Snapshot {
        Snapshot {
            now,
            open: Vec::new(),
            recent: Vec::new(),
            recommendations: self.recommendations(),
            counters: self.counters.clone(),
        }
    }

    pub fn recommendations(&self) -> Vec<Recommendation> {
        let _ = &self.config;
        Vec::new()
    }

    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }
}
