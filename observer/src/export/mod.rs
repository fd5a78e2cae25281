//! Where measurements go: NDJSON lines, Prometheus metrics, and the HTTP
//! JSON API with its live stream. See docs/AGENT.md for the formats.

pub mod api_token;
pub mod http;
mod http_io;
mod http_routes;
pub mod metrics;
pub mod state;
pub mod watch_metrics;

pub use api_token::ApiToken;
pub use http::{HttpConfig, HttpLimits, HttpServer};
pub use http_routes::TokenScope;
pub use metrics::Metrics;
pub use state::{AgentState, Update};
