//! The real `observer agent` binary: it measures, serves Prometheus
//! metrics in valid exposition format, flushes everything on SIGTERM and
//! exits 0, and its recording replays to the same NDJSON, byte for byte.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_observer");

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Checks the OpenMetrics text format line by line: metadata lines, samples
/// `name{labels} value`, and the closing `# EOF`.
fn assert_valid_exposition(text: &str) {
    assert!(text.trim_end().ends_with("# EOF"), "ends with # EOF");
    for line in text.lines() {
        if line.starts_with("# HELP ")
            || line.starts_with("# TYPE ")
            || line.starts_with("# UNIT ")
            || line == "# EOF"
        {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of `{line}`");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in `{line}`"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "labels closed in `{line}`");
        }
    }
}

#[test]
fn agent_measures_serves_metrics_flushes_on_sigterm_and_replays_identically() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run the test suite as root (`sudo ./x test`)"
    );
    let dir = std::env::temp_dir().join(format!("observer-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let live = dir.join("live.ndjson");
    let recording = dir.join("inputs.rec");
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 19_990));
    let mut agent = Command::new(BIN)
        .args(["agent", "--no-kube", "--listen", &listen.to_string()])
        .arg("--output")
        .arg(&live)
        .arg("--record")
        .arg(&recording)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start observer agent");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = http_get(listen, "/readyz") {
            break;
        }
        assert!(Instant::now() < deadline, "agent not ready within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Refused connects to a closed loopback port, which no pod owns.
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, 918));
    for _ in 0..3 {
        let _ = TcpStream::connect_timeout(&closed, Duration::from_millis(200));
    }
    let mut metrics = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (status, body) = http_get(listen, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        metrics = body;
        if metrics.contains("class=\"refused\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_valid_exposition(&metrics);
    assert!(
        metrics.contains("observer_failed_connects_total"),
        "{metrics}"
    );
    assert!(metrics.contains("class=\"refused\""), "{metrics}");
    assert!(
        metrics.contains("observer_ringbuf_drops_total"),
        "{metrics}"
    );
    let (status, snapshot) = http_get(listen, "/api/v1/snapshot").expect("GET snapshot");
    assert_eq!(status, 200);
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).expect("snapshot JSON");
    assert!(snapshot.get("recommendations").is_some(), "{snapshot}");

    // SAFETY: kill with the pid of a child we spawned.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "agent did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");

    let live_out = std::fs::read_to_string(&live).expect("live NDJSON");
    let refused_lines = live_out
        .lines()
        .filter(|l| l.contains("\"class\":\"refused\"") && l.contains("127.0.0.1:918"))
        .count();
    assert!(
        refused_lines >= 3,
        "the refused connects were flushed:\n{live_out}"
    );

    let replay = |name: &str| {
        let out = dir.join(name);
        let status = Command::new(BIN)
            .arg("replay")
            .arg(&recording)
            .arg("--output")
            .arg(&out)
            .status()
            .expect("run replay");
        assert!(status.success());
        std::fs::read(&out).expect("replay output")
    };
    let first = replay("replay1.ndjson");
    let second = replay("replay2.ndjson");
    assert_eq!(first, second, "replay is byte-identical run after run");
    assert_eq!(
        String::from_utf8_lossy(&first),
        live_out,
        "replay reproduces the live output"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
