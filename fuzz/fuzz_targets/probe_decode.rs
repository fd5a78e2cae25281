//! Ring-buffer bytes -> decoded events -> the outcome joiner.
//!
//! The input is what the kernel could hand user space: records of any
//! length and content. Each 96-byte chunk is one record (the rest, and the
//! whole input, exercise the size check); decoded records go through an
//! [`OutcomeJoiner`], flushed at each event's time and drained at the end,
//! as the agent's reader does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use observer::clock::MonoTime;
use observer::probe::decode::{DecodeError, decode_event};
use observer::probe::{ConnectRecord, OutcomeJoiner};
use observer_common::ConnectEvent;

fuzz_target!(|data: &[u8]| {
    if data.len() != ConnectEvent::SIZE {
        assert!(matches!(decode_event(data), Err(DecodeError::Size { .. })));
    }
    let mut joiner = OutcomeJoiner::default();
    let mut out: Vec<ConnectRecord> = Vec::new();
    for chunk in data.chunks(ConnectEvent::SIZE) {
        match decode_event(chunk) {
            Ok(raw) => {
                let ts = raw.ts;
                joiner.push(raw, &mut out);
                joiner.flush(ts, &mut out);
            }
            Err(error) => {
                // Every decode error says what was wrong.
                assert!(!error.to_string().is_empty());
            }
        }
    }
    joiner.flush(MonoTime(u64::MAX), &mut out);
    joiner.drain(&mut out);
    assert_eq!(joiner.pending(), 0, "a drain leaves nothing waiting");
    for record in &out {
        // What the NDJSON output and the recording write must encode.
        let line = serde_json::to_string(record).expect("a record encodes");
        let back: ConnectRecord = serde_json::from_str(&line).expect("a record decodes");
        assert_eq!(&back, record, "a record survives its own encoding");
    }
});
