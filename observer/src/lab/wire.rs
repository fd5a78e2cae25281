//! The wire truth: every frame the ingress sends on the lab's bridge,
//! captured with an `AF_PACKET` socket of the lab's own, the same for every
//! ingress. It does not depend on how an ingress logs, nor on the probe's
//! socket-level view.
//!
//! From it, per pod address: each SYN and each data segment the ingress
//! sent (a request, new or pooled), and each neighbour solicitation (ARP
//! who-has, IPv6 neighbour solicitation) for it. A connect to an address
//! whose neighbour entry cannot be resolved (the pod's sandbox is gone)
//! waits in the kernel's neighbour queue and never reaches the wire; only
//! the solicitation does. So where solicitations follow the last segment,
//! the wire's last send is a lower bound ([`WireSends::unresolved_after`]).
//!
//! Clocks: the kernel stamps each captured frame (`SO_TIMESTAMPNS`) with
//! CLOCK_REALTIME when it passes the capture tap. The lab measures
//! realtime − monotonic when the capture starts and when it stops (each
//! to within the width of two back-to-back clock reads, well under a
//! microsecond) and converts every stamp by interpolating between the two,
//! so a clock slewed during the run is followed; the error bound is the
//! larger measurement width plus any non-linearity of the slew between the
//! two readings (none in the lab's runs: the two offsets differ by
//! microseconds, reported as `clock_drift_ns`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::netns::Netns;
use super::truth::WallToMono;
use super::{LabError, Result};
use crate::clock::MonoTime;

/// What one captured frame is, when it matters to the truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A TCP segment from `src` to `dst`.
    Tcp {
        src: IpAddr,
        src_port: u16,
        dst: SocketAddr,
        seq: u32,
        syn: bool,
        ack: bool,
        payload: usize,
    },
    /// `src` asks for the link address of `target` (ARP request, or an
    /// ICMPv6 neighbour solicitation).
    Solicit { src: IpAddr, target: IpAddr },
}

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn ipv6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(o))
}

