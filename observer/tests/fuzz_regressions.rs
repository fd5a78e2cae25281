//! Inputs the fuzz targets (fuzz/, docs/FUZZING.md) found crashing, each
//! kept as a test of what observer must do with it instead: a clear error
//! or a sensible answer, never a panic.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use observer::clock::MonoTime;
use observer::probe::decode::RawEvent;
use observer::probe::{ConnectRecord, Outcome, OutcomeJoiner};
use observer_common::kind;

/// outcome_joiner: a kernel config saying `CONFIG_HZ=0` made the joiner
/// divide by zero on the first pooled send whose event could not tell the
/// tick rate. The default rate (250) is kept instead.
#[test]
fn a_zero_fallback_tick_rate_keeps_the_default() {
    let mut joiner = OutcomeJoiner::new(Duration::from_millis(200)).with_fallback_hz(0);
    // Jiffies of 0 two seconds after boot fit no kernel's rate: the event
    // cannot tell it, so the fallback is used.
    let sent = RawEvent {
        kind: kind::SENT,
        ts: MonoTime(2_000_000_000),
        syn: None,
        src: "10.0.0.5:41000".parse().unwrap(),
        dst: "10.0.0.9:8080".parse().unwrap(),
        tgid: 7,
        pid: 7,
        comm: "nginx".into(),
        cgroup_id: 1,
        errno: 0,
        watched: true,
        jiffies: 0,
        since_send_jiffies: 250,
        cut: false,
        opens_connection: false,
    };
    let mut out: Vec<ConnectRecord> = Vec::new();
    joiner.push(sent, &mut out);
    assert_eq!(out.len(), 1);
    // 250 jiffies at 250 Hz: one second before the close.
    assert_eq!(
        out[0].outcome,
        Outcome::Sent {
            last_send: MonoTime(1_000_000_000)
        }
    );
}

/// The recording fuzz target starts from fuzz/seeds/recording: a seed
/// that no longer reads (a format change) would leave it fuzzing serde's
/// error paths only. It replays to the termination it records.
#[test]
fn the_recording_seed_replays_to_its_termination() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds/recording/termination");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("replay.ndjson");
    observer::agent::replay(&seed, Some(&output), Default::default(), false).unwrap();
    let text = std::fs::read_to_string(&output).unwrap();
    let terminations: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("termination").cloned())
        .collect();
    assert_eq!(terminations.len(), 1, "{text}");
    let termination = &terminations[0];
    assert_eq!(termination["pod"], "web-5c8d7b9f4-qk2lp");
    // Deletion seen at 10 s; the ingress's last choice of the pod is the
    // pooled request sent at 11.1 s; the refusals after it are not choices.
    assert_eq!(termination["propagation_gap_ns"], 1_100_000_000);
    assert_eq!(termination["failures"]["refused"], 13);
}
