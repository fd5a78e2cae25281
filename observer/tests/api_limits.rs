//! The agent's HTTP server held to its limits, on loopback, while an
//! engine behind it keeps measuring: malformed requests get 400s, bodies
//! are refused, a thousand idle connections neither lock out a client nor
//! exceed the cap, a client sending a byte a second is cut off at the
//! header timeout, a stream client that never reads is dropped, and a
//! configured token is required. Every test drives an engine loop with the
//! `StateSink`, fed synthetic pod terminations, through the whole test, and
//! checks through the API that every termination was measured.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::runtime::watcher::Event;
use observer::{
    agent::{EngineLoop, Input, StateSink},
    clock::MonoTime,
    cluster::{ResourceEvent, StampedEvent},
    engine::{Engine, EngineConfig, IngressConfig},
    export::{AgentState, ApiToken, HttpConfig, HttpLimits, HttpServer, TokenScope},
    probe::decode::{ConnectRecord, Outcome},
    tui::{RemoteOptions, SourceEvent, spawn_agents},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

const MS: u64 = 1_000_000;

/// A pod of the synthetic workload, as the API shows it.
fn pod(i: u64, deleting: bool) -> Pod {
    let mut value = json!({
        "metadata": {"name": format!("web-{i}"), "namespace": "shop", "uid": format!("u{i}"),
                     "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web", "ports": [{"containerPort": 8080}]}],
                 "terminationGracePeriodSeconds": 30},
        "status": {"phase": "Running", "podIP": pod_ip(i), "podIPs": [{"ip": pod_ip(i)}],
                   "conditions": [{"type": "Ready", "status": if deleting { "False" } else { "True" }}]}
    });
    if deleting {
        value["metadata"]["deletionTimestamp"] = json!("2026-03-02T09:01:47Z");
        value["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    }
    serde_json::from_value(value).unwrap()
}

fn pod_ip(i: u64) -> String {
    format!("10.{}.{}.{}", 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255)
}

fn slice(i: u64, terminating: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"name": format!("web-{i}"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": [{"addresses": [pod_ip(i)],
                       "conditions": {"ready": !terminating, "serving": true, "terminating": terminating},
                       "targetRef": {"kind": "Pod", "namespace": "shop", "uid": format!("u{i}")}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn pod_event(at_ms: u64, event: Event<Pod>) -> Input {
    Input::Cluster(StampedEvent {
        at: MonoTime(at_ms * MS),
        event: ResourceEvent::Pod(Box::new(event)),
    })
}

fn slice_event(at_ms: u64, event: Event<EndpointSlice>) -> Input {
    Input::Cluster(StampedEvent {
        at: MonoTime(at_ms * MS),
        event: ResourceEvent::EndpointSlice(Box::new(event)),
    })
}

/// The ingress (host process `nginx`) opening a connection to pod `i`.
fn connect(i: u64, at_ms: u64) -> Input {
    Input::Connect(ConnectRecord {
        ts: MonoTime(at_ms * MS),
        syn: None,
        src: "10.0.9.1:40000".parse().unwrap(),
        dst: format!("{}:8080", pod_ip(i)).parse().unwrap(),
        pid: 100,
        tid: 101,
        comm: "nginx".into(),
        cgroup_id: 7,
        pod_uid: None,
        container_id: None,
        watched: true,
        retry: false,
        retried: None,
        count: 1,
        outcome: Outcome::Connect,
    })
}

/// An engine loop writing `state`, as the agent's is, fed a rollout that
/// never ends: pods become ready, are deleted while the ingress still
/// connects to them, and go. Runs on its own thread until stopped.
struct MeasuringEngine {
    stop: Arc<AtomicBool>,
    deleted: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<u64>,
}

/// Pods the engine must have seen go before a test may stop it, so that it
/// measured all along, not only in the test's first moments.
const MIN_TERMINATIONS: u64 = 200;

impl MeasuringEngine {
    fn start(state: AgentState) -> MeasuringEngine {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let deleted_so_far = Arc::new(AtomicU64::new(0));
        let progress = deleted_so_far.clone();
        let thread = std::thread::spawn(move || {
            let config = EngineConfig {
                ingress: IngressConfig {
                    comms: vec!["nginx".into()],
                    ..IngressConfig::default()
                },
                ..EngineConfig::default()
            };
            let mut engine_loop =
                EngineLoop::new(Engine::new(config), vec![Box::new(StateSink::new(state))]);
            let mut feed = |input| engine_loop.feed(input, None).unwrap();
            feed(pod_event(0, Event::Init));
            feed(pod_event(0, Event::InitDone));
            feed(slice_event(0, Event::Init));
            feed(slice_event(0, Event::InitDone));
            let mut deleted = 0;
            let mut t = 1_000;
            while !stopping.load(Ordering::Relaxed) {
                let i = deleted;
                feed(pod_event(t, Event::Apply(pod(i, false))));
                feed(slice_event(t, Event::Apply(slice(i, false))));
                feed(pod_event(t + 10, Event::Apply(pod(i, true))));
                feed(slice_event(t + 20, Event::Apply(slice(i, true))));
                feed(connect(i, t + 30));
                feed(pod_event(t + 40, Event::Delete(pod(i, true))));
                feed(slice_event(t + 50, Event::Delete(slice(i, true))));
                deleted += 1;
                progress.store(deleted, Ordering::Relaxed);
                t += 100;
                if deleted % 10 == 0 {
                    feed(Input::Tick(MonoTime(t * MS)));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            // Past every quiet period: each window closes.
            feed(Input::Tick(MonoTime((t + 60_000) * MS)));
            deleted
        });
        MeasuringEngine {
            stop,
            deleted: deleted_so_far,
            thread,
        }
    }

    /// Stops the rollout and checks, through the agent's own API, that every
    /// deleted pod's termination was measured and closed.
    async fn assert_nothing_lost(self, api: SocketAddr, token: Option<&ApiToken>) {
        while self.deleted.load(Ordering::Relaxed) < MIN_TERMINATIONS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let deleted = tokio::task::spawn_blocking(move || self.thread.join().unwrap())
            .await
            .unwrap();
        assert!(deleted > 0, "the engine measured something");
        let auth = token.map(|t| t.header_value());
        let (status, body) = get(api, "/api/v1/snapshot", auth.as_deref()).await;
        assert_eq!(status, 200, "{body}");
        let snapshot: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            snapshot["counters"]["terminations_closed"], deleted,
            "every termination closed"
        );
        assert_eq!(snapshot["open"].as_array().map(Vec::len), Some(0));
        let (status, metrics) = get(api, "/metrics", auth.as_deref()).await;
        assert_eq!(status, 200);
        let total = metrics
            .lines()
            .find_map(|l| l.strip_prefix("observer_terminations_total "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert_eq!(total, Some(deleted as f64), "every termination counted");
        eprintln!("{deleted} terminations measured while the test ran, none lost");
    }
}

async fn start(config: HttpConfig) -> (HttpServer, AgentState, MeasuringEngine) {
    let state = AgentState::default();
    state.set_probe_attached(true);
    state.set_not_ready(None);
    let server = HttpServer::start(
        &["127.0.0.1:0".parse().unwrap()],
        Arc::new(state.clone()),
        config,
    )
    .await
    .expect("server starts");
    let engine = MeasuringEngine::start(state.clone());
    (server, state, engine)
}

/// Sends `raw` as it is and reads the answer until the server closes or
/// 5 s pass: (status, whole response).
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A server that closes at once may reset the connection mid-write.
    let _ = stream.write_all(raw).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A plain GET with `Connection: close`: (status, body).
async fn get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String) {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\n{auth}Connection: close\r\n\r\n");
    let (status, text) = raw_exchange(addr, request.as_bytes()).await;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400s_and_bodies_are_refused() {
    let (server, _state, engine) = start(HttpConfig::default()).await;
    let addr = server.local_addr();
    let cases: [(&str, Vec<u8>, u16); 8] = [
        ("garbage", b"HELLO THERE\r\n\r\n".to_vec(), 400),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a Content-Length that is no number",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a control character in the path",
            b"GET /heal\x01thz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "headers past the limit",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
                "a".repeat(HttpLimits::default().max_header_bytes + 1)
            )
            .into_bytes(),
            431,
        ),
        (
            "a body",
            b"GET /api/v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            413,
        ),
        (
            "a chunked body",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            413,
        ),
        (
            "another method",
            b"POST /api/v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
    ];
    for (what, request, expected) in cases {
        let started = Instant::now();
        let (status, response) = raw_exchange(addr, &request).await;
        assert_eq!(status, expected, "{what}: {response}");
        // Answered and closed, not left waiting for the 5 s read limit.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: the connection was left open"
        );
    }
    let (_, refused) = raw_exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert!(refused.contains("takes no request body"), "{refused}");
    assert_eq!(get(addr, "/nowhere", None).await.0, 404);
    assert_eq!(get(addr, "/healthz", None).await, (200, "ok\n".into()));
    engine.assert_nothing_lost(addr, None).await;
    server.shutdown().await;
}

/// Raises this process's open-file limit to its hard limit: the test holds
/// a thousand client sockets and the server's ends of them.
fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit the call writes into.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(read, 0);
    if limit.rlim_cur < needed {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit that outlives the call.
        let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
        assert_eq!(raised, 0);
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_max
    );
}

/// Whether the server has closed `stream` (EOF or reset), without waiting.
/// This process's resident memory (`VmRSS`), in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn closed_by_server(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_neither_lock_out_clients_nor_pass_the_cap() {
    const IDLE: usize = 1_000;
    const CAP: usize = 64;
    raise_fd_limit(3 * IDLE as u64 + 256);
    let (server, _state, engine) = start(HttpConfig {
        limits: HttpLimits {
            max_connections: CAP,
            // Long enough that no idle connection times out during the test:
            // the cap alone must keep them from locking clients out.
            header_read_timeout: Duration::from_secs(60),
            ..HttpLimits::default()
        },
        ..HttpConfig::default()
    })
    .await;
    let addr = server.local_addr();
    let rss_before = resident_kib();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.unwrap());
        assert!(server.connection_counts().open <= CAP);
    }
    // Let the server accept and sort them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = server.connection_counts();
    assert!(counts.open <= CAP, "{counts:?}");
    let still_open = idle.iter().filter(|s| !closed_by_server(s)).count();
    assert!(
        still_open <= CAP,
        "{still_open} of {IDLE} idle connections still open, cap {CAP}"
    );
    // What the server holds per connection it is bounded by the cap, not by
    // how many clients try: a thousand cost less than the 32 MiB a
    // per-connection buffer of 32 KiB would (this process holds the
    // clients' sockets too).
    let grown_kib = resident_kib().saturating_sub(rss_before);
    eprintln!(
        "{IDLE} idle connections: {still_open} still open, {counts:?}, resident memory +{grown_kib} KiB"
    );
    assert!(
        grown_kib < 32 * 1024,
        "resident memory grew by {grown_kib} KiB with {IDLE} idle connections"
    );

    // A client still gets its answers promptly.
    for path in ["/healthz", "/api/v1/snapshot", "/healthz", "/readyz"] {
        let started = Instant::now();
        let (status, body) = get(addr, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?} behind {IDLE} idle connections",
            started.elapsed()
        );
    }
    assert_snapshot_is_json(addr).await;

    // When every connection is busy (streams being read), a new one is
    // closed at once rather than queued.
    drop(idle);
    let mut streams = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        streams.push(stream);
    }
    let refused_before = server.connection_counts().refused;
    let started = Instant::now();
    let (status, _) = get(addr, "/healthz", None).await;
    assert_eq!(status, 0, "no answer: the connection is closed");
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    assert_eq!(server.connection_counts().refused, refused_before + 1);
    assert!(server.connection_counts().open <= CAP);
    drop(streams);
    // Room again once they are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(addr, "/healthz", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "the server takes clients again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.assert_nothing_lost(addr, None).await;
    server.shutdown().await;
}

