//! Remote agents as TUI data sources (`observer tui --agents URL,…`).
//!
//! Per agent: `GET /api/v1/snapshot` for the current state, then
//! `GET /api/v1/stream`, newline-delimited JSON of `{"snapshot": …}` and
//! `{"finding": …}` objects, until it ends or goes quiet. Any failure sends
//! `Lost` (shown in the status line, the agent's last data stays on
//! screen) and the agent is retried with backoff: losing an agent is never
//! fatal. Plain HTTP/1.1 only: the agents' API is a node-local port.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::adapt::{findings_update, snapshot_update};
use super::app::{DataUpdate, SourceEvent};
use crate::clock::{WallClock, unix_ms_now};
use crate::engine::{Finding, Snapshot};
use crate::export::ApiToken;

pub const SNAPSHOT_PATH: &str = "/api/v1/snapshot";
pub const STREAM_PATH: &str = "/api/v1/stream";

/// One line is at most this long (a snapshot of a very busy node).
const MAX_LINE_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum RemoteError {
    #[error("bad agent URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("agent answered {0}")]
    Status(StatusCode),
    #[error("agent answered 401: it requires an API token (--api-token-file), or refused this one")]
    Unauthorized,
    #[error("bad JSON from agent: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("stream ended")]
    Ended,
}

#[derive(Clone, Debug)]
pub struct RemoteOptions {
    pub connect_timeout: Duration,
    /// A stream silent this long is taken as lost (agents send a snapshot
    /// every second or so).
    pub idle_timeout: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Sent as `Authorization: Bearer …` to agents that require it.
    pub api_token: Option<ApiToken>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(15),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            api_token: None,
        }
    }
}

/// Where an agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentUrl {
    pub authority: String,
    /// Path prefix before `/api/v1/…` (usually empty).
    pub prefix: String,
}

