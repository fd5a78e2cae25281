//! The agent's HTTP server: accepts connections on one or more addresses
//! and holds them to limits, so that a node-local port on a privileged
//! agent cannot be used to exhaust it. The paths it serves are in
//! [`super::http_routes`]; the limits and the token in docs/AGENT.md.
//!
//! | limit | what happens past it |
//! |---|---|
//! | connections open at once ([`HttpLimits::max_connections`]) | the oldest connection with no request in progress is closed to make room; if every one is busy, the new connection is closed at once |
//! | request head size ([`HttpLimits::max_header_bytes`]) | 431, connection closed |
//! | time to send a request head ([`HttpLimits::header_read_timeout`]), also between keep-alive requests | connection closed |
//! | a request body | 413 (the API takes none), connection closed |
//! | a client that reads nothing for [`HttpLimits::write_stall_timeout`] while a response waits | connection closed |
//! | a stream client's queue ([`HttpLimits::stream_buffer_lines`]) | lines skipped; the next snapshot catches it up |

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::AbortHandle,
};

use super::api_token::ApiToken;
use super::http_io::{InFlight, WriteStallLimit};
use super::http_routes::{Routes, TokenScope};
use super::state::AgentState;

/// How much the server lets clients take.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Connections open at once, over every listening address.
    pub max_connections: usize,
    /// Request line and headers together, in bytes.
    pub max_header_bytes: usize,
    /// From a connection's start, or the end of its last response, to the
    /// end of its next request head.
    pub header_read_timeout: Duration,
    /// How long a response may wait for a client that reads nothing.
    pub write_stall_timeout: Duration,
    /// Lines queued for one stream client before lines are skipped.
    pub stream_buffer_lines: usize,
    /// Kernel send buffer of each connection (`SO_SNDBUF`), in bytes:
    /// with the stream queue, what one client that stops reading can pin.
    pub socket_send_buffer: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 128,
            max_header_bytes: 8 * 1024,
            header_read_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(30),
            stream_buffer_lines: 16,
            socket_send_buffer: 256 * 1024,
        }
    }
}

/// The server's settings: its limits and, optionally, a bearer token.
#[derive(Clone, Debug, Default)]
pub struct HttpConfig {
    pub limits: HttpLimits,
    /// When set, the JSON API and the stream require it, and so do the
    /// paths in `token_scope`.
    pub token: Option<ApiToken>,
    pub token_scope: TokenScope,
}

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("binding the HTTP port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no address to listen on")]
    NoAddress,
}

/// Connections open now, oldest first (ids grow).
#[derive(Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, (InFlight, AbortHandle)>,
    /// Closed at once: the cap was reached and every connection was busy.
    refused: u64,
    /// Idle connections closed to make room for a new one.
    evicted: u64,
}

/// What the server has done with connections, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub open: usize,
    pub refused: u64,
    pub evicted: u64,
}

/// A running HTTP server; it stops when `shutdown` is signalled.
pub struct HttpServer {
    /// The bound addresses, in the order given (a port 0 resolved).
    pub local_addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    registry: Arc<Mutex<Registry>>,
    stop: watch::Sender<bool>,
}

impl HttpServer {
    /// Binds every address in `addrs` and serves `state` on them.
    pub async fn start(
        addrs: &[SocketAddr],
        state: Arc<AgentState>,
        config: HttpConfig,
    ) -> Result<HttpServer, HttpError> {
        if addrs.is_empty() {
            return Err(HttpError::NoAddress);
        }
        let limits = config.limits.clone();
        let routes = Arc::new(Routes::new(state, config));
        let registry = Arc::new(Mutex::new(Registry::default()));
        let (stop, stopped) = watch::channel(false);
        let mut local_addrs = Vec::new();
        let mut tasks = Vec::new();
        for &addr in addrs {
            let listener =
                bind(addr, &limits).map_err(|source| HttpError::Bind { addr, source })?;
            local_addrs.push(
                listener
                    .local_addr()
                    .map_err(|source| HttpError::Bind { addr, source })?,
            );
            tasks.push(tokio::spawn(accept_loop(
                listener,
                routes.clone(),
                registry.clone(),
                limits.clone(),
                stopped.clone(),
            )));
        }
        Ok(HttpServer {
            local_addrs,
            tasks,
            registry,
            stop,
        })
    }

    /// The first bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    pub fn connection_counts(&self) -> ConnectionCounts {
        let registry = lock(&self.registry);
        ConnectionCounts {
            open: registry.open.len(),
            refused: registry.refused,
            evicted: registry.evicted,
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let open = std::mem::take(&mut lock(&self.registry).open);
        for (_, (_, connection)) in open {
            connection.abort();
        }
    }
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A listening socket whose accepted connections inherit a bounded send
/// buffer (Linux copies it from the listener).
fn bind(addr: SocketAddr, limits: &HttpLimits) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted agent must not wait for the old one's TIME_WAITs.
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(limits.socket_send_buffer)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    listener: TcpListener,
    routes: Arc<Routes>,
    registry: Arc<Mutex<Registry>>,
    limits: HttpLimits,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: wait rather
                    // than spin; the connections already open still close.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        admit(stream, &routes, &registry, &limits, &stopped);
    }
}

/// Serves `stream` if there is room, making room by closing the oldest
/// idle connection; closes `stream` at once if every connection is busy.
fn admit(
    stream: TcpStream,
    routes: &Arc<Routes>,
    registry: &Arc<Mutex<Registry>>,
    limits: &HttpLimits,
    stopped: &watch::Receiver<bool>,
) {
    let mut guard = lock(registry);
    if guard.open.len() >= limits.max_connections {
        let oldest_idle = guard
            .open
            .iter()
            .find(|(_, (in_flight, _))| in_flight.is_idle())
            .map(|(id, _)| *id);
        match oldest_idle.and_then(|id| guard.open.remove(&id)) {
            Some((_, connection)) => {
                connection.abort();
                guard.evicted += 1;
            }
            None => {
                guard.refused += 1;
                if guard.refused.is_power_of_two() {
                    tracing::warn!(
                        max = limits.max_connections,
                        refused = guard.refused,
                        "HTTP connections refused: every connection is busy"
                    );
                }
                // Dropping it closes it.
                return;
            }
        }
    }
    let id = guard.next_id;
    guard.next_id += 1;
    let in_flight = InFlight::default();
    let task = tokio::spawn(serve(
        stream,
        routes.clone(),
        in_flight.clone(),
        limits.clone(),
        stopped.clone(),
        Deregister {
            registry: registry.clone(),
            id,
        },
    ));
    guard.open.insert(id, (in_flight, task.abort_handle()));
}

/// Removes a connection from the registry when its task ends, however it
/// ends (done, failed, or aborted).
struct Deregister {
    registry: Arc<Mutex<Registry>>,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        lock(&self.registry).open.remove(&self.id);
    }
}

async fn serve(
    stream: TcpStream,
    routes: Arc<Routes>,
    in_flight: InFlight,
    limits: HttpLimits,
    stopped: watch::Receiver<bool>,
    _registered: Deregister,
) {
    let io = WriteStallLimit::new(TokioIo::new(stream), limits.write_stall_timeout);
    let service = service_fn(move |request| {
        let response = routes.respond(request, &in_flight, stopped.clone());
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        // hyper's floor; a head past max_header_bytes is refused first.
        .max_buf_size(limits.max_header_bytes.max(8192));
    if let Err(error) = builder.serve_connection(io, service).await {
        tracing::debug!(%error, "HTTP connection ended");
    }
}
