//! The destination-side view of a termination: what landed on the pod,
//! seen by the kernel of the pod's own node, from any sender. It needs no
//! ingress node, so it serves clusters whose load balancer is outside
//! (ALB/NLB with IP targets, GKE NEGs) and traffic through a ClusterIP,
//! and it checks the sender side where both exist (docs/ENGINE.md, "The
//! two views").

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::connector::ConnectorRole;
use crate::clock::MonoTime;
use crate::probe::decode::{ConnectRecord, DropReason, Outcome};

/// Distinct senders kept per termination.
pub const MAX_SENDERS: usize = 16;
/// This node's own connects remembered by 4-tuple, so that what one of
/// its processes sends to a pod on the same node is named after the
/// connector (the kubelet, the ingress) rather than the node's address.
pub const MAX_LOCAL_TUPLES: usize = 4096;

/// Who sent what arrived at a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SenderKind {
    /// An ingress pod (by the ingress selectors), on this node or another.
    Ingress,
    /// The kubelet's probes (a connect this node's kubelet made). Never
    /// moves the arrival gap.
    Kubelet,
    /// Another pod, by its address.
    Pod,
    /// Another process on this node.
    Process,
    /// Another node, by its address (`status.hostIPs` of its pods): a
    /// NodePort's SNAT, a load balancer in instance mode.
    Node,
    /// Anything else: a load balancer outside the cluster, named by
    /// `--external-sender` where its range is known.
    External,
}

impl SenderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SenderKind::Ingress => "ingress",
            SenderKind::Kubelet => "kubelet",
            SenderKind::Pod => "pod",
            SenderKind::Process => "process",
            SenderKind::Node => "node",
            SenderKind::External => "external",
        }
    }

    pub fn from_role(role: ConnectorRole) -> SenderKind {
        match role {
            ConnectorRole::Ingress => SenderKind::Ingress,
            ConnectorRole::Kubelet => SenderKind::Kubelet,
            ConnectorRole::Pod => SenderKind::Pod,
            ConnectorRole::Process => SenderKind::Process,
        }
    }
}

/// A named address range of senders (`--external-sender 10.0.0.0/16=alb`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSender {
    pub network: IpAddr,
    pub prefix: u8,
    pub name: String,
}

impl ExternalSender {
    /// Parses `CIDR=name`.
    pub fn parse(text: &str) -> Result<ExternalSender, String> {
        let (cidr, name) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected CIDR=name, e.g. 10.0.0.0/16=alb"))?;
        if name.is_empty() {
            return Err(format!("`{text}`: the name after `=` is empty"));
        }
        let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, ""));
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{cidr}`: not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{cidr}`: the prefix must be 0 to {max}"))?
        };
        Ok(ExternalSender {
            network,
            prefix,
            name: name.to_owned(),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One sender's arrivals at a terminating pod, after deletion_seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderArrivals {
    pub name: String,
    pub kind: SenderKind,
    /// Its last SYN or request that reached the pod (refused and dropped
    /// SYNs included).
    pub last_arrival: Option<MonoTime>,
    /// last_arrival − deletion_seen.
    pub arrival_gap_ns: Option<i64>,
    /// Connections the pod accepted, and pooled ones that carried a
    /// request (at least one each).
    pub arrivals: u64,
    pub refused: u64,
    pub dropped: u64,
}

/// What landed on a terminating pod, from its own node's kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationView {
    /// The last SYN or request that reached the pod after deletion_seen,
    /// from any sender but the kubelet: accepted, refused, or dropped by
    /// the pod's node once its network was gone (the sender still chose
    /// the pod then).
    pub last_arrival: Option<MonoTime>,
    /// last_arrival − deletion_seen; 0 when nothing arrived after it.
    pub arrival_gap_ns: Option<i64>,
    /// SYNs the pod's kernel answered with an RST after deletion_seen:
    /// nothing listened any more (not the kubelet's).
    pub refused: u64,
    /// Packets for the pod that its node's kernel dropped after
    /// deletion_seen because its network was gone (no route, no
    /// neighbour), or because no socket took them (other than a SYN).
    pub dropped: u64,
    /// Connections accepted after deletion_seen, and pooled ones whose
    /// last request arrived after it: requests the pod still served (at
    /// least one each; not the kubelet's).
    pub served_after_deletion: u64,
    /// Per sender, the largest first (bounded).
    pub senders: Vec<SenderArrivals>,
    /// The ingress's last send (sender side) against its last arrival
    /// (this view), where this node saw both: the same packets, so they
    /// agree to within a jiffy or two (`last_arrival − last_send`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views_apart_ns: Option<i64>,
}

