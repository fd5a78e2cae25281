//! The agent's sinks: NDJSON of closed terminations and findings, the
//! recording of every input, and the shared state the HTTP API, the
//! metrics and the TUI read.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use super::engine_loop::{Sink, SinkError};
use super::input::{Input, write_ingress, write_input};
use crate::{
    engine::{IngressConfig, Output, Snapshot},
    export::{AgentState, Update},
};

/// Closed terminations and findings, one JSON object a line.
pub struct NdjsonSink {
    out: Box<dyn Write + Send>,
}

impl NdjsonSink {
    /// `-` is stdout.
    pub fn create(path: &Path) -> Result<NdjsonSink, SinkError> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            let file = File::create(path)
                .map_err(|e| SinkError::new(format!("creating {}", path.display()), e))?;
            Box::new(BufWriter::new(file))
        };
        Ok(NdjsonSink { out })
    }

    fn line(&mut self, line: &str) -> Result<(), SinkError> {
        writeln!(self.out, "{line}").map_err(|e| SinkError::new("writing NDJSON output", e))
    }
}

impl Sink for NdjsonSink {
    fn output(&mut self, output: &Output) -> Result<(), SinkError> {
        match output {
            Output::TerminationClosed(termination) => {
                self.line(&Update::Termination(termination).to_line())
            }
            Output::Finding(finding) => self.line(&Update::Finding(finding).to_line()),
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .map_err(|e| SinkError::new("flushing NDJSON output", e))
    }
}

/// Every input, for `observer replay`, after the ingress configuration.
pub struct RecordingSink {
    out: BufWriter<File>,
}

impl RecordingSink {
    pub fn create(path: &Path, ingress: &IngressConfig) -> Result<RecordingSink, SinkError> {
        let file = File::create(path)
            .map_err(|e| SinkError::new(format!("creating recording {}", path.display()), e))?;
        let mut out = BufWriter::new(file);
        write_ingress(&mut out, ingress).map_err(|e| SinkError::new("writing the recording", e))?;
        Ok(RecordingSink { out })
    }
}

impl Sink for RecordingSink {
    fn input(&mut self, input: &Input) -> Result<(), SinkError> {
        write_input(&mut self.out, input).map_err(|e| SinkError::new("writing the recording", e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .map_err(|e| SinkError::new("flushing the recording", e))
    }
}

/// The shared state: snapshots, closed terminations and findings, which
/// the HTTP API serves and streams, the metrics count, and an in-process
/// TUI follows.
pub struct StateSink {
    state: AgentState,
}

impl StateSink {
    pub fn new(state: AgentState) -> StateSink {
        StateSink { state }
    }
}

impl Sink for StateSink {
    fn output(&mut self, output: &Output) -> Result<(), SinkError> {
        match output {
            Output::TerminationClosed(termination) => self.state.publish_termination(termination),
            Output::Finding(finding) => self.state.publish_finding(finding),
            _ => {}
        }
        Ok(())
    }

    fn wants_snapshots(&self) -> bool {
        true
    }

    fn snapshot(&mut self, snapshot: &Snapshot) -> Result<(), SinkError> {
        self.state.set_snapshot(snapshot.clone());
        Ok(())
    }

    fn end(&mut self) -> Result<(), SinkError> {
        self.state.mark_ended();
        Ok(())
    }
}