impl AgentUrl {
    pub fn parse(url: &str) -> Result<AgentUrl, RemoteError> {
        let bad = |reason: &str| RemoteError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
            None => return Err(bad("missing http://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(AgentUrl {
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// One line of the stream.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StreamItem {
    Snapshot(Box<Snapshot>),
    Finding(Box<Finding>),
}

/// Turns one agent's JSON into updates (pure: the receive time is passed
/// in). Remembers the agent's clock from its last snapshot, so findings get
/// times of day.
#[derive(Debug)]
pub struct AgentDecoder {
    source: String,
    clock: Option<WallClock>,
}

impl AgentDecoder {
    pub fn new(source: &str) -> AgentDecoder {
        AgentDecoder {
            source: source.to_string(),
            clock: None,
        }
    }

    pub fn snapshot(&mut self, snapshot: &Snapshot, received_unix_ms: u64) -> DataUpdate {
        // The agent's `now` is when it built the snapshot; taking that as
        // the receive time errs by the network delay only.
        self.clock = Some(WallClock::new(snapshot.now, received_unix_ms));
        snapshot_update(&self.source, snapshot)
    }

    /// Decodes one stream line; `Ok(None)` for blank lines and findings
    /// that are not failures.
    pub fn line(
        &mut self,
        line: &str,
        received_unix_ms: u64,
    ) -> Result<Option<DataUpdate>, RemoteError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        match serde_json::from_str::<StreamItem>(line)? {
            StreamItem::Snapshot(snapshot) => Ok(Some(self.snapshot(&snapshot, received_unix_ms))),
            StreamItem::Finding(finding) => {
                let clock = self
                    .clock
                    .unwrap_or(WallClock::new(finding.at, received_unix_ms));
                Ok(findings_update(
                    &self.source,
                    std::slice::from_ref(&finding),
                    &clock,
                ))
            }
        }
    }
}

/// Starts one polling task per agent; each sends its updates to `tx`.
pub fn spawn_agents(
    agents: &[String],
    tx: mpsc::Sender<DataUpdate>,
    options: RemoteOptions,
) -> Result<Vec<JoinHandle<()>>, RemoteError> {
    let parsed = agents
        .iter()
        .map(|a| AgentUrl::parse(a).map(|url| (a.clone(), url)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parsed
        .into_iter()
        .map(|(name, url)| tokio::spawn(follow_agent(name, url, tx.clone(), options.clone())))
        .collect())
}

/// One agent's current snapshot (`observer cluster`: a one-shot read).
pub async fn fetch_snapshot(
    url: &AgentUrl,
    options: &RemoteOptions,
) -> Result<Snapshot, RemoteError> {
    let body = get(url, SNAPSHOT_PATH, options).await?;
    let bytes = read_all(body, options).await?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Follows one agent forever (until the TUI is gone).
async fn follow_agent(
    name: String,
    url: AgentUrl,
    tx: mpsc::Sender<DataUpdate>,
    options: RemoteOptions,
) {
    let mut backoff = options.first_backoff;
    loop {
        let mut decoder = AgentDecoder::new(&name);
        let mut delivered = false;
        let error = follow_once(&url, &mut decoder, &tx, &options, &mut delivered).await;
        if tx.is_closed() {
            return;
        }
        tracing::info!(agent = %name, %error, "agent lost; retrying");
        let lost = DataUpdate {
            source: name.clone(),
            event: SourceEvent::Lost {
                reason: error.to_string(),
            },
        };
        if tx.send(lost).await.is_err() {
            return;
        }
        backoff = if delivered {
            options.first_backoff
        } else {
            (backoff * 2).min(options.max_backoff)
        };
        tokio::time::sleep(backoff).await;
    }
}

/// One connection's worth: the snapshot, then the stream until it fails.
/// Always ends in an error (a stream has no natural end).
async fn follow_once(
    url: &AgentUrl,
    decoder: &mut AgentDecoder,
    tx: &mpsc::Sender<DataUpdate>,
    options: &RemoteOptions,
    delivered: &mut bool,
) -> RemoteError {
    let snapshot = match get(url, SNAPSHOT_PATH, options).await {
        Ok(body) => read_all(body, options).await,
        Err(error) => return error,
    };
    let snapshot: Snapshot = match snapshot.and_then(|b| Ok(serde_json::from_slice(&b)?)) {
        Ok(snapshot) => snapshot,
        Err(error) => return error,
    };
    if tx
        .send(decoder.snapshot(&snapshot, unix_ms_now()))
        .await
        .is_err()
    {
        return RemoteError::Ended;
    }
    *delivered = true;
    let mut body = match get(url, STREAM_PATH, options).await {
        Ok(body) => body,
        Err(error) => return error,
    };
    let mut buffer = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(options.idle_timeout, body.frame()).await {
            Err(_) => return RemoteError::Timeout("waiting for the stream"),
            Ok(None) => return RemoteError::Ended,
            Ok(Some(Err(error))) => return RemoteError::Http(error),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line = buffer.split_to(end + 1);
            let text = String::from_utf8_lossy(&line[..end]);
            match decoder.line(&text, unix_ms_now()) {
                Ok(Some(update)) => {
                    if tx.send(update).await.is_err() {
                        return RemoteError::Ended;
                    }
                }
                Ok(None) => {}
                // A line this version cannot read (a newer agent) is skipped.
                Err(error) => tracing::debug!(%error, "skipping stream line"),
            }
        }
        if buffer.len() > MAX_LINE_BYTES {
            return RemoteError::LineTooLong;
        }
    }
}

type Body = hyper::body::Incoming;

async fn get(url: &AgentUrl, path: &str, options: &RemoteOptions) -> Result<Body, RemoteError> {
    let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(&url.authority))
        .await
        .map_err(|_| RemoteError::Timeout("connecting"))?
        .map_err(RemoteError::Connect)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "agent connection closed");
        }
    });
    let mut request =
        Request::get(format!("{}{path}", url.prefix)).header(hyper::header::HOST, &url.authority);
    if let Some(token) = &options.api_token {
        request = request.header(hyper::header::AUTHORIZATION, token.header_value());
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(options.idle_timeout, sender.send_request(request))
        .await
        .map_err(|_| RemoteError::Timeout("waiting for the agent's answer"))??;
    if response.status() == StatusCode::UNAUTHORIZED {
        return Err(RemoteError::Unauthorized);
    }
    if response.status() != StatusCode::OK {
        return Err(RemoteError::Status(response.status()));
    }
    Ok(response.into_body())
}

async fn read_all(mut body: Body, options: &RemoteOptions) -> Result<Bytes, RemoteError> {
    let mut out = BytesMut::new();
    loop {
        match tokio::time::timeout(options.idle_timeout, body.frame()).await {
            Err(_) => return Err(RemoteError::Timeout("reading the snapshot")),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(frame)) => {
                if let Ok(mut data) = frame?.into_data() {
                    if out.len() + data.remaining() > MAX_LINE_BYTES {
                        return Err(RemoteError::LineTooLong);
                    }
                    out.extend_from_slice(&data.copy_to_bytes(data.remaining()));
                }
            }
        }
    }
}
