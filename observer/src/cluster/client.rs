//! The agent's way to the API server: where its credentials come from, the
//! client built from them, and the second client a node agent's
//! EndpointSlice watch reads through, whose connections leave the poll set
//! while changes gather ([`super::paced_socket`]).

use std::path::PathBuf;

use futures::future::BoxFuture;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::{Body, ConfigExt};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::ServiceBuilder;
use tracing::{info, warn};

use super::paced_socket::{PaceGate, PacedSocket};

/// Failures to build a client from an explicitly requested source.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("loading in-cluster config: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Where the agent finds its Kubernetes credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientSource {
    /// Do not talk to Kubernetes; pods show as unknown.
    Disabled,
    /// The service account of the pod the agent runs in.
    InCluster,
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// `KUBECONFIG` or `~/.kube/config`, else in-cluster; none found is not
    /// an error.
    #[default]
    Infer,
}

/// Builds a client, or `None` when Kubernetes is disabled or (for
/// [`ClientSource::Infer`]) no configuration is found: the agent still
/// traces, and pods show as unknown.
pub async fn connect(source: &ClientSource) -> Result<Option<Kube>, ConnectError> {
    let config = match source {
        ClientSource::Disabled => return Ok(None),
        ClientSource::InCluster => Config::incluster().map_err(ConnectError::InCluster)?,
        ClientSource::Kubeconfig(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| ConnectError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| ConnectError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        ClientSource::Infer => match Config::infer().await {
            Ok(config) => config,
            Err(error) => {
                warn!("no Kubernetes configuration found ({error}); pods will show as unknown");
                return Ok(None);
            }
        },
    };
    Kube::from_config(config)
        .map(Some)
        .map_err(ConnectError::Client)
}

/// A client, and the configuration it was built from: a node agent's slice
/// watch builds a second client from it.
#[derive(Clone)]
pub struct Kube {
    client: Client,
    config: Config,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("cluster_url", &self.config.cluster_url)
            .finish_non_exhaustive()
    }
}

impl Kube {
    pub fn from_config(config: Config) -> Result<Kube, kube::Error> {
        let client = Client::try_from(config.clone())?;
        Ok(Kube { client, config })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same client, built anew: kube's client spawns its request
    /// worker on the runtime it is built in, and a watch on a thread of its
    /// own wants its requests served there.
    pub fn rebuilt(&self) -> Result<Kube, kube::Error> {
        Kube::from_config(self.config.clone())
    }

    /// A client whose connections leave the runtime's poll set while
    /// `gate` gathers. `None` where the configuration names a proxy, which
    /// only kube's own stack connects through: the watch then reads each
    /// change as it comes.
    pub fn paced_client(&self, gate: PaceGate) -> Option<Client> {
        let config = &self.config;
        if config.proxy_url.is_some() {
            info!("the slice watch reads each change as it comes: a proxy is set");
            return None;
        }
        paced_client(config, gate)
            .inspect_err(|error| warn!("the slice watch reads each change as it comes: {error}"))
            .ok()
    }
}

/// Opens TCP connections as kube's connector does, each a [`PacedSocket`].
#[derive(Clone)]
struct PacedConnector {
    http: HttpConnector,
    gate: PaceGate,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for PacedConnector {
    type Response = TokioIo<PacedSocket>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let gate = self.gate.clone();
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(TokioIo::new(PacedSocket::new(stream, gate)))
        })
    }
}

/// kube's client stack (base URI, authentication, extra headers, TLS,
/// timeouts) over the paced connector.
fn paced_client(config: &Config, gate: PaceGate) -> Result<Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = config.rustls_https_connector_with_connector(PacedConnector { http, gate })?;
    let mut timeouts = hyper_timeout::TimeoutConnector::new(https);
    timeouts.set_connect_timeout(config.connect_timeout);
    timeouts.set_read_timeout(config.read_timeout);
    timeouts.set_write_timeout(config.write_timeout);
    timeouts.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper_client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timeouts);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper_client);
    Ok(Client::new(service, config.default_namespace.clone()))
}
