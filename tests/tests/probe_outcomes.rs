//! The probe on the real kernel: every connect outcome class, IPv4 and IPv6,
//! made from a client namespace to a server namespace over veth, checked
//! against what the client itself saw — class, both addresses and ports,
//! pid and comm — and against the kernel's per-destination counters, exactly.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use observer::clock::MonoTime;
use observer::probe::{ConnectRecord, FailureClass, Outcome, Probe, ProbeOptions, SyncFailureHook};
use observer_common::DestStats;
use observer_tests::{Link, Netns, require_root};
use socket2::{Domain, SockAddr, Socket, Type};

const CLIENT_COMM: &str = "obs-client";

const OPEN: u16 = 8080;
const CLOSED: u16 = 8081;
const HOST_UNREACHABLE: u16 = 8082;
const DROPPED: u16 = 8083;
const RESETTING: u16 = 8084;
const SLOW_DROP: u16 = 8085;

/// What the client did for one connect, to compare with the probe.
#[derive(Debug, Clone)]
struct Attempt {
    src: Option<SocketAddr>,
    dst: SocketAddr,
    expected: Expected,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expected {
    Established,
    /// The class, whether connect() itself failed, and the errno the
    /// client was given (0 for a connect it gave up on itself).
    Failed(FailureClass, bool, i32),
}

/// How a client waits for a non-blocking connect, the way proxies do.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    /// epoll for writability (or an error), then `SO_ERROR`, then close.
    Epoll,
    /// Reads `SO_ERROR` after this long without polling, then closes.
    ReadErrorAfter(Duration),
}

fn socket_for(dst: &SocketAddr) -> Socket {
    let socket = Socket::new(Domain::for_address(*dst), Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket
}

/// Connects from `src` (a fixed port, so the test knows the 4-tuple) to
/// `dst`; returns the socket on success.
fn connect_from(
    src: SocketAddr,
    dst: SocketAddr,
    timeout: Option<Duration>,
    syn_retries: Option<i32>,
) -> std::io::Result<Socket> {
    let socket = socket_for(&dst);
    socket.bind(&SockAddr::from(src))?;
    if let Some(retries) = syn_retries {
        use std::os::fd::AsRawFd as _;
        // SAFETY: a valid socket fd and a c_int option value that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                (&retries as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    match timeout {
        Some(t) => socket.connect_timeout(&SockAddr::from(dst), t)?,
        None => socket.connect(&SockAddr::from(dst))?,
    }
    Ok(socket)
}

/// A non-blocking connect from `src` to `dst`: `EINPROGRESS`, then the
/// wait, then the error the kernel hands over with `SO_ERROR`.
fn connect_nonblocking(
    src: SocketAddr,
    dst: SocketAddr,
    waiting: Waiting,
) -> std::io::Result<Socket> {
    use std::os::fd::AsRawFd as _;
    let socket = socket_for(&dst);
    socket.bind(&SockAddr::from(src))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(dst)) {
        Ok(()) => return Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    match waiting {
        Waiting::Epoll => {
            // SAFETY: plain syscalls on fds this function owns; the event
            // buffer outlives the calls.
            unsafe {
                let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
                assert!(
                    epoll >= 0,
                    "epoll_create1: {}",
                    std::io::Error::last_os_error()
                );
                let mut event = libc::epoll_event {
                    events: (libc::EPOLLOUT | libc::EPOLLERR) as u32,
                    u64: 0,
                };
                let fd = socket.as_raw_fd();
                assert_eq!(
                    libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event),
                    0
                );
                let n = libc::epoll_wait(epoll, &mut event, 1, 5_000);
                libc::close(epoll);
                assert_eq!(n, 1, "the connect must end within 5 s");
            }
        }
        Waiting::ReadErrorAfter(wait) => std::thread::sleep(wait),
    }
    match socket.take_error()? {
        Some(error) => Err(error),
        None => Ok(socket),
    }
}

