//! Loads the embedded eBPF object, attaches its tracepoints, and gives
//! typed access to its maps: the event ring, the watch map, the
//! per-destination counters and the health counters.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{FExit, RawTracePoint},
};
use observer_common::{
    AF_INET, AF_INET6, AddrKey, DestKey, DestStats, StormKey, StormStats, counter,
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;

use super::storm::{StormLedger, combine_cpus};
use super::{
    btf::{self, BtfError},
    decode::{
        ConnectRecord, DEFAULT_RETRY_WINDOW, DecodeError, OutcomeJoiner, RawEvent, decode_event,
    },
    preflight::{self, PreflightError},
};
use crate::clock::MonoTime;
use crate::connector::CgroupResolver;

/// The kernel object built by build.rs from observer-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Socket tracepoints the probe always attaches to, raw (the program is
/// named after its tracepoint): no trace record is formatted for them, and
/// no tracefs is needed. In this order: a failure's error report follows
/// its close, so with the report program attached first, a connect that
/// fails while the probe is starting is never reported as aborted for want
/// of a report program that was not there yet.
const SOCKET_TRACEPOINTS: [&str; 3] = [
    "inet_sk_error_report",
    "tcp_receive_reset",
    "inet_sock_set_state",
];

/// The fexit programs that see connects failing before their SYN, and the
/// kernel functions they attach to.
const CONNECT_EXITS: [(&str, &str); 2] = [
    ("tcp_v4_connect_exit", "tcp_v4_connect"),
    ("tcp_v6_connect_exit", "tcp_v6_connect"),
];

/// The fallback for the same job: raw syscall tracepoints.
const SYSCALL_TRACEPOINTS: [&str; 2] = ["sys_enter", "sys_exit"];

/// How the probe sees a connect() that fails before any SYN leaves (no
/// route to the destination).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncFailureHook {
    /// The exits of `tcp_v4_connect` and `tcp_v6_connect` where the kernel
    /// attaches them; otherwise off, with one warning (the syscall
    /// tracepoints slow every process on the node, so they are never
    /// chosen for you).
    #[default]
    Auto,
    /// fexit on `tcp_v4_connect`/`tcp_v6_connect` (Linux 5.5 on x86_64, 6.0
    /// on arm64, with IPv6 built in): costs nothing outside TCP connects.
    ConnectExits,
    /// Raw `sys_enter`/`sys_exit`, opt-in: works on every kernel, but
    /// switches every task onto the kernel's slower syscall path while the
    /// probe runs (docs/BENCHMARKS.md gives the cost).
    Syscalls,
    /// Not seen at all: connects that fail for want of a route go
    /// uncounted (rare on an ingress: a pod IP the node has no route to).
    /// What `auto` becomes where fexit does not load.
    Off,
}

impl SyncFailureHook {
    /// Its name in logs and metrics (`--sync-failure-hook` spells
    /// `connect_exits` as `connect-exits`).
    pub fn name(self) -> &'static str {
        match self {
            SyncFailureHook::Auto => "auto",
            SyncFailureHook::ConnectExits => "connect_exits",
            SyncFailureHook::Syscalls => "syscalls",
            SyncFailureHook::Off => "off",
        }
    }
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(
        "this binary was built with AYA_BUILD_SKIP=1 and carries no eBPF object; rebuild \
         without it (`cargo xtask setup` installs what the build needs)"
    )]
    NotEmbedded,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to the `{name}` tracepoint: {source}. observer needs Linux 5.15 or newer")]
    Attach {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to the exit of `{function}`: {reason}")]
    ConnectExit {
        function: &'static str,
        reason: String,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the event ring with the runtime: {0}")]
    AsyncFd(#[source] std::io::Error),
}

/// Load-time settings.
#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Size of the event ring in bytes (a power of two, a multiple of the
    /// page size); the kernel object's default when `None`.
    pub ring_bytes: Option<u32>,
    /// How connect()'s failures before a SYN are seen.
    pub sync_failure_hook: SyncFailureHook,
    /// Attach every hook but make each program return at once: no events,
    /// no counters. Only for measuring what the hooks alone cost.
    pub hooks_only: bool,
    /// Follow every connect from its SYN (a socket-map entry each), so
    /// that every failure names its process. Otherwise only connects to
    /// watched destinations are followed, and a failure elsewhere is
    /// reported from its socket at the close: class, 4-tuple, SYN time,
    /// cgroup, and the process only where it closed the socket itself.
    pub full_attribution: bool,
    /// How soon after a thread's failed connect its next SYN elsewhere is a
    /// retry; `None`: [`DEFAULT_RETRY_WINDOW`].
    pub retry_window: Option<Duration>,
    /// For tests only: load without checking capabilities first, so that a
    /// missing grant is refused by the kernel itself (the test that shows
    /// each grant is needed checks the kernel's errno, not this check).
    pub skip_preflight: bool,
}

/// The probe's own health, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProbeCounters {
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    pub events_sent: u64,
    /// Sockets not tracked because the socket map was full.
    pub map_full: u64,
}

