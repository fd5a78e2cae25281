//! When a node agent reads its EndpointSlice stream: at once while one of
//! its node's pods is in a window, in gathered batches otherwise.
//!
//! Every agent watches every EndpointSlice of the cluster. On a node
//! without an ingress, nearly every change is another node's endpoint, kept
//! only to name remote senders by their Service; when it is read does not
//! matter. Read as each arrives, though, every change costs the agent a
//! wake-up of its runtime, its tasks and their system calls, which at 500
//! terminations a minute was most of its CPU. So while none of the node's
//! own pods is terminating or not ready, the watch's socket leaves the
//! runtime's poll set and is read every [`GATHER_PERIOD`]
//! ([`super::paced_socket`]): the changes that arrived in between are read
//! together.
//!
//! The changes this node's agent must date are those of its own pods'
//! endpoints. A pod's own endpoint changes after the pod does: the
//! EndpointSlice controller writes the `terminating` or not-ready condition
//! in answer to the pod's deletion or readiness, which the node's Pod watch
//! receives first. That watch sets the pace back to prompt the moment it
//! sees one ([`LocalWindows`]). After the last such pod is gone, the slices
//! still owe the endpoint's removal (the anchor the cluster view joins two
//! nodes on) or its return to ready: the pace stays prompt until the
//! slices show every endpoint of this node ready and none terminating
//! ([`LocalEndpoints`]), and never longer than [`PROMPT_LINGER`]. A list is
//! always read promptly: it is a run of page requests, and each would
//! otherwise wait out a rest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a node agent lets other nodes' endpoint changes gather. Nothing
/// is dated on this node while none of its pods is in a window, and the
/// moment one is, what gathered is read at once: the rest costs no
/// timing. Each rest's end costs a wake-up of the runtime and its tasks,
/// which at 250 ms was a third of a node agent's CPU.
pub const GATHER_PERIOD: Duration = Duration::from_secs(1);

/// The rest after one that gathered more than [`GATHER_BYTES`]. What
/// gathers waits in the kernel's receive buffer (128 KiB to begin with);
/// a full one would push back on the API server, which closes a watch it
/// cannot write to for long.
pub const BUSY_GATHER_PERIOD: Duration = Duration::from_millis(250);

/// How much one rest may gather before the next is the shorter one.
pub const GATHER_BYTES: usize = 64 * 1024;

/// The next rest, after one in which `gathered` bytes arrived.
pub fn rest_after(gathered: usize) -> Duration {
    if gathered > GATHER_BYTES {
        BUSY_GATHER_PERIOD
    } else {
        GATHER_PERIOD
    }
}

/// How long the stream stays prompt, at most, after the last of this
/// node's pods in a window is gone: the endpoint's removal comes after the
/// pod's. It ends sooner once the slices show the node's endpoints settled;
/// the bound is for endpoints that never settle (a pod the Pod watch's
/// label selector leaves out, a slice another controller keeps).
pub const PROMPT_LINGER: Duration = Duration::from_secs(10);

/// How the slice stream is read right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Each change as it arrives, until the Pod watch has listed.
    Unlisted,
    /// Each change as it arrives.
    Prompt,
    /// Each change as it arrives until then, in batches after.
    PromptUntil(Instant),
}

impl Pace {
    pub fn gathers(self, now: Instant) -> bool {
        match self {
            Pace::Unlisted | Pace::Prompt => false,
            Pace::PromptUntil(until) => now >= until,
        }
    }
}

/// The pace, set by the Pod stream and read by the slice watch's sockets;
/// and whether the slice watch is listing, set by the slice stream.
#[derive(Debug)]
pub struct SlicePace {
    pace: watch::Sender<Pace>,
    listing: Arc<AtomicBool>,
    /// Whether the slices list an endpoint of this node that is not ready
    /// or terminating; true until the slice watch has listed.
    slices_unsettled: AtomicBool,
}

impl Default for SlicePace {
    fn default() -> Self {
        SlicePace {
            pace: watch::Sender::new(Pace::Unlisted),
            listing: Arc::new(AtomicBool::new(true)),
            slices_unsettled: AtomicBool::new(true),
        }
    }
}

