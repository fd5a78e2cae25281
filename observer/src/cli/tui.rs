//! `observer tui`: the interactive view, in-process on a node or remote
//! across agents.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use observer::{
    agent::{self, AgentOptions},
    export::{AgentState, ApiToken},
    tui::{self, RemoteOptions, TuiOptions},
};

use super::{EngineArgs, KubeArgs};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("remote").args(["agents", "service"]).multiple(true)))]
pub struct TuiArgs {
    /// Read these agents' HTTP APIs (e.g. http://10.0.0.7:9990) instead of
    /// running the probe here; a lost agent is shown and reconnected.
    #[arg(long, value_delimiter = ',', value_name = "URL[,URL...]")]
    pub agents: Vec<String>,
    /// Read every agent a headless Service's DNS name resolves to, e.g.
    /// `observer.observer.svc:9990` (deploy/ defines it), as --agents.
    #[arg(long, value_name = "HOST:PORT")]
    pub service: Option<String>,
    /// With --agents or --service: the agents' API token (`agent --api-token-file`),
    /// read from this file and sent as `Authorization: Bearer …`.
    #[arg(long, value_name = "FILE", requires = "remote")]
    pub api_token_file: Option<PathBuf>,
    /// Where logs go while the TUI owns the terminal.
    #[arg(long, default_value = "observer-tui.log", value_name = "FILE")]
    pub log_file: PathBuf,
    /// Where `e` writes the current recommendations.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl TuiArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        tui::log_to_file(&self.log_file)
            .with_context(|| format!("sending logs to {}", self.log_file.display()))?;
        let mut options = TuiOptions::default();
        if let Some(path) = &self.export {
            options.export_path = path.clone();
        }
        if !self.agents.is_empty() || self.service.is_some() {
            let agents = super::cluster::agent_urls(&self.agents, self.service.as_deref()).await?;
            let remote = RemoteOptions {
                api_token: match &self.api_token_file {
                    Some(path) => Some(ApiToken::from_file(path).context("--api-token-file")?),
                    None => None,
                },
                ..RemoteOptions::default()
            };
            return tui::run_remote(&agents, remote, options).await;
        }
        let state = AgentState::default();
        let updates = tui::follow_local(state.clone());
        let engine = self.engine.engine_config();
        let agent_options = AgentOptions {
            kube: self.kube.client_source(),
            watch: self
                .kube
                .watch_config(Some(&engine.ingress))
                .map_err(anyhow::Error::msg)?,
            cgroup_root: self.kube.cgroup_root.clone(),
            engine,
            ..AgentOptions::default()
        };
        let agent = tokio::spawn(agent::run_agent(agent_options, state.clone()));
        let shown = tui::run_tui(updates, options).await;
        // The user quit: the agent flushes and stops.
        state.request_stop();
        match agent.await {
            Ok(Err(error)) => return Err(error.context("the in-process agent failed")),
            Err(join) => anyhow::bail!("the in-process agent panicked: {join}"),
            Ok(Ok(())) => {}
        }
        shown
    }
}
