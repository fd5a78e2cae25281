//! connect()'s failures before any SYN (no route): the socket never changes
//! state, so only the call's return value tells. Seen at the exits of
//! `tcp_v4_connect`/`tcp_v6_connect` (fexit) where the kernel allows it,
//! otherwise through the raw syscall tracepoints.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_probe_read_user,
    },
    macros::{fexit, raw_tracepoint},
    programs::{FExitContext, RawTracePointContext},
};
use observer_common::{AF_INET, AF_INET6, DestKey, TASK_COMM_LEN, flags, kind};

use crate::{
    CONNECT_START, EHOSTUNREACH, ENETUNREACH, UNREACH_REPORTED, add, canonical, emit,
    full_attribution, hooks_only, is_watched, now_ns, read_kernel, set_time, with_stats,
};

/// Where a syscall's number and its second argument (connect's `uservaddr`)
/// are in the `struct pt_regs` the `sys_exit` tracepoint passes.
#[cfg(bpf_target_arch = "x86_64")]
mod syscall_regs {
    pub const NR_CONNECT: i64 = 42;
    /// `orig_ax`.
    pub const NR: u64 = 120;
    /// `si`.
    pub const ARG2: u64 = 104;
}
#[cfg(bpf_target_arch = "aarch64")]
mod syscall_regs {
    pub const NR_CONNECT: i64 = 203;
    /// `syscallno` (after `regs[31]`, `sp`, `pc`, `pstate`, `orig_x0`).
    pub const NR: u64 = 280;
    /// `regs[1]`.
    pub const ARG2: u64 = 8;
}
/// Other architectures: register layouts unknown, so connect()'s failures
/// before a SYN are not reported there (no syscall number is -1).
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
mod syscall_regs {
    pub const NR_CONNECT: i64 = -1;
    pub const NR: u64 = 0;
    pub const ARG2: u64 = 0;
}

/// Notes when each task enters connect(), so `sys_exit` can tell a failure
/// before the SYN from a blocking connect() that failed after it.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    // TP_PROTO(struct pt_regs *regs, long id)
    let id: i64 = ctx.arg(1);
    if id == syscall_regs::NR_CONNECT {
        let now = now_ns();
        set_time(&CONNECT_START, bpf_get_current_pid_tgid(), now);
    }
    0
}

/// A connect() that failed before any SYN left (no route) never changes a
/// socket's state; only its return value tells. This is the fallback for
/// kernels where the `tcp_v4_connect`/`tcp_v6_connect` exits cannot be
/// attached: `sys_exit` sees every syscall's return, raw, so the program
/// costs a compare on every other syscall and reads the destination back
/// from the caller's registers only for connect()'s ENETUNREACH and
/// EHOSTUNREACH.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_sys_exit(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i32> {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if ret != -i64::from(ENETUNREACH) && ret != -i64::from(EHOSTUNREACH) {
        return Ok(());
    }
    let regs: u64 = ctx.arg(0);
    let nr: i64 = if cfg!(bpf_target_arch = "aarch64") {
        i64::from(read_kernel::<i32>(regs, syscall_regs::NR as u32)?)
    } else {
        read_kernel::<i64>(regs, syscall_regs::NR as u32)?
    };
    if nr != syscall_regs::NR_CONNECT {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out immediately.
    let started = unsafe { CONNECT_START.get(&pid_tgid) }.copied();
    // SAFETY: as above.
    let reported = unsafe { UNREACH_REPORTED.get(&pid_tgid) }.copied();
    if let (Some(started), Some(reported)) = (started, reported)
        && reported >= started
    {
        // This connect's SYN left and its failure was reported already.
        return Ok(());
    }
    let uservaddr: u64 = read_kernel(regs, syscall_regs::ARG2 as u32)?;
    let ptr = uservaddr as *const u8;
    // SAFETY: reads user memory through the helper, which fails cleanly.
    let family: u16 = unsafe { bpf_probe_read_user(ptr.cast::<u16>())? };
    // SAFETY: sockaddr_in / sockaddr_in6 layouts: port at 2, address at 4
    // (IPv4) or 8 (IPv6); read through the helper.
    let port = u16::from_be(unsafe { bpf_probe_read_user(ptr.add(2).cast::<u16>())? });
    let mut addr = [0u8; 16];
    if family == AF_INET {
        // SAFETY: as above.
        let a: [u8; 4] = unsafe { bpf_probe_read_user(ptr.add(4).cast::<[u8; 4]>())? };
        addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        // SAFETY: as above.
        addr = unsafe { bpf_probe_read_user(ptr.add(8).cast::<[u8; 16]>())? };
    } else {
        return Ok(());
    }
    report_sync_failure(family, addr, port, (-ret) as i32, started);
    Ok(())
}