/// The loaded, attached probe. Dropping it detaches every program.
pub struct Probe {
    ebpf: Ebpf,
    /// The addresses in the kernel's watch map.
    watched: std::collections::HashSet<IpAddr>,
    sync_failure_hook: SyncFailureHook,
    retry_window: Duration,
}

impl Probe {
    /// Checks privileges, loads the object, and attaches every tracepoint.
    pub fn load(options: &ProbeOptions) -> Result<Probe, ProbeError> {
        if options.skip_preflight {
            tracing::warn!("capability check skipped (--skip-preflight, for tests only)");
        } else {
            preflight::check_capabilities()?;
        }
        preflight::raise_memlock_limit();
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NotEmbedded);
        }
        let kernel_btf = btf::read(std::path::Path::new(btf::VMLINUX_BTF))?;
        let offsets = btf::sock_offsets(&kernel_btf)?;
        let drop_reasons = btf::drop_reasons(&kernel_btf);
        drop(kernel_btf);
        let hooks_only = u8::from(options.hooks_only);
        let full_attribution = u8::from(options.full_attribution);
        let mut loader = EbpfLoader::new();
        loader.override_global("SOCK_OFFSETS", &offsets, true);
        loader.override_global("HOOKS_ONLY", &hooks_only, true);
        loader.override_global("DROP_REASONS", &drop_reasons, true);
        loader.override_global("FULL_ATTRIBUTION", &full_attribution, true);
        if let Some(bytes) = options.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(ProbeError::Load)?;
        for name in SOCKET_TRACEPOINTS {
            attach_raw(&mut ebpf, name)?;
        }
        let sync_failure_hook = match options.sync_failure_hook {
            SyncFailureHook::Off => SyncFailureHook::Off,
            SyncFailureHook::Syscalls => attach_syscalls(&mut ebpf)?,
            SyncFailureHook::ConnectExits => attach_connect_exits(&mut ebpf)?,
            SyncFailureHook::Auto => match attach_connect_exits(&mut ebpf) {
                Ok(hook) => hook,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "connects that fail before their SYN (no route) go unseen: this kernel \
                         cannot attach the exits of tcp_v4_connect/tcp_v6_connect; \
                         `--sync-failure-hook syscalls` sees them at the price of every \
                         syscall on the node"
                    );
                    SyncFailureHook::Off
                }
            },
        };
        attach_drops(&mut ebpf, &drop_reasons);
        tracing::debug!(?sync_failure_hook, "probe attached");
        Ok(Probe {
            ebpf,
            watched: std::collections::HashSet::new(),
            sync_failure_hook,
            retry_window: options.retry_window.unwrap_or(DEFAULT_RETRY_WINDOW),
        })
    }

    /// How this probe sees connect()'s failures before a SYN (never `Auto`).
    pub fn sync_failure_hook(&self) -> SyncFailureHook {
        self.sync_failure_hook
    }

    /// Starts forwarding the kernel's aya-log records to `tracing`. Needs a
    /// tokio runtime; the task ends when the probe is dropped.
    pub fn forward_kernel_logs(&mut self) {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => match register_readable(logger) {
                Ok(mut fd) => {
                    tokio::spawn(async move {
                        loop {
                            let Ok(mut guard) = fd.readable_mut().await else {
                                break;
                            };
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "kernel log forwarding disabled"),
            },
            Err(error) => tracing::debug!(%error, "no kernel log map"),
        }
    }

    /// Takes the event ring; the returned reader owns it.
    pub fn event_reader(&mut self) -> Result<EventReader, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        let ring = RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })?;
        let ring = register_readable(ring).map_err(ProbeError::AsyncFd)?;
        let storms = self
            .ebpf
            .take_map("STORMS")
            .ok_or(ProbeError::MissingMap("STORMS"))?;
        let storms =
            aya::maps::PerCpuHashMap::try_from(storms).map_err(|source| ProbeError::Map {
                name: "STORMS",
                source,
            })?;
        Ok(EventReader {
            ring,
            storms,
            ledger: StormLedger::default(),
            last_storm_read: std::time::Instant::now(),
            joiner: OutcomeJoiner::default()
                .with_retry_window(self.retry_window)
                .with_fallback_hz(kernel_config_hz().unwrap_or(250)),
            decode_errors: 0,
            last_busy_read: None,
            connectors: None,
        })
    }

    fn watch_map(&mut self) -> Result<HashMap<&mut MapData, AddrKey, u8>, ProbeError> {
        let map = self
            .ebpf
            .map_mut("WATCH")
            .ok_or(ProbeError::MissingMap("WATCH"))?;
        HashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: "WATCH",
            source,
        })
    }

    /// Asks the kernel to report every connect to `ip`, successes included.
    pub fn watch(&mut self, ip: IpAddr) -> Result<(), ProbeError> {
        self.watch_map()?
            .insert(&addr_key(ip), &1, 0)
            .map_err(|source| ProbeError::Map {
                name: "WATCH",
                source,
            })?;
        self.watched.insert(ip);
        self.publish_watched_count()
    }

    /// Stops reporting successes to `ip`. Unwatching an address that is not
    /// watched is not an error.
    pub fn unwatch(&mut self, ip: IpAddr) -> Result<(), ProbeError> {
        match self.watch_map()?.remove(&addr_key(ip)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(ProbeError::Map {
                    name: "WATCH",
                    source,
                });
            }
        }
        self.watched.remove(&ip);
        self.publish_watched_count()
    }

    /// Tells the kernel how many addresses are watched: with none, its
    /// programs skip the watch lookup on every connect.
    fn publish_watched_count(&mut self) -> Result<(), ProbeError> {
        let count = u32::try_from(self.watched.len()).unwrap_or(u32::MAX);
        let map = self
            .ebpf
            .map_mut("WATCHED")
            .ok_or(ProbeError::MissingMap("WATCHED"))?;
        let mut array =
            aya::maps::Array::<_, u32>::try_from(map).map_err(|source| ProbeError::Map {
                name: "WATCHED",
                source,
            })?;
        array.set(0, &count, 0).map_err(|source| ProbeError::Map {
            name: "WATCHED",
            source,
        })
    }

    /// Per-destination counters aggregated in the kernel.
    pub fn dest_stats(&self) -> Result<BTreeMap<SocketAddr, DestStats>, ProbeError> {
        let map = self
            .ebpf
            .map("DEST_STATS")
            .ok_or(ProbeError::MissingMap("DEST_STATS"))?;
        let stats: HashMap<&MapData, DestKey, DestStats> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: "DEST_STATS",
                source,
            })?;
        let mut out = BTreeMap::new();
        for entry in stats.iter() {
            let (key, value) = entry.map_err(|source| ProbeError::Map {
                name: "DEST_STATS",
                source,
            })?;
            if let Some(addr) = socket_addr(&key) {
                out.insert(addr, value);
            }
        }
        Ok(out)
    }

    /// The probe's health counters, summed over CPUs.
    pub fn counters(&self) -> Result<ProbeCounters, ProbeError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(ProbeError::MissingMap("COUNTERS"))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
        let sum = |index: u32| -> Result<u64, ProbeError> {
            let values = array.get(&index, 0).map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(ProbeCounters {
            ringbuf_drops: sum(counter::RINGBUF_DROPS)?,
            events_sent: sum(counter::EVENTS_SENT)?,
            map_full: sum(counter::MAP_FULL)?,
        })
    }
}

