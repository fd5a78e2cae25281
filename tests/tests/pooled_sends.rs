//! Requests on pooled (keep-alive) connections on the real kernel: a
//! connection opened before its destination is watched keeps carrying
//! requests; when it closes — the client closing it, or the server going
//! away first — the probe reports when it last sent data, to within a
//! jiffy, with no work on any send.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use observer::clock::MonoTime;
use observer::probe::{ConnectRecord, EventReader, FailureClass, Outcome, Probe, ProbeOptions};
use observer_tests::{Link, require_root};

const PORT: u16 = 9180;
/// A jiffy is 1 to 10 ms; the conversion adds well under a millisecond.
const TOLERANCE_NS: u64 = 12_000_000;

/// What the client did: when it last sent, and when the connection closed.
struct Sent {
    local: SocketAddr,
    last_send: MonoTime,
}

/// How the connection ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// The client (the ingress) closes it.
    ClientCloses,
    /// The server's app exits while the connection idles in the pool.
    ServerClosesIdle,
    /// The server's app exits with the client's last request unanswered.
    ServerCutsRequest,
}

/// Opens a connection, then (once `watch` has run) sends two requests
/// 300 ms apart, waits, and lets `finish` close it.
fn pooled_connection(
    link: &Link,
    server: IpAddr,
    watch: impl FnOnce() + Send + 'static,
    ending: Ending,
) -> Sent {
    let dst = SocketAddr::new(server, PORT);
    let listener = link
        .server
        .run_in("pool-server", move || TcpListener::bind(dst).expect("bind"))
        .expect("server namespace");
    let serving = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        for i in 0..2 {
            let n = conn.read(&mut buf).expect("request");
            if i == 1 && ending == Ending::ServerCutsRequest {
                // Read, never answered: the app exits 450 ms later.
                std::thread::sleep(Duration::from_millis(450));
                drop(conn);
                return;
            }
            conn.write_all(&buf[..n]).expect("response");
        }
        if ending == Ending::ServerClosesIdle {
            // The app exits while the connection idles in the client's
            // pool: it closes under the client.
            std::thread::sleep(Duration::from_millis(450));
            drop(conn);
        } else {
            let _ = conn.read(&mut buf);
        }
    });
    let sent = link
        .client
        .run_in("pool-client", move || {
            let mut conn = TcpStream::connect(dst).expect("connect");
            // The destination is watched only after the connection exists,
            // as a pod is once it starts terminating.
            watch();
            let mut buf = [0u8; 64];
            conn.write_all(b"GET 1").expect("send");
            conn.read_exact(&mut buf[..5]).expect("reply");
            std::thread::sleep(Duration::from_millis(300));
            conn.write_all(b"GET 2").expect("send");
            let last_send = MonoTime::now();
            if ending != Ending::ServerCutsRequest {
                conn.read_exact(&mut buf[..5]).expect("reply");
            }
            std::thread::sleep(Duration::from_millis(500));
            let local = conn.local_addr().expect("local");
            if ending != Ending::ClientCloses {
                // Half-closed by the server; the client notices and closes.
                let _ = conn.read(&mut buf);
            }
            drop(conn);
            Sent { local, last_send }
        })
        .expect("client namespace");
    serving.join().expect("server");
    sent
}

/// What the probe reports over the next second (ten 100 ms reads).
fn read_for_a_second(
    runtime: &tokio::runtime::Runtime,
    reader: &mut EventReader,
) -> Vec<ConnectRecord> {
    let mut records = Vec::new();
    for _ in 0..10 {
        let mut batch = Vec::new();
        runtime
            .block_on(reader.next_batch(Duration::from_millis(100), &mut batch))
            .expect("read");
        records.extend(batch);
    }
    records
}

