//! Where measurements go: NDJSON lines, Prometheus metrics, and the HTTP
//! JSON API with its live stream. See docs/AGENT.md for the formats.

pub mod http;
pub mod metrics;
pub mod state;

pub use http::HttpServer;
pub use metrics::Metrics;
pub use state::{AgentState, Update};
