//! The lab's users: an open-loop HTTP client sending `qps` requests a second
//! through nginx, from inside the ingress namespace, for the whole run.
//! It counts requests and what a user would see as an error (a non-2xx
//! answer, a connection error, a timeout). It is bounded in time and in
//! count and stops by itself at either bound.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::netns::Netns;
use super::{LabError, Result};

/// What to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadConfig {
    /// nginx's address in the ingress namespace.
    pub target: SocketAddr,
    pub qps: u32,
    /// The client stops by itself after this long.
    pub max_duration: Duration,
    pub request_timeout: Duration,
    /// Requests in flight at most; a tick over it counts as an error.
    pub max_in_flight: usize,
}

/// What the users saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadStats {
    pub requests: u64,
    pub errors: u64,
    /// Answers outside 2xx (nginx's 502 when every try failed, 504, …).
    pub non_2xx: u64,
    /// Connection errors, timeouts and requests not sent for lack of room.
    pub failed: u64,
}

enum Outcome {
    Status(u16),
    Failed,
}

/// A running load client; [`LoadClient::stop`] ends it and returns the counts.
pub struct LoadClient {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<Result<LoadStats>>>,
}

impl LoadClient {
    /// Starts the client on its own thread inside `ns`.
    pub fn start(ns: &Netns, config: LoadConfig) -> Result<LoadClient> {
        if config.qps == 0 {
            return Err(LabError::Invalid("qps must be at least 1".into()));
        }
        let (stop, stopped) = watch::channel(false);
        let thread = ns.spawn_in("lab-load", move || {
            // A runtime of this thread only: every socket it opens is made
            // in this thread's namespace.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(LabError::io("building the load client's runtime"))?;
            runtime.block_on(run(config, stopped))
        })?;
        Ok(LoadClient { stop, thread })
    }

    /// Stops sending, waits for requests in flight, returns the counts.
    pub async fn stop(self) -> Result<LoadStats> {
        self.stop.send_replace(true);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| LabError::Invalid(format!("load client join: {e}")))?
            .map_err(|_| LabError::Invalid("the load client panicked".into()))??
    }
}

async fn run(config: LoadConfig, mut stop: watch::Receiver<bool>) -> Result<LoadStats> {
    let mut stats = LoadStats::default();
    let period = Duration::from_secs_f64(1.0 / f64::from(config.qps));
    let max_requests = (config.max_duration.as_secs_f64() * f64::from(config.qps)).ceil() as u64;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = tokio::time::sleep(config.max_duration);
    tokio::pin!(deadline);
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = &mut deadline => break,
            _ = ticks.tick() => {
                while let Some(done) = in_flight.try_join_next() {
                    count(&mut stats, done.unwrap_or(Outcome::Failed));
                }
                if stats.requests >= max_requests {
                    break;
                }
                stats.requests += 1;
                if in_flight.len() >= config.max_in_flight {
                    count(&mut stats, Outcome::Failed);
                } else {
                    in_flight.spawn(request(config.target, config.request_timeout));
                }
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        count(&mut stats, done.unwrap_or(Outcome::Failed));
    }
    Ok(stats)
}

fn count(stats: &mut LoadStats, outcome: Outcome) {
    match outcome {
        Outcome::Status(code) if (200..300).contains(&code) => {}
        Outcome::Status(_) => {
            stats.non_2xx += 1;
            stats.errors += 1;
        }
        Outcome::Failed => {
            stats.failed += 1;
            stats.errors += 1;
        }
    }
}

async fn request(target: SocketAddr, timeout: Duration) -> Outcome {
    let exchange = async {
        let mut stream = TcpStream::connect(target).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::with_capacity(512);
        stream
            .take(64 * 1024)
            .read_to_end(&mut response)
            .await
            .ok()?;
        parse_status(&response)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(code)) => Outcome::Status(code),
        _ => Outcome::Failed,
    }
}

/// The status code of an HTTP/1.x response.
fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\nweb"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.1 502 Bad Gateway\r\nServer: nginx"),
            Some(502)
        );
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(b"SSH-2.0"), None);
    }

    #[test]
    fn errors_are_non_2xx_and_failures() {
        let mut s = LoadStats::default();
        count(&mut s, Outcome::Status(200));
        count(&mut s, Outcome::Status(204));
        count(&mut s, Outcome::Status(502));
        count(&mut s, Outcome::Failed);
        assert_eq!((s.errors, s.non_2xx, s.failed), (2, 1, 1));
    }
}
