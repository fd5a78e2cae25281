//! observer's kernel programs: TCP connect outcomes from tracepoints.
//!
//! A connect's life, as these programs see it:
//! - The exits of `tcp_v4_connect`/`tcp_v6_connect` (fexit) catch a
//!   connect that fails before any SYN (no route) by its return value and
//!   destination. Where those cannot be attached, raw `sys_enter`/`sys_exit`
//!   do it from connect()'s registers and memory instead.
//! - `inet_sock_set_state` CLOSE -> SYN_SENT runs in the connecting task:
//!   pid, comm and cgroup are recorded in `SOCKS`, keyed by socket address.
//!   The socket tracepoints are attached raw and read `struct sock` at
//!   offsets user space found in the kernel's BTF (`SOCK_OFFSETS`).
//! - SYN_SENT -> ESTABLISHED: a success; sent to user space only for watched
//!   destinations.
//! - SYN_SENT -> CLOSE: a failure; always sent (`SYN_CLOSED`). The error the
//!   kernel reports for it (`inet_sk_error_report`, joined by 4-tuple within
//!   50 ms) is sent as an `ERROR` event. No error means the application gave
//!   up (aborted).
//! - `tcp_receive_reset` on a socket this node established: an in-flight
//!   connection cut off.
//!
//! Every path also updates the per-destination counters in `DEST_STATS`, so
//! user space can account for connects it never saw as events.
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so core's atomic types lack
// fetch_add there; the intrinsic lowers to BPF's atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod sync_failure;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    AF_INET, AF_INET6, AddrKey, ConnectEvent, DestKey, DestStats, SockOffsets, StormKey,
    StormStats, TASK_COMM_LEN, TupleKey, capacity, counter, flags, kind, storm,
};

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const ENETUNREACH: i32 = 101;
const ETIMEDOUT: i32 = 110;
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;

/// An error report and the close of the same connect are joined only when
/// they are this close in time (either order: older kernels report before
/// the close), so a stale entry for a reused 4-tuple cannot classify a
/// later connect.
const JOIN_WINDOW_NS: u64 = 50_000_000;

/// What the kernel remembers about a socket this node is connecting with.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockInfo {
    syn_ns: u64,
    cgroup_id: u64,
    tgid: u32,
    pid: u32,
    comm: [u8; TASK_COMM_LEN],
    saddr: [u8; 16],
    daddr: [u8; 16],
    family: u16,
    sport: u16,
    dport: u16,
    established: u8,
    watched: u8,
}
const _: () = assert!(core::mem::size_of::<SockInfo>() == 80);

