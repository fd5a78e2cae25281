//! The contract between observer's kernel programs and user space.
//!
//! Every type here is `#[repr(C)]` and plain old data: the kernel writes the
//! bytes, user space decodes them. Sizes are asserted at compile time so a
//! field added on one side and not the other fails the build, not the run.
//! Integer constants are used instead of Rust enums because an enum with an
//! out-of-range discriminant read from the kernel would be undefined
//! behaviour.
#![no_std]

/// Length of a task's `comm`, as in the kernel.
pub const TASK_COMM_LEN: usize = 16;

/// How long after a thread's failed connect (to a watched destination) the
/// kernel also reports that thread's connects to destinations nobody
/// watches: its retry usually goes to a healthy pod, and user space needs
/// to see it to tell a failure the ingress hid from one users saw. User
/// space pairs within its own, shorter retry window.
pub const RETRY_REPORT_WINDOW_NS: u64 = 50_000_000;

/// `AF_INET` and `AF_INET6`, as the tracepoints report them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// What a [`ConnectEvent`] reports.
pub mod kind {
    /// A SYN to a watched destination (sent in process context; the source
    /// port is not assigned yet, so `sport` is 0).
    pub const CONNECT: u8 = 1;
    /// SYN_SENT -> ESTABLISHED to a watched destination.
    pub const ESTABLISHED: u8 = 2;
    /// The socket left SYN_SENT without being established. `errno` is set
    /// when the kernel reported the error before the close (older kernels);
    /// otherwise an [`ERROR`] event with the same 4-tuple follows, and no
    /// such event means the application gave up (`aborted`).
    pub const SYN_CLOSED: u8 = 3;
    /// The error the kernel reported for a socket that just left SYN_SENT.
    /// Carries the 4-tuple and `errno` only.
    pub const ERROR: u8 = 4;
    /// connect() failed before any SYN was sent (no route).
    pub const SYNC_FAILED: u8 = 5;
    /// An RST received on an established connection this node opened.
    pub const RESET: u8 = 6;
    /// A connection to a watched destination left ESTABLISHED (or
    /// CLOSE_WAIT): `since_send_jiffies` says how long before `ts_ns` it
    /// last sent data, and `syn_ns` carries the kernel's jiffies at
    /// `ts_ns` (to convert). This is how requests sent over pooled,
    /// keep-alive connections are seen without any per-send work. `errno`
    /// is set when the connection ended with an error the kernel gave the
    /// application (a retransmission timeout, an ICMP unreachable): a
    /// pooled connection to a vanished pod failing under a request.
    pub const SENT: u8 = 7;
    /// Receiving side: a pod on this node accepted a connection (its
    /// socket went SYN_RECV -> ESTABLISHED). `saddr`/`sport` are the
    /// sender's, `daddr`/`dport` the watched pod's; `cgroup_id` is the
    /// pod's socket's.
    pub const ACCEPTED: u8 = 8;
    /// Receiving side: a connection a watched pod accepted left
    /// ESTABLISHED. `since_send_jiffies` says how long before `ts_ns`
    /// data last arrived on it (`icsk_ack.lrcvtime`) and `syn_ns` carries
    /// the kernel's jiffies at `ts_ns`, as for [`SENT`]: a request over a
    /// pooled connection, dated without per-packet work. Addresses as for
    /// [`ACCEPTED`].
    pub const RECEIVED: u8 = 9;
    /// Receiving side: the kernel freed a packet addressed to a watched
    /// pod (`kfree_skb`, with a drop reason). `errno` carries the
    /// [`drop_class`](crate::drop_class) and `flags` has
    /// [`SYN`](crate::flags::SYN) when the packet opened a connection. A
    /// SYN dropped for want of a socket was answered with an RST: a
    /// connect the pod refused.
    pub const DROPPED: u8 = 10;
    /// The last kind, for the decoder's range check.
    pub const LAST: u8 = DROPPED;
}

/// Why the kernel dropped a packet for a watched pod (`DROPPED`'s
/// `errno`), from the kernel's `enum skb_drop_reason`, whose values differ
/// between kernels (user space finds them in BTF: [`DropReasons`]).
pub mod drop_class {
    /// No socket took it (`NO_SOCKET`): nothing listens on the port (a
    /// SYN is answered with an RST: refused), or the connection is gone.
    pub const NO_SOCKET: i32 = 1;
    /// No route to the pod's address any more (`IP_INNOROUTES`,
    /// `IP_OUTNOROUTES`): its interface and route went with its network.
    pub const NO_ROUTE: i32 = 2;
    /// The pod's address stopped answering neighbour resolution
    /// (`NEIGH_FAILED`, `NEIGH_DEAD`): its network is gone from the link.
    pub const NEIGHBOUR: i32 = 3;
    /// The frame reached a host on the pod's link that is not its
    /// destination (`OTHERHOST`): the pod's address still resolves to a
    /// link address nobody holds any more, so a bridge floods its frames
    /// to the other ports, each of which drops its copy.
    pub const OTHER_HOST: i32 = 4;
}

