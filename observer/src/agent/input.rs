//! What the engine is fed, and its recording format.
//!
//! Every input carries its local CLOCK_MONOTONIC time, so a recording
//! replays through the same engine to the same output, byte for byte.
//! A recording is NDJSON, one input per line:
//!
//! ```text
//! {"connect":{"ts":…,"src":"10.0.0.5:41234","dst":"10.1.2.3:8080",…,"outcome":"failed","class":"refused",…}}
//! {"pod":{"at":…,"event":"apply","object":{…Pod…}}}
//! {"slice":{"at":…,"event":"delete","object":{…EndpointSlice…}}}
//! {"tick":…}
//! ```
//!
//! Watched objects are stored pruned to the fields the model reads
//! (`cluster::prune`; docs/AGENT.md, "What a recording holds").
//!
//! A recording starts with the agent's ingress configuration
//! (`{"ingress":{…}}`): which connectors measured the gap is part of what
//! was recorded, so a replay without ingress flags uses it.

use std::io::{BufRead, Write};

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::runtime::watcher::Event;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    clock::MonoTime,
    cluster::{
        ResourceEvent, StampedEvent,
        prune::{prune_pod, prune_slice},
    },
    engine::IngressConfig,
    probe::ConnectRecord,
};

/// One input to the engine.
// Connect records are nearly every input, so boxing them would cost an
// allocation per event to save bytes on the rare cluster event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Input {
    Connect(ConnectRecord),
    Cluster(StampedEvent),
    Tick(MonoTime),
}