impl SlicePace {
    pub fn subscribe(&self) -> watch::Receiver<Pace> {
        self.pace.subscribe()
    }

    /// Set by the slice stream from its watcher's list events.
    pub fn listing(&self) -> Arc<AtomicBool> {
        self.listing.clone()
    }

    /// Prompt from here on: the Pod watch widened, and every endpoint of
    /// the cluster may be this agent's to date.
    pub fn set_prompt(&self) {
        self.pace.send_if_modified(|pace| {
            let changed = *pace != Pace::Prompt;
            *pace = Pace::Prompt;
            changed
        });
    }

    /// Whether any of this node's pods is in a window, at `now`.
    pub fn set_any_in_window(&self, any: bool, now: Instant) {
        self.pace.send_if_modified(|pace| {
            // Read under the pace's lock, which `set_slices_unsettled`
            // takes after its store: one of the two sees the other's
            // change.
            let linger = if self.slices_unsettled.load(Ordering::SeqCst) {
                PROMPT_LINGER
            } else {
                Duration::ZERO
            };
            let next = match (any, *pace) {
                (true, _) => Pace::Prompt,
                // No pod of this node has left a window: nothing to linger for.
                (false, Pace::Unlisted) => Pace::PromptUntil(now),
                (false, Pace::Prompt) => Pace::PromptUntil(now + linger),
                (false, until @ Pace::PromptUntil(_)) => until,
            };
            let changed = next != *pace;
            *pace = next;
            changed
        });
    }

    /// Whether the slices list an endpoint of this node that is not ready
    /// or terminating, at `now`. Settled slices end a linger at once: what
    /// this node had to date has arrived.
    pub fn set_slices_unsettled(&self, unsettled: bool, now: Instant) {
        self.slices_unsettled.store(unsettled, Ordering::SeqCst);
        if unsettled {
            return;
        }
        self.pace.send_if_modified(|pace| match *pace {
            Pace::PromptUntil(until) if until > now => {
                *pace = Pace::PromptUntil(now);
                true
            }
            _ => false,
        });
    }
}

/// Whether a pod's endpoint changes must be dated as they come: it is
/// terminating, or not ready (starting, or failing its readiness probe).
pub fn in_window(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return true;
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    !ready
}

/// The pods of the watch that are in a window, by UID, kept from the Pod
/// watch's events (a relist replaces them).
#[derive(Debug, Default)]
pub struct LocalWindows {
    in_window: HashSet<String>,
    listing: Option<HashSet<String>>,
}

impl LocalWindows {
    /// Applies one Pod watch event. Returns whether any pod is in a window
    /// now, or `None` in the middle of a list.
    pub fn apply(&mut self, event: &Event<Pod>) -> Option<bool> {
        match event {
            Event::Init => {
                self.listing = Some(HashSet::new());
                return None;
            }
            Event::InitApply(pod) => {
                if let (Some(listing), Some(uid)) = (&mut self.listing, &pod.metadata.uid)
                    && in_window(pod)
                {
                    listing.insert(uid.clone());
                }
                return None;
            }
            Event::InitDone => {
                self.in_window = self.listing.take().unwrap_or_default();
            }
            Event::Apply(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    if in_window(pod) {
                        self.in_window.insert(uid.clone());
                    } else {
                        self.in_window.remove(uid);
                    }
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    self.in_window.remove(uid);
                }
            }
        }
        Some(!self.in_window.is_empty())
    }
}

/// The endpoints of one node that the slices list as not ready or
/// terminating, counted per slice and kept from the slice watch's events
/// (a relist replaces them). Only slices with such an endpoint are kept.
#[derive(Debug)]
pub struct LocalEndpoints {
    node: String,
    unsettled: HashMap<String, usize>,
    listing: Option<HashMap<String, usize>>,
}

impl LocalEndpoints {
    pub fn new(node: &str) -> LocalEndpoints {
        LocalEndpoints {
            node: node.to_owned(),
            unsettled: HashMap::new(),
            listing: None,
        }
    }