fn attach_raw(ebpf: &mut Ebpf, name: &'static str) -> Result<(), ProbeError> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })?;
    program
        .load()
        .map_err(|source| ProbeError::Program { name, source })?;
    program
        .attach(name)
        .map_err(|source| ProbeError::Attach { name, source })?;
    Ok(())
}

/// The receiving side's drops (`kfree_skb`): what a kernel without the
/// tracepoint or some drop reasons cannot report is said once, and the
/// rest of the probe runs without it.
fn attach_drops(ebpf: &mut Ebpf, reasons: &observer_common::DropReasons) {
    let missing = btf::missing_drop_figures(reasons);
    if !missing.is_empty() {
        tracing::warn!(
            missing = %missing.join("; "),
            "this kernel's drop reasons cannot give some receiving-side figures \
             (docs/KERNELS.md)"
        );
    }
    if let Err(error) = attach_raw(ebpf, "kfree_skb") {
        tracing::warn!(
            %error,
            "connects refused by this node's pods and packets dropped for gone pods go \
             unseen: the kfree_skb tracepoint did not attach (docs/KERNELS.md)"
        );
    }
}

fn attach_syscalls(ebpf: &mut Ebpf) -> Result<SyncFailureHook, ProbeError> {
    for name in SYSCALL_TRACEPOINTS {
        attach_raw(ebpf, name)?;
    }
    Ok(SyncFailureHook::Syscalls)
}