fn sent_records(records: &[ConnectRecord], local: SocketAddr) -> Vec<(MonoTime, MonoTime)> {
    records
        .iter()
        .filter(|r| r.src == local)
        .filter_map(|r| match r.outcome {
            Outcome::Sent { last_send } => Some((r.ts, last_send)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pooled_connections_last_request_is_reported_when_it_closes() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let link = Link::create("pool", 62).expect("namespaces");
    let probe = std::sync::Arc::new(std::sync::Mutex::new(
        Probe::load(&ProbeOptions::default()).expect("probe loads (run as root)"),
    ));
    let mut reader = probe
        .lock()
        .map(|mut p| p.event_reader().expect("reader"))
        .expect("probe");
    let server = link.server_v4;
    for ending in [
        Ending::ClientCloses,
        Ending::ServerClosesIdle,
        Ending::ServerCutsRequest,
    ] {
        let watcher = probe.clone();
        let sent = pooled_connection(
            &link,
            server,
            move || {
                watcher.lock().expect("probe").watch(server).expect("watch");
            },
            ending,
        );
        let records = read_for_a_second(&runtime, &mut reader);
        let reports = sent_records(&records, sent.local);
        assert!(
            !reports.is_empty(),
            "{ending:?}: no report of the pooled connection: {records:#?}"
        );
        for (closed_at, last_send) in reports {
            let error = last_send.0.abs_diff(sent.last_send.0);
            assert!(
                error <= TOLERANCE_NS,
                "{ending:?}: last send {:?} vs {:?}, {error} ns off",
                last_send,
                sent.last_send
            );
            assert!(
                closed_at.0 >= sent.last_send.0 + 400_000_000,
                "reported when the connection closed, not when it sent"
            );
        }
        let cut = records
            .iter()
            .filter(|r| r.src == sent.local)
            .filter(|r| r.failure_class() == Some(FailureClass::Cut))
            .count();
        let expected = usize::from(ending == Ending::ServerCutsRequest);
        assert_eq!(
            cut, expected,
            "{ending:?}: requests cut in flight: {records:#?}"
        );
        probe
            .lock()
            .expect("probe")
            .unwatch(server)
            .expect("unwatch");
    }
}

/// A pooled connection to a pod that vanished (its packets go nowhere):
/// the next request on it is retransmitted until the connection times out,
/// which the client sees as ETIMEDOUT. The probe reports the last send and
/// a `timed_out` failure of that destination.
#[test]
fn a_pooled_connection_to_a_vanished_pod_fails_timed_out() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let link = Link::create("gone", 63).expect("namespaces");
    let mut probe = Probe::load(&ProbeOptions::default()).expect("probe loads (run as root)");
    let mut reader = probe.event_reader().expect("reader");
    let server = link.server_v4;
    let dst = SocketAddr::new(server, PORT);
    let listener = link
        .server
        .run_in("pool-server", move || TcpListener::bind(dst).expect("bind"))
        .expect("server namespace");
    let serving = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).expect("request");
        conn.write_all(&buf[..n]).expect("response");
        // Held open: the pod "vanishes" by dropping everything.
        std::thread::sleep(Duration::from_secs(3));
    });
    let mut conn = link
        .client
        .run_in("pool-client", move || {
            TcpStream::connect(dst).expect("connect")
        })
        .expect("client namespace");
    probe.watch(server).expect("watch");
    let mut buf = [0u8; 64];
    conn.write_all(b"GET 1").expect("send");
    conn.read_exact(&mut buf[..5]).expect("reply");
    link.drop_syns(PORT).expect("nft drop");
    set_user_timeout(&conn, Duration::from_millis(400));
    conn.write_all(b"GET 2").expect("send");
    let last_send = MonoTime::now();
    let err = conn.read(&mut buf).expect_err("the connection times out");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let local = conn.local_addr().expect("local");
    drop(conn);
    let records = read_for_a_second(&runtime, &mut reader);
    let mine: Vec<&ConnectRecord> = records.iter().filter(|r| r.src == local).collect();
    let sent = sent_records(&records, local);
    assert_eq!(sent.len(), 1, "{mine:#?}");
    // The kernel stamps the connection's last send at every retransmission
    // too: a connection that times out under a request reports its last
    // retransmission, between the request and the close (docs/ENGINE.md).
    let (closed_at, reported) = sent[0];
    assert!(
        reported.0 + TOLERANCE_NS >= last_send.0 && reported <= closed_at,
        "last send {reported:?}, request {last_send:?}, close {closed_at:?}"
    );
    let failures: Vec<&Outcome> = mine
        .iter()
        .map(|r| &r.outcome)
        .filter(|o| matches!(o, Outcome::Failed { .. }))
        .collect();
    assert!(
        matches!(
            failures.as_slice(),
            [Outcome::Failed {
                class: FailureClass::TimedOut,
                errno: libc::ETIMEDOUT,
                ..
            }]
        ),
        "{mine:#?}"
    );
    serving.join().expect("server");
}

