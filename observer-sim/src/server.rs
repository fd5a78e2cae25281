//! The HTTP side: accept loop, routing, discovery documents, kubeconfig.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use kube::config::{
    AuthInfo, Cluster as KubeCluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo,
    NamedCluster, NamedContext,
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::SimError;
use super::faults::{Faults, RequestLog, RequestRecord, RequestScope, WatchTally};
use super::protocol::{self, Filter, Reply, WatchCut, WatchParams, WatchStream};
use super::store::{Kind, Store, wait_closed};

type Body = UnsyncBoxBody<Bytes, WatchCut>;

/// Server settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How often an idle watch that asked for bookmarks gets one. A real
    /// server sends them about once a minute; tests want them sooner.
    pub bookmark_interval: Duration,
    /// Changes kept for watches to resume from before older ones are compacted.
    pub max_history: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            max_history: super::store::DEFAULT_MAX_HISTORY,
        }
    }
}

#[derive(Clone)]
struct Ctx {
    store: Store,
    faults: Faults,
    log: RequestLog,
    tally: WatchTally,
    config: SimConfig,
}

/// A running simulated API server on 127.0.0.1.
pub struct SimServer {
    addr: SocketAddr,
    ctx: Ctx,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Starts on an ephemeral loopback port with default settings.
    pub async fn start() -> Result<Self, SimError> {
        Self::start_with(SimConfig::default()).await
    }

    pub async fn start_with(config: SimConfig) -> Result<Self, SimError> {
        let store = Store::with_max_history(config.max_history);
        Self::start_on(store, config).await
    }

