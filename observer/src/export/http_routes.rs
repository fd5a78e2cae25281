//! What the agent's HTTP port serves: Prometheus `/metrics`, health, and
//! a JSON API with a live stream — what the TUI and other tooling read.
//!
//! | path | body |
//! |---|---|
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `GET /healthz` | `ok` while the process runs |
//! | `GET /readyz` | 200 once the probe is attached and the watches listed, else 503 |
//! | `GET /api/v1/snapshot` | the engine's current [`Snapshot`](crate::engine::Snapshot) |
//! | `GET /api/v1/recommendations` | the current recommendations |
//! | `GET /api/v1/stream` | NDJSON: `{"snapshot":…}` first and every second, `{"termination":…}`, `{"finding":…}` as they happen |
//!
//! With a token configured, `/api/v1/…` answers 401 without
//! `Authorization: Bearer <token>`, and so do `/metrics` and the probes if
//! [`TokenScope`] says so. Only `GET` without a body is served.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body as _, Frame, Incoming},
    header,
};
use tokio::sync::{mpsc::error::TrySendError, watch};

use super::api_token::ApiToken;
use super::http::HttpConfig;
use super::http_io::{InFlight, Tracked};
use super::state::AgentState;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A response as the server hands it to hyper: its body ends the request's
/// [`InFlight`] count when dropped.
pub type TrackedResponse = Response<Tracked<Body>>;

/// Which paths besides the JSON API and the stream require the token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenScope {
    /// `/metrics` (Prometheus then needs the token: its `authorization`
    /// scrape setting).
    pub metrics: bool,
    /// `/healthz` and `/readyz` (the kubelet's probes then need it in
    /// `httpHeaders`).
    pub probes: bool,
}

/// The paths, over one agent's state.
pub struct Routes {
    state: Arc<AgentState>,
    token: Option<ApiToken>,
    scope: TokenScope,
    stream_buffer_lines: usize,
}

impl Routes {
    pub fn new(state: Arc<AgentState>, config: HttpConfig) -> Routes {
        Routes {
            state,
            token: config.token,
            scope: config.token_scope,
            stream_buffer_lines: config.limits.stream_buffer_lines.max(1),
        }
    }

    pub fn respond(
        &self,
        request: Request<Incoming>,
        in_flight: &InFlight,
        stopped: watch::Receiver<bool>,
    ) -> TrackedResponse {
        let guard = in_flight.start();
        self.route(&request, stopped)
            .map(|body| Tracked::new(body, guard))
    }

    fn route(&self, request: &Request<Incoming>, stopped: watch::Receiver<bool>) -> Response<Body> {
        if request.method() != Method::GET {
            return closing(full(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET is served\n",
            ));
        }
        // A body on a GET is refused rather than read: nothing here takes
        // one, and reading it would let a client hold the connection.
        if !request.body().is_end_stream() {
            return closing(full(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "this API takes no request body\n",
            ));
        }
        let path = request.uri().path();
        let protected = match path {
            "/metrics" => self.scope.metrics,
            "/healthz" | "/readyz" => self.scope.probes,
            _ => true,
        };
        if protected
            && let Some(token) = &self.token
            && !token.accepts(
                request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
        {
            let mut response = full(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "this agent's API needs `Authorization: Bearer <token>` (observer tui --api-token-file)\n",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"observer\""),
            );
            return response;
        }
        let state = &self.state;
        match path {
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
            "/api/v1/stream" => stream(state, stopped, self.stream_buffer_lines),
            _ => full(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /metrics, /readyz, /api/v1/snapshot, /api/v1/recommendations, /api/v1/stream\n",
            ),
        }
    }
}

/// The connection closes after this response (hyper reads no further
/// request from it).
fn closing(mut response: Response<Body>) -> Response<Body> {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
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

/// Live updates: a snapshot now and every second, and every closed
/// termination and finding as it happens. A client that reads slower than
/// lines come has at most `buffer_lines` queued; past that, lines are
/// skipped rather than queued or the agent slowed (the next snapshot
/// catches it up). One that reads nothing at all is cut off by the
/// server's write-stall limit.
fn stream(
    state: &AgentState,
    mut stopped: watch::Receiver<bool>,
    buffer_lines: usize,
) -> Response<Body> {
    let first = state.snapshot_line();
    let mut updates = state.subscribe();
    let snapshots = state.clone_handle();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(buffer_lines);
    tokio::spawn(async move {
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
            match tx.try_send(line) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Closed(_)) => return,
            }
        }
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(bytes))), rx))
    });
    let mut response = Response::new(StreamBody::new(lines).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}
