//! State the agent shares with its HTTP server: the engine's latest
//! snapshot, the metrics, readiness, and a broadcast of live updates.

use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicBool, Ordering},
};

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::metrics::Metrics;
use crate::engine::{Finding, PodTermination, Snapshot};

/// One line of the NDJSON output and of the live stream.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Update<'a> {
    Snapshot(&'a Snapshot),
    Termination(&'a PodTermination),
    Finding(&'a Finding),
}

impl Update<'_> {
    pub fn to_line(&self) -> String {
        // Serializing plain data structures with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

struct Inner {
    snapshot: RwLock<Snapshot>,
    metrics: Mutex<Metrics>,
    updates: broadcast::Sender<String>,
    probe_attached: AtomicBool,
    not_ready: Mutex<Option<String>>,
    /// Set by a reader that wants the agent to stop (an in-process TUI the
    /// user quit).
    stop: watch::Sender<bool>,
    /// Set when the engine loop that writes this state has finished.
    ended: watch::Sender<bool>,
}

/// Cheap to clone: every clone shares the same state.
#[derive(Clone)]
pub struct AgentState {
    inner: Arc<Inner>,
}

impl Default for AgentState {
    /// Before the engine's first snapshot: an empty one.
    fn default() -> Self {
        AgentState::new(
            crate::engine::Engine::new(crate::engine::EngineConfig::default())
                .snapshot(crate::clock::MonoTime(0)),
        )
    }
}

impl AgentState {
    pub fn new(initial: Snapshot) -> AgentState {
        let (updates, _) = broadcast::channel(1024);
        AgentState {
            inner: Arc::new(Inner {
                snapshot: RwLock::new(initial),
                metrics: Mutex::new(Metrics::new()),
                updates,
                probe_attached: AtomicBool::new(false),
                not_ready: Mutex::new(Some("starting".into())),
                stop: watch::channel(false).0,
                ended: watch::channel(false).0,
            }),
        }
    }

    pub fn clone_handle(&self) -> AgentState {
        self.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        match self.inner.snapshot.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn snapshot_line(&self) -> String {
        Update::Snapshot(&self.snapshot()).to_line()
    }

    pub fn set_snapshot(&self, snapshot: Snapshot) {
        self.with_metrics(|m| {
            m.set_recommendations(&snapshot.recommendations);
            m.set_failures(&snapshot.counters.failures_by_state);
            m.set_bystander_failures(&snapshot.counters.bystander_failures);
            m.set_arrivals(snapshot.counters.arrivals_seen);
            m.set_ingress(&snapshot.ingress);
        });
        match self.inner.snapshot.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    pub fn publish_termination(&self, termination: &PodTermination) {
        self.with_metrics(|m| m.record_termination(termination));
        let _ = self
            .inner
            .updates
            .send(Update::Termination(termination).to_line());
    }

    pub fn publish_finding(&self, finding: &Finding) {
        let _ = self.inner.updates.send(Update::Finding(finding).to_line());
    }

    /// Asks the agent's loop to stop (it flushes and returns).
    pub fn request_stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// The engine loop writing this state has finished: nothing more will
    /// change.
    pub fn mark_ended(&self) {
        self.inner.ended.send_replace(true);
    }

    /// Changes when the engine loop has finished (see [`Self::mark_ended`]).
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.inner.ended.subscribe()
    }

    /// Changes when a stop is requested.
    pub fn stop_requested(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.updates.subscribe()
    }

    pub fn with_metrics<T>(&self, f: impl FnOnce(&mut Metrics) -> T) -> T {
        match self.inner.metrics.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn encode_metrics(&self) -> String {
        self.with_metrics(|m| m.encode())
    }

    pub fn set_probe_attached(&self, attached: bool) {
        self.inner.probe_attached.store(attached, Ordering::Relaxed);
    }

    /// `None` when ready; otherwise why not (shown by /readyz).
    pub fn set_not_ready(&self, reason: Option<String>) {
        match self.inner.not_ready.lock() {
            Ok(mut guard) => *guard = reason,
            Err(poisoned) => *poisoned.into_inner() = reason,
        }
    }

    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.inner.probe_attached.load(Ordering::Relaxed) {
            return Some("probe not attached".into());
        }
        match self.inner.not_ready.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
