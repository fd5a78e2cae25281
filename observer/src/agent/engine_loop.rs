//! The one engine loop: every input goes through [`EngineLoop`], which
//! owns the engine, carries out its watch-map changes on the probe, and
//! hands everything else to a list of [`Sink`]s. The live agent, `record`,
//! `replay`, the in-process TUI and the lab all run their engine through
//! it; they differ only in where inputs come from and which sinks listen.
//!
//! A sink subscribes to typed updates (inputs, outputs, snapshots) and
//! knows nothing of who else listens, as `export::AgentState` is written
//! by the loop and read by the HTTP server and the TUI alike.

use std::net::IpAddr;
use std::time::Duration;

use thiserror::Error;

use super::heap;
use super::input::Input;
use crate::{
    clock::MonoTime,
    engine::{Engine, Output, Snapshot},
    probe::{Probe, ProbeError},
};

/// The tick of an engine with nothing open (see [`EngineLoop::next_tick_in`]).
pub const IDLE_TICK: Duration = Duration::from_secs(1);

/// A sink's failure: the loop stops and reports it (a full disk under the
/// NDJSON output must not go unnoticed).
#[derive(Debug, Error)]
#[error("{what}: {source}")]
pub struct SinkError {
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    pub fn new(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SinkError {
        SinkError {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// A consumer of the engine loop. Every method has a no-op default: a sink
/// implements what it listens to.
pub trait Sink: Send {
    /// Every input, before the engine sees it (recordings).
    fn input(&mut self, _input: &Input) -> Result<(), SinkError> {
        Ok(())
    }

    /// Every output but the watch-map changes, which are the probe's.
    fn output(&mut self, _output: &Output) -> Result<(), SinkError> {
        Ok(())
    }

    /// Whether [`Sink::snapshot`] is wanted: a snapshot is built only when
    /// some sink reads it.
    fn wants_snapshots(&self) -> bool {
        false
    }

    /// The engine's state after a tick, and at the end.
    fn snapshot(&mut self, _snapshot: &Snapshot) -> Result<(), SinkError> {
        Ok(())
    }

    /// Makes what was written durable (on ticks and at the end).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The loop has finished: nothing follows.
    fn end(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Where the engine's watch-map changes go: the probe when live; nowhere
/// when replaying.
pub trait WatchMap {
    fn watch(&mut self, ip: IpAddr) -> Result<(), ProbeError>;
    fn unwatch(&mut self, ip: IpAddr) -> Result<(), ProbeError>;
}

impl WatchMap for Probe {
    fn watch(&mut self, ip: IpAddr) -> Result<(), ProbeError> {
        Probe::watch(self, ip)
    }

    fn unwatch(&mut self, ip: IpAddr) -> Result<(), ProbeError> {
        Probe::unwatch(self, ip)
    }
}

/// The engine, its sinks, and the reused output buffer.
pub struct EngineLoop {
    engine: Engine,
    sinks: Vec<Box<dyn Sink>>,
    outputs: Vec<Output>,
}

impl EngineLoop {
    pub fn new(engine: Engine, sinks: Vec<Box<dyn Sink>>) -> EngineLoop {
        EngineLoop {
            engine,
            sinks,
            outputs: Vec::new(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// One input through the engine; its outputs to the watch map and the
    /// sinks. A tick also publishes the snapshot after it.
    pub fn feed(
        &mut self,
        input: Input,
        watch: Option<&mut dyn WatchMap>,
    ) -> Result<(), SinkError> {
        for sink in &mut self.sinks {
            sink.input(&input)?;
        }
        let tick = match input {
            Input::Connect(record) => {
                self.engine.on_connect(&record, &mut self.outputs);
                None
            }
            Input::Cluster(event) => {
                let list_done = heap::completes_a_list(&event);
                self.engine.on_cluster(event, &mut self.outputs);
                if list_done {
                    heap::release_free_memory();
                }
                None
            }
            Input::Tick(now) => {
                self.engine.on_tick(now, &mut self.outputs);
                Some(now)
            }
        };
        self.route(watch)?;
        if let Some(now) = tick {
            self.publish_snapshot(now)?;
        }
        Ok(())
    }

    /// Closes every open window, routes what remains, publishes the last
    /// snapshot, flushes every sink and tells each the loop has ended.
    pub fn finish(
        &mut self,
        now: MonoTime,
        watch: Option<&mut dyn WatchMap>,
    ) -> Result<(), SinkError> {
        self.engine.finish(now, &mut self.outputs);
        self.route(watch)?;
        self.publish_snapshot(now)?;
        self.flush()?;
        for sink in &mut self.sinks {
            sink.end()?;
        }
        Ok(())
    }

    /// How long from `now` until the next tick: on the beat of `busy`
    /// while the engine has a window open or an address watched, of
    /// [`IDLE_TICK`] otherwise ([`MonoTime::until_beat`]: a node agent's
    /// parked slice socket rests on the same beat, so the two wake the
    /// agent once). Most nodes are idle most of the time, and every tick
    /// is a wake-up of the agent; a window that opens while it rests is
    /// first ticked at most [`IDLE_TICK`] later, well inside any quiet
    /// period.
    pub fn next_tick_in(&self, now: MonoTime, busy: Duration) -> Duration {
        if self.engine.is_idle() {
            now.until_beat(IDLE_TICK.max(busy))
        } else {
            now.until_beat(busy)
        }
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        Ok(())
    }

    fn publish_snapshot(&mut self, now: MonoTime) -> Result<(), SinkError> {
        if !self.sinks.iter().any(|sink| sink.wants_snapshots()) {
            return Ok(());
        }
        let snapshot = self.engine.snapshot(now);
        for sink in self.sinks.iter_mut().filter(|sink| sink.wants_snapshots()) {
            sink.snapshot(&snapshot)?;
        }
        Ok(())
    }

    fn route(&mut self, mut watch: Option<&mut dyn WatchMap>) -> Result<(), SinkError> {
        for output in self.outputs.drain(..) {
            match &output {
                Output::Watch(ip) => {
                    if let Some(map) = watch.as_deref_mut()
                        && let Err(error) = map.watch(*ip)
                    {
                        tracing::warn!(%ip, %error, "could not watch address");
                    }
                }
                Output::Unwatch(ip) => {
                    if let Some(map) = watch.as_deref_mut()
                        && let Err(error) = map.unwatch(*ip)
                    {
                        tracing::warn!(%ip, %error, "could not unwatch address");
                    }
                }
                _ => {
                    for sink in &mut self.sinks {
                        sink.output(&output)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;

    #[test]
    fn an_idle_engine_is_ticked_on_the_second() {
        let engine_loop = EngineLoop::new(Engine::new(EngineConfig::default()), Vec::new());
        let busy = Duration::from_millis(250);
        // 1.1 s past a whole second: the next beat of a second is 0.9 s on,
        // not the 250 ms a busy engine would wait.
        let now = MonoTime(41_100_000_000);
        assert_eq!(
            engine_loop.next_tick_in(now, busy),
            Duration::from_millis(900)
        );
        // A tick configured longer than the idle one is kept, on its own
        // beat: 40.1 s is 1.9 s short of the next whole two seconds.
        assert_eq!(
            engine_loop.next_tick_in(MonoTime(40_100_000_000), Duration::from_secs(2)),
            Duration::from_millis(1_900)
        );
    }
}
