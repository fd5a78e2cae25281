//! The agent's HTTP port: Prometheus `/metrics`, health, and a JSON API with
//! a live stream — what the TUI and other tooling read.
//!
//! | path | body |
//! |---|---|
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `GET /healthz` | `ok` while the process runs |
//! | `GET /readyz` | 200 once the probe is attached and the watches listed, else 503 |
//! | `GET /api/v1/snapshot` | the engine's current [`Snapshot`](crate::engine::Snapshot) |
//! | `GET /api/v1/recommendations` | the current recommendations |
//! | `GET /api/v1/stream` | NDJSON: `{"snapshot":…}` first and every second, `{"termination":…}`, `{"finding":…}` as they happen |

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::{net::TcpListener, sync::watch};

use super::state::AgentState;

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("binding the HTTP port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running HTTP server; it stops when `shutdown` is signalled.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl HttpServer {
    pub async fn start(addr: SocketAddr, state: Arc<AgentState>) -> Result<HttpServer, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = state.clone();
                        let stopped = stopped.clone();
                        connections.spawn(serve(stream, state, stopped));
                    }
                }
            }
            connections.shutdown().await;
        });
        Ok(HttpServer {
            local_addr,
            task,
            stop,
        })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    state: Arc<AgentState>,
    stopped: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let state = state.clone();
        let stopped = stopped.clone();
        async move { Ok::<_, Infallible>(route(request, &state, stopped)) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(error) => full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            error.to_string(),
        ),
    }
}

fn route(
    request: Request<Incoming>,
    state: &AgentState,
    stopped: watch::Receiver<bool>,
) -> Response<Body> {
    if request.method() != Method::GET {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n",
        );
    }
    match request.uri().path() {
        "/metrics" => full(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.encode_metrics(),
        ),
        "/healthz" => full(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match state.not_ready_reason() {
            None => full(StatusCode::OK, "text/plain", "ready\n"),
            Some(reason) => full(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{reason}\n"),
            ),
        },
        "/api/v1/snapshot" => json(&state.snapshot()),
        "/api/v1/recommendations" => json(&state.snapshot().recommendations),
        "/api/v1/stream" => stream(state, stopped),
        _ => full(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /readyz, /api/v1/snapshot, /api/v1/recommendations, /api/v1/stream\n",
        ),
    }
}

/// Live updates: a snapshot now and every second, and every closed
/// termination and finding as it happens. A slow reader skips lines rather
/// than slow the agent down (the next snapshot catches it up).
fn stream(state: &AgentState, mut stopped: watch::Receiver<bool>) -> Response<Body> {
    let first = state.snapshot_line();
    let mut updates = state.subscribe();
    let snapshots = state.clone_handle();
    let lines = async_stream_lines(move |tx| async move {
        if tx.send(first).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            let line = tokio::select! {
                _ = stopped.changed() => return,
                _ = tick.tick() => snapshots.snapshot_line(),
                update = updates.recv() => match update {
                    Ok(line) => line,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(StreamBody::new(lines).boxed_unsync());
    if let Ok(value) = "application/x-ndjson".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Runs `produce` on a task and turns the lines it sends into body frames.
fn async_stream_lines<F, Fut>(
    produce: F,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(produce(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        Some((Ok(Frame::data(Bytes::from(bytes))), rx))
    })
}
