//! The probe's maps and load-time globals, and the small helpers that
//! update them: counters, per-destination stats, the watch lookup, events.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use observer_common::{
    AddrKey, ConnectEvent, DestKey, DestStats, DropReasons, SockOffsets, StormKey, StormStats,
    TASK_COMM_LEN, TupleKey, capacity, counter,
};

/// CLOCK_MONOTONIC now, in ns.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper without arguments, valid in every program here.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// What the kernel remembers about a socket this node is connecting with.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SockInfo {
    pub(crate) syn_ns: u64,
    pub(crate) cgroup_id: u64,
    pub(crate) tgid: u32,
    pub(crate) pid: u32,
    pub(crate) comm: [u8; TASK_COMM_LEN],
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    pub(crate) family: u16,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) established: u8,
    pub(crate) watched: u8,
}
const _: () = assert!(core::mem::size_of::<SockInfo>() == 80);

/// A socket that left SYN_SENT without an error yet.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ClosedSyn {
    pub(crate) ts_ns: u64,
    /// The task that connected.
    pub(crate) pid_tgid: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EarlyError {
    pub(crate) ts_ns: u64,
    pub(crate) errno: i32,
    pub(crate) _pad: u32,
}

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_RING_BYTES, 0);

#[map]
pub(crate) static DEST_STATS: LruHashMap<DestKey, DestStats> =
    LruHashMap::with_max_entries(capacity::DEST_STATS, 0);

#[map]
pub(crate) static SOCKS: LruHashMap<u64, SockInfo> =
    LruHashMap::with_max_entries(capacity::SOCKETS, 0);

/// Failures beyond the per-destination event budget, counted instead of
/// sent (`storm_absorbs`). Per CPU: a storm hammers one destination from
/// every CPU at once, and one shared entry would bounce between them.
#[map]
pub(crate) static STORMS: LruPerCpuHashMap<StormKey, StormStats> =
    LruPerCpuHashMap::with_max_entries(capacity::STORMS, 0);

/// 4-tuples of sockets that just left SYN_SENT, awaiting their error report.
#[map]
pub(crate) static CLOSED_TUPLES: LruHashMap<TupleKey, ClosedSyn> =
    LruHashMap::with_max_entries(capacity::TUPLES, 0);

/// When each task last entered connect() (raw `sys_enter`).
#[map]
pub(crate) static CONNECT_START: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(capacity::CONNECTING_TASKS, 0);

/// When each thread's latest followed connect failed, so that its next
/// connects (its retries) are reported wherever they go.
#[map]
pub(crate) static RECENT_FAILURES: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(capacity::CONNECTING_TASKS, 0);

/// When a connect of each task was last reported unreachable by the
/// network (after its SYN): a blocking connect() then returns the same
/// errno, which is not a failure before the SYN.
#[map]
pub(crate) static UNREACH_REPORTED: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(capacity::CONNECTING_TASKS, 0);

/// Errors reported before the socket's close (kernels before 6.10 do this
/// for timeouts and ICMP errors).
#[map]
pub(crate) static EARLY_ERRORS: LruHashMap<TupleKey, EarlyError> =
    LruHashMap::with_max_entries(capacity::TUPLES, 0);

