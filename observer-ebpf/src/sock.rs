//! Reading `struct sock` at the offsets user space found in the kernel's
//! BTF: endpoints, cgroup, the error a connect ended with, its SYN time.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use observer_common::{AF_INET, AF_INET6, ConnectEvent, SockOffsets, flags};

use crate::*;

/// Reads a `T` at `offset` bytes into the kernel object at `sk`.
#[inline(always)]
pub(crate) fn read_kernel<T>(sk: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((sk + u64::from(offset)) as *const T) }.map_err(|e| e as i32)
}

/// The head of `struct sock_common` in its long-standing layout.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    _hash: u32,
    dport: u16,
    _num: u16,
    family: u16,
    _state: u16,
}

/// Family, destination port (network order) and the IPv4 addresses
/// (destination, source): one read where the head has its usual layout,
/// else one per field. The IPv4 addresses are meaningless for IPv6.
#[inline(always)]
fn sk_head(sk: u64) -> Result<(u16, u16, [u8; 4], [u8; 4]), i32> {
    if offset!(head_block) != 0 {
        let head: SockHead = read_kernel(sk, offset!(daddr))?;
        return Ok((head.family, head.dport, head.daddr, head.rcv_saddr));
    }
    Ok((
        read_kernel(sk, offset!(family))?,
        read_kernel(sk, offset!(dport))?,
        read_kernel(sk, offset!(daddr))?,
        read_kernel(sk, offset!(rcv_saddr))?,
    ))
}

/// The socket's family and destination address (canonicalised): all the
/// watch lookup needs, read before anything else.
#[inline(always)]
pub(crate) fn sk_destination(sk: u64) -> Result<(u16, [u8; 16]), i32> {
    let (family, _, daddr4, _) = sk_head(sk)?;
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        daddr[..4].copy_from_slice(&daddr4);
        Ok((family, daddr))
    } else if family == AF_INET6 {
        daddr = read_kernel(sk, offset!(v6_daddr))?;
        Ok(canonical(family, daddr))
    } else {
        Err(0)
    }
}

/// The socket's family, addresses (canonicalised) and ports (host order;
/// the local port is 0 until the kernel has picked one).
#[inline(always)]
pub(crate) fn sk_endpoints(sk: u64) -> Result<(u16, [u8; 16], [u8; 16], u16, u16), i32> {
    let (family, dport, daddr4, saddr4) = sk_head(sk)?;
    let dport = u16::from_be(dport);
    let sport = u16::from_be(read_kernel::<u16>(sk, offset!(sport))?);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        saddr[..4].copy_from_slice(&saddr4);
        daddr[..4].copy_from_slice(&daddr4);
        Ok((family, saddr, daddr, sport, dport))
    } else if family == AF_INET6 {
        saddr = read_kernel(sk, offset!(v6_rcv_saddr))?;
        daddr = read_kernel(sk, offset!(v6_daddr))?;
        let (fam_s, s) = canonical(family, saddr);
        let (fam_d, d) = canonical(family, daddr);
        if fam_s == fam_d {
            Ok((fam_d, s, d, sport, dport))
        } else {
            Ok((family, saddr, daddr, sport, dport))
        }
    } else {
        Err(0)
    }
}

/// The id of the cgroup the socket was created in: the connector, whatever
/// task (or softirq) the program runs in. `None` where the kernel has no
/// socket cgroup data or the socket carries none.
#[inline(always)]
pub(crate) fn sk_cgroup_id(sk: u64) -> Option<u64> {
    if offset!(cgroup) == SockOffsets::ABSENT {
        return None;
    }
    let cgroup: u64 = read_kernel(sk, offset!(cgroup)).ok()?;
    if cgroup == 0 {
        return None;
    }
    let kn: u64 = read_kernel(cgroup, offset!(cgroup_kn)).ok()?;
    if kn == 0 {
        return None;
    }
    read_kernel(kn, offset!(kn_id)).ok()
}