    /// Applies one slice watch event. Returns whether any of the node's
    /// endpoints is unsettled now, or `None` in the middle of a list.
    pub fn apply(&mut self, event: &Event<EndpointSlice>) -> Option<bool> {
        match event {
            Event::Init => {
                self.listing = Some(HashMap::new());
                return None;
            }
            Event::InitApply(slice) => {
                let count = self.count(slice);
                if let Some(listing) = &mut self.listing
                    && count > 0
                {
                    listing.insert(slice_key(slice), count);
                }
                return None;
            }
            Event::InitDone => self.unsettled = self.listing.take().unwrap_or_default(),
            Event::Apply(slice) => {
                let count = self.count(slice);
                if count > 0 {
                    self.unsettled.insert(slice_key(slice), count);
                } else if !self.unsettled.is_empty() {
                    // Nearly every change is another node's, and nearly
                    // always nothing is kept: no key to build for those.
                    self.unsettled.remove(&slice_key(slice));
                }
            }
            Event::Delete(slice) => {
                if !self.unsettled.is_empty() {
                    self.unsettled.remove(&slice_key(slice));
                }
            }
        }
        Some(!self.unsettled.is_empty())
    }

    /// This node's endpoints in `slice` that are not ready or terminating.
    /// An absent `ready` means ready (the EndpointSlice API's reading).
    fn count(&self, slice: &EndpointSlice) -> usize {
        slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.node_name.as_deref() == Some(self.node.as_str()))
            .filter(|e| {
                e.conditions
                    .as_ref()
                    .is_some_and(|c| c.ready == Some(false) || c.terminating == Some(true))
            })
            .count()
    }
}

