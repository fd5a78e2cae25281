use super::*;

fn bytes_of(event: &ConnectEvent) -> Vec<u8> {
    // SAFETY: ConnectEvent is repr(C) plain data without padding (size
    // asserted in observer-common), so all its bytes are initialised.
    unsafe {
        std::slice::from_raw_parts(
            (event as *const ConnectEvent).cast::<u8>(),
            ConnectEvent::SIZE,
        )
    }
    .to_vec()
}

fn v4_event(kind_: u8, ts: u64, sport: u16, errno: i32) -> ConnectEvent {
    let mut e = ConnectEvent::zeroed();
    e.kind = kind_;
    e.ts_ns = ts;
    e.syn_ns = 1_000;
    e.family = AF_INET;
    e.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    e.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    e.sport = sport;
    e.dport = 8080;
    e.tgid = 42;
    e.pid = 43;
    e.errno = errno;
    e.comm[..5].copy_from_slice(b"nginx");
    e
}

#[test]
fn decodes_ipv4_event_fields() {
    let raw = decode_event(&bytes_of(&v4_event(kind::SYN_CLOSED, 5_000, 40000, 0))).unwrap();
    assert_eq!(raw.src, "10.0.0.1:40000".parse().unwrap());
    assert_eq!(raw.dst, "10.0.0.2:8080".parse().unwrap());
    assert_eq!(raw.comm, "nginx");
    assert_eq!((raw.tgid, raw.pid), (42, 43));
    assert_eq!(raw.syn, Some(MonoTime(1_000)));
    assert!(!raw.watched);
}

#[test]
fn decodes_ipv6_and_unmaps_v4_mapped() {
    let mut e = v4_event(kind::ESTABLISHED, 2_000, 1, 0);
    e.family = AF_INET6;
    e.saddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
    e.daddr = "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets();
    e.flags = flags::WATCHED;
    let raw = decode_event(&bytes_of(&e)).unwrap();
    assert_eq!(raw.src.ip(), "fd00::1".parse::<IpAddr>().unwrap());
    assert_eq!(raw.dst.ip(), "10.1.2.3".parse::<IpAddr>().unwrap());
    assert!(raw.watched);
}

#[test]
fn rejects_bad_size_family_and_kind() {
    assert_eq!(
        decode_event(&[0u8; 10]),
        Err(DecodeError::Size {
            got: 10,
            expected: ConnectEvent::SIZE
        })
    );
    let mut e = v4_event(kind::ERROR, 1, 1, 111);
    e.family = 99;
    assert_eq!(decode_event(&bytes_of(&e)), Err(DecodeError::Family(99)));
    let e = v4_event(77, 1, 1, 111);
    assert_eq!(decode_event(&bytes_of(&e)), Err(DecodeError::Kind(77)));
}

fn raw(kind_: u8, ts: u64, sport: u16, errno: i32) -> RawEvent {
    decode_struct(&v4_event(kind_, ts, sport, errno)).unwrap()
}

#[test]
fn close_then_error_joins_into_refused_with_process() {
    let mut j = OutcomeJoiner::default();
    let mut out = Vec::new();
    j.push(raw(kind::SYN_CLOSED, 2_000, 40000, 0), &mut out);
    assert!(out.is_empty());
    let mut err = raw(kind::ERROR, 2_100, 40000, libc::ECONNREFUSED);
    err.tgid = 0;
    err.comm.clear();
    j.push(err, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].failure_class(), Some(FailureClass::Refused));
    assert_eq!(out[0].pid, 42);
    assert_eq!(out[0].comm, "nginx");
    assert_eq!(out[0].ts, MonoTime(2_000));
    assert_eq!(j.pending(), 0);
}

#[test]
fn close_with_early_error_is_complete() {
    let mut j = OutcomeJoiner::default();
    let mut out = Vec::new();
    j.push(raw(kind::SYN_CLOSED, 2_000, 1, libc::ETIMEDOUT), &mut out);
    assert_eq!(out[0].failure_class(), Some(FailureClass::TimedOut));
    assert_eq!(j.pending(), 0);
}