async fn assert_snapshot_is_json(addr: SocketAddr) {
    let (status, body) = get(addr, "/api/v1/snapshot", None).await;
    assert_eq!(status, 200);
    serde_json::from_str::<Value>(&body).expect("the snapshot is JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_a_byte_a_second_is_cut_off_at_the_header_timeout() {
    let timeout = Duration::from_secs(2);
    let (server, _state, engine) = start(HttpConfig {
        limits: HttpLimits {
            header_read_timeout: timeout,
            ..HttpLimits::default()
        },
        ..HttpConfig::default()
    })
    .await;
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let request = b"GET /api/v1/snapshot HTTP/1.1\r\nHost: agent\r\n\r\n";
    let mut sent = 0;
    let cut_after = loop {
        if stream.write_all(&request[sent..sent + 1]).await.is_err() {
            break started.elapsed();
        }
        sent += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if closed_by_server(&stream) {
            break started.elapsed();
        }
        assert!(sent < request.len(), "the whole request was accepted");
    };
    eprintln!("a byte a second: cut off after {cut_after:?} and {sent} bytes");
    assert!(
        cut_after >= timeout,
        "not before the timeout: {cut_after:?}"
    );
    assert!(
        cut_after <= timeout + Duration::from_secs(2),
        "cut off {cut_after:?} after connecting, timeout {timeout:?}"
    );
    assert_eq!(server.connection_counts().open, 0);

    // The same holds between requests on a kept-alive connection.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let idle_since = Instant::now();
    let read = tokio::time::timeout(timeout * 3, kept.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the idle kept-alive connection was closed");
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
    assert!(idle_since.elapsed() >= timeout);
    engine.assert_nothing_lost(addr, None).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_never_reads_is_dropped() {
    let stall = Duration::from_secs(2);
    let (server, state, engine) = start(HttpConfig {
        limits: HttpLimits {
            write_stall_timeout: stall,
            socket_send_buffer: 64 * 1024,
            // Shorter than the test: a stream being read is not cut off by
            // the header timeout, which only runs while a request is awaited.
            header_read_timeout: Duration::from_secs(1),
            ..HttpLimits::default()
        },
        ..HttpConfig::default()
    })
    .await;
    let addr = server.local_addr();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    // A reader alongside that keeps up: it must keep getting lines.
    let mut reader = TcpStream::connect(addr).await.unwrap();
    reader
        .write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.connection_counts().open < 2 {
        assert!(Instant::now() < deadline, "both stream clients accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut produced = state.subscribe();
    let mut produced_bytes = 0usize;
    let mut read_bytes = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let dropped_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stalled stream client is still connected after 60 s \
             ({produced_bytes} bytes of lines produced)"
        );
        while let Ok(line) = produced.try_recv() {
            produced_bytes += line.len() + 1;
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), reader.read(&mut buffer)).await
        {
            assert!(n > 0, "the reading client was cut off");
            read_bytes += n;
        }
        if server.connection_counts().open == 1 {
            break started.elapsed();
        }
    };
    eprintln!(
        "stream client that never reads: dropped after {dropped_after:?}; meanwhile \
         {produced_bytes} bytes of lines were produced and the reading client got {read_bytes}"
    );
    // Dropped, and more was produced than it could have been holding: its
    // queue was bounded, not grown.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut rest)).await;
    assert!(
        rest.len() < produced_bytes,
        "the stalled client held {} bytes of {produced_bytes} produced",
        rest.len()
    );
    assert!(read_bytes > 0);
    // The reading client outlived the header timeout and still gets lines.
    let mut more = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut more))
        .await
        .expect("lines keep coming")
        .expect("the reading client is still connected");
    assert!(n > 0, "the reading client was cut off");
    drop(reader);
    engine.assert_nothing_lost(addr, None).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required() {
    let token = ApiToken::new("k8s-observer-test-token").unwrap();
    let (server, _state, engine) = start(HttpConfig {
        token: Some(token.clone()),
        ..HttpConfig::default()
    })
    .await;
    let addr = server.local_addr();
    let right = token.header_value();
    for path in [
        "/api/v1/snapshot",
        "/api/v1/recommendations",
        "/api/v1/stream",
        "/nowhere",
    ] {
        for wrong in [
            None,
            Some("Bearer k8s-observer-test-tokex"),
            Some("Basic abc"),
        ] {
            let (status, body) = get(addr, path, wrong).await;
            assert_eq!(status, 401, "{path} with {wrong:?}: {body}");
        }
    }
    let (status, body) = get(addr, "/api/v1/snapshot", Some(&right)).await;
    assert_eq!(status, 200, "{body}");
    // By default Prometheus and the kubelet need no token.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(addr, path, None).await.0, 200, "{path}");
    }

    // The remote TUI passes it; without it, it reports the 401.
    for (api_token, expect_data) in [(Some(token.clone()), true), (None, false)] {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let handles = spawn_agents(
            &[format!("http://{addr}")],
            tx,
            RemoteOptions {
                api_token,
                ..RemoteOptions::default()
            },
        )
        .unwrap();
        let update = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match (&update.event, expect_data) {
            (SourceEvent::Snapshot(_), true) => {}
            (SourceEvent::Lost { reason }, false) => {
                assert!(reason.contains("401"), "{reason}")
            }
            (other, _) => panic!("with token {expect_data}: {other:?}"),
        }
        handles.into_iter().for_each(|h| h.abort());
    }
    engine.assert_nothing_lost(addr, Some(&token)).await;
    server.shutdown().await;

    // Metrics and probes behind the token too, when asked.
    let (server, _state, engine) = start(HttpConfig {
        token: Some(token.clone()),
        token_scope: TokenScope {
            metrics: true,
            probes: true,
        },
        ..HttpConfig::default()
    })
    .await;
    let addr = server.local_addr();
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(addr, path, None).await.0, 401, "{path}");
        assert_eq!(get(addr, path, Some(&right)).await.0, 200, "{path}");
    }
    engine.assert_nothing_lost(addr, Some(&token)).await;
    server.shutdown().await;
}