/// A socket that left SYN_SENT without an error yet.
#[repr(C)]
#[derive(Clone, Copy)]
struct ClosedSyn {
    ts_ns: u64,
    /// The task that connected.
    pid_tgid: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct EarlyError {
    ts_ns: u64,
    errno: i32,
    _pad: u32,
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_RING_BYTES, 0);

#[map]
static DEST_STATS: LruHashMap<DestKey, DestStats> =
    LruHashMap::with_max_entries(capacity::DEST_STATS, 0);

#[map]
static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(capacity::SOCKETS, 0);

/// Failures beyond the per-destination event budget, counted instead of
/// sent (`storm_absorbs`).
#[map]
static STORMS: LruHashMap<StormKey, StormStats> = LruHashMap::with_max_entries(capacity::STORMS, 0);

/// 4-tuples of sockets that just left SYN_SENT, awaiting their error report.
#[map]
static CLOSED_TUPLES: LruHashMap<TupleKey, ClosedSyn> =
    LruHashMap::with_max_entries(capacity::TUPLES, 0);

/// When each task last entered connect() (raw `sys_enter`).
#[map]
static CONNECT_START: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(capacity::CONNECTING_TASKS, 0);

/// When a connect of each task was last reported unreachable by the
/// network (after its SYN): a blocking connect() then returns the same
/// errno, which is not a failure before the SYN.
#[map]
static UNREACH_REPORTED: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(capacity::CONNECTING_TASKS, 0);

/// Errors reported before the socket's close (kernels before 6.10 do this
/// for timeouts and ICMP errors).
#[map]
static EARLY_ERRORS: LruHashMap<TupleKey, EarlyError> =
    LruHashMap::with_max_entries(capacity::TUPLES, 0);

/// Destinations user space wants every connect to (terminating pods).
#[map]
static WATCH: HashMap<AddrKey, u8> = HashMap::with_max_entries(capacity::WATCH, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// How many addresses `WATCH` holds, kept by user space: while it is 0
/// (no pod terminating, the usual case), a connect costs no watch lookup.
#[map]
static WATCHED: Array<u32> = Array::with_max_entries(1, 0);

/// An upper bound on the entries in `SOCKS`: raised by each insert,
/// lowered by each delete that found its entry. Overwrites and LRU
/// evictions leave it high, never low, so 0 means the map is empty and
/// the socket programs skip their lookups (no connect is being followed:
/// the usual case between rollouts).
#[map]
static FOLLOWED: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn maybe_followed() -> bool {
    FOLLOWED.get(0).is_none_or(|n| *n != 0)
}

#[inline(always)]
fn count_followed(delta: i64) {
    if let Some(ptr) = FOLLOWED.get_ptr_mut(0) {
        // SAFETY: a valid pointer to the array's one value; the add is
        // atomic, as several CPUs may follow and forget sockets at once.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(ptr, delta as u64) };
    }
}

/// Whether any destination is watched, or every connect is followed.
#[inline(always)]
fn following_any() -> bool {
    full_attribution() || WATCHED.get(0).is_none_or(|n| *n != 0)
}

/// Where `struct sock`'s fields are on this kernel: written by user space
/// from the kernel's BTF before the object is loaded (zeros here only
/// until then; the loader refuses to run without them).
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    daddr: 0,
    rcv_saddr: 0,
    dport: 0,
    sport: 0,
    family: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    protocol: 0,
    err: 0,
    state: 0,
    cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    lsndtime: 0,
    lrcvtime: 0,
    retrans_stamp: 0,
    err_soft: 0,
    error_queue: 0,
    skb_cb: 0,
    exterr_errno: 0,
};

/// Non-zero: every program returns at once. The benchmark loads the probe
/// this way to measure what the hooks themselves cost the kernel.
#[unsafe(no_mangle)]
static HOOKS_ONLY: u8 = 0;

/// Non-zero: every connect is followed from its SYN (a socket-map entry
/// each), so every failure carries its process; `observer trace
/// --full-attribution`. Zero: only connects to watched destinations are.
#[unsafe(no_mangle)]
static FULL_ATTRIBUTION: u8 = 0;

#[inline(always)]
pub(crate) fn full_attribution() -> bool {
    // SAFETY: as for `hooks_only`.
    unsafe { core::ptr::read_volatile(&FULL_ATTRIBUTION) != 0 }
}

#[inline(always)]
fn hooks_only() -> bool {
    // SAFETY: a read of a global the loader may initialise; volatile so
    // the compiler does not fold in the zero it was declared with.
    unsafe { core::ptr::read_volatile(&HOOKS_ONLY) != 0 }
}

/// One field of `SOCK_OFFSETS`, read on its own (copying the whole struct
/// at every use would cost a load per field).
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a read of a global the loader initialised; volatile so
        // the compiler does not fold in the zeros it was declared with.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(SOCK_OFFSETS.$field)) }
    };
}

/// Reads a `T` at `offset` bytes into the kernel object at `sk`.
#[inline(always)]
fn read_kernel<T>(sk: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((sk + u64::from(offset)) as *const T) }.map_err(|e| e as i32)
}

