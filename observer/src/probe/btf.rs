//! Where `struct sock`'s fields are on the running kernel, from its BTF.
//!
//! The socket programs are raw tracepoints: they get a `struct sock *` and
//! read the fields themselves. The layout differs between kernel versions
//! and configurations, so user space looks the offsets up here and hands
//! them to the kernel object before loading it (a small CO-RE of our own).

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use observer_common::{DropReasons, SockOffsets};
use thiserror::Error;

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error(
        "reading the kernel's BTF at {path}: {reason}. The probe needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (every major distribution's kernel since 5.x is)"
    )]
    Unreadable { path: String, reason: String },
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
    #[error("the kernel's BTF: {0}")]
    Parse(String),
}

/// Reads the BTF file at `path`.
pub fn read(path: &Path) -> Result<Btf, BtfError> {
    Btf::from_file(path).map_err(|e| BtfError::Unreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads the offsets from the BTF file at `path`.
pub fn sock_offsets_from(path: &Path) -> Result<SockOffsets, BtfError> {
    sock_offsets(&read(path)?)
}

/// The offsets of every field the probe reads.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    let common = |field: &str| offset_of(btf, "sock", &["__sk_common", field]);
    Ok(SockOffsets {
        daddr: common("skc_daddr")?,
        rcv_saddr: common("skc_rcv_saddr")?,
        dport: common("skc_dport")?,
        sport: offset_of(btf, "inet_sock", &["inet_sport"])?,
        family: common("skc_family")?,
        v6_daddr: common("skc_v6_daddr")?,
        v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
        protocol: offset_of(btf, "sock", &["sk_protocol"])?,
        err: offset_of(btf, "sock", &["sk_err"])?,
        state: common("skc_state")?,
        head_block: 0,
        lsndtime: offset_of(btf, "tcp_sock", &["lsndtime"])?,
        lrcvtime: offset_of(btf, "inet_connection_sock", &["icsk_ack", "lrcvtime"])?,
        retrans_stamp: offset_of(btf, "tcp_sock", &["retrans_stamp"])?,
        err_soft: offset_of(btf, "sock", &["sk_err_soft"])?,
        error_queue: offset_of(btf, "sock", &["sk_error_queue"])?,
        skb_cb: offset_of(btf, "sk_buff", &["cb"])?,
        exterr_errno: offset_of(btf, "sock_exterr_skb", &["ee", "ee_errno"])
            .unwrap_or(SockOffsets::ABSENT),
        max_ack_backlog: offset_of(btf, "sock", &["sk_max_ack_backlog"])?,
        data_segs_out: offset_of(btf, "tcp_sock", &["data_segs_out"])?,
        data_segs_in: offset_of(btf, "tcp_sock", &["data_segs_in"])?,
        delivered_mstamp: offset_of(btf, "tcp_sock", &["delivered_mstamp"])?,
        tcp_mstamp: offset_of(btf, "tcp_sock", &["tcp_mstamp"])?,
        ..socket_cgroup_offsets(btf)
    }
    .with_head_block())
}

/// The drop reasons the receiving side reports, by name in
/// `enum skb_drop_reason` (their values differ between kernels), and
/// where a `sk_buff` keeps its network header. A reason this kernel lacks
/// stays [`SockOffsets::ABSENT`] (see [`missing_drop_figures`]); a kernel
/// without the enum (before 5.17) reports no drop at all.
pub fn drop_reasons(btf: &Btf) -> DropReasons {
    let values = enum_values(btf, "skb_drop_reason");
    let value = |name: &str| {
        values
            .iter()
            .find(|(n, _)| n == &format!("SKB_DROP_REASON_{name}"))
            .map_or(SockOffsets::ABSENT, |(_, v)| *v)
    };
    let skb_head = offset_of(btf, "sk_buff", &["head"]);
    let skb_network_header = offset_of(btf, "sk_buff", &["network_header"]);
    let (Ok(skb_head), Ok(skb_network_header)) = (skb_head, skb_network_header) else {
        return DropReasons::NONE;
    };
    DropReasons {
        skb_head,
        skb_network_header,
        no_socket: value("NO_SOCKET"),
        ip_in_no_routes: value("IP_INNOROUTES"),
        ip_out_no_routes: value("IP_OUTNOROUTES"),
        neigh_failed: value("NEIGH_FAILED"),
        neigh_dead: value("NEIGH_DEAD"),
        other_host: value("OTHERHOST"),
    }
}

/// The receiving-side figures this kernel's drop reasons cannot give, in
/// words for the log and docs/KERNELS.md.
pub fn missing_drop_figures(reasons: &DropReasons) -> Vec<&'static str> {
    let absent = |v: u32| v == SockOffsets::ABSENT;
    let mut missing = Vec::new();
    if absent(reasons.skb_head) || absent(reasons.no_socket) {
        missing.push("connects a pod refused (drop reason NO_SOCKET)");
    }
    if absent(reasons.ip_in_no_routes) && absent(reasons.ip_out_no_routes) {
        missing.push("packets dropped for want of a route to a gone pod (IP_*NOROUTES)");
    }
    if absent(reasons.neigh_failed) && absent(reasons.neigh_dead) {
        missing.push("packets dropped when a gone pod's address stopped resolving (NEIGH_*)");
    }
    if absent(reasons.other_host) {
        missing.push("frames flooded to other hosts for a gone pod's link address (OTHERHOST)");
    }
    missing
}