/// IPv4-mapped IPv6 addresses (a v6 socket talking to a v4 peer) are
/// reported as IPv4, so one pod IP has one key whatever the socket family.
#[inline(always)]
pub(crate) fn canonical(family: u16, addr: [u8; 16]) -> (u16, [u8; 16]) {
    if family == AF_INET6 && addr[..10] == [0u8; 10] && addr[10] == 0xff && addr[11] == 0xff {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&addr[12..16]);
        return (AF_INET, v4);
    }
    (family, addr)
}

#[inline(always)]
pub(crate) fn set_endpoints(
    event: &mut ConnectEvent,
    family: u16,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    sport: u16,
    dport: u16,
) {
    event.family = family;
    event.saddr = *saddr;
    event.daddr = *daddr;
    event.sport = sport;
    event.dport = dport;
}

#[inline(always)]
pub(crate) fn fill_from_sock(event: &mut ConnectEvent, info: &SockInfo) {
    event.syn_ns = info.syn_ns;
    event.cgroup_id = info.cgroup_id;
    event.tgid = info.tgid;
    event.pid = info.pid;
    event.comm = info.comm;
    event.saddr = info.saddr;
    event.daddr = info.daddr;
    event.family = info.family;
    event.sport = info.sport;
    event.dport = info.dport;
    if info.watched != 0 {
        event.flags |= flags::WATCHED;
    }
}

/// The error a connect ended with, read at its close. The kernel sets
/// `sk_err` before it closes a socket it failed (refused, unreachable,
/// timed out), on every kernel. Failing that, the error the application
/// closing a connecting socket has been told: an ICMP error (host or
/// network unreachable) that arrived while the connecting task held the
/// socket lock, as it does when the reply comes back within the connect()
/// call itself. The kernel then keeps it as a soft error and queues it on
/// the socket's error queue, which wakes a non-blocking connector
/// (EPOLLERR); `SO_ERROR` hands it over and clears it, the queued copy
/// stays until the socket is freed. 0 when there is none (an abort: the
/// application gave up on its own; a zero-linger close sets ECONNRESET
/// only after the close). Not inlined: its reads would add to the
/// caller's stack.
#[inline(never)]
pub(crate) fn connect_error(skaddr: u64) -> i32 {
    let err: i32 = read_kernel(skaddr, offset!(err)).unwrap_or(0);
    if err != 0 && err != ECONNRESET && err != EPIPE {
        return err;
    }
    let soft: i32 = read_kernel(skaddr, offset!(err_soft)).unwrap_or(0);
    if soft != 0 {
        return soft;
    }
    if offset!(exterr_errno) == SockOffsets::ABSENT {
        return 0;
    }
    let head = skaddr.wrapping_add(u64::from(offset!(error_queue)));
    // The queue's `next` is the head itself when it is empty.
    let Ok(first) = read_kernel::<u64>(head, 0) else {
        return 0;
    };
    if first == 0 || first == head {
        return 0;
    }
    let errno: u32 =
        read_kernel(first, offset!(skb_cb).wrapping_add(offset!(exterr_errno))).unwrap_or(0);
    errno as i32
}

/// When a connecting socket's first SYN left (CLOCK_MONOTONIC ns, to the
/// millisecond below), from `tcp_sock.retrans_stamp`; 0 when it does not
/// say.
#[inline(always)]
pub(crate) fn first_syn_time(skaddr: u64, now: u64) -> u64 {
    let Ok(stamp) = read_kernel::<u32>(skaddr, offset!(retrans_stamp)) else {
        return 0;
    };
    let now_ms = now / 1_000_000;
    let ago_ms = (now_ms as u32).wrapping_sub(stamp);
    // Microsecond stamps (TCP_TS_US routes) or none at all: not a date.
    if stamp == 0 || u64::from(ago_ms) > now_ms || ago_ms > 3_600_000 {
        return 0;
    }
    (now_ms - u64::from(ago_ms)) * 1_000_000
}