    /// Serves an existing store, e.g. one a scripted cluster already runs on.
    pub async fn start_on(store: Store, config: SimConfig) -> Result<Self, SimError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let ctx = Ctx {
            store,
            faults: Faults::default(),
            log: RequestLog::default(),
            tally: WatchTally::default(),
            config,
        };
        let task = tokio::spawn(accept_loop(listener, ctx.clone()));
        Ok(Self {
            addr,
            ctx,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    pub fn faults(&self) -> &Faults {
        &self.ctx.faults
    }

    pub fn requests(&self) -> &RequestLog {
        &self.ctx.log
    }

    /// Watch events sent so far, by resource and watch scope.
    pub fn watch_events_sent(&self) -> std::collections::BTreeMap<(String, RequestScope), u64> {
        self.ctx.tally.snapshot()
    }

    /// Compacts history up to now: older resourceVersions get 410 Gone.
    pub fn compact(&self) -> u64 {
        self.ctx.store.compact()
    }

    /// A kubeconfig with one context, "sim", pointing at this server.
    pub fn kubeconfig(&self) -> Kubeconfig {
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: "sim".into(),
                cluster: Some(KubeCluster {
                    server: Some(self.url()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: "sim".into(),
                auth_info: Some(AuthInfo::default()),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: "sim".into(),
                context: Some(Context {
                    cluster: "sim".into(),
                    user: Some("sim".into()),
                    namespace: Some("default".into()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some("sim".into()),
            kind: Some("Config".into()),
            api_version: Some("v1".into()),
            ..Default::default()
        }
    }

    /// Writes the kubeconfig as JSON, which kubectl and kube-rs read as YAML.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), SimError> {
        let text = serde_json::to_string_pretty(&self.kubeconfig())?;
        std::fs::write(path, text)?;
        Ok(())
    }

    /// A kube-rs configuration read from [`Self::kubeconfig`].
    pub async fn config(&self) -> Result<kube::Config, SimError> {
        Ok(
            kube::Config::from_custom_kubeconfig(self.kubeconfig(), &KubeConfigOptions::default())
                .await?,
        )
    }

    /// A kube-rs client configured from [`Self::kubeconfig`].
    pub async fn client(&self) -> Result<kube::Client, SimError> {
        Ok(kube::Client::try_from(self.config().await?)?)
    }

    /// Stops accepting, cuts every connection and watch, stops every
    /// controller running on the store, and waits for the accept loop.
    pub async fn shutdown(mut self) {
        self.ctx.store.close();
        if let Some(t) = self.task.take() {
            // The loop only ends on close; a join error means it was aborted.
            let _ = t.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.ctx.store.close();
    }
}

async fn accept_loop(listener: TcpListener, ctx: Ctx) {
    // Dropping the set at the end aborts every connection still open.
    let mut conns = JoinSet::new();
    let closed = ctx.store.closed_signal();
    loop {
        tokio::select! {
            _ = wait_closed(closed.clone()) => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    if ctx.faults.refusing() {
                        drop(sock);
                        continue;
                    }
                    conns.spawn(serve_connection(sock, ctx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(sock: TcpStream, ctx: Ctx) {
    let mut kill = ctx.faults.kill_connections_signal();
    kill.borrow_and_update();
    let svc_ctx = ctx.clone();
    let conn = http1::Builder::new().serve_connection(
        TokioIo::new(sock),
        service_fn(move |req| {
            let ctx = svc_ctx.clone();
            async move { Ok::<_, Infallible>(handle(ctx, req).await) }
        }),
    );
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "sim: connection ended with error");
            }
        }
        _ = kill.changed() => {}
    }
}

fn full(status: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// What a path names.
enum Route {
    Doc(Value),
    Collection(Kind, Option<String>),
    Object(Kind, String, String),
    NotFound,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (kind, rest) = match segs.as_slice() {
        ["version"] => return Route::Doc(version_doc()),
        ["api"] => {
            return Route::Doc(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        ["apis"] => {
            return Route::Doc(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [discovery_group()]}),
            );
        }
        ["api", "v1"] => return Route::Doc(resource_list(Kind::Pod)),
        ["apis", "discovery.k8s.io"] => {
            let mut group = discovery_group();
            if let Some(m) = group.as_object_mut() {
                m.insert("kind".into(), json!("APIGroup"));
                m.insert("apiVersion".into(), json!("v1"));
            }
            return Route::Doc(group);
        }
        ["apis", "discovery.k8s.io", "v1"] => {
            return Route::Doc(resource_list(Kind::EndpointSlice));
        }
        ["api", "v1", rest @ ..] => (Kind::Pod, rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => (Kind::EndpointSlice, rest),
        _ => return Route::NotFound,
    };
    match rest {
        [p] if *p == kind.plural() => Route::Collection(kind, None),
        ["namespaces", ns, p] if *p == kind.plural() => {
            Route::Collection(kind, Some((*ns).to_string()))
        }
        ["namespaces", ns, p, name] if *p == kind.plural() => {
            Route::Object(kind, (*ns).to_string(), (*name).to_string())
        }
        _ => Route::NotFound,
    }
}

fn version_doc() -> Value {
    json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-sim", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
}

fn discovery_group() -> Value {
    let v = json!({"groupVersion": "discovery.k8s.io/v1", "version": "v1"});
    json!({"name": "discovery.k8s.io", "versions": [v], "preferredVersion": v})
}

fn resource_list(kind: Kind) -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": kind.api_version(),
        "resources": [{
            "name": kind.plural(), "singularName": kind.kind().to_lowercase(), "namespaced": true,
            "kind": kind.kind(), "verbs": ["get", "list", "watch"],
        }],
    })
}

async fn handle(ctx: Ctx, req: Request<Incoming>) -> Response<Body> {
    let latency = ctx.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let q = protocol::parse_query(&query);
    let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let (status, resp) = respond(&ctx, req.method(), &path, &q, is_watch).await;
    ctx.log.push(RequestRecord {
        method: req.method().to_string(),
        path,
        query,
        status,
        watch: is_watch,
    });
    resp
}

async fn respond(
    ctx: &Ctx,
    method: &Method,
    path: &str,
    q: &std::collections::HashMap<String, String>,
    is_watch: bool,
) -> (u16, Response<Body>) {
    let reply = |r: Reply| (r.status, full(r.status, &r.body));
    if method != Method::GET {
        let msg =
            format!("the server does not allow this method on the requested resource: {method}");
        return reply(Reply {
            status: 405,
            body: protocol::status(405, "MethodNotAllowed", &msg, None),
        });
    }
    match route(path) {
        Route::Doc(v) => (200, full(200, &v)),
        Route::NotFound => reply(Reply {
            status: 404,
            body: protocol::status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                None,
            ),
        }),
        Route::Object(kind, ns, name) => reply(protocol::get(&ctx.store, kind, &ns, &name)),
        Route::Collection(kind, ns) => {
            let filter = match Filter::parse(kind, ns, q) {
                Ok(f) => f,
                Err(r) => return reply(r),
            };
            if !is_watch {
                return reply(protocol::list(&ctx.store, kind, &filter, q).await);
            }
            let timeout = q
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .filter(|t| *t > 0);
            let params = WatchParams {
                bookmarks: q.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
                bookmark_every: ctx.config.bookmark_interval,
                deadline: timeout.map(|t| Instant::now() + Duration::from_secs(t)),
            };
            let scope = RequestScope::of_parts(path, q.get("fieldSelector").map(String::as_str));
            let opened = WatchStream::open(
                ctx.store.clone(),
                kind,
                filter,
                q,
                params,
                ctx.faults.drop_watches_signal(),
                ctx.faults.kill_connections_signal(),
                ctx.tally.counter(kind.plural(), scope),
            );
            match opened {
                Err(r) => reply(r),
                Ok(w) => {
                    let stream = futures::stream::unfold(w, |mut w| async move {
                        w.next_chunk().await.map(|item| (item.map(Frame::data), w))
                    });
                    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    (200, resp)
                }
            }
        }
    }
}
