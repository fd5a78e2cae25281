//! `inet_sock_set_state`: a connect's life from its SYN to its close.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64,
    },
    macros::raw_tracepoint,
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    DestKey, DestStats, RETRY_REPORT_WINDOW_NS, StormKey, TASK_COMM_LEN, TupleKey, counter, flags,
    kind,
};

use crate::*;

// The socket tracepoints are attached raw: the program gets the
// tracepoint's arguments (the socket pointer, the states) without the
// kernel first formatting a trace record it would not use, which is most of
// a classic tracepoint's cost on a path that runs for every socket.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_inet_sock_set_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

pub(crate) fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Result<(), i32> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let skaddr: u64 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    match (oldstate, newstate) {
        (TCP_CLOSE, TCP_SYN_SENT) => on_syn_sent(ctx, skaddr),
        // Only TCP sockets are in SOCKS, so these need no protocol check.
        (TCP_SYN_SENT, TCP_ESTABLISHED) => on_established(skaddr),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => on_accepted(skaddr),
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let now = now_ns();
            // Called one after the other, not one from the other: a chain
            // of calls adds up its stack frames.
            if on_syn_closed(skaddr, now)? {
                Ok(())
            } else {
                on_unfollowed_syn_closed(skaddr, now)
            }
        }
        (TCP_ESTABLISHED | TCP_CLOSE_WAIT, _) => {
            // The peer's FIN: whatever was sent since data last came back
            // was in flight.
            let peer_closed = oldstate == TCP_ESTABLISHED && newstate == TCP_CLOSE_WAIT;
            let result = on_leaving_established(skaddr, peer_closed);
            // Once per connection: nothing arrives after the peer's FIN.
            if oldstate == TCP_ESTABLISHED {
                let _ = on_passive_close(skaddr);
            }
            if newstate == TCP_CLOSE {
                forget_socket(skaddr);
            }
            result
        }
        (_, TCP_CLOSE) => {
            forget_socket(skaddr);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Drops a closing socket's `SOCKS` entry. Most sockets have none (only
/// followed connects do): a lock-free lookup first spares them the
/// bucket lock a delete takes.
#[inline(always)]
pub(crate) fn forget_socket(skaddr: u64) {
    if !maybe_followed() {
        return;
    }
    // SAFETY: only whether the entry exists is read.
    if unsafe { SOCKS.get(&skaddr) }.is_some() && SOCKS.remove(&skaddr).is_ok() {
        count_followed(-1);
    }
}

/// A connection leaving ESTABLISHED (either side closing) or CLOSE_WAIT
/// (this side closing after the peer did). For a watched destination, its
/// last data sent (`lsndtime`) says when a request last went over it: a
/// pooled, keep-alive connection carries requests without a SYN, and this
/// sees them once per connection, with no work on any send. Connections
/// to unwatched destinations cost the watch lookup only. Not inlined: its
/// stack would add to the other state handlers' in one frame.
#[inline(never)]
pub(crate) fn on_leaving_established(skaddr: u64, peer_closed: bool) -> Result<(), i32> {
    let following = following_any();
    // A peer closing under a request in flight is a failure wherever it
    // goes (a pod's app exits a moment before its address is watched):
    // every peer close is looked at, other closes only when watched.
    if !following && !peer_closed {
        return Ok(());
    }
    let protocol: u16 = read_kernel(skaddr, offset!(protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, daddr) = sk_destination(skaddr)?;
    let watched = following && is_watched(family, &daddr);
    let lsndtime: u32 = read_kernel(skaddr, offset!(lsndtime))?;
    let lrcvtime: u32 = read_kernel(skaddr, offset!(lrcvtime))?;
    // Sent after the last data received (jiffies wrap: compare signed).
    // Within one jiffy the two times tie, and the counters decide.
    let sent_since = lsndtime.wrapping_sub(lrcvtime) as i32;
    let cut = peer_closed && (sent_since > 0 || (sent_since == 0 && unanswered_in_a_tie(skaddr)));
    if !watched && !cut {
        return Ok(());
    }
    let (family, saddr, daddr, sport, dport) = sk_endpoints(skaddr)?;
    // An error the connection ends with (set before the kernel closes it,
    // on every kernel): a timeout or an unreachable under a request. A
    // reset is `tcp_receive_reset`'s.
    let err: i32 = read_kernel(skaddr, offset!(err)).unwrap_or(0);
    let errno = if err == ECONNRESET || err == EPIPE {
        0
    } else {
        err
    };
    // SAFETY: a helper without arguments, valid in tracepoint context.
    let (now, jiffies) = (now_ns(), unsafe { bpf_jiffies64() });
    let cgroup_id = sk_cgroup_id(skaddr).unwrap_or(0);
    // SAFETY: a map value read in place while this program runs.
    let known = unsafe { SOCKS.get(&skaddr) };
    emit(|event| {
        if let Some(info) = known {
            fill_from_sock(event, info);
        }
        event.ts_ns = now;
        event.syn_ns = jiffies;
        event.cgroup_id = cgroup_id;
        set_endpoints(event, family, &saddr, &daddr, sport, dport);
        if watched {
            event.flags |= flags::WATCHED;
        }
        if cut {
            event.flags |= flags::CUT;
        }
        event.since_send_jiffies = (jiffies as u32).wrapping_sub(lsndtime);
        event.errno = errno;
        event.kind = kind::SENT;
    });
    Ok(())
}

/// At the peer's FIN, with data last sent and received in the same jiffy:
/// whether what was sent last went unanswered. A fresh connection's
/// connect sets both times, so its first request ties with it: if it sent
/// data and never received any, the request is in flight. Otherwise, if
/// this FIN acknowledged data (the delivery time is this packet's), the
/// peer got it and closed without a reply. A reply and a new request in
/// the same jiffy, acknowledged before the FIN, stay unseen.
#[inline(always)]
fn unanswered_in_a_tie(skaddr: u64) -> bool {
    let segs_out: u32 = read_kernel(skaddr, offset!(data_segs_out)).unwrap_or(0);
    if segs_out == 0 {
        return false;
    }
    let segs_in: u32 = read_kernel(skaddr, offset!(data_segs_in)).unwrap_or(0);
    if segs_in == 0 {
        return true;
    }
    let delivered: u64 = read_kernel(skaddr, offset!(delivered_mstamp)).unwrap_or(0);
    let now: u64 = read_kernel(skaddr, offset!(tcp_mstamp)).unwrap_or(1);
    delivered == now
}

#[inline(never)]
pub(crate) fn on_syn_sent(ctx: &RawTracePointContext, skaddr: u64) -> Result<(), i32> {
    if !following_any() {
        return Ok(());
    }
    let protocol: u16 = read_kernel(skaddr, offset!(protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, daddr) = sk_destination(skaddr)?;
    let watched = is_watched(family, &daddr);
    let pid_tgid = bpf_get_current_pid_tgid();
    let now = now_ns();
    // A thread whose connect just failed is retrying: its connects are
    // reported (not followed) wherever they go.
    // SAFETY: the value is a plain u64, copied out at once.
    let retrying = !watched
        && unsafe { RECENT_FAILURES.get(&pid_tgid) }
            .is_some_and(|failed| now.saturating_sub(*failed) <= RETRY_REPORT_WINDOW_NS);
    // Connects to destinations nobody watches cost the watch lookup and
    // the thread's failure lookup only: if they fail, their close reports
    // them from the socket itself.
    if !watched && !retrying && !full_attribution() {
        return Ok(());
    }
    let (family, saddr, daddr, _, dport) = sk_endpoints(skaddr)?;
    let info = SockInfo {
        syn_ns: now,
        // SAFETY: helper without arguments, valid in tracepoint context.
        cgroup_id: sk_cgroup_id(skaddr).unwrap_or_else(|| unsafe { bpf_get_current_cgroup_id() }),
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        saddr,
        daddr,
        family,
        sport: 0,
        dport,
        established: 0,
        watched: watched as u8,
    };
    if !watched && !full_attribution() {
        emit(|event| {
            fill_from_sock(event, &info);
            event.ts_ns = now;
            event.kind = kind::CONNECT;
        });
        return Ok(());
    }
    if SOCKS.insert(&skaddr, &info, 0).is_ok() {
        count_followed(1);
    } else {
        bump(counter::MAP_FULL);
        warn!(ctx, "observer: socket map insert failed");
    }
    let key = DestKey {
        family,
        port: dport,
        addr: daddr,
    };
    with_stats(&key, |stats| {
        add(&mut stats.connects);
        stats.last_syn_ns = now;
    });
    if watched || retrying {
        emit(|event| {
            fill_from_sock(event, &info);
            event.ts_ns = now;
            event.kind = kind::CONNECT;
        });
    }
    Ok(())
}

#[inline(never)]
pub(crate) fn on_established(skaddr: u64) -> Result<(), i32> {
    if !maybe_followed() {
        return Ok(());
    }
    let now = now_ns();
    let Some(ptr) = SOCKS.get_ptr_mut(&skaddr) else {
        return Ok(());
    };
    // SAFETY: a valid pointer to a map value returned by the kernel.
    let info = unsafe { &mut *ptr };
    info.sport = u16::from_be(read_kernel::<u16>(skaddr, offset!(sport))?);
    info.established = 1;
    let key = DestKey {
        family: info.family,
        port: info.dport,
        addr: info.daddr,
    };
    with_stats(&key, |stats| {
        add(&mut stats.established);
        stats.last_established_ns = now;
    });
    if info.watched != 0 {
        let info = *info;
        emit(|event| {
            fill_from_sock(event, &info);
            event.ts_ns = now;
            event.kind = kind::ESTABLISHED;
        });
    }
    Ok(())
}

/// A followed connect left SYN_SENT without being established. Returns
/// whether the socket was followed (else nothing was done).
#[inline(never)]
pub(crate) fn on_syn_closed(skaddr: u64, now: u64) -> Result<bool, i32> {
    // SAFETY: a map value is copied out before the entry is removed.
    let followed = if maybe_followed() {
        // SAFETY: as below.
        unsafe { SOCKS.get(&skaddr) }.copied()
    } else {
        None
    };
    let Some(mut info) = followed else {
        return Ok(false);
    };
    if SOCKS.remove(&skaddr).is_ok() {
        count_followed(-1);
    }
    info.sport = read_kernel::<u16>(skaddr, offset!(sport)).map_or(0, u16::from_be);
    let tuple = TupleKey {
        family: info.family,
        sport: info.sport,
        dport: info.dport,
        _pad: 0,
        saddr: info.saddr,
        daddr: info.daddr,
    };
    let key = DestKey {
        family: info.family,
        port: info.dport,
        addr: info.daddr,
    };
    // SAFETY: the value is copied out immediately.
    let early = unsafe { EARLY_ERRORS.get(&tuple) }.copied();
    let errno = match early {
        Some(e) if now.saturating_sub(e.ts_ns) <= JOIN_WINDOW_NS => {
            let _ = EARLY_ERRORS.remove(&tuple);
            e.errno
        }
        _ => connect_error(skaddr),
    };
    with_stats(&key, |stats| {
        add(&mut stats.syn_closed);
        stats.last_failure_ns = now;
        if errno != 0 {
            count_error(stats, errno);
        }
    });
    let pid_tgid = (u64::from(info.tgid) << 32) | u64::from(info.pid);
    set_time(&RECENT_FAILURES, pid_tgid, now);
    if errno == 0 {
        let closed = ClosedSyn {
            ts_ns: now,
            pid_tgid,
        };
        let _ = CLOSED_TUPLES.insert(&tuple, &closed, 0);
    } else {
        note_unreachable(pid_tgid, errno, now);
    }
    emit(|event| {
        fill_from_sock(event, &info);
        event.ts_ns = now;
        event.errno = errno;
        event.kind = kind::SYN_CLOSED;
    });
    Ok(true)
}

/// A connect not followed from its SYN (its destination was not watched)
/// left SYN_SENT without being established: reported from the socket
/// alone, with no map work. The process is known only when the
/// application closed the socket itself (no error: it gave up); an error
/// the kernel found (an RST, an ICMP error, a timeout) is handled in
/// softirq or a timer, on behalf of whatever task was running.
#[inline(never)]
pub(crate) fn on_unfollowed_syn_closed(skaddr: u64, now: u64) -> Result<(), i32> {
    let protocol: u16 = read_kernel(skaddr, offset!(protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, saddr, daddr, sport, dport) = sk_endpoints(skaddr)?;
    let errno = connect_error(skaddr);
    let syn_ns = first_syn_time(skaddr, now);
    let cgroup_id = sk_cgroup_id(skaddr).unwrap_or(0);
    let key = StormKey {
        family,
        port: dport,
        _pad: 0,
        addr: daddr,
        cgroup_id,
    };
    if storm_absorbs(&key, errno, now, syn_ns) {
        return Ok(());
    }
    emit(|event| {
        if errno == 0 {
            let pid_tgid = bpf_get_current_pid_tgid();
            event.tgid = (pid_tgid >> 32) as u32;
            event.pid = pid_tgid as u32;
            event.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        }
        event.ts_ns = now;
        event.syn_ns = syn_ns;
        event.cgroup_id = cgroup_id;
        set_endpoints(event, family, &saddr, &daddr, sport, dport);
        event.errno = errno;
        event.kind = kind::SYN_CLOSED;
    });
    Ok(())
}

/// Remembers that a connect of `pid_tgid` failed unreachable after its SYN.
#[inline(always)]
pub(crate) fn note_unreachable(pid_tgid: u64, errno: i32, now: u64) {
    if errno != EHOSTUNREACH && errno != ENETUNREACH {
        return;
    }
    set_time(&UNREACH_REPORTED, pid_tgid, now);
}

/// `map[key] = now`, in place when the key exists (no allocation).
#[inline(always)]
pub(crate) fn set_time(map: &LruHashMap<u64, u64>, key: u64, now: u64) {
    match map.get_ptr_mut(&key) {
        // SAFETY: a valid pointer to a map value returned by the kernel.
        Some(ptr) => unsafe { *ptr = now },
        None => {
            let _ = map.insert(&key, &now, 0);
        }
    }
}

pub(crate) fn count_error(stats: &mut DestStats, errno: i32) {
    match errno {
        ECONNREFUSED => add(&mut stats.refused),
        EHOSTUNREACH => add(&mut stats.host_unreachable),
        ENETUNREACH => add(&mut stats.net_unreachable),
        ETIMEDOUT => add(&mut stats.timed_out),
        _ => add(&mut stats.other_error),
    }
}
