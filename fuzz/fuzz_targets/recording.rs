//! `observer replay`'s input: a recording file, truncated, corrupted or
//! hostile, read and then replayed through the engine loop exactly as
//! `agent::replay` does, with the sinks the live agent has (the NDJSON
//! lines and the shared state the HTTP API serves).
//!
//! Besides not panicking: a recording that reads must re-record to a
//! recording that reads back to the same lines, or a replay of a replay
//! would differ from the first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::agent::{
    EngineLoop, Input, Recording, Sink, SinkError, StateSink, read_recording, write_ingress,
    write_input,
};
use observer::clock::MonoTime;
use observer::engine::{Engine, EngineConfig, Output};
use observer::export::{AgentState, Update};

/// The NDJSON sink's lines, kept in memory.
struct Lines(Vec<String>);

impl Sink for Lines {
    fn output(&mut self, output: &Output) -> Result<(), SinkError> {
        match output {
            Output::TerminationClosed(t) => self.0.push(Update::Termination(t).to_line()),
            Output::Finding(f) => self.0.push(Update::Finding(f).to_line()),
            _ => {}
        }
        Ok(())
    }
}

fn input_time(input: &Input) -> MonoTime {
    match input {
        Input::Connect(record) => record.ts,
        Input::Cluster(event) => event.at,
        Input::Tick(t) => *t,
    }
}

fn rerecord(recording: &Recording) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(ingress) = &recording.ingress {
        write_ingress(&mut bytes, ingress).expect("an ingress line encodes");
    }
    for input in &recording.inputs {
        write_input(&mut bytes, input).expect("an input encodes");
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Ok(recording) = read_recording(data) else {
        return;
    };
    let once = rerecord(&recording);
    let again = read_recording(once.as_slice()).expect("a re-recorded recording reads");
    assert_eq!(
        String::from_utf8_lossy(&rerecord(&again)),
        String::from_utf8_lossy(&once),
        "a re-recorded recording re-records to itself"
    );

    let mut config = EngineConfig::default();
    if let Some(ingress) = recording.ingress {
        config.ingress = ingress;
    }
    let state = AgentState::default();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(Lines(Vec::new())),
        Box::new(StateSink::new(state.clone())),
    ];
    let mut engine_loop = EngineLoop::new(Engine::new(config), sinks);
    let mut last = MonoTime(0);
    for input in recording.inputs {
        last = last.max(input_time(&input));
        engine_loop
            .feed(input, None)
            .expect("in-memory sinks do not fail");
    }
    engine_loop
        .finish(last, None)
        .expect("in-memory sinks do not fail");
    assert!(!state.encode_metrics().is_empty());
    assert!(!state.snapshot_line().is_empty());
});