/// The kernel's `enum skb_drop_reason` values the probe classifies,
/// looked up by name in BTF at load time ([`SockOffsets::ABSENT`] for a
/// reason this kernel does not have), and where `struct sk_buff` keeps
/// the packet's network header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropReasons {
    /// `sk_buff.head` (a pointer).
    pub skb_head: u32,
    /// `sk_buff.network_header` (a u16 offset from `head`).
    pub skb_network_header: u32,
    pub no_socket: u32,
    pub ip_in_no_routes: u32,
    pub ip_out_no_routes: u32,
    pub neigh_failed: u32,
    pub neigh_dead: u32,
    pub other_host: u32,
}

impl DropReasons {
    /// Nothing known: every program that reads drops returns at once.
    pub const NONE: DropReasons = DropReasons {
        skb_head: SockOffsets::ABSENT,
        skb_network_header: SockOffsets::ABSENT,
        no_socket: SockOffsets::ABSENT,
        ip_in_no_routes: SockOffsets::ABSENT,
        ip_out_no_routes: SockOffsets::ABSENT,
        neigh_failed: SockOffsets::ABSENT,
        neigh_dead: SockOffsets::ABSENT,
        other_host: SockOffsets::ABSENT,
    };

    /// The drop class of a kernel drop reason, or 0 for a drop the probe
    /// does not report.
    pub fn class_of(&self, reason: u32) -> i32 {
        if reason == SockOffsets::ABSENT {
            0
        } else if reason == self.no_socket {
            drop_class::NO_SOCKET
        } else if reason == self.ip_in_no_routes || reason == self.ip_out_no_routes {
            drop_class::NO_ROUTE
        } else if reason == self.neigh_failed || reason == self.neigh_dead {
            drop_class::NEIGHBOUR
        } else if reason == self.other_host {
            drop_class::OTHER_HOST
        } else {
            0
        }
    }
}

/// `ConnectEvent::flags` bits.
pub mod flags {
    /// The destination is in the watch map.
    pub const WATCHED: u8 = 1;
    /// `SENT`: the peer closed the connection (FIN) while a request was in
    /// flight on it (data sent after the last data received).
    pub const CUT: u8 = 2;
    /// `DROPPED`: the packet was a SYN (a new connection).
    pub const SYN: u8 = 4;
}

/// One connect outcome, written by the kernel into the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    /// CLOCK_MONOTONIC ns of this event.
    pub ts_ns: u64,
    /// CLOCK_MONOTONIC ns of the SYN (0 when not known, e.g. `ERROR`).
    pub syn_ns: u64,
    /// cgroup v2 id of the connector: the cgroup the socket was created in
    /// (the connecting task's where the kernel lacks socket cgroup data);
    /// 0 when not known.
    pub cgroup_id: u64,
    /// Source address; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    /// Destination address; IPv4 in the first 4 bytes.
    pub daddr: [u8; 16],
    /// Connecting process (tgid) and thread (pid); 0 when not known.
    pub tgid: u32,
    pub pid: u32,
    /// Positive errno, or 0.
    pub errno: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    pub flags: u8,
    /// `SENT` only: jiffies from the connection's last data sent
    /// (`tcp_sock.lsndtime`) to `ts_ns`.
    pub since_send_jiffies: u32,
    /// Command name of the connecting task, NUL padded.
    pub comm: [u8; TASK_COMM_LEN],
}

impl ConnectEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();

    pub const fn zeroed() -> Self {
        ConnectEvent {
            ts_ns: 0,
            syn_ns: 0,
            cgroup_id: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            tgid: 0,
            pid: 0,
            errno: 0,
            sport: 0,
            dport: 0,
            family: 0,
            kind: 0,
            flags: 0,
            since_send_jiffies: 0,
            comm: [0; TASK_COMM_LEN],
        }
    }
}

/// Key of the per-destination statistics and of the kernel's tuple maps:
/// one remote address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestKey {
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    pub addr: [u8; 16],
}

/// Key of the failure-storm map: one destination and the connector (the
/// socket's cgroup) failing to reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StormKey {
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
    pub cgroup_id: u64,
}

