//! `observer agent` and `observer record`: the live engine loop, measuring
//! or only recording its inputs.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use observer::{
    agent::{self, AgentOptions},
    export::{AgentState, ApiToken, HttpConfig, HttpLimits, TokenScope},
    probe::ProbeOptions,
};

use super::{EngineArgs, KubeArgs, ProbeArgs, parse_duration};

/// The HTTP port when `--listen` names an address only.
pub const DEFAULT_PORT: u16 = 9990;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the HTTP port listens (/metrics, /healthz, /readyz, /api/v1/…):
    /// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (port 9990), so a pod IP of
    /// either family can be passed as it is. Repeat to listen on several.
    #[arg(
        long,
        default_value = "0.0.0.0:9990",
        value_parser = parse_listen,
        value_name = "ADDR"
    )]
    pub listen: Vec<SocketAddr>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Write closed terminations and findings as NDJSON here (`-` = stdout).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also record every input for `observer replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Stop by itself after this long.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl AgentArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let options = self.options()?;
        agent::run_agent(options, AgentState::default()).await
    }

    fn options(&self) -> anyhow::Result<AgentOptions> {
        let engine = self.engine.engine_config();
        Ok(AgentOptions {
            listen: self.listen.clone(),
            http: self.api.http_config()?,
            output: self.output.clone(),
            record: self.record.clone(),
            kube: self.kube.client_source(),
            watch: self
                .kube
                .watch_config(Some(&engine.ingress))
                .map_err(anyhow::Error::msg)?,
            cgroup_root: self.kube.cgroup_root.clone(),
            engine,
            probe: ProbeOptions {
                // A host ingress is known by its process name only: every
                // failure must name its process.
                full_attribution: self.probe.full_attribution
                    || !self.engine.ingress_comms.is_empty(),
                ..self.probe.options()
            },
            duration: self.duration,
            ..AgentOptions::default()
        })
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (IPv4 or IPv6) on [`DEFAULT_PORT`].
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| {
            format!(
                "`{text}` is not IP:PORT, [IPv6]:PORT or an IP address (an IPv6 address with a \
                 port needs brackets)"
            )
        })
}

/// Paths that `--api-token-protects` can add to the token's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protectable {
    /// /metrics: Prometheus must then send the token.
    Metrics,
    /// /healthz and /readyz: the kubelet's probes must then send it.
    Probes,
}

/// The HTTP server's token and limits (docs/AGENT.md, "HTTP").
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Require `Authorization: Bearer <token>` on the JSON API and the
    /// stream, the token read from this file (a mounted Secret) at start.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// With --api-token-file, require the token on these too (by default
    /// /metrics and the health probes stay open).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "PATHS",
        requires = "api_token_file"
    )]
    pub api_token_protects: Vec<Protectable>,
    /// HTTP connections open at once. Past it the oldest idle connection is
    /// closed, or the new one if every one is busy.
    #[arg(long, default_value_t = HttpLimits::default().max_connections, value_name = "N")]
    pub api_max_connections: usize,
    /// A client must send each request's line and headers within this.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub api_header_timeout: Duration,
    /// A client that reads nothing of a waiting response for this long is
    /// disconnected (a stream client that stopped reading).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub api_write_timeout: Duration,
    /// Largest request line and headers, in bytes (431 past it).
    #[arg(long, default_value_t = HttpLimits::default().max_header_bytes, value_name = "BYTES")]
    pub api_max_header_bytes: usize,
}

impl ApiArgs {
    pub fn http_config(&self) -> anyhow::Result<HttpConfig> {
        let token = match &self.api_token_file {
            Some(path) => Some(ApiToken::from_file(path).context("--api-token-file")?),
            None => None,
        };
        anyhow::ensure!(
            self.api_max_connections > 0,
            "--api-max-connections must be at least 1"
        );
        Ok(HttpConfig {
            limits: HttpLimits {
                max_connections: self.api_max_connections,
                max_header_bytes: self.api_max_header_bytes,
                header_read_timeout: self.api_header_timeout,
                write_stall_timeout: self.api_write_timeout,
                ..HttpLimits::default()
            },
            token,
            token_scope: TokenScope {
                metrics: self.api_token_protects.contains(&Protectable::Metrics),
                probes: self.api_token_protects.contains(&Protectable::Probes),
            },
        })
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The recording to write (NDJSON, one input per line).
    pub file: PathBuf,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

impl RecordArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        agent::run_agent(self.options()?, AgentState::default()).await
    }

    fn options(&self) -> anyhow::Result<AgentOptions> {
        Ok(AgentOptions {
            record: Some(self.file.clone()),
            kube: self.kube.client_source(),
            watch: self.kube.watch_config(None).map_err(anyhow::Error::msg)?,
            cgroup_root: self.kube.cgroup_root.clone(),
            duration: self.duration,
            ..AgentOptions::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_a_bare_ip_of_either_family_or_an_address_with_port() {
        let parsed = |text| parse_listen(text).unwrap().to_string();
        assert_eq!(parsed("10.1.2.3"), "10.1.2.3:9990");
        assert_eq!(parsed("10.1.2.3:8080"), "10.1.2.3:8080");
        assert_eq!(parsed("fd00::1"), "[fd00::1]:9990");
        assert_eq!(parsed("[fd00::1]:8080"), "[fd00::1]:8080");
        let error = parse_listen("fd00::1:99999").unwrap_err();
        assert!(error.contains("brackets"), "{error}");
        assert!(parse_listen("$(POD_IP)").is_err());
    }
}
