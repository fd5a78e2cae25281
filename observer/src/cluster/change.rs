//! The normalized changes the model emits, one per thing that happened, each
//! stamped with the local receipt time of the watch event that revealed it.
//! They are what the correlation engine consumes and what recordings hold,
//! so every type here is serde-serializable and stable in shape.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;

/// A timestamp as stated by the API server, in nanoseconds since the Unix
/// epoch on the server's clock. Kept for display and for comparing API
/// timestamps with each other; never subtract it from a [`MonoTime`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiTime(pub i64);

impl ApiTime {
    pub fn from_timestamp(ts: &k8s_openapi::jiff::Timestamp) -> ApiTime {
        ApiTime(ts.as_nanosecond().clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    /// Parses an RFC 3339 timestamp such as the value of
    /// `endpoints.kubernetes.io/last-change-trigger-time`.
    pub fn parse(text: &str) -> Option<ApiTime> {
        text.parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|ts| ApiTime::from_timestamp(&ts))
    }
}

/// Identifies a pod in changes: the uid is the key, namespace/name are for
/// people.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// Identifies one advertised address of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    pub namespace: String,
    pub service: String,
    pub ip: IpAddr,
}

/// The conditions of an endpoint address as the EndpointSlices advertise
/// it, with the API's defaults applied (ready unset means ready; serving
/// unset means equal to ready; terminating unset means false).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointConditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl EndpointConditions {
    /// Whether consumers that honour only ready endpoints (most ingresses)
    /// route new connections to the address.
    pub fn advertised_ready(self) -> bool {
        self.ready && !self.terminating
    }
}

/// Which watched resource a change concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchedResource {
    Pods,
    EndpointSlices,
}

/// One normalized change, at the local receipt time of the event that
/// revealed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterChange {
    /// Local receipt time (CLOCK_MONOTONIC) of the watch event.
    pub at: MonoTime,
    #[serde(flatten)]
    pub kind: ChangeKind,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ChangeKind {
    /// The pod was seen for the first time.
    PodSeen { pod: PodRef },
    /// The pod was seen with an IP it did not have before. From `at` on,
    /// connects to `ip` are attributed to this pod (and no longer to any
    /// earlier holder of the IP).
    PodIpAssigned { pod: PodRef, ip: IpAddr },
    /// The pod was first seen with a `deletionTimestamp`: termination began.
    /// `deletion_seen` equals `at`. `observed_late` is true when the
    /// deletion happened while the pod was not being watched (seen first in
    /// a list, a relist after a gap, or only in the final delete event), so
    /// the true start lies before `deletion_seen`.
    PodTerminating {
        pod: PodRef,
        deletion_seen: MonoTime,
        observed_late: bool,
        deletion_timestamp: Option<ApiTime>,
        deletion_grace_period_seconds: Option<i64>,
    },
    /// The pod's Ready condition changed.
    PodReadyChanged { pod: PodRef, ready: bool },
    /// The API reported the pod deleted (gone from etcd).
    PodRemoved { pod: PodRef },
    /// A relist no longer contained the pod: it was removed while the watch
    /// was down, at some time before `at`.
    PodRemovedWhileUnwatched { pod: PodRef },
    /// An address appeared in a Service's EndpointSlices.
    EndpointSeen {
        endpoint: EndpointKey,
        pod_uid: Option<String>,
        conditions: EndpointConditions,
        ports: Vec<u16>,
        trigger_time: Option<ApiTime>,
    },
    /// An address's advertised conditions changed.
    EndpointConditionsChanged {
        endpoint: EndpointKey,
        pod_uid: Option<String>,
        from: EndpointConditions,
        to: EndpointConditions,
        trigger_time: Option<ApiTime>,
    },
    /// The address stopped being advertised as ready (ready=false,
    /// terminating=true, or removed). `endpoint_not_ready` equals `at`.
    /// `observed_late` as for [`ChangeKind::PodTerminating`].
    EndpointNotReady {
        endpoint: EndpointKey,
        pod_uid: Option<String>,
        endpoint_not_ready: MonoTime,
        observed_late: bool,
    },
    /// No EndpointSlice of the Service lists the address any more.
    /// `endpoint_removed` equals `at`; `while_unwatched` is true when the
    /// removal was found by a relist after a gap.
    EndpointRemoved {
        endpoint: EndpointKey,
        pod_uid: Option<String>,
        endpoint_removed: MonoTime,
        while_unwatched: bool,
    },
    /// A list (initial or after a watch restart) of the resource finished
    /// and has been reconciled with the model.
    Resynced {
        resource: WatchedResource,
        relist: bool,
    },
}

impl ChangeKind {
    /// The pod the change concerns, when it is a pod change.
    pub fn pod(&self) -> Option<&PodRef> {
        match self {
            ChangeKind::PodSeen { pod }
            | ChangeKind::PodIpAssigned { pod, .. }
            | ChangeKind::PodTerminating { pod, .. }
            | ChangeKind::PodReadyChanged { pod, .. }
            | ChangeKind::PodRemoved { pod }
            | ChangeKind::PodRemovedWhileUnwatched { pod } => Some(pod),
            _ => None,
        }
    }

    /// The endpoint address the change concerns, when it is one.
    pub fn endpoint(&self) -> Option<&EndpointKey> {
        match self {
            ChangeKind::EndpointSeen { endpoint, .. }
            | ChangeKind::EndpointConditionsChanged { endpoint, .. }
            | ChangeKind::EndpointNotReady { endpoint, .. }
            | ChangeKind::EndpointRemoved { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_json() {
        let change = ClusterChange {
            at: MonoTime(42),
            kind: ChangeKind::PodTerminating {
                pod: PodRef {
                    uid: "u".into(),
                    namespace: "ns".into(),
                    name: "web-1".into(),
                },
                deletion_seen: MonoTime(42),
                observed_late: false,
                deletion_timestamp: ApiTime::parse("2026-01-02T03:04:05Z"),
                deletion_grace_period_seconds: Some(30),
            },
        };
        let text = serde_json::to_string(&change).expect("serializable");
        assert!(text.contains("\"change\":\"pod_terminating\""), "{text}");
        let back: ClusterChange = serde_json::from_str(&text).expect("deserializable");
        assert_eq!(back, change);
    }

    #[test]
    fn api_time_parses_rfc3339() {
        assert_eq!(
            ApiTime::parse("1970-01-01T00:00:01Z"),
            Some(ApiTime(1_000_000_000))
        );
        assert_eq!(
            ApiTime::parse("1970-01-01T00:00:01.5+00:00"),
            Some(ApiTime(1_500_000_000))
        );
        assert_eq!(ApiTime::parse("yesterday"), None);
    }
}
