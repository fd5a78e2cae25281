//! The agent: the live loop that feeds probe events and Kubernetes watch
//! events to the engine and routes its outputs (`observer agent`,
//! `observer record`), and the replay of a recording (`observer replay`).

pub mod input;
pub mod run;

pub use input::{
    Input, RecordedInput, Recording, RecordingError, read_inputs, read_recording, write_ingress,
    write_input,
};
pub use run::{AgentOptions, Sinks, finish, process, replay, run_agent};