/// Destinations user space wants every connect to (terminating pods).
#[map]
pub(crate) static WATCH: HashMap<AddrKey, u8> = HashMap::with_max_entries(capacity::WATCH, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// How many addresses `WATCH` holds, kept by user space: while it is 0
/// (no pod terminating, the usual case), a connect costs no watch lookup.
#[map]
pub(crate) static WATCHED: Array<u32> = Array::with_max_entries(1, 0);

/// An upper bound on the entries in `SOCKS`: raised by each insert,
/// lowered by each delete that found its entry. Overwrites and LRU
/// evictions leave it high, never low, so 0 means the map is empty and
/// the socket programs skip their lookups (no connect is being followed:
/// the usual case between rollouts).
#[map]
pub(crate) static FOLLOWED: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn maybe_followed() -> bool {
    FOLLOWED.get(0).is_none_or(|n| *n != 0)
}

#[inline(always)]
pub(crate) fn count_followed(delta: i64) {
    if let Some(ptr) = FOLLOWED.get_ptr_mut(0) {
        // SAFETY: a valid pointer to the array's one value; the add is
        // atomic, as several CPUs may follow and forget sockets at once.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(ptr, delta as u64) };
    }
}

/// Whether any destination is watched, or every connect is followed.
#[inline(always)]
pub(crate) fn following_any() -> bool {
    full_attribution() || WATCHED.get(0).is_none_or(|n| *n != 0)
}

/// Where `struct sock`'s fields are on this kernel: written by user space
/// from the kernel's BTF before the object is loaded (zeros here only
/// until then; the loader refuses to run without them).
#[unsafe(no_mangle)]
pub(crate) static SOCK_OFFSETS: SockOffsets = SockOffsets {
    daddr: 0,
    rcv_saddr: 0,
    dport: 0,
    sport: 0,
    family: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    protocol: 0,
    err: 0,
    head_block: 0,
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
    max_ack_backlog: 0,
    data_segs_out: 0,
    data_segs_in: 0,
    delivered_mstamp: 0,
    tcp_mstamp: 0,
};

/// The kernel's drop reasons the receiving side classifies, and where a
/// `sk_buff` keeps its network header: written by user space from BTF
/// before the object is loaded. All `ABSENT` here, so that an object
/// loaded without them reports no drop.
#[unsafe(no_mangle)]
pub(crate) static DROP_REASONS: DropReasons = DropReasons::NONE;

/// Non-zero: every program returns at once. The benchmark loads the probe
/// this way to measure what the hooks themselves cost the kernel.
#[unsafe(no_mangle)]
pub(crate) static HOOKS_ONLY: u8 = 0;

/// Non-zero: every connect is followed from its SYN (a socket-map entry
/// each), so every failure carries its process; `observer trace
/// --full-attribution`. Zero: only connects to watched destinations are.
#[unsafe(no_mangle)]
pub(crate) static FULL_ATTRIBUTION: u8 = 0;

#[inline(always)]
pub(crate) fn full_attribution() -> bool {
    // SAFETY: as for `hooks_only`.
    unsafe { core::ptr::read_volatile(&FULL_ATTRIBUTION) != 0 }
}

#[inline(always)]
pub(crate) fn hooks_only() -> bool {
    // SAFETY: a read of a global the loader may initialise; volatile so
    // the compiler does not fold in the zero it was declared with.
    unsafe { core::ptr::read_volatile(&HOOKS_ONLY) != 0 }
}

pub(crate) fn bump(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of a map value that lives as long as the map;
        // the program is not preempted on this CPU while it runs.
        unsafe { *ptr += 1 };
    }
}

pub(crate) fn add(field: &mut u64) {
    // SAFETY: `field` points into a map value shared across CPUs; the
    // atomic add is what makes concurrent updates exact.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, 1) };
}

/// A fresh destination's counters.
static ZERO_DEST_STATS: DestStats = DestStats::ZERO;

#[inline(always)]
pub(crate) fn dest_stats(key: &DestKey) -> Option<*mut DestStats> {
    if let Some(ptr) = DEST_STATS.get_ptr_mut(key) {
        return Some(ptr);
    }
    // BPF_NOEXIST: another CPU may have inserted it in the meantime. The
    // zeroes come from read-only data rather than the stack.
    let _ = DEST_STATS.insert(key, &ZERO_DEST_STATS, 1);
    DEST_STATS.get_ptr_mut(key)
}

#[inline(always)]
pub(crate) fn with_stats(key: &DestKey, f: impl FnOnce(&mut DestStats)) {
    if let Some(ptr) = dest_stats(key) {
        // SAFETY: a valid pointer to a map value returned by the kernel.
        f(unsafe { &mut *ptr });
    }
}

#[inline(always)]
pub(crate) fn is_watched(family: u16, addr: &[u8; 16]) -> bool {
    let key = AddrKey {
        family,
        _pad: 0,
        addr: *addr,
    };
    // SAFETY: the value is a plain u8 and only read here.
    unsafe { WATCH.get(&key) }.is_some()
}

#[inline(always)]
pub(crate) fn emit(fill: impl FnOnce(&mut ConnectEvent)) {
    match EVENTS.reserve::<ConnectEvent>(0) {
        Some(mut entry) => {
            // Filled in place in the ring: an event built on the stack and
            // copied would cost 96 bytes of stack at every call site, and
            // kernels before private stacks (6.13) allow 512 bytes for a
            // program and every function it calls.
            let event = entry.as_mut_ptr();
            // SAFETY: `event` points at the reserved, writable record of
            // exactly one ConnectEvent; every byte is zeroed before the
            // reference is made, and all-zero is a valid ConnectEvent.
            unsafe { core::ptr::write_bytes(event, 0, 1) };
            // SAFETY: as above: initialised, and only this program holds it
            // until it is submitted.
            fill(unsafe { &mut *event });
            entry.submit(0);
            bump(counter::EVENTS_SENT);
        }
        None => bump(counter::RINGBUF_DROPS),
    }
}