fn start_servers(link: &Link, server_ip: IpAddr) {
    let open = SocketAddr::new(server_ip, OPEN);
    let resetting = SocketAddr::new(server_ip, RESETTING);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    link.server
        .spawn_in("obs-server", move || {
            let open = TcpListener::bind(open).expect("bind open port");
            let resetting = TcpListener::bind(resetting).expect("bind resetting port");
            ready_tx.send(()).expect("ready");
            // The open port keeps accepted connections until the namespace goes.
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for conn in open.incoming().flatten() {
                    kept.push(conn);
                }
            });
            for mut conn in resetting.incoming().flatten() {
                // The client's byte first: a reset that raced the client's
                // connect() would fail the connect itself (ECONNRESET from
                // connect, as seen on slow emulated guests), not the
                // established connection this port is for.
                let mut byte = [0u8; 1];
                let _ = conn.read(&mut byte);
                // SO_LINGER 0 turns close() into an RST.
                let socket = Socket::from(conn);
                let _ = socket.set_linger(Some(Duration::ZERO));
                drop(socket);
            }
        })
        .expect("server thread");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("servers listening");
}

fn make_connects(link: &Link, v6: bool) -> Vec<Attempt> {
    let (client_ip, server_ip, unroutable) = if v6 {
        (link.client_v6, link.server_v6, link.unroutable_v6)
    } else {
        (link.client_v4, link.server_v4, link.unroutable_v4)
    };
    // A connect that times out takes seconds: run it beside the others.
    let slow = link
        .client
        .spawn_in(CLIENT_COMM, move || {
            let src = SocketAddr::new(client_ip, 41_000);
            let dst = SocketAddr::new(server_ip, SLOW_DROP);
            let result = connect_from(src, dst, None, Some(1));
            let err = result.expect_err("dropped SYNs must time out");
            assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
            vec![Attempt {
                src: Some(src),
                dst,
                expected: Expected::Failed(FailureClass::TimedOut, false, libc::ETIMEDOUT),
            }]
        })
        .expect("client thread");
    let mut attempts = link
        .client
        .run_in(CLIENT_COMM, move || {
            let mut attempts = Vec::new();
            let mut port = 40_000;
            let mut next_src = || {
                port += 1;
                SocketAddr::new(client_ip, port)
            };
            let mut held = Vec::new();
            for _ in 0..2 {
                let src = next_src();
                let dst = SocketAddr::new(server_ip, OPEN);
                held.push(connect_from(src, dst, None, None).expect("open port connects"));
                attempts.push(Attempt {
                    src: Some(src),
                    dst,
                    expected: Expected::Established,
                });
            }
            let cases = [
                (CLOSED, FailureClass::Refused, libc::ECONNREFUSED, None),
                (
                    HOST_UNREACHABLE,
                    FailureClass::HostUnreachable,
                    libc::EHOSTUNREACH,
                    None,
                ),
                (
                    DROPPED,
                    FailureClass::Aborted,
                    libc::ETIMEDOUT,
                    Some(Duration::from_millis(300)),
                ),
            ];
            for (port, class, errno, timeout) in cases {
                for _ in 0..2 {
                    let src = next_src();
                    let dst = SocketAddr::new(server_ip, port);
                    let err = connect_from(src, dst, timeout, None).expect_err("must fail");
                    let seen = err.raw_os_error().unwrap_or_else(|| {
                        // connect_timeout reports its own timeout as TimedOut.
                        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
                        libc::ETIMEDOUT
                    });
                    assert_eq!(seen, errno, "client saw {err} for port {port}");
                    // A connect the client gave up on was told no error.
                    let told = if class == FailureClass::Aborted {
                        0
                    } else {
                        errno
                    };
                    attempts.push(Attempt {
                        src: Some(src),
                        dst,
                        expected: Expected::Failed(class, false, told),
                    });
                }
            }
            // Non-blocking, as proxies connect: the class is the error the
            // client read, however soon it closed after reading it.
            let nonblocking = [
                (
                    CLOSED,
                    FailureClass::Refused,
                    libc::ECONNREFUSED,
                    Waiting::Epoll,
                ),
                (
                    HOST_UNREACHABLE,
                    FailureClass::HostUnreachable,
                    libc::EHOSTUNREACH,
                    Waiting::Epoll,
                ),
                (
                    HOST_UNREACHABLE,
                    FailureClass::HostUnreachable,
                    libc::EHOSTUNREACH,
                    Waiting::ReadErrorAfter(Duration::from_millis(500)),
                ),
            ];
            for (port, class, errno, waiting) in nonblocking {
                let src = next_src();
                let dst = SocketAddr::new(server_ip, port);
                let err = connect_nonblocking(src, dst, waiting).expect_err("must fail");
                assert_eq!(
                    err.raw_os_error(),
                    Some(errno),
                    "client saw {err} for port {port} ({waiting:?})"
                );
                // IPv6 queues no copy of an ICMP error for a socket without
                // IPV6_RECVERR: once SO_ERROR has handed the soft error over,
                // the socket keeps no trace of it (docs/TRACING.md). A
                // client woken by epoll is not affected: IPv6 wakes it only
                // for the hard error of a later SYN.
                let expected = match waiting {
                    Waiting::ReadErrorAfter(_) if v6 => {
                        Expected::Failed(FailureClass::Aborted, false, 0)
                    }
                    _ => Expected::Failed(class, false, errno),
                };
                attempts.push(Attempt {
                    src: Some(src),
                    dst,
                    expected,
                });
            }
            for _ in 0..2 {
                let dst = SocketAddr::new(unroutable, 80);
                let err = connect_from(next_src(), dst, None, None).expect_err("no route");
                assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
                attempts.push(Attempt {
                    src: None,
                    dst,
                    expected: Expected::Failed(
                        FailureClass::NetUnreachable,
                        true,
                        libc::ENETUNREACH,
                    ),
                });
            }
            let src = next_src();
            let dst = SocketAddr::new(server_ip, RESETTING);
            let socket = connect_from(src, dst, None, None).expect("resetting port connects");
            let mut stream = std::net::TcpStream::from(socket);
            stream
                .write_all(b"x")
                .expect("a byte to the resetting server");
            let mut buf = [0u8; 1];
            let err = stream.read(&mut buf).expect_err("server resets");
            assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
            attempts.push(Attempt {
                src: Some(src),
                dst,
                expected: Expected::Failed(FailureClass::Reset, false, libc::ECONNRESET),
            });
            drop(held);
            attempts
        })
        .expect("client thread");
    attempts.extend(slow.join().expect("slow client"));
    attempts
}

