//! The in-process agent or lab as a TUI data source. The TUI follows the
//! engine loop's shared state (`export::AgentState`, which the loop's
//! `StateSink` writes) the way it follows a remote agent's stream: a
//! snapshot every half second and each finding as it is published, decoded
//! by the same [`AgentDecoder`]. The engine loop neither knows nor waits
//! for the screen.

use std::time::Duration;

use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio::task::JoinHandle;

use super::app::DataUpdate;
use super::remote::AgentDecoder;
use crate::clock::{MonoTime, unix_ms_now};
use crate::export::AgentState;

/// The name the in-process engine appears under in the status line.
pub const LOCAL_SOURCE: &str = "local";

/// Queue depth between the followers and the TUI.
pub const DEFAULT_CAPACITY: usize = 1024;

const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// Follows `state` as `source`, sending to `tx` until the TUI has gone or
/// the engine loop behind `state` has ended: then its last findings and
/// last snapshot are sent, and the TUI sees the source end once every
/// follower has. When the TUI falls behind, updates are dropped (the next
/// snapshot replaces the state anyway).
pub fn follow_state(
    state: AgentState,
    source: &str,
    tx: mpsc::Sender<DataUpdate>,
) -> JoinHandle<()> {
    let mut lines = state.subscribe();
    let mut ended = state.ended();
    let mut decoder = AgentDecoder::new(source);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
        loop {
            let update = tokio::select! {
                _ = tx.closed() => return,
                _ = ended.wait_for(|ended| *ended) => {
                    while let Ok(line) = lines.try_recv() {
                        if let Some(update) = decoder.line(&line, unix_ms_now()).ok().flatten() {
                            let _ = tx.try_send(update);
                        }
                    }
                    let _ = tx.try_send(snapshot_now(&mut decoder, &state));
                    return;
                }
                _ = tick.tick() => Some(snapshot_now(&mut decoder, &state)),
                line = lines.recv() => match line {
                    // Terminations are not shown as they close (the next
                    // snapshot has them); they do not decode as findings.
                    Ok(line) => decoder.line(&line, unix_ms_now()).ok().flatten(),
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                },
            };
            if let Some(update) = update {
                let _ = tx.try_send(update);
            }
        }
    })
}

/// The state's snapshot as an update. In process both clocks are at hand:
/// the snapshot's time of day is exact, not its receive time.
fn snapshot_now(decoder: &mut AgentDecoder, state: &AgentState) -> DataUpdate {
    let snapshot = state.snapshot();
    let age_ms = MonoTime::now().saturating_since(snapshot.now).as_millis() as u64;
    decoder.snapshot(&snapshot, unix_ms_now().saturating_sub(age_ms))
}

/// A channel for the TUI and one follower of `state` on it.
pub fn follow_local(state: AgentState) -> mpsc::Receiver<DataUpdate> {
    let (tx, rx) = mpsc::channel(DEFAULT_CAPACITY);
    follow_state(state, LOCAL_SOURCE, tx);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::FailureClass;
    use crate::tui::{SourceEvent, fixtures};

    /// The in-process TUI sees what a remote one would: the snapshot, each
    /// finding as it is published, and, once the engine loop has ended, a
    /// last snapshot and the end of the source.
    #[tokio::test]
    async fn a_follower_sends_snapshots_and_findings_and_ends_with_the_loop() {
        let state = AgentState::new(fixtures::snapshot(10, 1));
        let (tx, mut rx) = mpsc::channel(DEFAULT_CAPACITY);
        let follower = follow_state(state.clone(), "here", tx);
        let first = rx.recv().await.expect("a first snapshot");
        assert_eq!(first.source, "here");
        assert!(matches!(first.event, SourceEvent::Snapshot(_)));

        let finding = fixtures::finding(5, (17, 8080), FailureClass::Refused, Some("cart-1"));
        state.publish_finding(&finding);
        let update = loop {
            let update = rx.recv().await.expect("the finding");
            if matches!(update.event, SourceEvent::Failures(_)) {
                break update;
            }
        };
        let SourceEvent::Failures(rows) = update.event else {
            unreachable!()
        };
        assert_eq!(rows.len(), 1);

        state.mark_ended();
        let mut last = None;
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(update) = rx.recv().await {
                last = Some(update);
            }
        })
        .await;
        assert!(drained.is_ok(), "the source did not end with the loop");
        assert!(
            matches!(last.map(|u| u.event), Some(SourceEvent::Snapshot(_))),
            "the source ends with a last snapshot"
        );
        follower.await.expect("the follower returns");
    }
}
