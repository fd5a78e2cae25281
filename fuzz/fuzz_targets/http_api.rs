//! The agent's HTTP API: arbitrary requests (method, path, headers, body,
//! and whatever bytes follow on the connection) served in memory by hyper
//! with the agent's router, over a duplex pipe instead of a socket.
//!
//! Every request must get an answer or a closed connection, never a
//! panic or a hang; the live stream is stopped as soon as it has sent its
//! first line, as a shutting-down agent stops it.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use observer::export::http::serve_stream;
use observer::export::{AgentState, ApiToken, HttpConfig, TokenScope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[derive(Debug, Arbitrary)]
enum Method<'a> {
    Get,
    Head,
    Post,
    Other(&'a str),
}

#[derive(Debug, Arbitrary)]
enum Path<'a> {
    Known(u8),
    /// Appended to a known path.
    Suffixed(u8, &'a str),
    Any(&'a str),
}

const PATHS: &[&str] = &[
    "/metrics",
    "/healthz",
    "/readyz",
    "/api/v1/snapshot",
    "/api/v1/recommendations",
    "/api/v1/stream",
];

#[derive(Debug, Arbitrary)]
struct Request<'a> {
    method: Method<'a>,
    path: Path<'a>,
    http10: bool,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
    /// Sent after the request as is: pipelined requests or garbage.
    trailing: &'a [u8],
    protected: bool,
}

impl Request<'_> {
    fn bytes(&self) -> Vec<u8> {
        let method = match self.method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Other(m) => m,
        };
        let path = match self.path {
            Path::Known(i) => PATHS[usize::from(i) % PATHS.len()].to_owned(),
            Path::Suffixed(i, s) => format!("{}{s}", PATHS[usize::from(i) % PATHS.len()]),
            Path::Any(s) => s.to_owned(),
        };
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut out = format!("{method} {path} {version}\r\n").into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if !self.body.is_empty() {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
        out.extend_from_slice(self.trailing);
        out
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime starts")
    })
}

/// Serves `request` on one in-memory connection; returns what the client
/// read.
async fn serve(request: Vec<u8>, state: Arc<AgentState>, config: HttpConfig) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (stop, stopped) = watch::channel(false);
    // Stopped from the start: the stream sends its first line and ends.
    stop.send_replace(true);
    let server = tokio::spawn(serve_stream(server, state, config, stopped));
    let (mut read, mut write) = tokio::io::split(client);
    let writer = async move {
        // The server may close before it has read everything: not an error.
        let _ = write.write_all(&request).await;
        let _ = write.shutdown().await;
        write
    };
    let reader = async move {
        let mut response = Vec::new();
        let _ = read.read_to_end(&mut response).await;
        response
    };
    let (_write, response) = tokio::join!(writer, reader);
    let _ = server.await;
    response
}

fn state() -> Arc<AgentState> {
    static STATE: OnceLock<Arc<AgentState>> = OnceLock::new();
    STATE.get_or_init(Default::default).clone()
}

/// Half the inputs meet a token-protected API (every path), so the
/// `Authorization` check sees arbitrary headers too.
fn config(protected: bool) -> HttpConfig {
    HttpConfig {
        token: protected.then(|| ApiToken::new("fuzz-token").expect("a valid token")),
        token_scope: TokenScope {
            metrics: protected,
            probes: protected,
        },
        ..HttpConfig::default()
    }
}

fuzz_target!(|request: Request| {
    let bytes = request.bytes();
    let response = runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            serve(bytes, state(), config(request.protected)),
        )
            .await
            .expect("the server answers and closes within 5 s")
    });
    if !response.is_empty() {
        assert!(
            response.starts_with(b"HTTP/1."),
            "{:?}",
            String::from_utf8_lossy(&response)
        );
    }
});
