//! The in-process engine as a TUI data source (`observer lab --tui`, or an
//! agent with its own TUI): the engine loop hands its snapshots and
//! findings to a [`LocalFeed`], which converts them and sends them on.
//!
//! The engine loop must never wait for the screen, so sends are
//! non-blocking: when the TUI falls behind, updates are dropped and
//! counted (the next snapshot replaces the state anyway).

use tokio::sync::mpsc;

use super::adapt::{ClockPair, findings_update, snapshot_update};
use super::app::DataUpdate;
use crate::engine::{Finding, Output, Snapshot};

/// The name the in-process engine appears under in the status line.
pub const LOCAL_SOURCE: &str = "local";

/// Queue depth between the engine loop and the TUI.
pub const DEFAULT_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct LocalFeed {
    source: String,
    tx: mpsc::Sender<DataUpdate>,
    dropped: u64,
}

/// A feed and the receiver to give to [`super::run_tui`].
pub fn local_channel() -> (LocalFeed, mpsc::Receiver<DataUpdate>) {
    let (tx, rx) = mpsc::channel(DEFAULT_CAPACITY);
    (LocalFeed::new(LOCAL_SOURCE, tx), rx)
}

impl LocalFeed {
    pub fn new(source: &str, tx: mpsc::Sender<DataUpdate>) -> LocalFeed {
        LocalFeed {
            source: source.to_string(),
            tx,
            dropped: 0,
        }
    }

    /// Sends the engine's current state (call it about once a second).
    pub fn snapshot(&mut self, snapshot: &Snapshot) {
        self.send(snapshot_update(&self.source, snapshot));
    }

    /// Sends the failed connects among `findings`. The engine's clock and
    /// the wall clock are read together here, so times of day are exact.
    pub fn findings(&mut self, findings: &[Finding]) {
        if let Some(update) = findings_update(&self.source, findings, &ClockPair::now()) {
            self.send(update);
        }
    }

    /// Sends the failed connects among the engine's `outputs`.
    pub fn findings_in(&mut self, outputs: &[Output]) {
        let findings: Vec<Finding> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Finding(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        if !findings.is_empty() {
            self.findings(&findings);
        }
    }

    /// Updates dropped because the TUI was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether the TUI has gone (quit): the caller may stop feeding.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn send(&mut self, update: DataUpdate) {
        if self.tx.try_send(update).is_err() {
            self.dropped += 1;
        }
    }
}