fn slice_key(slice: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        slice.metadata.namespace.as_deref().unwrap_or_default(),
        slice.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(uid: &str, ready: bool, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                deletion_timestamp: deleting.then(|| Time(Default::default())),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_terminating_or_unready_pod_is_in_a_window() {
        assert!(!in_window(&pod("a", true, false)));
        assert!(in_window(&pod("a", true, true)));
        assert!(in_window(&pod("a", false, false)));
        assert!(in_window(&Pod::default()), "no status yet: starting");
    }

    #[test]
    fn windows_follow_the_pod_watch_and_its_relists() {
        let mut windows = LocalWindows::default();
        assert_eq!(windows.apply(&Event::Init), None);
        assert_eq!(
            windows.apply(&Event::InitApply(pod("a", true, false))),
            None
        );
        assert_eq!(
            windows.apply(&Event::InitApply(pod("b", false, false))),
            None
        );
        assert_eq!(windows.apply(&Event::InitDone), Some(true), "b is starting");
        assert_eq!(
            windows.apply(&Event::Apply(pod("b", true, false))),
            Some(false)
        );
        assert_eq!(
            windows.apply(&Event::Apply(pod("a", true, true))),
            Some(true)
        );
        assert_eq!(
            windows.apply(&Event::Delete(pod("a", true, true))),
            Some(false)
        );
        // A relist that finds a terminating pod the live watch missed.
        windows.apply(&Event::Init);
        windows.apply(&Event::InitApply(pod("c", true, true)));
        assert_eq!(windows.apply(&Event::InitDone), Some(true));
    }

    #[test]
    fn the_pace_gathers_only_after_the_linger() {
        let pace = SlicePace::default();
        let rx = pace.subscribe();
        let t0 = Instant::now();
        assert!(
            !rx.borrow().gathers(t0),
            "prompt until the Pod watch has listed"
        );
        pace.set_any_in_window(true, t0);
        pace.set_any_in_window(false, t0);
        assert!(!rx.borrow().gathers(t0 + PROMPT_LINGER / 2));
        assert!(rx.borrow().gathers(t0 + PROMPT_LINGER));
        pace.set_any_in_window(false, t0 + PROMPT_LINGER * 3);
        assert!(
            rx.borrow().gathers(t0 + PROMPT_LINGER),
            "a quiet node's events do not push the linger on"
        );
        pace.set_any_in_window(true, t0 + PROMPT_LINGER * 4);
        assert!(!rx.borrow().gathers(t0 + PROMPT_LINGER * 5));
    }

    #[test]
    fn a_rest_that_gathered_much_is_followed_by_a_short_one() {
        assert_eq!(rest_after(0), GATHER_PERIOD);
        assert_eq!(rest_after(GATHER_BYTES), GATHER_PERIOD);
        assert_eq!(rest_after(GATHER_BYTES + 1), BUSY_GATHER_PERIOD);
        assert!(BUSY_GATHER_PERIOD < GATHER_PERIOD);
    }

    #[test]
    fn a_node_with_no_pod_in_a_window_when_listed_gathers_at_once() {
        let pace = SlicePace::default();
        let t0 = Instant::now();
        pace.set_any_in_window(false, t0);
        assert!(pace.subscribe().borrow().gathers(t0));
    }

    fn slice(name: &str, endpoints: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(node, ready, terminating)| Endpoint {
                        addresses: vec!["10.0.0.1".into()],
                        node_name: Some(node.to_string()),
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            terminating: *terminating,
                            ..EndpointConditions::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn only_this_nodes_unready_or_terminating_endpoints_are_unsettled() {
        let mut local = LocalEndpoints::new("node-a");
        assert_eq!(local.apply(&Event::Init), None);
        let other_nodes_churn = slice("web-1", &[("node-b", Some(false), Some(true))]);
        assert_eq!(local.apply(&Event::InitApply(other_nodes_churn)), None);
        let absent_ready_is_ready = slice("web-2", &[("node-a", None, None)]);
        assert_eq!(local.apply(&Event::InitApply(absent_ready_is_ready)), None);
        assert_eq!(local.apply(&Event::InitDone), Some(false));

        let terminating = slice(
            "web-2",
            &[
                ("node-a", Some(false), Some(true)),
                ("node-b", Some(true), None),
            ],
        );
        assert_eq!(local.apply(&Event::Apply(terminating)), Some(true));
        let starting = slice("web-3", &[("node-a", Some(false), None)]);
        assert_eq!(local.apply(&Event::Apply(starting.clone())), Some(true));
        let removed = slice("web-2", &[("node-b", Some(true), None)]);
        assert_eq!(
            local.apply(&Event::Apply(removed)),
            Some(true),
            "web-3's endpoint is still starting"
        );
        assert_eq!(local.apply(&Event::Delete(starting)), Some(false));

        // A relist replaces what the live watch left.
        local.apply(&Event::Apply(slice(
            "web-4",
            &[("node-a", Some(false), None)],
        )));
        local.apply(&Event::Init);
        local.apply(&Event::InitApply(slice(
            "web-4",
            &[("node-a", Some(true), None)],
        )));
        assert_eq!(local.apply(&Event::InitDone), Some(false));
    }

    #[test]
    fn settled_slices_end_the_linger_at_once() {
        let pace = SlicePace::default();
        let rx = pace.subscribe();
        let t0 = Instant::now();
        pace.set_slices_unsettled(false, t0);
        pace.set_any_in_window(true, t0);
        pace.set_slices_unsettled(true, t0);
        // The pod is gone; its endpoint's removal is still to come.
        pace.set_any_in_window(false, t0);
        assert!(!rx.borrow().gathers(t0 + PROMPT_LINGER / 2));
        pace.set_slices_unsettled(false, t0 + Duration::from_millis(300));
        assert!(rx.borrow().gathers(t0 + Duration::from_millis(300)));

        // The removal came before the Pod watch's deletion: no linger.
        let t1 = t0 + PROMPT_LINGER * 2;
        pace.set_any_in_window(true, t1);
        pace.set_any_in_window(false, t1);
        assert!(rx.borrow().gathers(t1));

        // Slices settling while a pod is in a window do not end it.
        let t2 = t1 + PROMPT_LINGER;
        pace.set_any_in_window(true, t2);
        pace.set_slices_unsettled(false, t2);
        assert!(!rx.borrow().gathers(t2 + PROMPT_LINGER * 3));
    }
}
