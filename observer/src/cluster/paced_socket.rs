//! The socket under a node agent's EndpointSlice watch, taken out of the
//! runtime's poll set while other nodes' changes may gather.
//!
//! Reading the slice stream in batches is not enough to save a node agent
//! its CPU: every change the API server sends is a segment of its own, and
//! each one wakes the runtime out of `epoll_wait` as long as the socket is
//! in its poll set, whether or not the stream is read then. At 500
//! terminations a minute that is about 100 wake-ups a second on every node.
//! So while the pace gathers ([`super::slice_pace`]), the socket is
//! deregistered ("parked") and read without the poll set, once every
//! [`GATHER_PERIOD`]: what arrived in between waits in the kernel's receive
//! buffer, and comes out in one read. It is registered again the moment the
//! pace turns prompt, or a list starts: a list is a run of page requests,
//! each of which would otherwise wait out a rest.
//!
//! Writes are rare (one request a watch) and go straight to the socket;
//! one that would block registers the socket again. A connection opened
//! while the pace gathers (a watch resuming after a dropped connection)
//! reads its TLS handshake and its response at the rests' ends too: the
//! watch starts up to a few rests late, and resuming from its
//! resourceVersion, it misses nothing.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::slice_pace::{GATHER_PERIOD, Pace, rest_after};
use crate::clock::MonoTime;

/// What a paced socket reads its pace from: the node's pace, and whether
/// the slice watch is listing. Cheap to clone; every connection of the
/// slice watch's client holds one.
#[derive(Clone, Debug)]
pub struct PaceGate {
    pace: watch::Receiver<Pace>,
    listing: Arc<AtomicBool>,
    parks: Arc<AtomicU64>,
}

impl PaceGate {
    /// `parks` counts the times a socket of this gate left the poll set.
    pub fn new(
        pace: watch::Receiver<Pace>,
        listing: Arc<AtomicBool>,
        parks: Arc<AtomicU64>,
    ) -> PaceGate {
        PaceGate {
            pace,
            listing,
            parks,
        }
    }

    fn gathers(&self) -> bool {
        !self.listing.load(Ordering::Relaxed) && self.pace.borrow().gathers(Instant::now())
    }
}

enum Socket {
    /// In the runtime's poll set: read as data arrives.
    Registered(TcpStream),
    /// Out of it: read every [`GATHER_PERIOD`].
    Parked(std::net::TcpStream),
    /// Only between the two, or after a failed move.
    Moving,
}

/// A TCP connection that leaves the runtime's poll set while its
/// [`PaceGate`] gathers.
pub struct PacedSocket {
    socket: Socket,
    gate: PaceGate,
    /// The end of the current rest, while parked.
    rest: Pin<Box<Sleep>>,
    /// Bytes read since the last rest ended.
    gathered: usize,
    /// Resolves when the pace changes, so a parked socket turns prompt at
    /// once rather than at the end of its rest.
    pace_changed: BoxFuture<'static, watch::Receiver<Pace>>,
}

fn next_pace_change(mut pace: watch::Receiver<Pace>) -> BoxFuture<'static, watch::Receiver<Pace>> {
    Box::pin(async move {
        // A closed channel (the watch is gone) never resolves: the rest
        // still ends every period.
        if pace.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        pace
    })
}

fn moving_error() -> io::Error {
    io::Error::other("the slice watch's socket failed to move in or out of the poll set")
}

impl PacedSocket {
    pub fn new(stream: TcpStream, gate: PaceGate) -> PacedSocket {
        PacedSocket {
            socket: Socket::Registered(stream),
            pace_changed: next_pace_change(gate.pace.clone()),
            gate,
            rest: Box::pin(tokio::time::sleep(GATHER_PERIOD)),
            gathered: 0,
        }
    }

    fn park(&mut self) -> io::Result<()> {
        if let Socket::Registered(stream) = std::mem::replace(&mut self.socket, Socket::Moving) {
            // `into_std` deregisters the socket and leaves it non-blocking.
            self.socket = Socket::Parked(stream.into_std()?);
            self.gate.parks.fetch_add(1, Ordering::Relaxed);
            self.gathered = 0;
            self.rest.as_mut().reset(Instant::now() + GATHER_PERIOD);
        }
        Ok(())
    }

    fn register(&mut self) -> io::Result<()> {
        if let Socket::Parked(stream) = std::mem::replace(&mut self.socket, Socket::Moving) {
            // Registering an fd that already holds data reports it ready at
            // once: nothing that gathered is left unannounced.
            self.socket = Socket::Registered(TcpStream::from_std(stream)?);
        }
        Ok(())
    }

    /// Called with nothing left to read: starts the next rest if the last
    /// one is over (what it gathered has just been read), then waits for
    /// its end or a change of pace. Returns whether either came already;
    /// registers the task's waker with both otherwise.
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> bool {
        if self.rest.is_elapsed() {
            // On the process's beat: the engine's idle tick ends with it.
            let rest = MonoTime::now().until_beat(rest_after(self.gathered));
            self.gathered = 0;
            self.rest.as_mut().reset(Instant::now() + rest);
        }
        let mut woke = false;
        if let Poll::Ready(pace) = self.pace_changed.as_mut().poll(cx) {
            self.pace_changed = next_pace_change(pace);
            woke = true;
        }
        woke | self.rest.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for PacedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let gathers = this.gate.gathers();
            match (&mut this.socket, gathers) {
                (Socket::Registered(stream), false) => return Pin::new(stream).poll_read(cx, buf),
                (Socket::Registered(_), true) => this.park()?,
                (Socket::Parked(_), false) => this.register()?,
                (Socket::Parked(stream), true) => {
                    match stream.read(buf.initialize_unfilled()) {
                        Ok(read) => {
                            this.gathered += read;
                            buf.advance(read);
                            return Poll::Ready(Ok(()));
                        }
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => return Poll::Ready(Err(error)),
                    }
                    if !this.poll_rest(cx) {
                        return Poll::Pending;
                    }
                }
                (Socket::Moving, _) => return Poll::Ready(Err(moving_error())),
            }
        }
    }
}

impl AsyncWrite for PacedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match &mut this.socket {
                Socket::Registered(stream) => return Pin::new(stream).poll_write(cx, data),
                Socket::Parked(stream) => match stream.write(data) {
                    Ok(written) => return Poll::Ready(Ok(written)),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    // Only the poll set can say when it may be written.
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => this.register()?,
                    Err(error) => return Poll::Ready(Err(error)),
                },
                Socket::Moving => return Poll::Ready(Err(moving_error())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().socket {
            Socket::Registered(stream) => Pin::new(stream).poll_flush(cx),
            // TCP keeps no buffer in user space to flush.
            Socket::Parked(_) => Poll::Ready(Ok(())),
            Socket::Moving => Poll::Ready(Err(moving_error())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().socket {
            Socket::Registered(stream) => Pin::new(stream).poll_shutdown(cx),
            Socket::Parked(stream) => match stream.shutdown(Shutdown::Write) {
                Err(error) if error.kind() != io::ErrorKind::NotConnected => {
                    Poll::Ready(Err(error))
                }
                _ => Poll::Ready(Ok(())),
            },
            Socket::Moving => Poll::Ready(Err(moving_error())),
        }
    }
}

impl Connection for PacedSocket {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
