//! The lab's kubelet prober: an HTTP readiness probe (`GET /` on the pod's
//! port) every period, from the node's end of the pod network, from pod
//! start until the container exits — through the preStop, as the kubelet
//! does. Its results drive the pod's readiness in the simulator.
//!
//! Each pod's prober is an OS thread named `kubelet` (the kernel comm the
//! connects carry) of the lab's own process, so its sockets sit in a
//! cgroup that is not a pod's: to observer it is the node's kubelet, a host
//! process. Blocking std sockets with short timeouts keep it simple and
//! independent of the async runtime's load.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Result;
use super::netns::Netns;

/// The thread name (and so the comm) of every probe connect.
pub const KUBELET_COMM: &str = "kubelet";

/// The kubelet's defaults for an HTTP readiness probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// periodSeconds (the lab allows fractions).
    pub period: Duration,
    /// timeoutSeconds: 1 s, or the period if that is shorter.
    pub timeout: Duration,
    /// Consecutive failures that make a Ready pod not ready.
    pub failure_threshold: u32,
    /// Consecutive successes that make a not-ready pod Ready.
    pub success_threshold: u32,
}

impl ProbeSpec {
    pub fn every(period: Duration) -> ProbeSpec {
        ProbeSpec {
            period,
            timeout: period.min(Duration::from_secs(1)),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

/// Readiness from a run of probe results, with the kubelet's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    ready: bool,
    streak: u32,
}

impl Readiness {
    /// A new container starts not ready.
    pub fn new() -> Readiness {
        Readiness {
            ready: false,
            streak: 0,
        }
    }

    /// Applies one result; returns the readiness after it.
    pub fn record(&mut self, success: bool, spec: &ProbeSpec) -> bool {
        if success != self.ready {
            // A result against the current state extends the streak that
            // may flip it; one agreeing with it ends that streak.
            self.streak += 1;
            let threshold = if success {
                spec.success_threshold
            } else {
                spec.failure_threshold
            };
            if self.streak >= threshold.max(1) {
                self.ready = success;
                self.streak = 0;
            }
        } else {
            self.streak = 0;
        }
        self.ready
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

/// A pod's running prober; dropping it stops the probes (the container has
/// exited) without waiting for a probe in flight.
#[derive(Debug)]
pub struct Prober {
    _stop: mpsc::Sender<()>,
}

impl Prober {
    /// Starts probing `target` from `node` (a thread inside that network
    /// namespace), publishing readiness on `ready`.
    pub fn start(
        node: &Netns,
        target: SocketAddr,
        spec: ProbeSpec,
        ready: watch::Sender<bool>,
    ) -> Result<Prober> {
        let (stop, stopped) = mpsc::channel::<()>();
        // Detached: it ends within one timeout of the stop.
        let _thread = node.spawn_in(KUBELET_COMM, move || {
            probe_loop(target, spec, &ready, &stopped);
        })?;
        Ok(Prober { _stop: stop })
    }
}

fn probe_loop(
    target: SocketAddr,
    spec: ProbeSpec,
    ready: &watch::Sender<bool>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut readiness = Readiness::new();
    loop {
        let started = Instant::now();
        let success = probe_once(target, spec.timeout);
        let now_ready = readiness.record(success, &spec);
        ready.send_if_modified(|r| std::mem::replace(r, now_ready) != now_ready);
        let wait = spec.period.saturating_sub(started.elapsed());
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            // Stopped, or the sender is gone: the container has exited.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One HTTP GET; a success is a 2xx or 3xx status, as the kubelet counts.
pub fn probe_once(target: SocketAddr, timeout: Duration) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {target}\r\nUser-Agent: kube-probe/1.33\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes())?;
        let mut head = [0u8; 64];
        let mut seen = 0;
        while seen < 12 {
            match stream.read(&mut head[seen..])? {
                0 => break,
                n => seen += n,
            }
        }
        Ok(status_ok(&head[..seen]))
    };
    attempt().unwrap_or(false)
}

/// "HTTP/1.x 2xx…" or "HTTP/1.x 3xx…".
fn status_ok(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split_whitespace();
    parts.next().is_some_and(|v| v.starts_with("HTTP/"))
        && parts
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .is_some_and(|code| (200..400).contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_kubelet() {
        let spec = ProbeSpec::every(Duration::from_secs(1));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!(
            ProbeSpec::every(Duration::from_millis(500)).timeout,
            Duration::from_millis(500)
        );
        let mut r = Readiness::new();
        assert!(!r.record(false, &spec), "starts not ready");
        assert!(r.record(true, &spec), "one success makes it ready");
        assert!(r.record(false, &spec));
        assert!(r.record(false, &spec));
        assert!(r.record(true, &spec), "a success ends the failure streak");
        assert!(r.record(false, &spec));
        assert!(r.record(false, &spec));
        assert!(!r.record(false, &spec), "three failures in a row");
        assert!(r.record(true, &spec));
    }

    #[test]
    fn status_line_decides() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_ok(b"HTTP/1.0 302 Found"));
        assert!(!status_ok(b"HTTP/1.1 503 Service Unavailable"));
        assert!(!status_ok(b"garbage"));
        assert!(!status_ok(b""));
    }

    #[test]
    fn probes_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        assert!(probe_once(addr, Duration::from_secs(1)));
        server.join().unwrap();
        // Nothing listens there any more: refused.
        assert!(!probe_once(addr, Duration::from_millis(200)));
    }
}
