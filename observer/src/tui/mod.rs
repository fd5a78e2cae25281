//! The interactive terminal UI: Overview, Live terminations, Failures and
//! Detail screens over the engine's measurements, from the in-process
//! engine or from remote agents. See docs/TUI.md.
//!
//! - [`view`]: the TUI's own view model; everything else renders from it.
//! - [`adapt`]: engine `Snapshot`/`Finding` -> view model.
//! - [`action`]: screens, keys, actions in, effects out.
//! - [`app`]: the state and its pure `update(Action) -> Option<Effect>`.
//! - [`rows`]: filtered, sorted rows; Detail contents; the export file.
//! - [`render`]: pure drawing of `&App` into a ratatui `Frame`.
//! - [`merge`]: several agents -> one picture.
//! - [`remote`]: the HTTP client for agents (`observer tui --agents`).
//! - [`feed`]: the in-process engine as a data source.
//! - [`terminal`]: terminal guard, panic hook, logging to a file.
//! - [`runtime`]: `run_tui`, the event loop that owns the terminal.

pub mod action;
pub mod adapt;
pub mod app;
pub mod cluster_rows;
pub mod feed;
pub mod format;
pub mod merge;
pub mod remote;
pub mod render;
pub mod rows;
pub mod runtime;
pub mod terminal;
pub mod view;

#[cfg(test)]
mod app_tests;
#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod remote_tests;
#[cfg(test)]
mod render_tests;

pub use app::{Action, App, DataUpdate, Effect, Key, Screen, SortKey, SourceEvent};
pub use feed::{follow_local, follow_state};
pub use remote::{AgentUrl, RemoteError, RemoteOptions, fetch_snapshot, spawn_agents};
pub use runtime::{TuiOptions, run_remote, run_tui};
pub use terminal::{DEFAULT_LOG_FILE, TerminalGuard, log_to_file};