/// Failures of one [`StormKey`] beyond the events the kernel sends one by
/// one ([`storm::EVENTS_PER_WINDOW`] per [`storm::WINDOW_NS`]): counted
/// here instead, cumulatively (user space reads the map and sends on what
/// grew since its last look).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StormStats {
    /// When the current rate window began (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// Events sent one by one in the current window.
    pub sent_in_window: u64,
    /// Failures counted here and not sent, by class (cumulative).
    pub refused: u64,
    pub host_unreachable: u64,
    pub net_unreachable: u64,
    pub timed_out: u64,
    /// Closed by the application while connecting, with no error.
    pub aborted: u64,
    pub other_error: u64,
    /// The latest failure counted here, and the latest SYN among them
    /// (0: unknown).
    pub last_failure_ns: u64,
    pub last_syn_ns: u64,
}

/// The kernel's failure-storm budget.
pub mod storm {
    /// The rate window.
    pub const WINDOW_NS: u64 = 100_000_000;
    /// Failures of one destination and connector sent one by one per
    /// window, on each CPU; the rest are counted in the storm map.
    pub const EVENTS_PER_WINDOW: u64 = 64;
}

/// Key of the watch map: a destination address, any port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub family: u16,
    pub _pad: u16,
    pub addr: [u8; 16],
}

/// A TCP 4-tuple, used to join the close of a SYN_SENT socket with the
/// error the kernel reports for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Per-destination counters aggregated in the kernel (LRU map `DEST_STATS`).
///
/// Counts are cumulative since the program was loaded. `aborted` is not
/// counted directly: it is `syn_closed` minus the asynchronous errors, the
/// connects that left SYN_SENT without the kernel reporting an error.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestStats {
    /// SYNs sent, plus connect() calls that failed before a SYN.
    pub connects: u64,
    pub established: u64,
    /// Sockets that left SYN_SENT without being established.
    pub syn_closed: u64,
    pub refused: u64,
    pub host_unreachable: u64,
    pub net_unreachable: u64,
    pub timed_out: u64,
    /// Any other error reported for a socket leaving SYN_SENT.
    pub other_error: u64,
    /// connect() failed synchronously (no SYN): ENETUNREACH / EHOSTUNREACH.
    pub sync_failed: u64,
    /// RSTs received on established connections.
    pub resets: u64,
    pub last_syn_ns: u64,
    pub last_established_ns: u64,
    pub last_failure_ns: u64,
}

impl DestStats {
    /// Nothing counted yet (a constant, so the kernel side can keep it in
    /// read-only data instead of building it on its small stack).
    pub const ZERO: DestStats = DestStats {
        connects: 0,
        established: 0,
        syn_closed: 0,
        refused: 0,
        host_unreachable: 0,
        net_unreachable: 0,
        timed_out: 0,
        other_error: 0,
        sync_failed: 0,
        resets: 0,
        last_syn_ns: 0,
        last_established_ns: 0,
        last_failure_ns: 0,
    };
}

/// Index of the counters in the per-CPU `COUNTERS` array.
pub mod counter {
    /// Ring-buffer reservations that failed: events lost.
    pub const RINGBUF_DROPS: u32 = 0;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 1;
    /// Tracked-socket map inserts that failed.
    pub const MAP_FULL: u32 = 2;
    pub const COUNT: u32 = 4;
}

/// Capacities of the kernel maps; user space may override the ring size.
pub mod capacity {
    pub const EVENTS_RING_BYTES: u32 = 1 << 22;
    pub const DEST_STATS: u32 = 65_536;
    pub const SOCKETS: u32 = 131_072;
    pub const TUPLES: u32 = 16_384;
    pub const WATCH: u32 = 16_384;
    pub const CONNECTING_TASKS: u32 = 16_384;
    pub const STORMS: u32 = 4_096;
}