fn set_user_timeout(conn: &TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd as _;
    let ms = timeout.as_millis() as libc::c_uint;
    // SAFETY: a valid socket fd and a c_uint option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_USER_TIMEOUT: {}",
        std::io::Error::last_os_error()
    );
}

/// What a cut test connection did before the server closed it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BeforeTheClose {
    /// Connected and sent its first request at once: the connect's jiffy
    /// is the request's, so the jiffies alone cannot tell it was unanswered.
    FreshRequest,
    /// Connected, sent a request and got its reply at once: the server
    /// then closes an idle connection, which is no cut.
    FreshAnswered,
}

/// Runs one connection of `kind` to `dst` and returns its local address.
fn connection_closed_by_the_server(
    link: &Link,
    listener: &TcpListener,
    dst: SocketAddr,
    kind: BeforeTheClose,
) -> SocketAddr {
    let client = link
        .client
        .spawn_in("fresh-client", move || {
            let mut conn = TcpStream::connect(dst).expect("connect");
            let local = conn.local_addr().expect("local");
            let mut buf = [0u8; 64];
            conn.write_all(b"GET 1").expect("send");
            if kind == BeforeTheClose::FreshAnswered {
                conn.read_exact(&mut buf[..5]).expect("reply");
            }
            // The server's close; then this side closes too.
            let _ = conn.read(&mut buf);
            local
        })
        .expect("client namespace");
    let (mut conn, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).expect("request");
    if kind == BeforeTheClose::FreshAnswered {
        conn.write_all(&buf[..n]).expect("reply");
    }
    // The app exits 20 ms later, under the request if it never answered.
    std::thread::sleep(Duration::from_millis(20));
    drop(conn);
    client.join().expect("client")
}

/// A proxy's request on a connection it has just opened (no pool, or a
/// pool that was empty) cut by the app's exit: the kernel stamps the
/// connect and the request in the same jiffy, and the probe still counts
/// the cut, every time; a connection whose request was answered in the
/// same jiffy and then closed idle never counts.
#[test]
fn a_fresh_connections_first_request_cut_in_flight_is_counted() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let link = Link::create("fresh", 64).expect("namespaces");
    let mut probe = Probe::load(&ProbeOptions::default()).expect("probe loads (run as root)");
    let mut reader = probe.event_reader().expect("reader");
    let server = link.server_v4;
    let dst = SocketAddr::new(server, PORT);
    let listener = link
        .server
        .run_in("fresh-server", move || {
            TcpListener::bind(dst).expect("bind")
        })
        .expect("server namespace");
    probe.watch(server).expect("watch");
    const ROUNDS: usize = 12;
    let mut locals = Vec::new();
    for _ in 0..ROUNDS {
        for kind in [BeforeTheClose::FreshRequest, BeforeTheClose::FreshAnswered] {
            locals.push((
                kind,
                connection_closed_by_the_server(&link, &listener, dst, kind),
            ));
        }
    }
    let records = read_for_a_second(&runtime, &mut reader);
    for (kind, local) in locals {
        let cut = records
            .iter()
            .filter(|r| r.src == local)
            .filter(|r| r.failure_class() == Some(FailureClass::Cut))
            .count();
        let expected = usize::from(kind == BeforeTheClose::FreshRequest);
        let mine: Vec<&ConnectRecord> = records.iter().filter(|r| r.src == local).collect();
        assert_eq!(cut, expected, "{kind:?} from {local}: {mine:#?}");
    }
}
