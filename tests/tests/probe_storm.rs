//! A failure storm to a destination nobody watches: past the kernel's
//! per-destination budget the failures are counted in the kernel, not
//! sent one by one, and user space still counts every one of them.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use observer::probe::{ConnectRecord, FailureClass, Probe, ProbeOptions};
use observer_common::storm;
use observer_tests::{Netns, require_root};

const STORM: u64 = 3_000;

#[test]
fn a_refused_storm_is_counted_exactly_with_few_events() {
    require_root();
    let ns = Netns::create("obs-storm").expect("namespace");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let mut probe = Probe::load(&ProbeOptions::default()).expect("the probe must load here");
    let mut reader = probe.event_reader().expect("reader");
    let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
    let started = Instant::now();
    ns.run_in("obs-storm", move || {
        for _ in 0..STORM {
            let err = TcpStream::connect(dst).expect_err("nothing listens on port 9");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
    })
    .expect("storm");
    // The budget is per CPU and per window: however slow the machine (an
    // emulated guest takes seconds for the storm), at most this many
    // failures can have been sent one by one.
    let windows = started.elapsed().as_nanos() as u64 / storm::WINDOW_NS + 1;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let budget = storm::EVENTS_PER_WINDOW * windows * cpus;

    let mut records: Vec<ConnectRecord> = Vec::new();
    let counted = |records: &[ConnectRecord]| -> u64 {
        records
            .iter()
            .filter(|r| r.dst == dst)
            .map(|r| r.count)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted(&records) < STORM && Instant::now() < deadline {
        runtime
            .block_on(reader.next_batch(Duration::from_millis(100), &mut records))
            .expect("read events");
    }
    let ours: Vec<&ConnectRecord> = records.iter().filter(|r| r.dst == dst).collect();
    assert_eq!(counted(&records), STORM, "every failure counted once");
    assert!(
        ours.iter()
            .all(|r| r.failure_class() == Some(FailureClass::Refused)),
        "{ours:#?}"
    );
    let one_by_one = ours.iter().filter(|r| r.count == 1).count() as u64;
    let aggregates: Vec<&&ConnectRecord> = ours.iter().filter(|r| r.count > 1).collect();
    assert!(!aggregates.is_empty(), "the storm went past the budget");
    assert!(
        one_by_one <= budget,
        "{one_by_one} of {STORM} failures sent one by one, over the budget of {budget} \
         ({windows} windows, {cpus} CPUs)"
    );
    // The aggregates name the connector like the single events do.
    let cgroup = ours[0].cgroup_id;
    assert!(ours.iter().all(|r| r.cgroup_id == cgroup), "{ours:#?}");
    let counters = probe.counters().expect("counters");
    assert!(
        counters.events_sent < STORM,
        "fewer events than failures: {counters:?}"
    );
    assert_eq!(counters.ringbuf_drops, 0, "{counters:?}");
}