fn matches(record: &ConnectRecord, attempt: &Attempt) -> bool {
    if record.dst != attempt.dst {
        return false;
    }
    if let Some(src) = attempt.src
        && record.src != src
    {
        return false;
    }
    match (&record.outcome, attempt.expected) {
        (Outcome::Established { .. }, Expected::Established) => true,
        (
            Outcome::Failed {
                class,
                synchronous,
                errno,
                ..
            },
            Expected::Failed(c, sync, told),
        ) => *class == c && *synchronous == sync && *errno == told,
        _ => false,
    }
}

fn scenario(tag: &str, subnet: u8, v6: bool, hook: SyncFailureHook) {
    require_root();
    let link = Link::create(tag, subnet).expect("namespaces");
    let server_ip = if v6 { link.server_v6 } else { link.server_v4 };
    link.reject_host_unreachable(HOST_UNREACHABLE)
        .expect("nft reject");
    link.drop_syns(DROPPED).expect("nft drop");
    link.drop_syns(SLOW_DROP).expect("nft drop");
    start_servers(&link, server_ip);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let options = ProbeOptions {
        sync_failure_hook: hook,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::load(&options).expect("the probe must load here");
    let chosen = probe.sync_failure_hook();
    match hook {
        // The connect exits wherever this kernel attaches them, else off:
        // never the syscall hooks, which slow every process on the node.
        SyncFailureHook::Auto => {
            let exits_load = Probe::load(&ProbeOptions {
                sync_failure_hook: SyncFailureHook::ConnectExits,
                ..ProbeOptions::default()
            })
            .is_ok();
            let expected = if exits_load {
                SyncFailureHook::ConnectExits
            } else {
                SyncFailureHook::Off
            };
            assert_eq!(chosen, expected, "auto on this kernel");
            // Where the kernel is known (the VM matrix says which hook its
            // kernel must take), choosing otherwise is a failure, not a
            // fallback.
            if let Some(required) = required_auto_hook() {
                assert_eq!(
                    chosen.name(),
                    required,
                    "auto on {}, which the kernel matrix expects to take {required}",
                    kernel_release()
                );
            }
        }
        forced => assert_eq!(chosen, forced),
    }
    probe.watch(server_ip).expect("watch");
    let mut reader = probe.event_reader().expect("reader");

    let mut attempts = make_connects(&link, v6);
    if chosen == SyncFailureHook::Off {
        // Connects with no route were made, and must go unseen.
        attempts.retain(|a| !matches!(a.expected, Expected::Failed(_, true, _)));
    }
    let pid = std::process::id();

    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        runtime
            .block_on(reader.next_batch(Duration::from_millis(100), &mut records))
            .expect("read events");
        let done = attempts
            .iter()
            .all(|a| records.iter().any(|r| matches(r, a)));
        if done || Instant::now() > deadline {
            break;
        }
    }
    // The sending side's records: the watched server runs on this kernel
    // too, so what lands on it is also reported, from the receiving side
    // (tests/probe_arrivals.rs checks those).
    let ours: Vec<&ConnectRecord> = records
        .iter()
        .filter(|r| !r.is_arrival() && attempts.iter().any(|a| a.dst == r.dst))
        .collect();
    for attempt in &attempts {
        let found: Vec<&&ConnectRecord> = ours.iter().filter(|r| matches(r, attempt)).collect();
        // Attempts without a known source port (no SYN left) are alike.
        let alike = attempts
            .iter()
            .filter(|a| {
                a.src == attempt.src && a.dst == attempt.dst && a.expected == attempt.expected
            })
            .count();
        assert_eq!(
            found.len(),
            alike,
            "{attempt:?} seen {} times in {ours:#?}",
            found.len()
        );
        let record = found[0];
        assert_eq!(record.pid, pid, "pid of {record:?}");
        assert_eq!(record.comm, CLIENT_COMM, "comm of {record:?}");
        if let Outcome::Failed {
            class: FailureClass::Aborted,
            waited_ns,
            ..
        } = record.outcome
        {
            let waited = Duration::from_nanos(waited_ns);
            assert!(
                waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
                "aborted after {waited:?}, client waited 300 ms"
            );
        }
    }
    // Every outcome the probe reported for these destinations is one the
    // client made: nothing invented.
    // A reset connection was first established: two outcomes.
    let outcomes = ours
        .iter()
        .filter(|r| r.outcome != Outcome::Connect)
        .filter(|r| !matches!(r.outcome, Outcome::Sent { .. }))
        .count();
    let resets = attempts
        .iter()
        .filter(|a| matches!(a.expected, Expected::Failed(FailureClass::Reset, ..)))
        .count();
    assert_eq!(outcomes, attempts.len() + resets, "{ours:#?}");
    // Every connect to a watched destination was also reported at its SYN.
    let syns = ours
        .iter()
        .filter(|r| r.outcome == Outcome::Connect)
        .count();
    let to_watched = attempts.iter().filter(|a| a.dst.ip() == server_ip).count();
    assert_eq!(syns, to_watched, "SYN events to the watched server");
    // Every connection to the watched server that was established reported,
    // when it closed, when it last sent.
    let closed: std::collections::BTreeSet<SocketAddr> = ours
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Sent { .. }))
        .map(|r| r.src)
        .collect();
    let established = attempts
        .iter()
        .filter(|a| a.dst.ip() == server_ip)
        .filter(|a| {
            matches!(
                a.expected,
                Expected::Established | Expected::Failed(FailureClass::Reset, ..)
            )
        })
        .count();
    assert_eq!(
        closed.len(),
        established,
        "closes of established connections: {ours:#?}"
    );

    let stats = probe.dest_stats().expect("dest stats");
    let stat = |port: u16| -> DestStats {
        let ip = if port == 80 {
            if v6 {
                link.unroutable_v6
            } else {
                link.unroutable_v4
            }
        } else {
            server_ip
        };
        stats
            .get(&SocketAddr::new(ip, port))
            .copied()
            .unwrap_or_default()
    };
    let expect = |port, connects, established, syn_closed, resets| {
        let s = stat(port);
        assert_eq!(
            (s.connects, s.established, s.syn_closed, s.resets),
            (connects, established, syn_closed, resets),
            "counters for port {port}: {s:?}"
        );
        s
    };
    expect(OPEN, 2, 2, 0, 0);
    assert_eq!(expect(CLOSED, 3, 0, 3, 0).refused, 3);
    let unreachable = expect(HOST_UNREACHABLE, 4, 0, 4, 0).host_unreachable;
    assert_eq!(unreachable, if v6 { 3 } else { 4 });
    let dropped = expect(DROPPED, 2, 0, 2, 0);
    let reported = dropped.refused
        + dropped.host_unreachable
        + dropped.net_unreachable
        + dropped.timed_out
        + dropped.other_error;
    assert_eq!(
        dropped.syn_closed - reported,
        2,
        "aborted = closed without an error"
    );
    assert_eq!(expect(SLOW_DROP, 1, 0, 1, 0).timed_out, 1);
    expect(RESETTING, 1, 1, 0, 1);
    // Nobody watches the unroutable address: no map writes, no counters.
    assert_eq!(stat(80), DestStats::default(), "unwatched: no counters");
    if chosen == SyncFailureHook::Off {
        let unroutable = if v6 {
            link.unroutable_v6
        } else {
            link.unroutable_v4
        };
        assert!(
            !records.iter().any(|r| r.dst.ip() == unroutable),
            "with the hook off, no-route connects go unseen: {records:#?}"
        );
    }

    let counters = probe.counters().expect("counters");
    assert_eq!(counters.ringbuf_drops, 0, "{counters:?}");
    drop(probe);
}

