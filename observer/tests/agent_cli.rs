//! The real `observer agent` binary: it measures, serves Prometheus
//! metrics in valid exposition format, flushes everything on SIGTERM and
//! exits 0, and its recording (which holds none of the pod's environment
//! or annotations) replays to the same NDJSON, byte for byte.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_observer");

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use observer_sim::SimServer;

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

const POD_IP: &str = "127.0.0.5";
const POD_PORT: u16 = 18_080;

/// Values a recording must not hold: the model reads neither.
const ENV_SECRET: &str = "env-value-1b7e44-not-for-recordings";
const ANNOTATION_SECRET: &str = "annotation-token-0c9d21";

fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "uid-web-1",
                     "labels": {"app": "web"},
                     "annotations": {"vault.example/agent-token": ANNOTATION_SECRET}},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "app", "image": "web",
                                 "env": [{"name": "DATABASE_PASSWORD", "value": ENV_SECRET}],
                                 "ports": [{"containerPort": POD_PORT, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("pod JSON")
}

fn slice(uid: &str, ready: bool, listed: bool) -> EndpointSlice {
    let endpoints = if listed {
        serde_json::json!([{"addresses": [POD_IP],
            "conditions": {"ready": ready, "serving": true, "terminating": !ready},
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": uid}}])
    } else {
        serde_json::json!([])
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-abc12", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}]
    }))
    .expect("slice JSON")
}

/// The ingress in this test: a host process by that name (`--ingress-comm`).
const INGRESS_COMM: &str = "edge-proxy";

/// `times` refused connects to the pod from a thread named `comm` (the
/// kernel reports a thread's name as the connect's comm).
fn knock_as(comm: &str, times: usize) {
    let dst: SocketAddr = format!("{POD_IP}:{POD_PORT}").parse().expect("addr");
    std::thread::Builder::new()
        .name(comm.to_owned())
        .spawn(move || {
            for _ in 0..times {
                let err = TcpStream::connect_timeout(&dst, Duration::from_millis(500))
                    .expect_err("nothing listens");
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
            }
        })
        .expect("knocking thread")
        .join()
        .expect("knocks refused");
}

fn knock(times: usize) {
    knock_as(INGRESS_COMM, times);
}

/// Kills the agent if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_measures_a_termination_serves_metrics_flushes_on_sigterm_and_replays_identically() {
    if let Err(error) = observer::privileges::require_root("the agent's end-to-end test") {
        panic!("{error}");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let sim = runtime.block_on(SimServer::start()).expect("simulator");
    // Removed on drop, so also when an assertion fails.
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().to_path_buf();
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let created = sim.store().create(pod()).expect("create pod");
    // The API server assigns the uid; the slice's targetRef names it.
    let uid = created.metadata.uid.clone().expect("uid");
    sim.store()
        .create(slice(&uid, true, true))
        .expect("create slice");

    let live = dir.join("live.ndjson");
    let recording = dir.join("inputs.rec");
    // A port that was free a moment ago.
    let listen = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port");
    let agent = Command::new(BIN)
        .args([
            "agent",
            "--quiet-period",
            "1s",
            "--listen",
            &listen.to_string(),
            "--ingress-comm",
            INGRESS_COMM,
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--output")
        .arg(&live)
        .arg("--record")
        .arg(&recording)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start observer agent");
    let mut agent = KillOnDrop(agent);
    wait_for(
        "agent ready (probe attached, watches listed)",
        Duration::from_secs(30),
        || matches!(http_get(listen, "/readyz"), Some((200, _))),
    );

    // A failed connect to a ready pod: counted, and its own finding.
    knock(1);
    // The pod starts terminating; the ingress keeps connecting for a while.
    let deleted_at = Instant::now();
    sim.store()
        .delete::<Pod>("shop", "web-1", Some(30))
        .expect("graceful delete");
    std::thread::sleep(Duration::from_millis(400));
    knock(3);
    let last_knock = Instant::now();
    // The kubelet keeps probing after the ingress has stopped: reported,
    // but it must not move the gap.
    std::thread::sleep(Duration::from_millis(300));
    knock_as("kubelet", 2);
    sim.store()
        .update(slice(&uid, false, true))
        .expect("endpoint not ready");
    std::thread::sleep(Duration::from_millis(100));
    sim.store()
        .update(slice(&uid, false, false))
        .expect("endpoint removed");
    sim.store()
        .delete::<Pod>("shop", "web-1", Some(0))
        .expect("pod gone");

    let mut snapshot = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !snapshot.contains("\"recent\":[{") {
        assert!(
            Instant::now() < deadline,
            "the termination closes after the quiet period: {snapshot}"
        );
        std::thread::sleep(Duration::from_millis(100));
        snapshot = http_get(listen, "/api/v1/snapshot")
            .map(|(_, body)| body)
            .unwrap_or_default();
    }
    let (status, metrics) = http_get(listen, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    assert_valid_exposition(&metrics);
    assert!(
        metrics.contains(
            "observer_failed_connects_total{class=\"refused\",pod_state=\"terminating\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("observer_failed_connects_total{class=\"refused\",pod_state=\"ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "observer_propagation_gap_seconds_count{namespace=\"shop\",service=\"web\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("observer_recommended_prestop_seconds{namespace=\"shop\",service=\"web\"}"),
        "{metrics}"
    );
    let hooks_in_use: Vec<&str> = ["connect_exits", "syscalls", "off"]
        .into_iter()
        .filter(|hook| {
            metrics.contains(&format!(
                "observer_probe_sync_failure_hook{{hook=\"{hook}\"}} 1"
            ))
        })
        .collect();
    assert_eq!(hooks_in_use.len(), 1, "one hook in use: {metrics}");
    assert_ne!(
        hooks_in_use[0], "syscalls",
        "auto never slows every syscall on the node: {metrics}"
    );

    // SAFETY: kill with the pid of a child we spawned.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.0.try_wait().expect("wait") {
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
    let termination: serde_json::Value = live_out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("termination").cloned())
        .unwrap_or_else(|| panic!("a termination line:\n{live_out}"));
    assert_eq!(termination["pod"], "web-1");
    assert_eq!(termination["failures"]["refused"], 3, "{termination}");
    let gap_ms = termination["propagation_gap_ns"].as_i64().expect("a gap") as f64 / 1e6;
    let upper_ms = last_knock.duration_since(deleted_at).as_secs_f64() * 1e3;
    assert!(
        gap_ms > 150.0 && gap_ms <= upper_ms,
        "gap {gap_ms} ms, knocks ended {upper_ms} ms after the delete"
    );
    assert_eq!(termination["ingress_found"], true, "{termination}");
    let connectors = termination["connectors"].as_array().expect("connectors");
    let role_of = |name: &str| {
        connectors
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {termination}"))
    };
    assert_eq!(role_of(INGRESS_COMM)["role"], "ingress");
    assert_eq!(role_of(INGRESS_COMM)["connects"], 3);
    let kubelet = role_of("kubelet");
    assert_eq!(kubelet["role"], "kubelet");
    assert_eq!(kubelet["connects"], 2);
    let kubelet_until_ms = kubelet["until_ns"].as_i64().expect("kubelet until") as f64 / 1e6;
    assert!(
        kubelet_until_ms > gap_ms + 250.0,
        "the kubelet probed after the ingress stopped: {kubelet_until_ms} ms vs gap {gap_ms} ms"
    );
    // The failure before the deletion is a finding of its own (a ready
    // pod refusing); those inside the termination window are in its record.
    let findings: Vec<&str> = live_out
        .lines()
        .filter(|l| l.starts_with("{\"finding\""))
        .collect();
    assert_eq!(findings.len(), 1, "{live_out}");
    assert!(
        findings[0].contains("\"pod_state\":\"ready\""),
        "{live_out}"
    );

    let recorded = std::fs::read_to_string(&recording).expect("recording");
    assert!(recorded.contains("\"web-1\""), "the pod is recorded");
    for secret in [ENV_SECRET, ANNOTATION_SECRET, "DATABASE_PASSWORD"] {
        assert!(!recorded.contains(secret), "{secret} is in the recording");
    }

    let replay = |name: &str| {
        let out = dir.join(name);
        let status = Command::new(BIN)
            .args(["replay", "--quiet-period", "1s"])
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
    runtime.block_on(sim.shutdown());
}
