//! `observer agent` and `observer record`: the live engine loop, measuring
//! or only recording its inputs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use observer::{
    agent::{self, AgentOptions},
    export::AgentState,
    probe::ProbeOptions,
};

use super::{EngineArgs, KubeArgs, ProbeArgs, parse_duration};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address of the HTTP port: /metrics, /healthz, /readyz, /api/v1/…
    #[arg(long, default_value = "0.0.0.0:9990", value_name = "ADDR")]
    pub listen: SocketAddr,
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
        agent::run_agent(self.options(), AgentState::default()).await
    }

    fn options(&self) -> AgentOptions {
        AgentOptions {
            listen: Some(self.listen),
            output: self.output.clone(),
            record: self.record.clone(),
            kube: self.kube.client_source(),
            watch: self.kube.watch_config(),
            cgroup_root: self.kube.cgroup_root.clone(),
            engine: self.engine.engine_config(),
            probe: ProbeOptions {
                // A host ingress is known by its process name only: every
                // failure must name its process.
                full_attribution: self.probe.full_attribution
                    || !self.engine.ingress_comms.is_empty(),
                ..self.probe.options()
            },
            duration: self.duration,
            ..AgentOptions::default()
        }
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
        agent::run_agent(self.options(), AgentState::default()).await
    }

    fn options(&self) -> AgentOptions {
        AgentOptions {
            record: Some(self.file.clone()),
            kube: self.kube.client_source(),
            watch: self.kube.watch_config(),
            cgroup_root: self.kube.cgroup_root.clone(),
            duration: self.duration,
            ..AgentOptions::default()
        }
    }
}
