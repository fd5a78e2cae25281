//! observer: measures the endpoint-propagation gap of Kubernetes rollouts
//! from the kernel's view of TCP connects.
//!
//! Data flows one way: kernel programs -> [`probe`] (decode) -> engine <-
//! [`cluster`] (kube watchers); engine -> measurements -> exporters, TUI.
//! See docs/ARCHITECTURE.md.

pub mod agent;
pub mod clock;
pub mod cluster;
pub mod connector;
pub mod engine;
pub mod export;
#[cfg(feature = "lab")]
pub mod lab;
pub mod privileges;
pub mod probe;
pub mod trace;
pub mod tui;
