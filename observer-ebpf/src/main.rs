//! observer's kernel programs: TCP connect outcomes from tracepoints.
//!
//! A connect's life, as these programs see it:
//! - The exits of `tcp_v4_connect`/`tcp_v6_connect` (fexit) catch a
//!   connect that fails before any SYN (no route) by its return value and
//!   destination; on request, raw `sys_enter`/`sys_exit` do it from
//!   connect()'s registers and memory instead (`sync_failure`).
//! - `inet_sock_set_state` (`state`): CLOSE -> SYN_SENT runs in the
//!   connecting task. A connect to a watched destination (or every one,
//!   with full attribution) is *followed*: pid, comm, cgroup and SYN time
//!   go into `SOCKS`, keyed by socket address. Others cost the watch
//!   lookup only, and nothing at all while nothing is watched.
//! - SYN_SENT -> ESTABLISHED: a success; sent for watched destinations.
//! - SYN_SENT -> CLOSE: a failure; always sent (`SYN_CLOSED`), with the
//!   error the connect ended with, read from the socket (`sock`). Past a
//!   per-destination budget, failures of unfollowed connects are counted
//!   in `STORMS` instead (`storm`).
//! - ESTABLISHED or CLOSE_WAIT -> any, to a watched destination: the
//!   connection's last send (`SENT`), how requests on pooled connections
//!   are seen.
//! - The receiving side (`arrivals`), for pods on this node that user
//!   space watches: SYN_RECV -> ESTABLISHED (a connection the pod
//!   accepted), the close of such a connection (when data last arrived on
//!   it: pooled requests), and `kfree_skb` (a SYN refused for want of a
//!   listener, packets dropped once the pod's network is gone).
//! - `inet_sk_error_report` and `tcp_receive_reset` (`reports`): an error
//!   reported before the close (older kernels), and resets of followed
//!   established connections.
//!
//! The maps and load-time globals are in `maps`; docs/ARCHITECTURE.md
//! describes each.
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so core's atomic types lack
// fetch_add there; the intrinsic lowers to BPF's atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

/// One field of `SOCK_OFFSETS`, read on its own (copying the whole struct
/// at every use would cost a load per field).
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a read of a global the loader initialised; volatile so
        // the compiler does not fold in the zeros it was declared with.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(SOCK_OFFSETS.$field)) }
    };
}

mod arrivals;
mod maps;
mod reports;
mod sock;
mod state;
mod storm;
mod sync_failure;

pub(crate) use arrivals::*;
pub(crate) use maps::*;
pub(crate) use sock::*;
pub(crate) use state::*;
pub(crate) use storm::*;

pub(crate) const IPPROTO_TCP: u16 = 6;
pub(crate) const TCP_ESTABLISHED: i32 = 1;
pub(crate) const TCP_SYN_SENT: i32 = 2;
pub(crate) const TCP_SYN_RECV: i32 = 3;
pub(crate) const TCP_CLOSE: i32 = 7;
pub(crate) const TCP_CLOSE_WAIT: i32 = 8;

pub(crate) const ECONNREFUSED: i32 = 111;
pub(crate) const EHOSTUNREACH: i32 = 113;
pub(crate) const ENETUNREACH: i32 = 101;
pub(crate) const ETIMEDOUT: i32 = 110;
pub(crate) const ECONNRESET: i32 = 104;
pub(crate) const EPIPE: i32 = 32;

/// An error report and the close of the same connect are joined only when
/// they are this close in time (either order: older kernels report before
/// the close), so a stale entry for a reused 4-tuple cannot classify a
/// later connect.
pub(crate) const JOIN_WINDOW_NS: u64 = 50_000_000;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
