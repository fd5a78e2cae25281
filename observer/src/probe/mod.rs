//! The kernel probe: preflight checks, loading, decoding, and its maps.
//!
//! The kernel/user contract (event layout, map names, what is aggregated in
//! the kernel and what is sent) is described in docs/ARCHITECTURE.md.

pub mod btf;
pub mod decode;
pub mod loader;
pub mod preflight;
pub mod retry;
pub mod storm;

pub use decode::{ConnectRecord, FailureClass, Outcome, OutcomeJoiner};
pub use loader::{EventReader, Probe, ProbeCounters, ProbeError, ProbeOptions, SyncFailureHook};