impl DestinationView {
    /// Adds one arrival from `sender` at `at` (at or after `t0`). A SYN
    /// the pod refused, or one its node dropped, still arrived: the sender
    /// chose the pod then, so it moves the last arrival, unless it
    /// retransmits a SYN that already arrived (`first_syn` false); only
    /// accepted connections and pooled requests were served.
    pub fn apply(
        &mut self,
        t0: MonoTime,
        at: MonoTime,
        outcome: &Outcome,
        sender: &Sender,
        first_syn: bool,
    ) {
        let (served, refused, dropped, syn) = match outcome {
            Outcome::Accepted | Outcome::Received { .. } => (true, false, false, true),
            Outcome::Dropped {
                reason: DropReason::NoSocket,
                opens_connection: true,
            } => (false, true, false, true),
            Outcome::Dropped {
                opens_connection, ..
            } => (false, false, true, *opens_connection),
            _ => return,
        };
        let syn = syn && first_syn;
        let kubelet = sender.kind == SenderKind::Kubelet;
        if !kubelet {
            if syn {
                self.last_arrival = self.last_arrival.max(Some(at));
            }
            self.served_after_deletion += u64::from(served);
            self.refused += u64::from(refused);
            self.dropped += u64::from(dropped);
        }
        if let Some(entry) = self.sender_mut(sender) {
            if syn {
                entry.last_arrival = entry.last_arrival.max(Some(at));
                entry.arrival_gap_ns = entry.last_arrival.map(|last| last.signed_since(t0));
            }
            entry.arrivals += u64::from(served);
            entry.refused += u64::from(refused);
            entry.dropped += u64::from(dropped);
        }
        self.senders.sort_by(|a, b| {
            let total = |s: &SenderArrivals| s.arrivals + s.refused + s.dropped;
            total(b).cmp(&total(a)).then_with(|| a.name.cmp(&b.name))
        });
        self.derive(t0);
    }

    fn sender_mut(&mut self, sender: &Sender) -> Option<&mut SenderArrivals> {
        let found = self
            .senders
            .iter()
            .position(|s| s.kind == sender.kind && s.name == sender.name);
        let index = match found {
            Some(index) => index,
            None if self.senders.len() < MAX_SENDERS => {
                self.senders.push(SenderArrivals {
                    name: sender.name.clone(),
                    kind: sender.kind,
                    last_arrival: None,
                    arrival_gap_ns: None,
                    arrivals: 0,
                    refused: 0,
                    dropped: 0,
                });
                self.senders.len() - 1
            }
            None => return None,
        };
        self.senders.get_mut(index)
    }

    pub fn derive(&mut self, t0: MonoTime) {
        self.arrival_gap_ns = Some(self.last_arrival.map_or(0, |last| last.signed_since(t0)));
    }

    /// The arrival gap of the largest sender that is not the kubelet: what
    /// a recommendation covers where no ingress measured a gap.
    pub fn largest_sender_gap(&self) -> Option<i64> {
        self.senders
            .iter()
            .find(|s| s.kind != SenderKind::Kubelet)
            .map(|s| s.arrival_gap_ns.unwrap_or(0).max(0))
    }

    /// The arrival gap of the ingress's senders (by the ingress selectors,
    /// or this node's ingress connector): what the ingress chose, even
    /// where the sending side could not see it (a connect to a Service's
    /// ClusterIP, DNATed to the pod, is no connect to the pod's address).
    pub fn ingress_arrival_gap(&self) -> Option<i64> {
        self.senders
            .iter()
            .filter(|s| s.kind == SenderKind::Ingress)
            .filter_map(|s| s.arrival_gap_ns)
            .max()
    }

    /// Compares the ingress's last send with the ingress's last arrival.
    pub fn compare_with_sender_side(&mut self, ingress_last_send: Option<MonoTime>) {
        let ingress_arrival = self
            .senders
            .iter()
            .filter(|s| s.kind == SenderKind::Ingress)
            .filter_map(|s| s.last_arrival)
            .max();
        self.views_apart_ns = match (ingress_arrival, ingress_last_send) {
            (Some(arrival), Some(send)) => Some(arrival.signed_since(send)),
            _ => None,
        };
    }
}

/// A resolved sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    pub kind: SenderKind,
    pub name: String,
}

/// When an arrival happened, in the pod's kernel's view.
pub fn arrival_time(record: &ConnectRecord) -> MonoTime {
    match record.outcome {
        Outcome::Received { last_arrival } => last_arrival,
        _ => record.ts,
    }
}

/// How far apart a SYN this node sent (its source port not known yet) and
/// an arrival from the same address at the same pod may be to be taken
/// for the same connect: a refused SYN never reaches ESTABLISHED, where
/// the sending side learns its port.
pub const SYN_MATCH_WINDOW_NS: u64 = 10_000_000;

/// A connector of this node, as remembered for one tuple: its role and
/// its index in the engine's connector table (no name copied per connect).
#[derive(Clone, Copy, Debug)]
struct LocalConnect {
    role: ConnectorRole,
    connector: u16,
    at: MonoTime,
}