/// Attaches both connect exits, or neither: a failed attach detaches the
/// one already attached (by unloading it), so a fallback never counts a
/// failure twice.
fn attach_connect_exits(ebpf: &mut Ebpf) -> Result<SyncFailureHook, ProbeError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| ProbeError::ConnectExit {
        function: "tcp_v4_connect",
        reason: format!("reading the kernel's BTF: {e}"),
    })?;
    for (index, (name, function)) in CONNECT_EXITS.into_iter().enumerate() {
        let attached = fexit_program(ebpf, name).and_then(|program| {
            program
                .load(function, &btf)
                .and_then(|()| program.attach().map(drop))
                .map_err(|source| ProbeError::Program { name, source })
        });
        if let Err(error) = attached {
            for &(done, _) in &CONNECT_EXITS[..index] {
                let unloaded = fexit_program(ebpf, done).and_then(|program| {
                    program
                        .unload()
                        .map_err(|source| ProbeError::Program { name: done, source })
                });
                if let Err(error) = unloaded {
                    tracing::warn!(%error, program = done, "unloading");
                }
            }
            return Err(ProbeError::ConnectExit {
                function,
                reason: error.to_string(),
            });
        }
    }
    Ok(SyncFailureHook::ConnectExits)
}

fn fexit_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut FExit, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

/// Registers an owned BPF map fd with the tokio reactor.
fn register_readable<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its file descriptor (an aya map) and keeps it
    // open, unchanged, for as long as it lives, which is the AsyncFd's life.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|error| std::io::Error::other(error.to_string()))
}

/// The watch-map key for an address (IPv4-mapped IPv6 counts as IPv4, as
/// in the kernel).
pub fn addr_key(ip: IpAddr) -> AddrKey {
    let mut addr = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            AddrKey {
                family: AF_INET,
                _pad: 0,
                addr,
            }
        }
        IpAddr::V6(v6) => AddrKey {
            family: AF_INET6,
            _pad: 0,
            addr: v6.octets(),
        },
    }
}

/// The socket address a counters key stands for.
pub fn socket_addr(key: &DestKey) -> Option<SocketAddr> {
    let ip = match key.family {
        AF_INET => IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]),
        AF_INET6 => IpAddr::from(key.addr),
        _ => return None,
    };
    Some(SocketAddr::new(ip, key.port))
}

/// `CONFIG_HZ` from the running kernel's config file, where the system
/// keeps one; SENT events usually tell the rate themselves.
fn kernel_config_hz() -> Option<u32> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the event ring and yields joined connect outcomes.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Failures the kernel counted instead of sending (`probe::storm`).
    storms: aya::maps::PerCpuHashMap<MapData, StormKey, StormStats>,
    ledger: StormLedger,
    last_storm_read: std::time::Instant,
    joiner: OutcomeJoiner,
    decode_errors: u64,
    /// When the last read that found events ended.
    last_busy_read: Option<std::time::Instant>,
    /// Names each record's pod from its cgroup, when set.
    connectors: Option<CgroupResolver>,
}

/// The shortest time between two reads while events keep coming.
const BUSY_READ_INTERVAL: Duration = Duration::from_millis(10);

/// How often the storm map is read.
const STORM_READ_INTERVAL: Duration = Duration::from_millis(250);