/// Where the fields the probe reads live in the running kernel's
/// `struct sock`, in bytes from the start of the socket. User space finds
/// them in the kernel's BTF at load time and writes them into the kernel
/// object's `SOCK_OFFSETS` global, so the same object reads sockets
/// correctly on every kernel whose layout differs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_daddr` (IPv4, network order).
    pub daddr: u32,
    /// `__sk_common.skc_rcv_saddr` (IPv4, network order).
    pub rcv_saddr: u32,
    /// `__sk_common.skc_dport` (network order).
    pub dport: u32,
    /// `inet_sock.inet_sport`: the local port (network order). Unlike
    /// `__sk_common.skc_num`, it survives the close: the kernel releases an
    /// ephemeral port (zeroing `skc_num`) before the state-change
    /// tracepoint fires.
    pub sport: u32,
    /// `__sk_common.skc_family`.
    pub family: u32,
    /// `__sk_common.skc_v6_daddr`.
    pub v6_daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr`.
    pub v6_rcv_saddr: u32,
    /// `sk_protocol` (a u16 since Linux 5.6).
    pub protocol: u32,
    /// `sk_err` (an int).
    pub err: u32,
    /// 1 when `__sk_common` begins with its long-standing head (`daddr`,
    /// `rcv_saddr`, hash, `dport`, `num`, `family` at 0, 4, 8, 12, 14, 16
    /// from `daddr`): the probe then reads the head in one go.
    pub head_block: u32,
    /// `__sk_common.skc_state` (a byte).
    pub state: u32,
    /// `sk_cgrp_data.cgroup`: the cgroup the socket was created in (a
    /// `struct cgroup *`), or [`SockOffsets::ABSENT`] on kernels without
    /// socket cgroup data. This is the connector even where the program
    /// runs in softirq, on behalf of whatever task happens to be current.
    pub cgroup: u32,
    /// `cgroup.kn` (a `struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kernfs_node.id`: the cgroup id, the inode number of its directory.
    pub kn_id: u32,
    /// `tcp_sock.lsndtime`: jiffies (low 32 bits) of the last data sent.
    pub lsndtime: u32,
    /// `inet_connection_sock.icsk_ack.lrcvtime`: jiffies of the last data
    /// received.
    pub lrcvtime: u32,
    /// `tcp_sock.retrans_stamp`: in SYN_SENT, when the first SYN left, in
    /// milliseconds of CLOCK_MONOTONIC (low 32 bits). Dates the SYN of a
    /// connect that was not followed from its start.
    pub retrans_stamp: u32,
    /// `sk_err_soft` (an int): an ICMP error that arrived while the
    /// connecting task held the socket, which the kernel keeps as a soft
    /// error rather than failing the connect at once.
    pub err_soft: u32,
    /// `sk_error_queue` (a `sk_buff_head`, whose first member is the
    /// queue's first `sk_buff *`).
    pub error_queue: u32,
    /// `sk_buff.cb`, where a queued error keeps its `sock_exterr_skb`.
    pub skb_cb: u32,
    /// `sock_exterr_skb.ee.ee_errno` (a u32): the error an ICMP message
    /// carried, as the application reads it (`SO_ERROR`, `MSG_ERRQUEUE`).
    /// [`SockOffsets::ABSENT`] where the kernel's BTF lacks the struct.
    pub exterr_errno: u32,
    /// `sock.sk_max_ack_backlog` (a u32): a listening socket's backlog,
    /// which the sockets it accepts inherit (they are copies of it) and a
    /// connecting socket never sets; how a close tells a connection a pod
    /// accepted from one it opened.
    pub max_ack_backlog: u32,
    /// `tcp_sock.data_segs_out` and `data_segs_in` (u32s): segments with
    /// data sent and received. A connection that sent a request and never
    /// received data has a request in flight whatever the jiffies say (its
    /// connect set `lrcvtime` and `lsndtime` in the same jiffy as its first
    /// send).
    pub data_segs_out: u32,
    pub data_segs_in: u32,
    /// `tcp_sock.delivered_mstamp` and `tcp_mstamp` (u64s, microseconds):
    /// when data sent was last acknowledged, and the packet being handled.
    /// Equal at the peer's FIN when the FIN itself acknowledged data: the
    /// peer closed after our data arrived and sent nothing back.
    pub delivered_mstamp: u32,
    pub tcp_mstamp: u32,
}

impl SockOffsets {
    /// An offset the running kernel does not have.
    pub const ABSENT: u32 = u32::MAX;
}

const _: () = assert!(core::mem::size_of::<SockOffsets>() == 104);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 96);
const _: () = assert!(core::mem::align_of::<ConnectEvent>() == 8);
const _: () = assert!(core::mem::size_of::<DestKey>() == 20);
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);
const _: () = assert!(core::mem::size_of::<TupleKey>() == 40);
const _: () = assert!(core::mem::size_of::<DestStats>() == 13 * 8);
const _: () = assert!(core::mem::size_of::<StormKey>() == 32);
const _: () = assert!(core::mem::size_of::<StormStats>() == 10 * 8);
const _: () = assert!(core::mem::size_of::<DropReasons>() == 8 * 4);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and byte
    // arrays, have no implicit padding (checked by the size asserts above),
    // and every bit pattern is a valid value.
    unsafe impl aya::Pod for ConnectEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DestKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TupleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DestStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StormKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StormStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DropReasons {}
}
