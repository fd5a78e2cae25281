//! The receiving side on the real kernel: what lands on a watched pod,
//! seen by the kernel of the pod's own node, whoever sent it. A SYN the
//! pod refuses, a request over a pooled connection into the pod, and a SYN
//! to a pod whose network namespace is gone: each is reported once, with
//! the sender's address and port and the right class.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::Duration;

use observer::clock::MonoTime;
use observer::probe::decode::DropReason;
use observer::probe::{ConnectRecord, EventReader, Outcome, Probe, ProbeOptions};
use observer_tests::{Link, Netns, require_root};
use socket2::{Domain, SockAddr, Socket, Type};

/// A jiffy is 1 to 10 ms; the conversion adds well under a millisecond.
const TOLERANCE_NS: u64 = 12_000_000;

fn read_for(
    runtime: &tokio::runtime::Runtime,
    reader: &mut EventReader,
    rounds: usize,
) -> Vec<ConnectRecord> {
    let mut records = Vec::new();
    for _ in 0..rounds {
        let mut batch = Vec::new();
        runtime
            .block_on(reader.next_batch(Duration::from_millis(100), &mut batch))
            .expect("read");
        records.extend(batch);
    }
    records
}

/// A client socket bound to `src`, with at most `syn_retries` SYN
/// retransmissions.
fn client_socket(src: SocketAddr, syn_retries: i32) -> Socket {
    let socket = Socket::new(Domain::for_address(src), Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&SockAddr::from(src)).expect("bind");
    // SAFETY: a valid socket fd and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&syn_retries as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_SYNCNT");
    socket
}

#[test]
fn a_syn_the_watched_pod_refuses_is_reported_once_with_its_sender() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let link = Link::create("arr-refuse", 71).expect("namespaces");
    let mut probe = Probe::load(&ProbeOptions::default()).expect("probe loads (run as root)");
    let mut reader = probe.event_reader().expect("reader");
    for (client, pod, src_port) in [
        (link.client_v4, link.server_v4, 41_001),
        (link.client_v6, link.server_v6, 41_002),
    ] {
        probe.watch(pod).expect("watch");
        let src = SocketAddr::new(client, src_port);
        let dst = SocketAddr::new(pod, 9_301);
        let refused = link
            .client
            .run_in("arr-client", move || {
                client_socket(src, 1).connect(&SockAddr::from(dst)).err()
            })
            .expect("client namespace");
        assert_eq!(
            refused.and_then(|e| e.raw_os_error()),
            Some(libc::ECONNREFUSED),
            "nothing listens on the pod's port"
        );
        let records = read_for(&runtime, &mut reader, 5);
        let arrivals: Vec<&ConnectRecord> = records
            .iter()
            .filter(|r| r.is_arrival() && r.dst == dst)
            .collect();
        assert_eq!(arrivals.len(), 1, "one refused SYN: {records:#?}");
        assert_eq!(arrivals[0].src, src, "the sender, address and port");
        assert!(arrivals[0].refused_by_pod(), "{:?}", arrivals[0]);
        // The sending side saw the same connect refused.
        assert!(
            records
                .iter()
                .any(|r| !r.is_arrival() && r.dst == dst && r.failure_class().is_some()),
            "{records:#?}"
        );
        probe.unwatch(pod).expect("unwatch");
    }
    // Unwatched: nothing from the receiving side.
    let src = SocketAddr::new(link.client_v4, 41_003);
    let dst = SocketAddr::new(link.server_v4, 9_301);
    let _ = link
        .client
        .run_in("arr-client", move || {
            client_socket(src, 1).connect(&SockAddr::from(dst)).err()
        })
        .expect("client namespace");
    let records = read_for(&runtime, &mut reader, 3);
    assert!(
        !records.iter().any(|r| r.is_arrival()),
        "an unwatched pod reports nothing it receives: {records:#?}"
    );
}