impl EventReader {
    /// From now on, fills in each record's pod and container from its
    /// cgroup id (see [`CgroupResolver`]).
    pub fn resolve_connectors(&mut self, resolver: CgroupResolver) {
        self.connectors = Some(resolver);
    }

    fn annotate(&mut self, records: &mut [ConnectRecord]) {
        if let Some(resolver) = self.connectors.as_mut() {
            for record in records {
                resolver.annotate(record);
            }
        }
    }

    /// Records the reader could not decode (a kernel/user version mismatch).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Waits up to `max_wait` for events, then appends every outcome that is
    /// complete, including closes that became `aborted`.
    pub async fn next_batch(
        &mut self,
        max_wait: Duration,
        out: &mut Vec<ConnectRecord>,
    ) -> Result<(), ProbeError> {
        // Under a storm of events, reading as soon as the ring is readable
        // means a wakeup (and a cross-thread hand-off) for nearly every
        // event. Once a read found events, the next one waits a little so
        // they accumulate: a few wakeups a second instead of thousands,
        // at the price of a few milliseconds of delay (the events carry
        // their kernel timestamps, so no measurement moves).
        if let Some(last) = self.last_busy_read {
            let since = last.elapsed();
            if since < BUSY_READ_INTERVAL {
                tokio::time::sleep(BUSY_READ_INTERVAL - since).await;
            }
        }
        let before = out.len();
        if let Ok(ready) = tokio::time::timeout(max_wait, self.ring.readable_mut()).await {
            let mut guard = ready.map_err(ProbeError::AsyncFd)?;
            drain_ring(
                guard.get_inner_mut(),
                &mut self.joiner,
                &mut self.decode_errors,
                out,
            );
            guard.clear_ready();
        }
        let drained = out.len();
        self.annotate(&mut out[before..drained]);
        // Also catch records that arrived between the wakeup and the drain.
        self.drain_now(out);
        self.last_busy_read = (out.len() > before).then(std::time::Instant::now);
        Ok(())
    }

    /// Appends what is available now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<ConnectRecord>) {
        let before = out.len();
        drain_ring(
            self.ring.get_mut(),
            &mut self.joiner,
            &mut self.decode_errors,
            out,
        );
        self.joiner.flush(MonoTime::now(), out);
        if self.last_storm_read.elapsed() >= STORM_READ_INTERVAL {
            self.read_storms(out);
        }
        self.annotate(&mut out[before..]);
    }

    /// Appends what the kernel counted in failure storms since the last
    /// look, one record per destination, connector and class.
    fn read_storms(&mut self, out: &mut Vec<ConnectRecord>) {
        self.last_storm_read = std::time::Instant::now();
        let mut live = std::collections::HashSet::new();
        for entry in self.storms.iter() {
            // An entry evicted while being walked is skipped: its counts
            // come with the next look, or went with the eviction.
            let Ok((key, per_cpu)) = entry else {
                continue;
            };
            let stats = combine_cpus(per_cpu.iter());
            self.ledger.fold(&key, &stats, out);
            live.insert(key);
        }
        self.ledger.retain(|key| live.contains(key));
    }

    /// Appends the undecoded-but-parsed records available now, without
    /// joining them (for accounting: one record per kernel event).
    pub fn drain_raw_now(&mut self, out: &mut Vec<RawEvent>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Ok(raw) => out.push(raw),
                Err(_) => self.decode_errors += 1,
            }
        }
    }

    /// Reports every close still waiting for its error as `aborted`.
    pub fn finish(&mut self, out: &mut Vec<ConnectRecord>) {
        self.drain_now(out);
        let before = out.len();
        self.read_storms(out);
        self.joiner.drain(out);
        self.annotate(&mut out[before..]);
    }
}

fn drain_ring(
    ring: &mut RingBuf<MapData>,
    joiner: &mut OutcomeJoiner,
    decode_errors: &mut u64,
    out: &mut Vec<ConnectRecord>,
) {
    while let Some(item) = ring.next() {
        match decode_event(&item) {
            Ok(raw) => joiner.push(raw, out),
            Err(error) => {
                *decode_errors += 1;
                if *decode_errors == 1 {
                    log_decode_error(&error);
                }
            }
        }
    }
}

fn log_decode_error(error: &DecodeError) {
    tracing::error!(%error, "undecodable probe record (further ones are only counted)");
}