#[derive(Debug, Error)]
pub enum RecordingError {
    #[error("line {line}: {source}")]
    Parse {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading the recording: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the recording: {0}")]
    Write(#[source] std::io::Error),
    #[error("encoding an input: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Which kind of watch event, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventKind {
    Apply,
    Delete,
    Init,
    InitApply,
    InitDone,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedWatch<K> {
    pub at: MonoTime,
    pub event: WatchEventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<K>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedInput {
    /// Which connectors are the ingress (the first line of a recording).
    Ingress(IngressConfig),
    Connect(ConnectRecord),
    Pod(Box<RecordedWatch<Pod>>),
    Slice(Box<RecordedWatch<EndpointSlice>>),
    /// The node whose endpoints the model keeps whole from `at` on.
    SliceScope {
        at: MonoTime,
        node: Option<String>,
    },
    Tick(MonoTime),
}

/// The event's kind and its object pruned to what the model reads
/// (`cluster::prune`): a recording holds no environment values, commands
/// or annotations the model does not use.
fn split_pruned<K>(event: &Event<K>, prune: fn(&K) -> K) -> (WatchEventKind, Option<K>) {
    match event {
        Event::Apply(k) => (WatchEventKind::Apply, Some(prune(k))),
        Event::Delete(k) => (WatchEventKind::Delete, Some(prune(k))),
        Event::Init => (WatchEventKind::Init, None),
        Event::InitApply(k) => (WatchEventKind::InitApply, Some(prune(k))),
        Event::InitDone => (WatchEventKind::InitDone, None),
    }
}

fn join<K>(kind: WatchEventKind, object: Option<K>) -> Option<Event<K>> {
    Some(match (kind, object) {
        (WatchEventKind::Apply, Some(k)) => Event::Apply(k),
        (WatchEventKind::Delete, Some(k)) => Event::Delete(k),
        (WatchEventKind::Init, _) => Event::Init,
        (WatchEventKind::InitApply, Some(k)) => Event::InitApply(k),
        (WatchEventKind::InitDone, _) => Event::InitDone,
        _ => return None,
    })
}

impl RecordedInput {
    pub fn from_input(input: &Input) -> RecordedInput {
        match input {
            Input::Connect(record) => RecordedInput::Connect(record.clone()),
            Input::Tick(t) => RecordedInput::Tick(*t),
            Input::Cluster(stamped) => match &stamped.event {
                ResourceEvent::Pod(event) => {
                    let (event, object) = split_pruned(event, prune_pod);
                    RecordedInput::Pod(Box::new(RecordedWatch {
                        at: stamped.at,
                        event,
                        object,
                    }))
                }
                ResourceEvent::EndpointSlice(event) => {
                    let (event, object) = split_pruned(event, prune_slice);
                    RecordedInput::Slice(Box::new(RecordedWatch {
                        at: stamped.at,
                        event,
                        object,
                    }))
                }
                ResourceEvent::SliceScope(node) => RecordedInput::SliceScope {
                    at: stamped.at,
                    node: node.clone(),
                },
            },
        }
    }

    /// The input this line stands for; `None` for a watch event recorded
    /// without the object it needs.
    pub fn into_input(self) -> Option<Input> {
        Some(match self {
            RecordedInput::Ingress(_) => return None,
            RecordedInput::Connect(record) => Input::Connect(record),
            RecordedInput::Tick(t) => Input::Tick(t),
            RecordedInput::Pod(w) => Input::Cluster(StampedEvent {
                at: w.at,
                event: ResourceEvent::Pod(Box::new(join(w.event, w.object)?)),
            }),
            RecordedInput::Slice(w) => Input::Cluster(StampedEvent {
                at: w.at,
                event: ResourceEvent::EndpointSlice(Box::new(join(w.event, w.object)?)),
            }),
            RecordedInput::SliceScope { at, node } => Input::Cluster(StampedEvent {
                at,
                event: ResourceEvent::SliceScope(node),
            }),
        })
    }
}

/// Appends one input to a recording.
pub fn write_input(out: &mut impl Write, input: &Input) -> Result<(), RecordingError> {
    let line =
        serde_json::to_string(&RecordedInput::from_input(input)).map_err(RecordingError::Encode)?;
    writeln!(out, "{line}").map_err(RecordingError::Write)
}

/// Writes a recording's first line: the ingress configuration it was made
/// with.
pub fn write_ingress(out: &mut impl Write, ingress: &IngressConfig) -> Result<(), RecordingError> {
    let line = serde_json::to_string(&RecordedInput::Ingress(ingress.clone()))
        .map_err(RecordingError::Encode)?;
    writeln!(out, "{line}").map_err(RecordingError::Write)
}

/// A whole recording: its inputs, and the ingress configuration it was
/// made with (absent in recordings from before connectors).
#[derive(Debug)]
pub struct Recording {
    pub ingress: Option<IngressConfig>,
    pub inputs: Vec<Input>,
}

/// Reads a whole recording. A malformed line is an error naming the line:
/// a replay that silently skipped input would not be a replay.
pub fn read_recording(reader: impl BufRead) -> Result<Recording, RecordingError> {
    let mut ingress = None;
    let mut inputs = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(RecordingError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let recorded: RecordedInput =
            serde_json::from_str(&line).map_err(|source| RecordingError::Parse {
                line: index + 1,
                source,
            })?;
        if let RecordedInput::Ingress(config) = &recorded {
            ingress = Some(config.clone());
        }
        if let Some(input) = recorded.into_input() {
            inputs.push(input);
        }
    }
    Ok(Recording { ingress, inputs })
}

/// The inputs of a recording (see [`read_recording`]).
pub fn read_inputs(reader: impl BufRead) -> Result<Vec<Input>, RecordingError> {
    read_recording(reader).map(|r| r.inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{FailureClass, Outcome};

    fn refused() -> ConnectRecord {
        ConnectRecord {
            ts: MonoTime(2_000),
            syn: Some(MonoTime(1_000)),
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
            pid: 7,
            tid: 7,
            comm: "nginx".into(),
            cgroup_id: 1,
            pod_uid: None,
            container_id: None,
            retry: false,
            retried: None,
            count: 1,
            watched: true,
            outcome: Outcome::Failed {
                class: FailureClass::Refused,
                errno: 111,
                waited_ns: 1_000,
                synchronous: false,
            },
        }
    }

    #[test]
    fn recording_round_trips_every_kind_of_input() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-1".into());
        pod.metadata.managed_fields = Some(vec![Default::default()]);
        let inputs = vec![
            Input::Connect(refused()),
            Input::Cluster(StampedEvent {
                at: MonoTime(5),
                event: ResourceEvent::Pod(Box::new(Event::Apply(pod))),
            }),
            Input::Cluster(StampedEvent {
                at: MonoTime(6),
                event: ResourceEvent::EndpointSlice(Box::new(Event::InitDone)),
            }),
            Input::Tick(MonoTime(9)),
        ];
        let mut bytes = Vec::new();
        for input in &inputs {
            write_input(&mut bytes, input).unwrap();
        }
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(!text.contains("managedFields"), "trimmed before recording");
        let back = read_inputs(bytes.as_slice()).unwrap();
        assert_eq!(back.len(), 4);
        let mut again = Vec::new();
        for input in &back {
            write_input(&mut again, input).unwrap();
        }
        assert_eq!(again, bytes, "a re-recorded replay is byte-identical");
        match &back[1] {
            Input::Cluster(StampedEvent {
                at,
                event: ResourceEvent::Pod(event),
            }) => {
                assert_eq!(*at, MonoTime(5));
                assert!(
                    matches!(**event, Event::Apply(ref p) if p.metadata.name.as_deref() == Some("web-1"))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_ingress_configuration_travels_with_the_recording() {
        let ingress = IngressConfig {
            comms: vec!["haproxy".into()],
            node: Some("node-a".into()),
            ..IngressConfig::default()
        };
        let mut bytes = Vec::new();
        write_ingress(&mut bytes, &ingress).unwrap();
        write_input(&mut bytes, &Input::Tick(MonoTime(1))).unwrap();
        let recording = read_recording(bytes.as_slice()).unwrap();
        assert_eq!(recording.ingress, Some(ingress));
        assert_eq!(recording.inputs.len(), 1, "the header is not an input");
        let old = read_recording("{\"tick\":1}\n".as_bytes()).unwrap();
        assert_eq!(old.ingress, None);
    }

    #[test]
    fn malformed_line_is_an_error_with_its_number() {
        let text = "{\"tick\":1}\nnot json\n";
        match read_inputs(text.as_bytes()) {
            Err(RecordingError::Parse { line, .. }) => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }
}