/// Decodes an Ethernet frame: a TCP segment over IPv4 or IPv6 (no IPv6
/// extension headers: the lab's traffic has none), or a neighbour
/// solicitation. Anything else, or anything truncated, is `None`.
pub fn parse_frame(frame: &[u8]) -> Option<Frame> {
    let ethertype = be16(frame, 12)?;
    let ip = frame.get(ETH_HEADER..)?;
    match ethertype {
        ETHERTYPE_ARP => {
            // Ethernet/IPv4 ARP: opcode at 6, sender IP at 14, target at 24.
            (be16(ip, 6)? == 1).then_some(())?;
            Some(Frame::Solicit {
                src: IpAddr::V4(ipv4(ip, 14)?),
                target: IpAddr::V4(ipv4(ip, 24)?),
            })
        }
        ETHERTYPE_IPV4 => {
            let header = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            (*ip.get(9)? == PROTO_TCP).then_some(())?;
            let src = IpAddr::V4(ipv4(ip, 12)?);
            let dst = IpAddr::V4(ipv4(ip, 16)?);
            tcp(src, dst, ip.get(header..total.max(header))?)
        }
        ETHERTYPE_IPV6 => {
            let payload_len = usize::from(be16(ip, 4)?);
            let next = *ip.get(6)?;
            let src = IpAddr::V6(ipv6(ip, 8)?);
            let dst = IpAddr::V6(ipv6(ip, 24)?);
            let body = ip.get(40..40 + payload_len)?;
            match next {
                PROTO_TCP => tcp(src, dst, body),
                PROTO_ICMPV6 if *body.first()? == ICMPV6_NEIGHBOR_SOLICIT => Some(Frame::Solicit {
                    src,
                    target: IpAddr::V6(ipv6(body, 8)?),
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

fn tcp(src: IpAddr, dst: IpAddr, segment: &[u8]) -> Option<Frame> {
    let src_port = be16(segment, 0)?;
    let port = be16(segment, 2)?;
    let seq = u32::from_be_bytes(segment.get(4..8)?.try_into().ok()?);
    let offset = usize::from(segment.get(12)? >> 4) * 4;
    let flags = *segment.get(13)?;
    Some(Frame::Tcp {
        src,
        src_port,
        dst: SocketAddr::new(dst, port),
        seq,
        syn: flags & 0x02 != 0,
        ack: flags & 0x10 != 0,
        payload: segment.len().saturating_sub(offset),
    })
}

/// One thing the ingress sent towards a pod address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireSend {
    pub at: MonoTime,
    pub dst: IpAddr,
    pub kind: SendKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendKind {
    /// A connect's SYN.
    Syn,
    /// A segment carrying data: a request (or part of one).
    Data,
    /// A neighbour solicitation for the address.
    Solicit,
}

/// Everything the ingress sent, in capture order, and what the capture
/// itself reports.
#[derive(Clone, Debug, Default)]
pub struct WireLog {
    pub sends: Vec<WireSend>,
    /// Frames the kernel dropped from the capture socket (its buffer was
    /// full): the truth is incomplete when this is not zero.
    pub dropped: u64,
    /// How far realtime − monotonic moved between the capture's start and
    /// end.
    pub clock_drift_ns: i64,
}

/// The wire's view of one address over a time range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WireSends {
    pub last_syn: Option<MonoTime>,
    pub last_data: Option<MonoTime>,
    /// A neighbour solicitation for the address came after its last SYN or
    /// data segment: sends queued behind it never reached the wire.
    pub unresolved_after: bool,
}

impl WireSends {
    /// The last SYN or data segment.
    pub fn last_send(&self) -> Option<MonoTime> {
        self.last_syn.max(self.last_data)
    }
}

impl WireLog {
    /// What the ingress sent to `ip` in `[from, until)`.
    pub fn sends_to(&self, ip: IpAddr, from: MonoTime, until: Option<MonoTime>) -> WireSends {
        let mut out = WireSends::default();
        let mut last_solicit = None;
        let in_range = |t: MonoTime| t >= from && until.is_none_or(|u| t < u);
        for send in self.sends.iter().filter(|s| s.dst == ip && in_range(s.at)) {
            match send.kind {
                SendKind::Syn => out.last_syn = out.last_syn.max(Some(send.at)),
                SendKind::Data => out.last_data = out.last_data.max(Some(send.at)),
                SendKind::Solicit => last_solicit = last_solicit.max(Some(send.at)),
            }
        }
        out.unresolved_after = last_solicit.is_some_and(|s| Some(s) > out.last_send());
        out
    }
}

/// Whose sends the capture keeps: the sender's address, and the address
/// that resolves the pods' link addresses for it (the sender itself on the
/// pods' link; the node that routes for a sender off it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub addr: IpAddr,
    pub link: IpAddr,
}

/// A capture running on a thread inside the ingress's namespace.
pub struct WireCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Result<Captured>>>>,
    start_clock: WallToMono,
}

struct Captured {
    /// (realtime ns, what it was)
    frames: Vec<(u64, IpAddr, SendKind)>,
    dropped: u64,
}

impl WireCapture {
    /// Captures, on `interface` of `ns`, every SYN, data segment and
    /// neighbour solicitation sent from `from` to an address `wanted`
    /// accepts.
    pub fn start(
        ns: &Netns,
        interface: &str,
        from: Sender,
        wanted: impl Fn(IpAddr) -> bool + Send + 'static,
    ) -> Result<WireCapture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let interface = interface.to_string();
        let stopping = stop.clone();
        let thread = ns.spawn_in("lab-wire", move || {
            let socket = match open_socket(&interface) {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            capture(&socket, &stopping, from, &wanted)
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(LabError::Invalid(format!("wire capture: {e}"))),
            Err(_) => return Err(LabError::Invalid("wire capture thread ended".into())),
        }
        Ok(WireCapture {
            stop,
            thread: Some(thread),
            start_clock: WallToMono::measure(),
        })
    }

    /// Stops the capture and returns what it saw, on CLOCK_MONOTONIC.
    pub fn stop(mut self) -> Result<WireLog> {
        self.stop.store(true, Ordering::Relaxed);
        let end_clock = WallToMono::measure();
        let thread = self
            .thread
            .take()
            .ok_or_else(|| LabError::Invalid("wire capture stopped twice".into()))?;
        let captured = thread
            .join()
            .map_err(|_| LabError::Invalid("wire capture thread panicked".into()))???;
        let (start_offset, end_offset) = (self.start_clock.offset_ns(), end_clock.offset_ns());
        let first = captured.frames.first().map_or(0, |f| f.0);
        let last = captured.frames.last().map_or(0, |f| f.0);
        let span = last.saturating_sub(first).max(1) as f64;
        let sends = captured
            .frames
            .iter()
            .map(|&(wall, dst, kind)| {
                // Interpolate the offset over the capture.
                let f = wall.saturating_sub(first) as f64 / span;
                let offset = start_offset + ((end_offset - start_offset) as f64 * f) as i64;
                WireSend {
                    at: WallToMono::from_offset_ns(offset).to_mono(wall),
                    dst,
                    kind,
                }
            })
            .collect();
        Ok(WireLog {
            sends,
            dropped: captured.dropped,
            clock_drift_ns: end_offset - start_offset,
        })
    }
}

impl Drop for WireCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn os_error(what: &str) -> LabError {
    LabError::Io {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

fn set_option<T>(fd: &OwnedFd, level: i32, name: i32, value: &T, what: &str) -> Result<()> {
    // SAFETY: `value` points to a live `T` whose size is passed with it;
    // `fd` is an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_error(what));
    }
    Ok(())
}

/// An `AF_PACKET` socket bound to `interface`, stamping frames, waking
/// every 100 ms to check for the stop.
fn open_socket(interface: &str) -> Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: socket(2) takes no pointers.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol) };
    if raw < 0 {
        return Err(os_error("opening an AF_PACKET socket (needs CAP_NET_RAW)"));
    }
    // SAFETY: `raw` is a new socket this function alone owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(interface)
        .map_err(|_| LabError::Invalid(format!("interface name {interface:?}")))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(os_error(&format!("finding interface {interface}")));
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol as u16;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll and its size is passed with it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_error(&format!("binding the capture to {interface}")));
    }
    let on: libc::c_int = 1;
    set_option(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPNS,
        &on,
        "SO_TIMESTAMPNS",
    )?;
    let buffer: libc::c_int = 16 << 20;
    // SO_RCVBUFFORCE passes the system limit as root; fall back to the
    // limited size if it is refused.
    if set_option(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &buffer,
        "SO_RCVBUFFORCE",
    )
    .is_err()
    {
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &buffer, "SO_RCVBUF")?;
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    set_option(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &timeout,
        "SO_RCVTIMEO",
    )?;
    Ok(fd)
}