/// This node's recent connects by 4-tuple (or, for a SYN whose source
/// port is not assigned yet, by source address), with their connector:
/// an arrival from a process of the same node is named after it.
#[derive(Debug, Default)]
pub struct LocalSenders {
    by_tuple: BTreeMap<(SocketAddr, SocketAddr), LocalConnect>,
    order: VecDeque<(SocketAddr, SocketAddr)>,
}

impl LocalSenders {
    /// Remembers a connect this node made at `at`.
    pub fn note(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        at: MonoTime,
        role: ConnectorRole,
        connector: u16,
    ) {
        let key = (src, dst);
        let connect = LocalConnect {
            role,
            connector,
            at,
        };
        if self.by_tuple.insert(key, connect).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_LOCAL_TUPLES {
            if let Some(old) = self.order.pop_front() {
                self.by_tuple.remove(&old);
            }
        }
    }

    /// The connector behind an arrival from `src` at `dst` at `at`: the
    /// connect with that 4-tuple, else the latest SYN from `src`'s
    /// address to `dst` within [`SYN_MATCH_WINDOW_NS`].
    pub fn find(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        at: MonoTime,
    ) -> Option<(ConnectorRole, u16)> {
        let exact = self.by_tuple.get(&(src, dst));
        let by_address = || {
            self.by_tuple
                .get(&(SocketAddr::new(src.ip(), 0), dst))
                .filter(|c| c.at.0.abs_diff(at.0) <= SYN_MATCH_WINDOW_NS)
        };
        exact.or_else(by_address).map(|c| (c.role, c.connector))
    }

    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tuple.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_sender_ranges_parse_and_match() {
        let alb = ExternalSender::parse("10.0.0.0/16=alb").expect("valid");
        assert!(alb.contains("10.0.200.9".parse().expect("ip")));
        assert!(!alb.contains("10.1.0.1".parse().expect("ip")));
        assert!(!alb.contains("fd00::1".parse().expect("ip")));
        let v6 = ExternalSender::parse("fd00:10::/32=neg").expect("valid");
        assert!(v6.contains("fd00:10::7".parse().expect("ip")));
        let one = ExternalSender::parse("192.0.2.7=probe").expect("a bare address");
        assert_eq!(one.prefix, 32);
        let all = ExternalSender::parse("0.0.0.0/0=any").expect("valid");
        assert!(all.contains("203.0.113.1".parse().expect("ip")));
    }

    #[test]
    fn bad_external_sender_ranges_say_what_is_wrong() {
        let error = ExternalSender::parse("10.0.0.0/16").expect_err("no name");
        assert!(error.contains("CIDR=name"), "{error}");
        let error = ExternalSender::parse("10.0.0.0/33=x").expect_err("prefix");
        assert!(error.contains("0 to 32"), "{error}");
        let error = ExternalSender::parse("ten/8=x").expect_err("address");
        assert!(error.contains("not an IP"), "{error}");
        let error = ExternalSender::parse("10.0.0.0/8=").expect_err("empty name");
        assert!(error.contains("empty"), "{error}");
    }

    #[test]
    fn local_senders_forget_the_oldest_beyond_their_bound() {
        let mut local = LocalSenders::default();
        let dst: SocketAddr = "10.0.0.1:8080".parse().expect("addr");
        let t = MonoTime(1_000_000_000);
        for port in 1..=(MAX_LOCAL_TUPLES as u16 + 10) {
            let src = SocketAddr::new("10.0.9.1".parse().expect("ip"), port);
            local.note(src, dst, t, ConnectorRole::Kubelet, 3);
        }
        assert_eq!(local.len(), MAX_LOCAL_TUPLES);
        let oldest = SocketAddr::new("10.0.9.1".parse().expect("ip"), 1);
        assert!(local.find(oldest, dst, t).is_none());
        let newest = SocketAddr::new(
            "10.0.9.1".parse().expect("ip"),
            MAX_LOCAL_TUPLES as u16 + 10,
        );
        assert_eq!(
            local.find(newest, dst, t),
            Some((ConnectorRole::Kubelet, 3))
        );
    }

    #[test]
    fn a_syn_without_its_port_names_arrivals_from_its_address_close_in_time() {
        let mut local = LocalSenders::default();
        let dst: SocketAddr = "10.0.0.1:8080".parse().expect("addr");
        let syn = MonoTime(5_000_000_000);
        local.note(
            "10.0.9.1:0".parse().expect("addr"),
            dst,
            syn,
            ConnectorRole::Kubelet,
            3,
        );
        let src: SocketAddr = "10.0.9.1:45001".parse().expect("addr");
        assert_eq!(
            local.find(src, dst, MonoTime(syn.0 + 200_000)),
            Some((ConnectorRole::Kubelet, 3))
        );
        assert!(
            local
                .find(src, dst, MonoTime(syn.0 + 2 * SYN_MATCH_WINDOW_NS))
                .is_none()
        );
        let other: SocketAddr = "10.0.9.2:45001".parse().expect("addr");
        assert!(local.find(other, dst, syn).is_none());
    }
}
