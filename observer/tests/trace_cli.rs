//! The real `observer trace` binary: it shows a refused connect as it
//! happens, and without privileges it names what is missing.

// A test states what it expects with expect/unwrap: a failure there is the
// test failing, with its message (the workspace denies them in runtime code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The binary under test: the one cargo built with this test, or another
/// build of it (`OBSERVER_BIN`: the VM matrix runs the static aarch64 one).
fn observer_bin() -> String {
    std::env::var("OBSERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_observer").to_string())
}

/// By default a refused connect to a destination nobody watches is
/// reported from its socket: the kernel refuses it in softirq, so no
/// process is named (`pid` 0). `--full-attribution` follows every connect
/// and names it.
#[test]
fn trace_prints_a_refused_connect_as_json() {
    if let Err(error) = observer::privileges::require_root("tracing a connect") {
        panic!("{error}");
    }
    for (port, full_attribution) in [(917, false), (918, true)] {
        let line = trace_one_refused_connect(port, full_attribution);
        let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(event["outcome"], "failed", "{line}");
        assert_eq!(event["class"], "refused", "{line}");
        assert_eq!(event["errno"], 111, "{line}");
        assert_eq!(event["dst"], format!("127.0.0.1:{port}"), "{line}");
        let pid = if full_attribution {
            std::process::id()
        } else {
            0
        };
        assert_eq!(event["pid"], pid, "{line}");
    }
}

fn trace_one_refused_connect(port: u16, full_attribution: bool) -> String {
    let mut args = vec![
        "trace".to_string(),
        "--json".into(),
        "--count".into(),
        "1".into(),
        "--port".into(),
        port.to_string(),
    ];
    if full_attribution {
        args.push("--full-attribution".into());
    }
    let mut child = Command::new(observer_bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start observer trace");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    // The probe takes a moment to attach: knock until it reports.
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let _ = TcpStream::connect_timeout(&dst, Duration::from_millis(200));
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "observer trace printed nothing in 20 s"
        );
    };
    let status = child.wait().expect("observer exits after --count 1");
    assert!(status.success(), "{status}");
    line
}

#[test]
fn trace_without_privileges_names_the_missing_capabilities() {
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(observer_bin())
        .arg("trace")
        .output()
        .expect("run setpriv (util-linux)");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("setcap"),
        "says how to grant them: {stderr}"
    );
}