fn capture(
    fd: &OwnedFd,
    stop: &AtomicBool,
    from: Sender,
    wanted: &dyn Fn(IpAddr) -> bool,
) -> Result<Captured> {
    let mut frames = Vec::new();
    // A retransmission is not a new send: a SYN is counted once per
    // connection, a data segment once per sequence number.
    let mut seen: HashSet<(u16, SocketAddr, u32, bool)> = HashSet::new();
    let mut buf = vec![0u8; 2048];
    let mut control = [0u64; 16];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // socklen_t on musl, size_t on glibc; the buffer is a few dozen bytes.
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` points at `buf` and `control`, both live and of the
        // sizes given, for the duration of the call.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                _ => {
                    return Err(LabError::Io {
                        what: "reading the wire capture".into(),
                        source: error,
                    });
                }
            }
        }
        let Some(wall) = timestamp(&msg) else {
            continue;
        };
        let frame = buf.get(..n as usize).and_then(parse_frame);
        let send = match frame {
            Some(Frame::Tcp {
                src,
                src_port,
                dst,
                seq,
                syn,
                ack,
                payload,
            }) if src == from.addr && wanted(dst.ip()) => {
                let kind = match (syn && !ack, payload > 0) {
                    (true, _) => Some(SendKind::Syn),
                    (false, true) => Some(SendKind::Data),
                    _ => None,
                };
                let seq = if syn { 0 } else { seq };
                kind.filter(|kind| seen.insert((src_port, dst, seq, *kind == SendKind::Syn)))
                    .map(|kind| (dst.ip(), kind))
            }
            Some(Frame::Solicit { src, target }) if src == from.link => {
                Some((target, SendKind::Solicit))
            }
            _ => None,
        };
        if let Some((dst, kind)) = send
            && wanted(dst)
        {
            frames.push((wall, dst, kind));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(Captured {
        frames,
        dropped: dropped(fd),
    })
}

/// The kernel's stamp of a received frame (CLOCK_REALTIME ns).
fn timestamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk its
    // control buffer within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// Frames the kernel dropped from this socket since it opened.
fn dropped(fd: &OwnedFd) -> u64 {
    // SAFETY: tpacket_stats is plain data; all-zero is a valid value.
    let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `stats` and `len` are live and describe the buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    u64::from(stats.tp_drops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_syn(payload: usize, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 20 + payload;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, PROTO_TCP, 0, 0];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip.extend([10, 247, 0, 1, 10, 247, 0, 5]);
        f.extend(ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        f.extend(tcp);
        f.extend(std::iter::repeat_n(b'x', payload));
        // Ethernet pads short frames: the IP length must win.
        f.extend([0u8; 6]);
        f
    }

    #[test]
    fn tcp_over_ipv4_gives_flags_and_payload_by_the_ip_length() {
        let syn = parse_frame(&ipv4_syn(0, 0x02)).unwrap();
        assert_eq!(
            syn,
            Frame::Tcp {
                src: "10.247.0.1".parse().unwrap(),
                src_port: 40000,
                dst: "10.247.0.5:8080".parse().unwrap(),
                seq: 0,
                syn: true,
                ack: false,
                payload: 0
            }
        );
        let Frame::Tcp { payload, ack, .. } = parse_frame(&ipv4_syn(37, 0x18)).unwrap() else {
            panic!("tcp")
        };
        assert_eq!((payload, ack), (37, true));
        let truncated = ipv4_syn(0, 0x02);
        assert_eq!(parse_frame(&truncated[..30]), None);
    }

    #[test]
    fn neighbour_solicitations_name_their_target() {
        let mut arp = vec![0u8; 14];
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        let mut body = vec![0, 1, 8, 0, 6, 4, 0, 1];
        body.extend([0u8; 6]);
        body.extend([10, 247, 0, 1]);
        body.extend([0u8; 6]);
        body.extend([10, 247, 0, 9]);
        arp.extend(body);
        assert_eq!(
            parse_frame(&arp),
            Some(Frame::Solicit {
                src: "10.247.0.1".parse().unwrap(),
                target: "10.247.0.9".parse().unwrap()
            })
        );
        let mut ns = vec![0u8; 14];
        ns[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0, 0, 24, PROTO_ICMPV6, 255];
        let src: Ipv6Addr = "fd00:247::1".parse().unwrap();
        let dst: Ipv6Addr = "ff02::1:ff00:9".parse().unwrap();
        ip.extend(src.octets());
        ip.extend(dst.octets());
        let mut icmp = vec![ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        let target: Ipv6Addr = "fd00:247::9".parse().unwrap();
        icmp.extend(target.octets());
        ip.extend(icmp);
        ns.extend(ip);
        assert_eq!(
            parse_frame(&ns),
            Some(Frame::Solicit {
                src: IpAddr::V6(src),
                target: IpAddr::V6(target)
            })
        );
    }

    #[test]
    fn sends_to_an_address_in_a_range_and_unresolved_tails() {
        let ip: IpAddr = "10.247.0.5".parse().unwrap();
        let other: IpAddr = "10.247.0.6".parse().unwrap();
        let at = |ms: u64| MonoTime(ms * 1_000_000);
        let send = |ms, dst, kind| WireSend {
            at: at(ms),
            dst,
            kind,
        };
        let log = WireLog {
            sends: vec![
                send(100, ip, SendKind::Syn),
                send(150, ip, SendKind::Data),
                send(170, other, SendKind::Syn),
                send(200, ip, SendKind::Solicit),
                send(400, ip, SendKind::Syn),
            ],
            ..WireLog::default()
        };
        let all = log.sends_to(ip, at(0), None);
        assert_eq!(all.last_send(), Some(at(400)));
        assert!(!all.unresolved_after);
        // Until another pod takes the address at 300 ms.
        let before = log.sends_to(ip, at(0), Some(at(300)));
        assert_eq!(
            (before.last_syn, before.last_data),
            (Some(at(100)), Some(at(150)))
        );
        assert!(before.unresolved_after);
        assert_eq!(log.sends_to(ip, at(500), None), WireSends::default());
    }
}
