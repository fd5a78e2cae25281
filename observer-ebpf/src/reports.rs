//! `inet_sk_error_report` and `tcp_receive_reset`: errors the kernel
//! reports for a socket outside its state changes.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use observer_common::{DestKey, TupleKey, kind};

use crate::*;

#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_inet_sk_error_report(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

pub(crate) fn try_inet_sk_error_report(ctx: &RawTracePointContext) -> Result<(), i32> {
    // TP_PROTO(const struct sock *sk)
    let sk: u64 = ctx.arg(0);
    let errno: i32 = read_kernel(sk, offset!(err))?;
    // No error, nothing to classify. Resets (and the EPIPE that follows
    // one) end established connections, which `tcp_receive_reset` reports;
    // a connect the application aborts with a zero-linger close is reported
    // this way too, and is classified as aborted by its missing error.
    // Returning before any map work keeps the close-with-RST path cheap.
    if errno == 0 || errno == ECONNRESET || errno == EPIPE {
        return Ok(());
    }
    // Only a followed socket's close waits for its report: an unfollowed
    // one read `sk_err` at its close, which every kernel sets before both.
    if !maybe_followed() {
        return Ok(());
    }
    let protocol: u16 = read_kernel(sk, offset!(protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let now = now_ns();
    let (family, saddr, daddr, sport, dport) = sk_endpoints(sk)?;
    let tuple = TupleKey {
        family,
        sport,
        dport,
        _pad: 0,
        saddr,
        daddr,
    };
    // SAFETY: the value is copied out immediately.
    let closed = unsafe { CLOSED_TUPLES.get(&tuple) }.copied();
    if closed.is_some() {
        let _ = CLOSED_TUPLES.remove(&tuple);
    }
    // The report follows its close within the same kernel call chain. An
    // older entry belongs to a connect that was aborted long ago, whose
    // 4-tuple a later socket happens to reuse: joining it would report a
    // failure for a connect that already ended.
    let fresh = closed.filter(|c| now.saturating_sub(c.ts_ns) <= JOIN_WINDOW_NS);
    if let Some(closed) = fresh {
        note_unreachable(closed.pid_tgid, errno, now);
        let key = DestKey {
            family,
            port: dport,
            addr: daddr,
        };
        with_stats(&key, |stats| count_error(stats, errno));
        let cgroup_id = sk_cgroup_id(sk).unwrap_or(0);
        emit(|event| {
            event.ts_ns = now;
            event.cgroup_id = cgroup_id;
            set_endpoints(event, family, &saddr, &daddr, sport, dport);
            event.errno = errno;
            event.kind = kind::ERROR;
        });
    } else if read_kernel::<u8>(sk, offset!(state)).map(i32::from) == Ok(TCP_SYN_SENT) {
        // Older kernels report a connect's error before its close: parked
        // for the close to pick up. Nothing else is parked: an established
        // connection's error is read at its close (`on_leaving_established`).
        let early = EarlyError {
            ts_ns: now,
            errno,
            _pad: 0,
        };
        let _ = EARLY_ERRORS.insert(&tuple, &early, 0);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_tcp_receive_reset(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

pub(crate) fn try_tcp_receive_reset(ctx: &RawTracePointContext) -> Result<(), i32> {
    // TP_PROTO(struct sock *sk)
    let skaddr: u64 = ctx.arg(0);
    if !maybe_followed() {
        return Ok(());
    }
    // SAFETY: the value is copied out immediately.
    let Some(info) = (unsafe { SOCKS.get(&skaddr) }).copied() else {
        return Ok(());
    };
    // A reset in SYN_SENT is a refused connect, reported by the error path.
    if info.established == 0 {
        return Ok(());
    }
    let now = now_ns();
    let key = DestKey {
        family: info.family,
        port: info.dport,
        addr: info.daddr,
    };
    with_stats(&key, |stats| {
        add(&mut stats.resets);
        stats.last_failure_ns = now;
    });
    emit(|event| {
        fill_from_sock(event, &info);
        event.ts_ns = now;
        event.errno = 104; // ECONNRESET
        event.kind = kind::RESET;
    });
    Ok(())
}