/// Every (name, value) of the enum `name`; empty when BTF has none.
fn enum_values(btf: &Btf, name: &str) -> Vec<(String, u32)> {
    let Ok(types) = btf.resolve_types_by_name(name) else {
        return Vec::new();
    };
    let Some(Type::Enum(e)) = types.into_iter().find(|t| matches!(t, Type::Enum(_))) else {
        return Vec::new();
    };
    e.members
        .iter()
        .filter_map(|m| Some((btf.resolve_name(m).ok()?, m.val())))
        .collect()
}

trait HeadBlock {
    fn with_head_block(self) -> Self;
}

impl HeadBlock for SockOffsets {
    /// Marks the long-standing `__sk_common` head, which the probe reads in
    /// one go instead of field by field.
    fn with_head_block(mut self) -> SockOffsets {
        let d = self.daddr;
        self.head_block =
            u32::from(self.rcv_saddr == d + 4 && self.dport == d + 12 && self.family == d + 16);
        self
    }
}

/// Where a socket's cgroup id is: `sk_cgrp_data.cgroup->kn->id`. Kernels
/// built without socket cgroup data (`CONFIG_SOCK_CGROUP_DATA`) lack the
/// chain; the probe then falls back to the connecting task's cgroup, which
/// is the same cgroup wherever the task made the socket it connects with.
fn socket_cgroup_offsets(btf: &Btf) -> SockOffsets {
    let chain = (
        offset_of(btf, "sock", &["sk_cgrp_data", "cgroup"]),
        offset_of(btf, "cgroup", &["kn"]),
        offset_of(btf, "kernfs_node", &["id"]),
    );
    match chain {
        (Ok(cgroup), Ok(cgroup_kn), Ok(kn_id)) => SockOffsets {
            cgroup,
            cgroup_kn,
            kn_id,
            ..SockOffsets::default()
        },
        _ => SockOffsets {
            cgroup: SockOffsets::ABSENT,
            cgroup_kn: SockOffsets::ABSENT,
            kn_id: SockOffsets::ABSENT,
            ..SockOffsets::default()
        },
    }
}

/// The byte offset of `path` (member names, outermost first) inside the
/// struct `name`. Members of anonymous unions and structs are found as if
/// they were the parent's own, as in C.
pub fn offset_of(btf: &Btf, name: &str, path: &[&str]) -> Result<u32, BtfError> {
    let root = btf
        .resolve_types_by_name(name)
        .map_err(|_| BtfError::Missing(format!("struct {name}")))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| BtfError::Missing(format!("struct {name}")))?;
    let mut current = root;
    let mut bits = 0u32;
    for (depth, field) in path.iter().enumerate() {
        let (offset, ty) = find_member(btf, &current, field)?
            .ok_or_else(|| BtfError::Missing(format!("{name}.{}", path[..=depth].join("."))))?;
        bits += offset;
        current = ty;
    }
    if !bits.is_multiple_of(8) {
        return Err(BtfError::Parse(format!(
            "{name}.{} is a bitfield",
            path.join(".")
        )));
    }
    Ok(bits / 8)
}

/// Finds `field` in a struct or union type: its bit offset and its type
/// (typedefs and qualifiers resolved).
fn find_member(btf: &Btf, ty: &Type, field: &str) -> Result<Option<(u32, Type)>, BtfError> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for member in members {
        let name = btf
            .resolve_name(member)
            .map_err(|e| BtfError::Parse(e.to_string()))?;
        let member_type = resolve(btf, member)?;
        if name == field {
            return Ok(Some((member.bit_offset(), member_type)));
        }
        if name.is_empty()
            && let Some((inner, found)) = find_member(btf, &member_type, field)?
        {
            return Ok(Some((member.bit_offset() + inner, found)));
        }
    }
    Ok(None)
}

