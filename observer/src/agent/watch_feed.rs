//! Hands the Kubernetes watch events to the engine's loop, in batches.
//!
//! A node agent runs its watches on a thread of their own, on a
//! one-thread runtime. Its slice watch reads other nodes' changes in
//! gathered reads ([`crate::cluster::slice_pace`]), but each change in a
//! read is still a chunk of the HTTP body: the connection's task decodes
//! it and wakes the watcher's task. On the agent's two-worker runtime
//! that wake-up crossed to the other worker for every change, a write to
//! its eventfd and a futex wake-up: most of a quiet node agent's CPU.
//! On one thread the hand-off is a push onto a local queue, and what
//! crosses to the engine's thread is one batch per read.
//!
//! The agent of a cluster-wide watch (an ingress node's, or
//! `observer record`) keeps its watches on the agent's runtime: its
//! changes are read as they come, and its engine is busy anyway.

use std::sync::Arc;

use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::mpsc;

use super::input::Input;
use crate::cluster::{Kube, StampedEvent, WatchConfig, WatchCounters, stamped_events};

/// The most watch events handed to the engine's loop in one message.
pub const WATCH_BATCH: usize = 64;

/// Starts the watches of `config` and sends what they yield to `tx`, in
/// batches of what is ready together, until `tx` closes. A node-scoped
/// watch runs on a thread of its own; the call fails only when that
/// thread or its runtime cannot be started.
pub fn feed_watch_events(
    kube: &Kube,
    config: &WatchConfig,
    counters: Arc<WatchCounters>,
    tx: mpsc::Sender<Vec<Input>>,
) -> std::io::Result<()> {
    if config.pod_scope.node().is_none() {
        let events = stamped_events(kube, config, counters);
        tokio::spawn(forward_batches(events, tx));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (kube, config) = (kube.clone(), config.clone());
    std::thread::Builder::new()
        .name("observer-watch".into())
        .spawn(move || {
            runtime.block_on(async move {
                // kube's client spawns its request worker where it is
                // built: built here, the Pod watch's connection is this
                // thread's too.
                let kube = kube.rebuilt().unwrap_or_else(|error| {
                    tracing::warn!(%error, "the watches share the agent's client");
                    kube
                });
                let events = stamped_events(&kube, &config, counters);
                forward_batches(events, tx).await;
            });
        })?;
    Ok(())
}

/// Sends `events` to `tx` in batches until either ends.
async fn forward_batches(
    events: impl Stream<Item = StampedEvent> + Send + 'static,
    tx: mpsc::Sender<Vec<Input>>,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let first = tokio::select! {
            () = tx.closed() => return,
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let mut batch = vec![Input::Cluster(first)];
        let ended = gather_ready(&mut events, &mut batch).await;
        if tx.send(batch).await.is_err() || ended {
            return;
        }
    }
}

/// Adds to `batch` what `events` has ready, up to [`WATCH_BATCH`]: what it
/// has now, and what it has once the tasks it woke (the connection's,
/// decoding the rest of a read) have had their turn. Returns whether the
/// stream ended.
async fn gather_ready<S>(events: &mut S, batch: &mut Vec<Input>) -> bool
where
    S: Stream<Item = StampedEvent> + Unpin,
{
    let mut yielded = false;
    while batch.len() < WATCH_BATCH {
        // A poll that finds nothing leaves no waker behind that matters:
        // the next `next().await` registers the real one.
        match events.next().now_or_never() {
            Some(Some(event)) => {
                batch.push(Input::Cluster(event));
                yielded = false;
            }
            Some(None) => return true,
            None if yielded => return false,
            None => {
                tokio::task::yield_now().await;
                yielded = true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MonoTime;
    use crate::cluster::ResourceEvent;

    fn event(n: u64) -> StampedEvent {
        StampedEvent {
            at: MonoTime::from_nanos(n),
            event: ResourceEvent::SliceScope(None),
        }
    }

    fn stamps(batch: &[Input]) -> Vec<u64> {
        batch
            .iter()
            .map(|input| match input {
                Input::Cluster(event) => event.at.as_nanos(),
                other => panic!("not a watch event: {other:?}"),
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn what_another_task_sends_meanwhile_joins_the_batch() {
        // A rendezvous channel, like hyper's body: the sender hands over
        // one event a turn, as the connection's task does.
        let (event_tx, event_rx) = futures::channel::mpsc::channel::<StampedEvent>(0);
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(forward_batches(event_rx, tx));
        let sender = tokio::spawn(async move {
            let mut event_tx = event_tx;
            for n in 1..=5 {
                futures::SinkExt::send(&mut event_tx, event(n)).await.ok();
            }
            // Stays open: the stream does not end.
            std::future::pending::<()>().await;
        });
        let batch = rx.recv().await.expect("a batch");
        assert_eq!(stamps(&batch), vec![1, 2, 3, 4, 5]);
        sender.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_holds_at_most_watch_batch_events() {
        let total = WATCH_BATCH as u64 * 2 + 3;
        let events = futures::stream::iter((1..=total).map(event));
        let (tx, mut rx) = mpsc::channel(8);
        forward_batches(events, tx).await;
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        while let Some(batch) = rx.recv().await {
            sizes.push(batch.len());
            all.extend(stamps(&batch));
        }
        assert_eq!(sizes, vec![WATCH_BATCH, WATCH_BATCH, 3]);
        assert_eq!(all, (1..=total).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_receiver_stops_the_forwarding() {
        let (tx, rx) = mpsc::channel(8);
        drop(rx);
        // A stream that never yields: only the closed channel can end it.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            forward_batches(futures::stream::pending::<StampedEvent>(), tx),
        )
        .await
        .expect("forwarding stops once the receiver is gone");
    }
}
