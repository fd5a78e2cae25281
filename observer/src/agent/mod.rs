//! The agent: the one engine loop and its sinks ([`EngineLoop`]), the live
//! agent that feeds it probe events and Kubernetes watch events
//! (`observer agent`, `observer record`), and the replay of a recording
//! (`observer replay`).

pub mod engine_loop;
mod heap;
pub mod input;
pub mod run;
pub mod sinks;
pub mod watch_feed;

pub use engine_loop::{EngineLoop, Sink, SinkError, WatchMap};
pub use input::{
    Input, RecordedInput, Recording, RecordingError, read_inputs, read_recording, write_ingress,
    write_input,
};
pub use run::{AgentOptions, replay, run_agent};
pub use sinks::{NdjsonSink, RecordingSink, StateSink};
pub use watch_feed::feed_watch_events;
