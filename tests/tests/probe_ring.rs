//! A burst that overflows a deliberately small event ring: the drops are
//! counted, and delivered + dropped equals what the kernel tried to send.
//! Alone in its own test binary so no other test's connects share the ring.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use observer::probe::{Probe, ProbeOptions, decode::RawEvent};
use observer_common::kind;
use observer_tests::{Netns, require_root};

/// Connects refused on loopback inside a fresh namespace, to a watched
/// address (so no failure-storm budget applies). Each one makes three
/// kernel events: its SYN, the close of the SYN_SENT socket with its
/// error, and, from the receiving side (the watched address is this
/// kernel's own), the SYN it refused.
const REFUSED_CONNECTS: u32 = 300;
const EVENTS_PER_REFUSED: u64 = 3;

/// A loopback address nothing else on the host uses: the probe is global,
/// and only this test's connects may reach the watched address.
const TARGET: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

#[test]
fn overflowing_ring_counts_every_drop() {
    require_root();
    let ns = Netns::create("obs-ring").expect("namespace");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    // One page: room for about 39 records of 96 bytes plus headers.
    let options = ProbeOptions {
        ring_bytes: Some(4096),
        ..ProbeOptions::default()
    };
    let mut probe = Probe::load(&options).expect("the probe must load here");
    probe.watch(IpAddr::V4(TARGET)).expect("watch the target");
    let mut reader = probe.event_reader().expect("reader");

    ns.run_in("obs-burst", || {
        let dst = SocketAddr::new(IpAddr::V4(TARGET), 9);
        for _ in 0..REFUSED_CONNECTS {
            let err = TcpStream::connect_timeout(&dst, Duration::from_secs(1))
                .expect_err("nothing listens on port 9");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
    })
    .expect("burst");

    let mut delivered: Vec<RawEvent> = Vec::new();
    reader.drain_raw_now(&mut delivered);
    let counters = probe.counters().expect("counters");
    let ours = delivered
        .iter()
        .filter(|e| {
            e.dst.port() == 9
                && matches!(
                    e.kind,
                    kind::CONNECT | kind::SYN_CLOSED | kind::ERROR | kind::DROPPED
                )
        })
        .count() as u64;
    let sent = REFUSED_CONNECTS as u64 * EVENTS_PER_REFUSED;
    assert!(
        counters.ringbuf_drops > 0,
        "a 4 KiB ring must overflow: {counters:?}"
    );
    assert!(ours < sent, "delivered {ours} of {sent}");
    assert_eq!(
        ours + counters.ringbuf_drops,
        sent,
        "delivered {ours} + dropped {} must equal the {sent} events sent",
        counters.ringbuf_drops
    );
    assert_eq!(
        counters.events_sent,
        delivered.len() as u64,
        "every reserved event was read"
    );
    assert_eq!(reader.decode_errors(), 0);

    // The kernel's counters saw every connect, whatever the ring dropped.
    let stats = probe.dest_stats().expect("stats");
    let loopback = stats
        .get(&SocketAddr::new(IpAddr::V4(TARGET), 9))
        .copied()
        .expect("counters for 127.0.0.77:9");
    assert_eq!(loopback.connects, REFUSED_CONNECTS as u64);
    assert_eq!(loopback.refused, REFUSED_CONNECTS as u64);
}