/// The socket's family and destination address (canonicalised): all the
/// watch lookup needs, read before anything else.
#[inline(always)]
fn sk_destination(sk: u64) -> Result<(u16, [u8; 16]), i32> {
    let family: u16 = read_kernel(sk, offset!(family))?;
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        daddr[..4].copy_from_slice(&read_kernel::<[u8; 4]>(sk, offset!(daddr))?);
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
fn sk_endpoints(sk: u64) -> Result<(u16, [u8; 16], [u8; 16], u16, u16), i32> {
    let family: u16 = read_kernel(sk, offset!(family))?;
    let dport = u16::from_be(read_kernel::<u16>(sk, offset!(dport))?);
    let sport = u16::from_be(read_kernel::<u16>(sk, offset!(sport))?);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        saddr[..4].copy_from_slice(&read_kernel::<[u8; 4]>(sk, offset!(rcv_saddr))?);
        daddr[..4].copy_from_slice(&read_kernel::<[u8; 4]>(sk, offset!(daddr))?);
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
fn sk_cgroup_id(sk: u64) -> Option<u64> {
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

fn bump(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of a map value that lives as long as the map;
        // the program is not preempted on this CPU while it runs.
        unsafe { *ptr += 1 };
    }
}

fn add(field: &mut u64) {
    // SAFETY: `field` points into a map value shared across CPUs; the
    // atomic add is what makes concurrent updates exact.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, 1) };
}

/// IPv4-mapped IPv6 addresses (a v6 socket talking to a v4 peer) are
/// reported as IPv4, so one pod IP has one key whatever the socket family.
#[inline(always)]
fn canonical(family: u16, addr: [u8; 16]) -> (u16, [u8; 16]) {
    if family == AF_INET6 && addr[..10] == [0u8; 10] && addr[10] == 0xff && addr[11] == 0xff {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&addr[12..16]);
        return (AF_INET, v4);
    }
    (family, addr)
}

#[inline(always)]
fn dest_stats(key: &DestKey) -> Option<*mut DestStats> {
    if let Some(ptr) = DEST_STATS.get_ptr_mut(key) {
        return Some(ptr);
    }
    // BPF_NOEXIST: another CPU may have inserted it in the meantime.
    let _ = DEST_STATS.insert(key, &DestStats::default(), 1);
    DEST_STATS.get_ptr_mut(key)
}

#[inline(always)]
fn with_stats(key: &DestKey, f: impl FnOnce(&mut DestStats)) {
    if let Some(ptr) = dest_stats(key) {
        // SAFETY: a valid pointer to a map value returned by the kernel.
        f(unsafe { &mut *ptr });
    }
}

#[inline(always)]
fn is_watched(family: u16, addr: &[u8; 16]) -> bool {
    let key = AddrKey {
        family,
        _pad: 0,
        addr: *addr,
    };
    // SAFETY: the value is a plain u8 and only read here.
    unsafe { WATCH.get(&key) }.is_some()
}

#[inline(always)]
fn emit(fill: impl FnOnce(&mut ConnectEvent)) {
    match EVENTS.reserve::<ConnectEvent>(0) {
        Some(mut entry) => {
            let mut event = ConnectEvent::zeroed();
            fill(&mut event);
            entry.write(event);
            entry.submit(0);
            bump(counter::EVENTS_SENT);
        }
        None => bump(counter::RINGBUF_DROPS),
    }
}

#[inline(always)]
fn set_endpoints(
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
fn fill_from_sock(event: &mut ConnectEvent, info: &SockInfo) {
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

fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Result<(), i32> {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let skaddr: u64 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    match (oldstate, newstate) {
        (TCP_CLOSE, TCP_SYN_SENT) => on_syn_sent(ctx, skaddr),
        // Only TCP sockets are in SOCKS, so these need no protocol check.
        (TCP_SYN_SENT, TCP_ESTABLISHED) => on_established(skaddr),
        (TCP_SYN_SENT, TCP_CLOSE) => on_syn_closed(skaddr),
        (TCP_ESTABLISHED | TCP_CLOSE_WAIT, _) => {
            // The peer's FIN: whatever was sent since data last came back
            // was in flight.
            let peer_closed = oldstate == TCP_ESTABLISHED && newstate == TCP_CLOSE_WAIT;
            let result = on_leaving_established(skaddr, peer_closed);
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
fn forget_socket(skaddr: u64) {
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
fn on_leaving_established(skaddr: u64, peer_closed: bool) -> Result<(), i32> {
    if !following_any() {
        return Ok(());
    }
    let protocol: u16 = read_kernel(skaddr, offset!(protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, daddr) = sk_destination(skaddr)?;
    if !is_watched(family, &daddr) {
        return Ok(());
    }
    let (family, saddr, daddr, sport, dport) = sk_endpoints(skaddr)?;
    let lsndtime: u32 = read_kernel(skaddr, offset!(lsndtime))?;
    // An error the connection ends with (set before the kernel closes it,
    // on every kernel): a timeout or an unreachable under a request. A
    // reset is `tcp_receive_reset`'s.
    let err: i32 = read_kernel(skaddr, offset!(err)).unwrap_or(0);
    let errno = if err == ECONNRESET || err == EPIPE {
        0
    } else {
        err
    };
    let lrcvtime: u32 = read_kernel(skaddr, offset!(lrcvtime))?;
    // Sent after the last data received (jiffies wrap: compare signed).
    let cut = peer_closed && (lsndtime.wrapping_sub(lrcvtime) as i32) > 0;
    // SAFETY: helpers without arguments, valid in tracepoint context.
    let (now, jiffies) = unsafe { (bpf_ktime_get_ns(), bpf_jiffies64()) };
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
        event.flags |= flags::WATCHED;
        if cut {
            event.flags |= flags::CUT;
        }
        event.since_send_jiffies = (jiffies as u32).wrapping_sub(lsndtime);
        event.errno = errno;
        event.kind = kind::SENT;
    });
    Ok(())
}

fn on_syn_sent(ctx: &RawTracePointContext, skaddr: u64) -> Result<(), i32> {
    if !following_any() {
        return Ok(());
    }
    let protocol: u16 = read_kernel(skaddr, offset!(protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, daddr) = sk_destination(skaddr)?;
    let watched = is_watched(family, &daddr);
    // Connects to destinations nobody watches cost the watch lookup only:
    // if they fail, their close reports them from the socket itself.
    if !watched && !full_attribution() {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let (family, saddr, daddr, _, dport) = sk_endpoints(skaddr)?;
    let pid_tgid = bpf_get_current_pid_tgid();
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
    if watched {
        emit(|event| {
            fill_from_sock(event, &info);
            event.ts_ns = now;
            event.kind = kind::CONNECT;
        });
    }
    Ok(())
}

fn on_established(skaddr: u64) -> Result<(), i32> {
    if !maybe_followed() {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
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

fn on_syn_closed(skaddr: u64) -> Result<(), i32> {
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value is copied out before the entry is removed.
    let followed = if maybe_followed() {
        // SAFETY: as below.
        unsafe { SOCKS.get(&skaddr) }.copied()
    } else {
        None
    };
    let Some(mut info) = followed else {
        return on_unfollowed_syn_closed(skaddr, now);
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
    Ok(())
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
fn connect_error(skaddr: u64) -> i32 {
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

/// A connect not followed from its SYN (its destination was not watched)
/// left SYN_SENT without being established: reported from the socket
/// alone, with no map work. The process is known only when the
/// application closed the socket itself (no error: it gave up); an error
/// the kernel found (an RST, an ICMP error, a timeout) is handled in
/// softirq or a timer, on behalf of whatever task was running.
#[inline(never)]
fn on_unfollowed_syn_closed(skaddr: u64, now: u64) -> Result<(), i32> {
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

/// A failure storm must not make an incident worse: past
/// `storm::EVENTS_PER_WINDOW` failures of one destination and connector in
/// a `storm::WINDOW_NS` window, failures are counted in `STORMS` (by
/// class, with the latest failure and SYN times) instead of sent, and user
/// space reads the counts. Returns whether this failure was counted so.
/// Concurrent CPUs may both open a window or overshoot the budget by an
/// event: the budget is a rate, the counts stay exact.
#[inline(never)]
fn storm_absorbs(key: &StormKey, errno: i32, now: u64, syn_ns: u64) -> bool {
    let Some(ptr) = STORMS.get_ptr_mut(key) else {
        let fresh = StormStats {
            window_start_ns: now,
            sent_in_window: 1,
            ..StormStats::default()
        };
        let _ = STORMS.insert(key, &fresh, 0);
        return false;
    };
    // SAFETY: a valid pointer to a map value returned by the kernel.
    let stats = unsafe { &mut *ptr };
    if now.saturating_sub(stats.window_start_ns) >= storm::WINDOW_NS {
        stats.window_start_ns = now;
        stats.sent_in_window = 1;
        return false;
    }
    if stats.sent_in_window < storm::EVENTS_PER_WINDOW {
        stats.sent_in_window += 1;
        return false;
    }
    match errno {
        0 => add(&mut stats.aborted),
        ECONNREFUSED => add(&mut stats.refused),
        EHOSTUNREACH => add(&mut stats.host_unreachable),
        ENETUNREACH => add(&mut stats.net_unreachable),
        ETIMEDOUT => add(&mut stats.timed_out),
        _ => add(&mut stats.other_error),
    }
    stats.last_failure_ns = now;
    if syn_ns > stats.last_syn_ns {
        stats.last_syn_ns = syn_ns;
    }
    true
}

/// When a connecting socket's first SYN left (CLOCK_MONOTONIC ns, to the
/// millisecond below), from `tcp_sock.retrans_stamp`; 0 when it does not
/// say.
#[inline(always)]
fn first_syn_time(skaddr: u64, now: u64) -> u64 {
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

/// Remembers that a connect of `pid_tgid` failed unreachable after its SYN.
#[inline(always)]
fn note_unreachable(pid_tgid: u64, errno: i32, now: u64) {
    if errno != EHOSTUNREACH && errno != ENETUNREACH {
        return;
    }
    set_time(&UNREACH_REPORTED, pid_tgid, now);
}

/// `map[key] = now`, in place when the key exists (no allocation).
#[inline(always)]
fn set_time(map: &LruHashMap<u64, u64>, key: u64, now: u64) {
    match map.get_ptr_mut(&key) {
        // SAFETY: a valid pointer to a map value returned by the kernel.
        Some(ptr) => unsafe { *ptr = now },
        None => {
            let _ = map.insert(&key, &now, 0);
        }
    }
}

fn count_error(stats: &mut DestStats, errno: i32) {
    match errno {
        ECONNREFUSED => add(&mut stats.refused),
        EHOSTUNREACH => add(&mut stats.host_unreachable),
        ENETUNREACH => add(&mut stats.net_unreachable),
        ETIMEDOUT => add(&mut stats.timed_out),
        _ => add(&mut stats.other_error),
    }
}

#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    if hooks_only() {
        return 0;
    }
    match try_inet_sk_error_report(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_inet_sk_error_report(ctx: &RawTracePointContext) -> Result<(), i32> {
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
    let now = unsafe { bpf_ktime_get_ns() };
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

fn try_tcp_receive_reset(ctx: &RawTracePointContext) -> Result<(), i32> {
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
    let now = unsafe { bpf_ktime_get_ns() };
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
