//! What one connect record means to the engine: when it happened, whether
//! it is a new connection attempt, and how it failed. Shared by the live
//! path and the replay buffer so both count the same way.

use std::net::{IpAddr, SocketAddr};

use super::connector::ConnectorRole;
use crate::clock::MonoTime;
use crate::probe::decode::{ConnectRecord, FailureClass, Outcome};
use crate::probe::retry::RetriedFailure;

/// The part of a connect record the engine keeps (fixed size, no heap), so
/// buffering recent connects costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFact {
    /// When the record arrived in the kernel's view (the outcome time).
    pub ts: MonoTime,
    /// The time attribution uses: the SYN for connect attempts, the RST
    /// itself for resets (a reset is not a new connection).
    pub at: MonoTime,
    pub ip: IpAddr,
    pub port: u16,
    pub pid: u32,
    /// A new connection attempt (counted once per SYN).
    pub new_attempt: bool,
    /// Counts towards last_connect (a SYN, or a connect() that failed
    /// before any SYN left: the ingress still tried).
    pub is_connect: bool,
    /// Counts towards last_send: a SYN, or the last request a pooled
    /// connection carried (`at` is then that request's time).
    pub is_send: bool,
    /// Counts towards last_choice: a send that is not a retry (a first
    /// try, or a request on a pooled connection that retried nothing). A watched SYN's outcome
    /// is not counted again: its `Connect` record was.
    pub is_choice: bool,
    pub failure: Option<FailureClass>,
    /// How many connects this fact stands for: more than one for a
    /// failure storm the kernel counted (`probe::storm`).
    pub count: u64,
    /// The connect was accepted (SYN_SENT -> ESTABLISHED).
    pub established: bool,
    /// Who connected: the ingress or a bystander, and the connector's name
    /// in the engine's table.
    pub role: ConnectorRole,
    pub connector: u16,
    /// The failure elsewhere this send retried (hid from the user).
    pub retried: Option<RetriedFailure>,
}

impl ConnectFact {
    pub fn from_record(record: &ConnectRecord, role: ConnectorRole, connector: u16) -> ConnectFact {
        let (at, is_connect, new_attempt) = match &record.outcome {
            Outcome::Connect => (record.ts, true, true),
            Outcome::Sent { last_send } => (*last_send, false, false),
            // The receiving side's view goes to `Engine::on_arrival`; it is
            // never a connect of this node.
            Outcome::Accepted | Outcome::Received { .. } | Outcome::Dropped { .. } => {
                (record.ts, false, false)
            }
            // A watched SYN was already reported as `Connect`; an unwatched
            // one shows up only through its outcome.
            Outcome::Established { .. } => (record.syn.unwrap_or(record.ts), true, !record.watched),
            // A reset or a cut ends a connection opened before: a failure,
            // not a new connect.
            Outcome::Failed {
                class: FailureClass::Reset | FailureClass::Cut,
                ..
            } => (record.ts, false, false),
            Outcome::Failed { .. } => match record.syn {
                Some(syn) => (syn, true, !record.watched),
                // An error report whose close was never seen (lost to a full
                // ring): the failure counts, but when its SYN left is
                // unknown, so it cannot move last_connect (its report time
                // would date the connect seconds late).
                None => (record.ts, false, !record.watched),
            },
        };
        let is_sent = matches!(record.outcome, Outcome::Sent { .. });
        let first_sighting = matches!(record.outcome, Outcome::Connect) || !record.watched;
        ConnectFact {
            established: matches!(record.outcome, Outcome::Established { .. }),
            is_send: is_connect || is_sent,
            is_choice: !record.retry && (is_sent || (is_connect && first_sighting)),
            ts: record.ts,
            at,
            ip: record.dst.ip(),
            port: record.dst.port(),
            pid: record.pid,
            new_attempt,
            is_connect,
            failure: record.failure_class(),
            count: record.count.max(1),
            role,
            connector,
            retried: record.retried,
        }
    }

    /// How a retry names this failure, if it is one the decoder could
    /// pair with a retry: one failure (not a storm's count), dated by its
    /// record.
    pub fn failure_key(&self) -> Option<RetriedFailure> {
        (self.failure.is_some() && self.count == 1).then_some(RetriedFailure {
            dst: SocketAddr::new(self.ip, self.port),
            at: self.ts,
        })
    }
}