/// The hook `auto` must choose on this kernel, when the run says (the VM
/// matrix sets `OBSERVER_EXPECT_AUTO_HOOK` per kernel).
fn required_auto_hook() -> Option<String> {
    std::env::var("OBSERVER_EXPECT_AUTO_HOOK")
        .ok()
        .filter(|hook| !hook.is_empty())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_else(|_| "this kernel".into())
}

#[test]
fn every_outcome_class_ipv4() {
    scenario("pv4", 11, false, SyncFailureHook::Auto);
}

#[test]
fn every_outcome_class_ipv6() {
    scenario("pv6", 12, true, SyncFailureHook::Auto);
}

/// The connect exits, forced: every class where this kernel attaches them
/// (the VM matrix's 6.1 and 6.12); where it cannot, a load error that names
/// the function, never a probe that silently sees less.
#[test]
fn every_outcome_class_with_connect_exits() {
    require_root();
    let loaded = Probe::load(&ProbeOptions {
        sync_failure_hook: SyncFailureHook::ConnectExits,
        ..ProbeOptions::default()
    });
    match loaded {
        Ok(probe) => {
            drop(probe);
            scenario("pfx", 14, false, SyncFailureHook::ConnectExits);
        }
        Err(error) => {
            assert_ne!(
                required_auto_hook().as_deref(),
                Some("connect_exits"),
                "{} must attach the connect exits: {error}",
                kernel_release()
            );
            let text = error.to_string();
            assert!(
                text.contains("attaching to the exit of `tcp_v4_connect`"),
                "{text}"
            );
        }
    }
}