#[test]
fn a_request_over_a_pooled_connection_into_a_watched_pod_is_dated_at_its_close() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let link = Link::create("arr-pool", 72).expect("namespaces");
    let mut probe = Probe::load(&ProbeOptions::default()).expect("probe loads (run as root)");
    let mut reader = probe.event_reader().expect("reader");
    let pod = link.server_v4;
    let dst = SocketAddr::new(pod, 9_302);
    let listener = link
        .server
        .run_in("arr-server", move || TcpListener::bind(dst).expect("bind"))
        .expect("server namespace");
    let serving = std::thread::spawn(move || {
        // Two connections: the pooled one, then a fresh one.
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 64];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let src = SocketAddr::new(link.client_v4, 41_010);
    // Opened before the pod is watched, as an ingress's pool is.
    let conn = link
        .client
        .run_in("arr-client", move || {
            let socket = client_socket(src, 1);
            socket.connect(&SockAddr::from(dst)).expect("connect");
            std::net::TcpStream::from(socket)
        })
        .expect("client namespace");
    probe.watch(pod).expect("watch");
    let mut conn = conn;
    let mut buf = [0u8; 5];
    conn.write_all(b"GET 1").expect("send");
    conn.read_exact(&mut buf).expect("reply");
    std::thread::sleep(Duration::from_millis(300));
    let sent = MonoTime::now();
    conn.write_all(b"GET 2").expect("send");
    conn.read_exact(&mut buf).expect("reply");
    std::thread::sleep(Duration::from_millis(400));
    drop(conn);
    // A connection opened while watched: accepted, then closed.
    let fresh_src = SocketAddr::new(link.client_v4, 41_011);
    link.client
        .run_in("arr-client", move || {
            let socket = client_socket(fresh_src, 1);
            socket.connect(&SockAddr::from(dst)).expect("connect");
            let mut conn = std::net::TcpStream::from(socket);
            conn.write_all(b"GET 3").expect("send");
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).expect("reply");
        })
        .expect("client namespace");
    serving.join().expect("server");
    let records = read_for(&runtime, &mut reader, 8);
    let pooled: Vec<&ConnectRecord> = records
        .iter()
        .filter(|r| r.is_arrival() && r.src == src)
        .collect();
    assert_eq!(pooled.len(), 1, "one report at the close: {records:#?}");
    let Outcome::Received { last_arrival } = pooled[0].outcome else {
        panic!("a pooled connection's close: {:?}", pooled[0]);
    };
    assert_eq!(pooled[0].dst, dst);
    let error = last_arrival.0.abs_diff(sent.0);
    assert!(
        error <= TOLERANCE_NS,
        "last request arrived {last_arrival:?}, sent {sent:?}: {error} ns apart"
    );
    assert!(
        pooled[0].ts.0 >= sent.0 + 350_000_000,
        "reported at the close, not when the request arrived"
    );
    let fresh: Vec<&Outcome> = records
        .iter()
        .filter(|r| r.is_arrival() && r.src == fresh_src)
        .map(|r| &r.outcome)
        .collect();
    assert_eq!(fresh.len(), 2, "accepted, then closed: {fresh:#?}");
    assert_eq!(fresh[0], &Outcome::Accepted);
    assert!(matches!(fresh[1], Outcome::Received { .. }));
    probe.unwatch(pod).expect("unwatch");
}

/// A client, a node that routes to its pods over a bridge, and a pod.
struct Node {
    client: Netns,
    node: Netns,
    pod: Option<Netns>,
    client_addr: IpAddr,
    pod_addr: IpAddr,
}