// connect()'s failures before a SYN, at their source: the exits of the
// two functions that pick the route for a TCP connect. Unlike the syscall
// hooks these cost nothing outside TCP connects (the syscall tracepoints
// switch every task onto the slow syscall path), see connects made
// without a syscall too, and never mistake a UDP connect() for a TCP one.
// A zero return means the SYN is on its way: the socket programs take over.

#[fexit(function = "tcp_v4_connect")]
pub fn tcp_v4_connect_exit(ctx: FExitContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_connect_exit(&ctx, false) {
        Ok(()) | Err(_) => 0,
    }
}

#[fexit(function = "tcp_v6_connect")]
pub fn tcp_v6_connect_exit(ctx: FExitContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_connect_exit(&ctx, true) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_connect_exit(ctx: &FExitContext, v6: bool) -> Result<(), i32> {
    // int tcp_v{4,6}_connect(struct sock *sk, struct sockaddr *uaddr,
    //                        int addr_len); the return value follows the
    // arguments (read as an argument: bpf_get_func_ret needs 5.17).
    let ret: i64 = ctx.arg(3);
    let errno = -(ret as i32);
    if errno != ENETUNREACH && errno != EHOSTUNREACH {
        return Ok(());
    }
    // The kernel's copy of the caller's address.
    let uaddr: u64 = ctx.arg(1);
    let family: u16 = read_kernel(uaddr, 0)?;
    let port = u16::from_be(read_kernel::<u16>(uaddr, 2)?);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&read_kernel::<[u8; 4]>(uaddr, 4)?);
    } else if family == AF_INET6 {
        addr = read_kernel(uaddr, 8)?;
        // tcp_v6_connect hands an IPv4-mapped destination to
        // tcp_v4_connect, whose exit has reported it already.
        if v6 && canonical(family, addr).0 == AF_INET {
            return Ok(());
        }
    } else {
        return Ok(());
    }
    report_sync_failure(family, addr, port, errno, None);
    Ok(())
}

/// Counts and sends a connect that failed before its SYN. Runs in the
/// connecting task.
#[inline(always)]
fn report_sync_failure(family: u16, addr: [u8; 16], port: u16, errno: i32, started: Option<u64>) {
    let (family, addr) = canonical(family, addr);
    let pid_tgid = bpf_get_current_pid_tgid();
    let now = now_ns();
    let watched = is_watched(family, &addr);
    if watched || full_attribution() {
        let key = DestKey { family, port, addr };
        with_stats(&key, |stats| {
            add(&mut stats.connects);
            add(&mut stats.sync_failed);
            stats.last_failure_ns = now;
        });
    }
    emit(|event| {
        event.ts_ns = now;
        event.syn_ns = started.unwrap_or(now);
        // SAFETY: helper without arguments.
        event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        event.tgid = (pid_tgid >> 32) as u32;
        event.pid = pid_tgid as u32;
        event.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        event.daddr = addr;
        event.family = family;
        event.dport = port;
        event.errno = errno;
        event.kind = kind::SYNC_FAILED;
        if watched {
            event.flags |= flags::WATCHED;
        }
    });
}
