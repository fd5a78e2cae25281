//! The lab: a real rolling update on one machine, without a cluster.
//!
//! Pods are network namespaces joined to a bridge ([`netns`]), each running
//! a small HTTP server ([`pod`]); the ingress is a real nginx in its own
//! namespace ([`nginx`]) reconfigured by a lab ingress controller that
//! watches the simulator's EndpointSlices with kube-rs and applies each
//! change after a chosen propagation delay ([`ingress`]); a load client
//! sends requests through nginx for the whole run ([`load`]). The control
//! plane is [`observer_sim`]. Ground truth — when the ingress really stopped
//! sending to each terminating pod — comes from nginx's own access log
//! ([`truth`]), independently of the probe, so the measurement can be
//! checked ([`measure`], [`report`]). [`scenario`] runs it all.
//!
//! Every namespace, interface and process the lab makes is registered in a
//! [`netns::Registry`] and removed on success, error, panic and Ctrl-C.
//! See docs/LAB.md.

pub mod app;
pub mod caddy;
pub mod cgroup;
pub mod connectors;
mod daemon;
pub mod engine_measure;
pub mod haproxy;
pub mod ingress;
pub mod load;
pub mod measure;
pub mod neighbours;
pub mod netns;
pub mod nginx;
mod plane;
pub mod pod;
pub mod prober;
pub mod report;
pub mod scenario;
pub mod service;
pub mod truth;
pub mod wire;

pub use engine_measure::EngineMeasure;
pub use measure::{LabContext, LabMeasure, Measurements, PodMeasurement, ProbeOnlyMeasure};
pub use report::{LabReport, render_summary};
pub use scenario::{LabScenario, run_lab, run_scenario};

/// Errors from building or running the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx: {0}")]
    Nginx(String),
    #[error("simulator: {0}")]
    Sim(#[from] observer_sim::SimError),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("measurement: {0}")]
    Measure(String),
    #[error("invalid scenario: {0}")]
    Invalid(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("interrupted (Ctrl-C); the lab was cleaned up")]
    Interrupted,
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