#[test]
fn close_without_error_becomes_aborted_after_grace_with_wait_time() {
    let mut j = OutcomeJoiner::new(Duration::from_millis(100));
    let mut out = Vec::new();
    j.push(raw(kind::SYN_CLOSED, 501_000, 1, 0), &mut out);
    j.flush(MonoTime(501_000 + 99_000_000), &mut out);
    assert!(out.is_empty(), "still within grace");
    j.flush(MonoTime(501_000 + 100_000_000), &mut out);
    assert_eq!(out.len(), 1);
    match out[0].outcome {
        Outcome::Failed {
            class, waited_ns, ..
        } => {
            assert_eq!(class, FailureClass::Aborted);
            assert_eq!(waited_ns, 500_000);
        }
        ref other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn error_after_abort_deadline_is_reported_alone() {
    let mut j = OutcomeJoiner::default();
    let mut out = Vec::new();
    j.push(raw(kind::ERROR, 9_000, 5, libc::EHOSTUNREACH), &mut out);
    assert_eq!(out[0].failure_class(), Some(FailureClass::HostUnreachable));
}

#[test]
fn reused_tuple_aborts_the_older_close() {
    let mut j = OutcomeJoiner::default();
    let mut out = Vec::new();
    j.push(raw(kind::SYN_CLOSED, 1_000, 7, 0), &mut out);
    j.push(raw(kind::SYN_CLOSED, 3_000, 7, 0), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].failure_class(), Some(FailureClass::Aborted));
    assert_eq!(out[0].ts, MonoTime(1_000));
    j.drain(&mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn sync_failure_reset_and_success_map_to_outcomes() {
    let mut j = OutcomeJoiner::default();
    let mut out = Vec::new();
    j.push(
        raw(kind::SYNC_FAILED, 1_500, 0, libc::ENETUNREACH),
        &mut out,
    );
    j.push(raw(kind::RESET, 9_000, 1, libc::ECONNRESET), &mut out);
    j.push(raw(kind::ESTABLISHED, 1_250, 1, 0), &mut out);
    assert_eq!(
        out[0].outcome,
        Outcome::Failed {
            class: FailureClass::NetUnreachable,
            errno: libc::ENETUNREACH,
            waited_ns: 500,
            synchronous: true
        }
    );
    assert_eq!(out[1].failure_class(), Some(FailureClass::Reset));
    assert_eq!(out[2].outcome, Outcome::Established { latency_ns: 250 });
}

#[test]
fn record_serializes_with_flat_outcome() {
    let mut j = OutcomeJoiner::default();
    let mut out = Vec::new();
    j.push(
        raw(kind::SYN_CLOSED, 2_000, 40000, libc::ECONNREFUSED),
        &mut out,
    );
    let json = serde_json::to_value(&out[0]).unwrap();
    assert_eq!(json["outcome"], "failed");
    assert_eq!(json["class"], "refused");
    assert_eq!(json["dst"], "10.0.0.2:8080");
    let back: ConnectRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, out[0]);
}

fn decoded(e: &ConnectEvent) -> RawEvent {
    decode_event(&bytes_of(e)).unwrap()
}

fn joined(events: &[ConnectEvent]) -> Vec<ConnectRecord> {
    let mut joiner = OutcomeJoiner::default();
    let mut out = Vec::new();
    for e in events {
        joiner.push(decoded(e), &mut out);
    }
    out
}

/// A thread's SYN to `dst_last_octet`, at `ts`.
fn syn_to(dst_last_octet: u8, ts: u64, thread: u32) -> ConnectEvent {
    let mut e = v4_event(kind::CONNECT, ts, 0, 0);
    e.daddr[3] = dst_last_octet;
    e.pid = thread;
    e.flags = flags::WATCHED;
    e
}

#[test]
fn a_syn_right_after_the_threads_own_failure_elsewhere_is_a_retry() {
    const MS: u64 = 1_000_000;
    let mut refused = v4_event(kind::SYN_CLOSED, 100 * MS, 40000, libc::ECONNREFUSED);
    refused.pid = 7;
    let out = joined(&[
        refused,
        // The same thread, 1 ms later, to another pod: the retry.
        syn_to(3, 101 * MS, 7),
        // Another thread at the same moment: its own first try.
        syn_to(4, 101 * MS, 8),
        // The same thread, to the pod that just refused: a new request
        // that chose it again, not a retry elsewhere.
        syn_to(2, 101 * MS + 500_000, 7),
        // The same thread, long after the failure: a first try.
        syn_to(5, 200 * MS, 7),
    ]);
    let retries: Vec<bool> = out
        .iter()
        .filter(|r| r.outcome == Outcome::Connect)
        .map(|r| r.retry)
        .collect();
    assert_eq!(retries, [true, false, false, false]);
    // The retry names the failure it hid, as the failure's own record
    // is dated and addressed, so the engine can count it as retried.
    let failure = out
        .iter()
        .find(|r| r.failure_class().is_some())
        .expect("the refused connect");
    let retry = out.iter().find(|r| r.retry).expect("the retry");
    assert_eq!(
        retry.retried,
        Some(super::super::retry::RetriedFailure {
            dst: failure.dst,
            at: failure.ts
        })
    );
}

#[test]
fn a_close_awaiting_its_report_already_makes_the_next_syn_a_retry() {
    // A proxy's connect timeout: it closes the socket (no error report
    // follows: aborted after the grace period) and retries at once.
    let mut closed = v4_event(kind::SYN_CLOSED, 5_000_000_000, 40000, 0);
    closed.pid = 9;
    let out = joined(&[closed, syn_to(3, 5_000_200_000, 9)]);
    assert_eq!(out.len(), 1, "the abort is not reported yet");
    assert!(out[0].retry);
}

#[test]
fn a_sent_event_dates_the_last_request_on_a_pooled_connection() {
    // 1000 s after boot on an HZ=250 kernel: jiffies = 2^32 + 250 * 700.
    let ts = 1_000_000_000_000u64;
    let mut e = v4_event(kind::SENT, ts, 41000, 0);
    e.syn_ns = (1u64 << 32) + 250 * 700;
    e.since_send_jiffies = 500; // 2 s at 250 Hz
    e.flags = flags::WATCHED;
    let raw = decoded(&e);
    assert_eq!(raw.syn, None, "a SENT event's syn_ns is jiffies");
    let out = joined(&[e]);
    assert_eq!(
        out[0].outcome,
        Outcome::Sent {
            last_send: MonoTime(ts - 2_000_000_000)
        }
    );
}

#[test]
fn kernel_hz_from_jiffies_and_the_monotonic_clock() {
    let at = |seconds: f64| MonoTime((seconds * 1e9) as u64);
    let jiffies = |hz: u64, seconds: u64| (1u64 << 32) + hz * seconds - hz * 300;
    for hz in [100u32, 250, 300, 1000] {
        assert_eq!(
            kernel_hz(at(1_000.0), jiffies(u64::from(hz), 1_000)),
            Some(hz)
        );
        // Before the five-minute wrap, jiffies are below 2^32.
        assert_eq!(kernel_hz(at(100.0), jiffies(u64::from(hz), 100)), Some(hz));
    }
    // Too close to the wrap to tell.
    assert_eq!(kernel_hz(at(310.0), jiffies(250, 310)), None);
}

#[test]
fn a_close_under_a_request_in_flight_is_a_cut_failure_of_the_pod() {
    let ts = 1_000_000_000_000u64;
    let mut e = v4_event(kind::SENT, ts, 41000, 0);
    e.syn_ns = (1u64 << 32) + 250 * 700;
    e.since_send_jiffies = 5; // 20 ms at 250 Hz
    e.flags = flags::WATCHED | flags::CUT;
    let out = joined(&[e]);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(matches!(out[0].outcome, Outcome::Sent { .. }));
    assert_eq!(
        out[1].outcome,
        Outcome::Failed {
            class: FailureClass::Cut,
            errno: 0,
            waited_ns: 20_000_000,
            synchronous: false,
        }
    );
    // Without the flag: a close, no failure.
    e.flags = flags::WATCHED;
    assert_eq!(joined(&[e]).len(), 1);
}

#[test]
fn a_pooled_request_right_after_the_threads_failure_is_a_retry() {
    // 1000 s after boot on an HZ=250 kernel.
    let at_jiffies = |ts: u64| (1u64 << 32) + 250 * 700 + (ts - 1_000_000_000_000) / 4_000_000;
    let ts = 1_000_000_000_000u64;
    let mut refused = v4_event(kind::SYN_CLOSED, ts, 40000, libc::ECONNREFUSED);
    refused.pid = 7;
    // Two pooled connections of thread 7 to another pod close 2 s later:
    // the first last carried a request 1 jiffy after the failure (the
    // retry), the second one 50 ms before it (a choice).
    let close = ts + 2_000_000_000;
    let pooled = |sport: u16, since_send_jiffies: u32| {
        let mut e = v4_event(kind::SENT, close, sport, 0);
        e.daddr[3] = 3;
        e.pid = 7;
        e.syn_ns = at_jiffies(close);
        e.since_send_jiffies = since_send_jiffies;
        e.flags = flags::WATCHED;
        e
    };
    let out = joined(&[refused, pooled(41000, 499), pooled(41001, 512)]);
    let sent: Vec<bool> = out
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Sent { .. }))
        .map(|r| r.retry)
        .collect();
    assert_eq!(sent, [true, false]);
}