/// A member's type with typedefs, `const` and `volatile` peeled off.
fn resolve<T: BtfType + ?Sized>(btf: &Btf, of: &T) -> Result<Type, BtfError> {
    let mut ty = btf
        .resolve_chained_type(of)
        .map_err(|e| BtfError::Parse(e.to_string()))?;
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) => btf.resolve_chained_type(t),
            Type::Volatile(t) => btf.resolve_chained_type(t),
            _ => return Ok(ty),
        }
        .map_err(|e| BtfError::Parse(e.to_string()))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF (every kernel these tests run on has one).
    fn kernel() -> Btf {
        Btf::from_file(VMLINUX_BTF).expect("the kernel's BTF")
    }

    #[test]
    fn sock_common_head_has_its_long_standing_layout() {
        let offsets = sock_offsets(&kernel()).expect("offsets");
        // Unchanged since Linux 4.x on 64-bit kernels; a regression here
        // means the walk through the anonymous unions is wrong.
        assert_eq!(offsets.daddr, 0);
        assert_eq!(offsets.rcv_saddr, 4);
        assert_eq!(offsets.dport, 12);
        assert_eq!(offsets.family, 16);
        assert_eq!(offsets.v6_rcv_saddr, offsets.v6_daddr + 16);
        assert_eq!(offsets.head_block, 1, "read in one go");
        let moved = SockOffsets {
            family: 20,
            ..offsets
        }
        .with_head_block();
        assert_eq!(moved.head_block, 0, "any other layout: field by field");
    }

    #[test]
    fn sock_fields_lie_past_the_common_part() {
        let btf = kernel();
        let offsets = sock_offsets(&btf).expect("offsets");
        let common_end = offset_of(&btf, "sock", &["sk_rx_dst"])
            .or_else(|_| offset_of(&btf, "sock", &["sk_lock"]))
            .expect("a field after __sk_common");
        assert!(offsets.protocol >= common_end, "{offsets:?}");
        assert!(offsets.err >= common_end, "{offsets:?}");
        assert_ne!(offsets.protocol, offsets.err);
        // inet_sock begins with the whole struct sock.
        assert!(offsets.sport > offsets.err, "{offsets:?}");
    }

    #[test]
    fn this_kernel_says_where_a_queued_icmp_error_keeps_its_errno() {
        let offsets = sock_offsets(&kernel()).expect("offsets");
        assert_ne!(offsets.exterr_errno, SockOffsets::ABSENT, "{offsets:?}");
        // The errno follows the IPv4/IPv6 control block header, inside the
        // 48-byte skb->cb.
        assert!(
            offsets.exterr_errno > 0 && offsets.exterr_errno + 4 <= 48,
            "{offsets:?}"
        );
        assert_ne!(offsets.err_soft, offsets.err);
    }

    #[test]
    fn this_kernel_has_socket_cgroup_data() {
        let offsets = sock_offsets(&kernel()).expect("offsets");
        assert_ne!(offsets.cgroup, SockOffsets::ABSENT, "{offsets:?}");
        // Inside struct sock, which inet_sock begins with.
        assert!(offsets.cgroup < offsets.sport, "{offsets:?}");
    }

    #[test]
    fn this_kernel_names_the_drop_reasons_the_receiving_side_reports() {
        let reasons = drop_reasons(&kernel());
        assert!(missing_drop_figures(&reasons).is_empty(), "{reasons:?}");
        let values = [
            reasons.no_socket,
            reasons.ip_in_no_routes,
            reasons.ip_out_no_routes,
            reasons.neigh_failed,
            reasons.neigh_dead,
            reasons.other_host,
        ];
        // Distinct values, and each classified as its own kind.
        let distinct: std::collections::BTreeSet<u32> = values.iter().copied().collect();
        assert_eq!(distinct.len(), values.len(), "{reasons:?}");
        assert_eq!(
            reasons.class_of(reasons.no_socket),
            observer_common::drop_class::NO_SOCKET
        );
        assert_eq!(
            reasons.class_of(reasons.neigh_failed),
            observer_common::drop_class::NEIGHBOUR
        );
        assert_eq!(reasons.class_of(SockOffsets::ABSENT), 0);
    }

    #[test]
    fn a_kernel_without_drop_reasons_says_which_figures_are_missing() {
        let missing = missing_drop_figures(&DropReasons::NONE);
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(missing[0].contains("refused"));
    }

    #[test]
    fn unknown_fields_and_structs_are_named_in_the_error() {
        let btf = kernel();
        let err = offset_of(&btf, "sock", &["__sk_common", "no_such_field"]).unwrap_err();
        assert!(
            err.to_string().contains("sock.__sk_common.no_such_field"),
            "{err}"
        );
        let err = offset_of(&btf, "no_such_struct_here", &["x"]).unwrap_err();
        assert!(
            err.to_string().contains("struct no_such_struct_here"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_btf_file_says_what_the_kernel_needs() {
        let err = sock_offsets_from(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