impl Node {
    fn create(tag: &str, subnet: u8) -> Node {
        let client = Netns::create(&format!("obs-{tag}-c")).expect("client");
        let node = Netns::create(&format!("obs-{tag}-n")).expect("node");
        let pod = Netns::create(&format!("obs-{tag}-p")).expect("pod");
        let client_addr = format!("10.212.{subnet}.2");
        let pod_addr = format!("10.213.{subnet}.2");
        let steps: Vec<(&Netns, Vec<String>)> = vec![
            (
                &client,
                split(&format!(
                    "ip link add eth0 type veth peer name up0 netns {}",
                    node.name
                )),
            ),
            (
                &client,
                split(&format!("ip addr add {client_addr}/24 dev eth0")),
            ),
            (&client, split("ip link set eth0 up")),
            (
                &client,
                split(&format!("ip route add default via 10.212.{subnet}.1")),
            ),
            (
                &node,
                split(&format!("ip addr add 10.212.{subnet}.1/24 dev up0")),
            ),
            (&node, split("ip link set up0 up")),
            (&node, split("ip link add br0 type bridge")),
            (
                &node,
                split(&format!("ip addr add 10.213.{subnet}.1/24 dev br0")),
            ),
            (&node, split("ip link set br0 up")),
            (&node, split("sysctl -qw net.ipv4.ip_forward=1")),
            (
                &node,
                split(&format!(
                    "ip link add vpod type veth peer name eth0 netns {}",
                    pod.name
                )),
            ),
            (&node, split("ip link set vpod master br0 up")),
            (&pod, split(&format!("ip addr add {pod_addr}/24 dev eth0"))),
            (&pod, split("ip link set eth0 up")),
            (
                &pod,
                split(&format!("ip route add default via 10.213.{subnet}.1")),
            ),
        ];
        for (ns, args) in steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ns.exec(&args).expect("topology");
        }
        Node {
            client,
            node,
            pod: Some(pod),
            client_addr: client_addr.parse().expect("ip"),
            pod_addr: pod_addr.parse().expect("ip"),
        }
    }

    /// SYNs to the pod the node forwarded (an nftables counter).
    fn count_forwarded_syns(&self) {
        let script = format!(
            "table inet obs {{\n chain forwarded {{\n  type filter hook forward priority 0;\n  ip daddr {} tcp flags & (syn | ack) == syn counter\n }}\n}}\n",
            self.pod_addr
        );
        nft(&self.node, &script);
    }

    fn forwarded_syns(&self) -> u64 {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                "nft",
                "list",
                "table",
                "inet",
                "obs",
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&output.stdout);
        text.split("packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    }
}

fn split(command: &str) -> Vec<String> {
    command.split_whitespace().map(str::to_owned).collect()
}

fn nft(ns: &Netns, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (install nftables: `cargo xtask setup`)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    assert!(child.wait().expect("nft").success(), "nft: {script}");
}

#[test]
fn a_syn_to_a_pod_whose_network_is_gone_is_dropped_by_its_node() {
    require_root();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let mut topology = Node::create("arr-gone", 73);
    let mut probe = Probe::load(&ProbeOptions::default()).expect("probe loads (run as root)");
    let mut reader = probe.event_reader().expect("reader");
    // The pod's network goes; the node's bridge still has its subnet, and
    // forgets the pod's neighbour entry.
    drop(topology.pod.take());
    topology
        .node
        .exec(&["ip", "neigh", "flush", "dev", "br0"])
        .expect("flush");
    topology.count_forwarded_syns();
    probe.watch(topology.pod_addr).expect("watch");
    let src = SocketAddr::new(topology.client_addr, 41_020);
    let dst = SocketAddr::new(topology.pod_addr, 9_303);
    let failed = topology
        .client
        .run_in("arr-client", move || {
            client_socket(src, 1).connect(&SockAddr::from(dst)).err()
        })
        .expect("client namespace");
    assert!(failed.is_some(), "the pod is gone: the connect fails");
    // The node gives up on the pod's neighbour entry about 3 s after the
    // first SYN (3 probes, 1 s apart), and drops what it queued then:
    // possibly after the client has timed out.
    let forwarded = topology.forwarded_syns();
    let mut records = Vec::new();
    for _ in 0..60 {
        records.extend(read_for(&runtime, &mut reader, 1));
        let seen = records
            .iter()
            .filter(|r| r.is_arrival() && r.dst == dst)
            .count();
        if seen >= 1 {
            // What was queued with it is dropped at once: one more look.
            records.extend(read_for(&runtime, &mut reader, 3));
            break;
        }
    }
    let drops: Vec<&ConnectRecord> = records
        .iter()
        .filter(|r| r.is_arrival() && r.dst == dst)
        .collect();
    assert!(forwarded >= 1, "the node forwarded the client's SYN");
    // Each SYN the node queued while resolving the pod's address is
    // dropped once when resolution fails. One forwarded after that is
    // queued on a fresh entry and purged with it later (QUEUE_PURGE, a
    // reason too generic to count: a closing socket purges its queues).
    assert!(
        !drops.is_empty() && drops.len() as u64 <= forwarded,
        "{forwarded} SYNs forwarded, {} reported dropped: {records:#?}",
        drops.len()
    );
    for drop in drops {
        assert_eq!(drop.src, src, "the sender, address and port");
        assert_eq!(
            drop.outcome,
            Outcome::Dropped {
                reason: DropReason::Neighbour,
                opens_connection: true
            }
        );
    }
    probe.unwatch(topology.pod_addr).expect("unwatch");
}