#[test]
fn a_request_cut_in_flight_makes_the_threads_next_syn_a_retry() {
    let ts = 1_000_000_000_000u64;
    let mut cut = v4_event(kind::SENT, ts, 41000, 0);
    cut.syn_ns = (1u64 << 32) + 250 * 700;
    cut.since_send_jiffies = 5;
    cut.flags = flags::WATCHED | flags::CUT;
    cut.pid = 7;
    let out = joined(&[cut, syn_to(3, ts + 300_000, 7)]);
    assert!(
        out.last()
            .is_some_and(|r| r.outcome == Outcome::Connect && r.retry)
    );
}

#[test]
fn a_pooled_connection_ending_in_an_error_is_a_failure_of_that_class() {
    // A pooled connection to a pod whose IP vanished: the request sent
    // 600 ms before the close was retransmitted until the timeout.
    let ts = 1_000_000_000_000u64;
    let mut e = v4_event(kind::SENT, ts, 41000, libc::ETIMEDOUT);
    e.syn_ns = (1u64 << 32) + 250 * 700;
    e.since_send_jiffies = 150;
    e.flags = flags::WATCHED;
    let out = joined(&[e]);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(matches!(out[0].outcome, Outcome::Sent { .. }));
    assert_eq!(
        out[1].outcome,
        Outcome::Failed {
            class: FailureClass::TimedOut,
            errno: libc::ETIMEDOUT,
            waited_ns: 600_000_000,
            synchronous: false,
        }
    );
}

