//! The receiving side: what lands on a watched pod of this node, whoever
//! sent it. The pod's own kernel sees every connection the pod accepts,
//! every request over a pooled connection (dated at the connection's
//! close, as the sending side dates its sends), every SYN it refuses for
//! want of a listener, and every packet it drops once the pod's network is
//! gone. Pods nobody watches cost the watch lookup, and nothing at all
//! while nothing is watched.
//!
//! Events put the sender in `saddr`/`sport` and the pod in
//! `daddr`/`dport`, so user space finds the pod where the sending side
//! puts it.

use aya_ebpf::{helpers::bpf_jiffies64, macros::raw_tracepoint, programs::RawTracePointContext};
use observer_common::{AF_INET, AF_INET6, DropReasons, flags, kind};

use crate::*;

const IPPROTO_TCP_U8: u8 = 6;
/// The TCP header's SYN and ACK flags (byte 13).
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// A connection a watched pod accepted: SYN_RECV -> ESTABLISHED on the
/// pod's socket, in softirq when the handshake's last ACK arrives (a
/// round trip after the SYN; in-cluster, well under a millisecond).
#[inline(never)]
pub(crate) fn on_accepted(skaddr: u64) -> Result<(), i32> {
    if !following_any() {
        return Ok(());
    }
    let (family, local, remote, local_port, remote_port) = sk_endpoints(skaddr)?;
    if !is_watched(family, &local) {
        return Ok(());
    }
    let now = now_ns();
    let cgroup_id = sk_cgroup_id(skaddr).unwrap_or(0);
    emit(|event| {
        event.ts_ns = now;
        event.cgroup_id = cgroup_id;
        set_endpoints(event, family, &remote, &local, remote_port, local_port);
        event.flags = flags::WATCHED;
        event.kind = kind::ACCEPTED;
    });
    Ok(())
}

/// A connection leaving ESTABLISHED whose local address is a watched pod
/// and which the pod accepted (it inherited its listener's backlog; a
/// connection the pod opened has none): when data last arrived on it
/// (`icsk_ack.lrcvtime`). A request over a pooled connection makes no
/// SYN; this dates the last one once per connection, with no work per
/// packet. Not inlined: its stack would add to the sending side's.
#[inline(never)]
pub(crate) fn on_passive_close(skaddr: u64) -> Result<(), i32> {
    if !following_any() {
        return Ok(());
    }
    let protocol: u16 = read_kernel(skaddr, offset!(protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, local, remote, local_port, remote_port) = sk_endpoints(skaddr)?;
    if !is_watched(family, &local) {
        return Ok(());
    }
    let backlog: u32 = read_kernel(skaddr, offset!(max_ack_backlog)).unwrap_or(0);
    if backlog == 0 {
        return Ok(());
    }
    let lrcvtime: u32 = read_kernel(skaddr, offset!(lrcvtime))?;
    // SAFETY: a helper without arguments, valid in tracepoint context.
    let (now, jiffies) = (now_ns(), unsafe { bpf_jiffies64() });
    let cgroup_id = sk_cgroup_id(skaddr).unwrap_or(0);
    emit(|event| {
        event.ts_ns = now;
        event.syn_ns = jiffies;
        event.cgroup_id = cgroup_id;
        set_endpoints(event, family, &remote, &local, remote_port, local_port);
        event.since_send_jiffies = (jiffies as u32).wrapping_sub(lrcvtime);
        event.flags = flags::WATCHED;
        event.kind = kind::RECEIVED;
    });
    Ok(())
}

// TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason
// reason[, struct sock *rx_sk since 6.11]): the reason is the third
// argument on every kernel that has one.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_kfree_skb(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_kfree_skb(ctx: &RawTracePointContext) -> Result<(), i32> {
    // Nothing watched (between rollouts): one array lookup per drop.
    if !following_any() {
        return Ok(());
    }
    let reason: u64 = ctx.arg(2);
    // SAFETY: a read of a global the loader initialised; volatile so the
    // compiler does not fold in the values it was declared with.
    let reasons: DropReasons =
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(DROP_REASONS)) };
    let class = reasons.class_of(reason as u32);
    if class == 0 {
        return Ok(());
    }
    let skb: u64 = ctx.arg(0);
    let head: u64 = read_kernel(skb, reasons.skb_head)?;
    let network: u16 = read_kernel(skb, reasons.skb_network_header)?;
    // `network_header` is all ones while it is unset.
    if head == 0 || network == u16::MAX {
        return Ok(());
    }
    let ip = head + u64::from(network);
    let first: u8 = read_kernel(ip, 0)?;
    let (family, saddr, daddr, tcp) = match first >> 4 {
        4 => {
            let protocol: u8 = read_kernel(ip, 9)?;
            if protocol != IPPROTO_TCP_U8 {
                return Ok(());
            }
            let mut saddr = [0u8; 16];
            let mut daddr = [0u8; 16];
            saddr[..4].copy_from_slice(&read_kernel::<[u8; 4]>(ip, 12)?);
            daddr[..4].copy_from_slice(&read_kernel::<[u8; 4]>(ip, 16)?);
            (AF_INET, saddr, daddr, ip + u64::from(first & 0x0f) * 4)
        }
        6 => {
            // A TCP segment right behind the fixed header; extension
            // headers in front of a pod's TCP are rare enough to pass.
            let next: u8 = read_kernel(ip, 6)?;
            if next != IPPROTO_TCP_U8 {
                return Ok(());
            }
            let saddr: [u8; 16] = read_kernel(ip, 8)?;
            let daddr: [u8; 16] = read_kernel(ip, 24)?;
            let (family, daddr) = canonical(AF_INET6, daddr);
            let (_, saddr) = canonical(AF_INET6, saddr);
            (family, saddr, daddr, ip + 40)
        }
        _ => return Ok(()),
    };
    if !is_watched(family, &daddr) {
        return Ok(());
    }
    let ports: [u8; 4] = read_kernel(tcp, 0)?;
    let tcp_flags: u8 = read_kernel(tcp, 13)?;
    let syn = tcp_flags & TCP_FLAG_SYN != 0 && tcp_flags & TCP_FLAG_ACK == 0;
    let now = now_ns();
    emit(|event| {
        event.ts_ns = now;
        event.family = family;
        event.saddr = saddr;
        event.daddr = daddr;
        event.sport = u16::from_be_bytes([ports[0], ports[1]]);
        event.dport = u16::from_be_bytes([ports[2], ports[3]]);
        event.errno = class;
        event.flags = flags::WATCHED | if syn { flags::SYN } else { 0 };
        event.kind = kind::DROPPED;
    });
    Ok(())
}
