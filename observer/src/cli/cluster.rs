//! `observer cluster`: the cluster-wide view as JSON or NDJSON, one row per
//! termination merged from every agent that saw part of it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use observer::{
    clock::unix_ms_now,
    export::ApiToken,
    tui::{
        AgentUrl, RemoteOptions,
        adapt::source_data,
        cluster_rows::cluster_rows,
        fetch_snapshot,
        merge::{SourceState, SourceStatus},
    },
};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The agents' HTTP APIs, e.g. http://10.0.0.7:9990 (one per node).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URL[,URL...]",
        required_unless_present = "service"
    )]
    pub agents: Vec<String>,
    /// A headless Service's DNS name and port that resolves to every
    /// agent (deploy/ defines `observer.observer.svc:9990`); each
    /// address it resolves to is read.
    #[arg(long, value_name = "HOST:PORT")]
    pub service: Option<String>,
    /// The agents' API token (`agent --api-token-file`), sent as
    /// `Authorization: Bearer …`.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// `ndjson`: one row per line; `json`: one document with every row and
    /// the agents that could not be read.
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Ndjson,
    Json,
}

impl ClusterArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let agents = agent_urls(&self.agents, self.service.as_deref()).await?;
        let options = RemoteOptions {
            api_token: match &self.api_token_file {
                Some(path) => Some(ApiToken::from_file(path).context("--api-token-file")?),
                None => None,
            },
            ..RemoteOptions::default()
        };
        let mut sources = BTreeMap::new();
        let mut unreachable = BTreeMap::new();
        for agent in &agents {
            let url = AgentUrl::parse(agent).with_context(|| format!("--agents {agent}"))?;
            match fetch_snapshot(&url, &options).await {
                Ok(snapshot) => {
                    let state = SourceState {
                        status: SourceStatus::Up,
                        data: Some(source_data(&snapshot)),
                        received_at_ms: unix_ms_now(),
                    };
                    sources.insert(agent.clone(), state);
                }
                Err(error) => {
                    // One lost agent loses its part of the rows, not the view.
                    tracing::warn!(%agent, %error, "agent not read");
                    unreachable.insert(agent.clone(), error.to_string());
                }
            }
        }
        anyhow::ensure!(
            !sources.is_empty(),
            "no agent could be read: {}",
            unreachable
                .iter()
                .map(|(agent, error)| format!("{agent}: {error}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let rows = cluster_rows(&sources);
        let mut out = std::io::stdout().lock();
        match self.format {
            Format::Ndjson => {
                for row in &rows {
                    serde_json::to_writer(&mut out, row).context("writing a row")?;
                    writeln!(out).context("writing a row")?;
                }
            }
            Format::Json => {
                let document = serde_json::json!({
                    "agents": sources.keys().collect::<Vec<_>>(),
                    "unreachable": unreachable,
                    "terminations": rows,
                });
                serde_json::to_writer_pretty(&mut out, &document).context("writing the view")?;
                writeln!(out).context("writing the view")?;
            }
        }
        Ok(())
    }
}

/// `--agents` and, with `--service`, every address the headless Service
/// resolves to (one per agent pod).
pub async fn agent_urls(agents: &[String], service: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut urls = agents.to_vec();
    if let Some(service) = service {
        let addresses = tokio::net::lookup_host(service)
            .await
            .with_context(|| format!("resolving --service {service}"))?;
        urls.extend(addresses.map(|a| format!("http://{a}")));
    }
    anyhow::ensure!(
        !urls.is_empty(),
        "no agent to read: --service resolved to no address"
    );
    Ok(urls)
}