#[test]
fn receiving_side_records_decode_and_round_trip_through_json() {
    let mut event = ConnectEvent::zeroed();
    event.kind = kind::DROPPED;
    event.family = AF_INET;
    event.ts_ns = 5_000_000_000;
    event.saddr[..4].copy_from_slice(&[192, 0, 2, 10]);
    event.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    event.sport = 50_000;
    event.dport = 8080;
    event.errno = observer_common::drop_class::NO_SOCKET;
    event.flags = flags::WATCHED | flags::SYN;
    let raw = decode_struct(&event).expect("decodes");
    let mut out = Vec::new();
    OutcomeJoiner::default().push(raw, &mut out);
    assert_eq!(out.len(), 1);
    let record = &out[0];
    assert!(record.is_arrival() && record.refused_by_pod(), "{record:?}");
    assert_eq!(record.src.to_string(), "192.0.2.10:50000", "the sender");
    assert_eq!(record.dst.to_string(), "10.0.0.1:8080", "the pod");
    // Recordings and the API carry records as JSON: every arrival outcome
    // comes back the same (its fields must not collide with the record's).
    for outcome in [
        record.outcome.clone(),
        Outcome::Accepted,
        Outcome::Received {
            last_arrival: MonoTime(4_000_000_000),
        },
    ] {
        let original = ConnectRecord {
            outcome,
            syn: Some(MonoTime(1)),
            ..record.clone()
        };
        let json = serde_json::to_string(&original).expect("serialises");
        let back: ConnectRecord = serde_json::from_str(&json).expect(&json);
        assert_eq!(back, original, "{json}");
    }
    // A drop class the decoder does not know is no record.
    event.errno = 99;
    let mut out = Vec::new();
    OutcomeJoiner::default().push(decode_struct(&event).expect("decodes"), &mut out);
    assert!(out.is_empty());
}
