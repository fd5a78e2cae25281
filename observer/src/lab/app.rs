//! The pods' app: a small HTTP/1.1 server answering every request with 200
//! and the pod's name, many requests per connection (keep-alive) until the
//! client closes the connection or the app stops.
//!
//! Stopping is what a real process's exit does: the listener and every
//! established connection close at once, idle or not. A pooled connection
//! nginx still holds is closed under it, and a request that reaches a
//! connection the app has closed is cut (the kernel answers it with a
//! reset). Each answer carries the request's number on its connection
//! ([`CONN_REQUEST_HEADER`]) so the lab's truth can tell a request sent on
//! a pooled connection from the first one of a new connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::nginx::CONN_REQUEST_HEADER;

/// Requests answered, by source address.
pub type Served = Arc<Mutex<HashMap<IpAddr, u64>>>;

/// Longer than nginx's upstream keep-alive timeout (60 s), as advised for
/// apps behind a pooling proxy: nginx closes an idle connection first, so
/// the app's own idle close never races a request nginx sends on it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A request head larger than this is not one of the lab's.
const MAX_HEAD: usize = 16 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts until `closed` turns true; each connection is served by its own
/// task, which closes when `closed` does.
pub async fn serve(
    listener: TcpListener,
    name: String,
    mut closed: watch::Receiver<bool>,
    served: Served,
    latency: Duration,
) {
    let body: Arc<str> = Arc::from(format!("{name}\n"));
    // Each connection's own view of the app's exit.
    let exits = closed.clone();
    loop {
        tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(
                        stream,
                        body.clone(),
                        peer.ip(),
                        served.clone(),
                        exits.clone(),
                        latency,
                    ));
                }
                Err(error) => tracing::debug!(%error, pod = %name, "lab pod: accept failed"),
            },
        }
    }
    // The listener drops here: from now on the pod's port refuses.
}

/// What the app needs from a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RequestHead {
    /// Bytes of body that follow the head.
    content_length: usize,
    /// The client wants the connection kept (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    keep_alive: bool,
}

/// The end of the head (after its blank line) in `buf`, if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_head(head: &[u8]) -> RequestHead {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let http10 = lines
        .next()
        .is_some_and(|l| l.trim_end().ends_with("HTTP/1.0"));
    let mut content_length = 0;
    let mut connection: Option<String> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("connection") {
            connection = Some(value.to_ascii_lowercase());
        }
    }
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => !http10,
    };
    RequestHead {
        content_length,
        keep_alive,
    }
}

/// Reads more of the connection into `buf`; false at its end (EOF, error,
/// idle timeout) or when the app stops.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    closed: &mut watch::Receiver<bool>,
) -> bool {
    let mut chunk = [0u8; 4096];
    tokio::select! {
        _ = closed.wait_for(|c| *c) => false,
        read = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)) => match read {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        },
    }
}

/// Serves one connection: request after request, until the client closes
/// it, asks for `Connection: close`, or the app stops. Returning drops the
/// stream, which closes it (with a reset if a request sits unread in it).
async fn connection(
    mut stream: TcpStream,
    body: Arc<str>,
    peer: IpAddr,
    served: Served,
    mut closed: watch::Receiver<bool>,
    latency: Duration,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut answered: u64 = 0;
    loop {
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD || !read_more(&mut stream, &mut buf, &mut closed).await {
                return;
            }
        };
        let head = parse_head(&buf[..end]);
        buf.drain(..end);
        // The lab's clients send no body; one that does has it skipped.
        while buf.len() < head.content_length {
            if !read_more(&mut stream, &mut buf, &mut closed).await {
                return;
            }
        }
        buf.drain(..head.content_length);
        // The request is in flight while the app works on it: an exit now
        // cuts it.
        if !latency.is_zero() {
            tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                _ = tokio::time::sleep(latency) => {}
            }
        }
        answered += 1;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             {CONN_REQUEST_HEADER}: {answered}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if head.keep_alive {
                "keep-alive"
            } else {
                "close"
            },
        );
        let wrote = tokio::select! {
            _ = closed.wait_for(|c| *c) => return,
            wrote = stream.write_all(response.as_bytes()) => wrote.is_ok(),
        };
        if !wrote {
            return;
        }
        *lock(&served).entry(peer).or_default() += 1;
        if !head.keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_say_whether_to_keep_the_connection() {
        let h = parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(h.keep_alive);
        assert_eq!(h.content_length, 0);
        let close = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!close.keep_alive);
        assert!(!parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let body = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(body.content_length, 12);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    async fn request(stream: &mut TcpStream, close: bool) -> String {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let req = format!("GET / HTTP/1.1\r\nHost: pod\r\n{connection}\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || buf.ends_with(b"pod-a\n") {
                return String::from_utf8(buf).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn an_exit_cuts_the_request_in_flight() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closed) = watch::channel(false);
        let served = Served::default();
        let latency = Duration::from_secs(5);
        tokio::spawn(serve(
            listener,
            "pod-a".into(),
            closed,
            served.clone(),
            latency,
        ));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        close.send_replace(true);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest))
            .await
            .expect("the app closes the connection at once");
        assert!(read.is_err() || rest.is_empty(), "no answer: {rest:?}");
        assert!(lock(&served).is_empty());
    }

    #[tokio::test]
    async fn serves_many_requests_per_connection_until_it_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closed) = watch::channel(false);
        let served = Served::default();
        let server = tokio::spawn(serve(
            listener,
            "pod-a".into(),
            closed,
            served.clone(),
            Duration::ZERO,
        ));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        for n in 1..=3 {
            let answer = request(&mut conn, false).await;
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            assert!(answer.contains(&format!("{CONN_REQUEST_HEADER}: {n}\r\n")));
        }
        let mut once = TcpStream::connect(addr).await.unwrap();
        let answer = request(&mut once, true).await;
        assert!(answer.contains("Connection: close") && answer.contains(": 1\r\n"));
        let mut rest = Vec::new();
        assert_eq!(once.read_to_end(&mut rest).await.unwrap(), 0, "closed");
        // The app stops: the idle pooled connection closes too.
        close.send_replace(true);
        server.await.unwrap();
        let mut rest = Vec::new();
        let closed_under =
            tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest))
                .await
                .expect("the pooled connection closes with the app");
        assert!(closed_under.is_ok_and(|n| n == 0) || rest.is_empty());
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is gone"
        );
        assert_eq!(lock(&served).values().sum::<u64>(), 4);
    }
}