/// The syscall hooks are the fallback where the connect exits cannot be
/// attached; forced here so they stay covered on kernels where they can.
#[test]
fn every_outcome_class_with_syscall_hooks() {
    scenario("psys", 13, false, SyncFailureHook::Syscalls);
}

/// With the pre-SYN hooks off, a connect with no route goes unseen (the
/// documented price of that choice), while the socket hooks still see and
/// count a refused one.
#[test]
fn sync_failure_hook_off_sees_socket_outcomes_only() {
    require_root();
    let ns = Netns::create("obs-nosync").expect("namespace");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let options = ProbeOptions {
        sync_failure_hook: SyncFailureHook::Off,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::load(&options).expect("the probe must load here");
    assert_eq!(probe.sync_failure_hook(), SyncFailureHook::Off);
    let mut reader = probe.event_reader().expect("reader");

    let unroutable: SocketAddr = "10.202.0.9:80".parse().expect("address");
    let refused: SocketAddr = "127.0.0.1:9".parse().expect("address");
    ns.run_in(CLIENT_COMM, move || {
        let err = std::net::TcpStream::connect_timeout(&unroutable, Duration::from_secs(1))
            .expect_err("no route in a namespace with only loopback");
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
        let err = std::net::TcpStream::connect_timeout(&refused, Duration::from_secs(1))
            .expect_err("nothing listens on port 9");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    })
    .expect("client thread");

    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !records.iter().any(|r: &ConnectRecord| r.dst == refused) && Instant::now() < deadline {
        runtime
            .block_on(reader.next_batch(Duration::from_millis(100), &mut records))
            .expect("read events");
    }
    assert!(
        records.iter().any(|r| r.dst == refused
            && matches!(
                r.outcome,
                Outcome::Failed {
                    class: FailureClass::Refused,
                    ..
                }
            )),
        "the refused connect is seen: {records:#?}"
    );
    assert!(
        !records.iter().any(|r| r.dst == unroutable),
        "no hook sees the no-route connect: {records:#?}"
    );
    // Not bound: the kernel picked an ephemeral port, and released it
    // before the close was traced; the record still names it.
    let refused_record = records
        .iter()
        .find(|r| r.dst == refused)
        .expect("seen above");
    let (low, high) = ephemeral_port_range(&ns);
    assert!(
        (low..=high).contains(&refused_record.src.port()),
        "source port of {refused_record:?} in {low}..={high}"
    );
    // Neither destination is watched: no counters.
    let stats = probe.dest_stats().expect("counters");
    assert!(stats.is_empty(), "{stats:?}");
}

/// Failures to destinations nobody watches cost no map writes, yet reach
/// user space from the socket itself: class, errno, 4-tuple, SYN time and
/// the socket's cgroup. The process is named where it closed the socket
/// itself (it gave up); an error the kernel found in softirq names none,
/// unless the probe follows every connect (`--full-attribution`).
#[test]
fn unwatched_failures_are_reported_from_the_socket() {
    for full_attribution in [false, true] {
        unwatched_failures(full_attribution);
    }
}

fn unwatched_failures(full_attribution: bool) {
    require_root();
    let link = Link::create(
        if full_attribution { "pua" } else { "pun" },
        if full_attribution { 15 } else { 14 },
    )
    .expect("namespaces");
    link.reject_host_unreachable(HOST_UNREACHABLE)
        .expect("nft reject");
    link.drop_syns(DROPPED).expect("nft drop");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let options = ProbeOptions {
        full_attribution,
        ..ProbeOptions::default()
    };
    let mut probe = Probe::load(&options).expect("the probe must load here");
    let mut reader = probe.event_reader().expect("reader");
    let (client_ip, server_ip) = (link.client_v4, link.server_v4);
    // (source port, destination port, class, errno, the client gave up)
    let cases = [
        (
            42_001,
            CLOSED,
            FailureClass::Refused,
            libc::ECONNREFUSED,
            false,
        ),
        (
            42_002,
            HOST_UNREACHABLE,
            FailureClass::HostUnreachable,
            libc::EHOSTUNREACH,
            false,
        ),
        (42_003, DROPPED, FailureClass::Aborted, 0, true),
    ];
    let started: Vec<MonoTime> = link
        .client
        .run_in(CLIENT_COMM, move || {
            cases
                .iter()
                .map(|&(sport, dport, _, _, gave_up)| {
                    let src = SocketAddr::new(client_ip, sport);
                    let dst = SocketAddr::new(server_ip, dport);
                    let at = MonoTime::now();
                    let result = if gave_up {
                        connect_from(src, dst, Some(Duration::from_millis(300)), None).map(|_| ())
                    } else {
                        connect_nonblocking(src, dst, Waiting::Epoll).map(|_| ())
                    };
                    result.expect_err("must fail");
                    at
                })
                .collect()
        })
        .expect("client thread");
    let pid = std::process::id();
    let mut records: Vec<ConnectRecord> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let seen = |records: &[ConnectRecord], sport: u16| {
        records
            .iter()
            .find(|r| r.src.port() == sport && matches!(r.outcome, Outcome::Failed { .. }))
            .cloned()
    };
    while cases.iter().any(|c| seen(&records, c.0).is_none()) && Instant::now() < deadline {
        runtime
            .block_on(reader.next_batch(Duration::from_millis(100), &mut records))
            .expect("read events");
    }
    for (case, at) in cases.iter().zip(&started) {
        let &(sport, dport, class, errno, gave_up) = case;
        let record = seen(&records, sport).unwrap_or_else(|| panic!("port {sport}: {records:#?}"));
        assert_eq!(record.dst, SocketAddr::new(server_ip, dport), "{record:?}");
        assert_eq!(record.src, SocketAddr::new(client_ip, sport), "{record:?}");
        assert!(!record.watched, "{record:?}");
        let Outcome::Failed {
            class: seen_class,
            errno: seen_errno,
            ..
        } = record.outcome
        else {
            unreachable!("filtered above");
        };
        assert_eq!((seen_class, seen_errno), (class, errno), "{record:?}");
        assert_ne!(record.cgroup_id, 0, "the socket's cgroup: {record:?}");
        // The SYN left right after the client started; the socket dates
        // it to the millisecond below.
        let syn = record
            .syn
            .unwrap_or_else(|| panic!("a SYN time: {record:?}"));
        assert!(
            syn.0 + 1_000_000 >= at.0 && syn.0 <= at.0 + 5_000_000,
            "SYN at {syn:?}, client started {at:?}"
        );
        let named = full_attribution || gave_up;
        assert_eq!(record.pid == pid, named, "process of {record:?}");
        if named {
            assert_eq!(record.comm, CLIENT_COMM, "{record:?}");
        }
    }
    let stats = probe.dest_stats().expect("counters");
    let counted = cases
        .iter()
        .filter(|c| stats.contains_key(&SocketAddr::new(server_ip, c.1)))
        .count();
    assert_eq!(
        counted,
        if full_attribution { cases.len() } else { 0 },
        "map writes for unwatched destinations only with full attribution: {stats:?}"
    );
}

/// The benchmark's floor (`observer trace --hooks-only`): every program is
/// attached but does nothing, so a refused connect leaves no event and no
/// counter behind.
#[test]
fn hooks_only_probe_records_nothing() {
    require_root();
    let ns = Netns::create("obs-hooks").expect("namespace");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let options = ProbeOptions {
        hooks_only: true,
        ..ProbeOptions::default()
    };
    let probe = Probe::load(&options).expect("the probe must load here");
    ns.run_in(CLIENT_COMM, || {
        let refused: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let err = std::net::TcpStream::connect_timeout(&refused, Duration::from_secs(1))
            .expect_err("nothing listens on port 9");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    })
    .expect("client thread");
    let counters = probe.counters().expect("counters");
    assert_eq!(
        counters.events_sent + counters.ringbuf_drops,
        0,
        "{counters:?}"
    );
    let stats = probe.dest_stats().expect("counters");
    assert!(stats.is_empty(), "{stats:?}");
}

/// The namespace's `net.ipv4.ip_local_port_range`.
fn ephemeral_port_range(ns: &Netns) -> (u16, u16) {
    let range = ns
        .run_in("obs-sysctl", || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        })
        .expect("thread")
        .expect("ip_local_port_range");
    let mut ports = range.split_whitespace().map(|p| p.parse().expect("a port"));
    (ports.next().expect("low"), ports.next().expect("high"))
}
