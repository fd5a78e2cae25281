//! `observer replay`: a recording through the engine again.

use std::path::PathBuf;

use clap::Args;
use observer::agent;

use super::EngineArgs;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording made by `observer record` or `observer agent --record`.
    pub file: PathBuf,
    /// Write NDJSON here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ReplayArgs {
    pub fn run(self) -> anyhow::Result<()> {
        agent::replay(
            &self.file,
            self.output.as_ref(),
            self.engine.engine_config(),
            self.engine.names_the_ingress(),
        )
    }
}
