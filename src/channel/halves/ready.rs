//! Readiness for the halves: a `PortReader`'s descriptor (`impl AsFd`), the arming its
//! `try_` receives do once the descriptor exists, and the `PortWriter`'s own set, on
//! which an async post waits for room.
//!
//! Each half has its own set (an epoll set watching the channel's socket,
//! edge-triggered, and an eventfd; `readiness::Fds`), made on first use and kept in
//! `Ends`, so an arming by one half never takes an event off the set the other waits
//! on. But epoll reports a socket's edge only if the socket is still readable when the
//! set is waited on (it polls the file again then), and either half may drain the
//! peer's signals first: so a half whose drain dropped signals raises the other half's
//! set (`pass_on`), which would otherwise miss a data or room signal meant for it (a
//! lost wake-up, seen as an async post waiting for room for ever). Both halves read that socket: the reader takes the descriptors of the
//! records that carry them, and both drain the peer's signals (an arming does, so
//! that the socket's buffer never fills with signals, after which a signal is no
//! event). `Ends::socket` keeps those reads apart: a drain running while the reader
//! takes a record's descriptors could drop them. A drain only tries the lock; a
//! drain skipped is made by the next arming, and the look after it checks the peer
//! the slow way (`Check::Slow`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{MutexGuard, OnceLock, TryLockError};

use super::Ends;
use super::reader::PortReader;
use crate::channel::readiness::{self, Fds};
use crate::channel::rx::Rx;
use crate::error::RecvFail;
use crate::shm::ring::Record;
#[cfg(feature = "tokio")]
use crate::shm::sync::Ordering;
use crate::wire::{self, Drained};

/// A half's readiness set, once made.
#[derive(Default)]
pub(super) struct HalfReady {
    fds: OnceLock<Fds>,
}

impl HalfReady {
    /// The set if it was made.
    pub(super) fn made(&self) -> Option<&Fds> {
        self.fds.get()
    }

    /// The set, made on the first call (watching `rx`'s socket), not raised.
    pub(super) fn get_or_make(&self, link: &crate::channel::Link) -> io::Result<&Fds> {
        if let Some(fds) = self.fds.get() {
            return Ok(fds);
        }
        let made = Fds::new(Some(link))?;
        Ok(self.fds.get_or_init(|| made))
    }
}

/// `Ends::socket` if the other half is not reading the socket now. A lock poisoned
/// by a panic (a receive's closure, say) is taken too: the socket is as it was.
fn try_socket(ends: &Ends) -> Option<MutexGuard<'_, ()>> {
    match ends.socket.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The writer half's drain of the peer's signals, waiting for room (`None`: the reader
/// half is reading the socket now). Descriptor messages are kept from the reader's
/// *released* position on, which is at or before every record whose descriptors it
/// has not taken, and is read again for each message (it moves meanwhile: a stale
/// one would make a record written a ring past it look forged).
#[cfg(feature = "tokio")]
pub(super) fn drain_for_writer(ends: &Ends) -> Option<Drained> {
    let _socket = try_socket(ends)?;
    let link = &*ends.link;
    let inbound = link.segment.ring(1 - link.end);
    let released = || inbound.lines().head.0.load(Ordering::Acquire);
    let (drained, dropped) = wire::drain_signals_counted(link.socket.as_fd(), released, inbound.capacity());
    if dropped > 0 {
        pass_on(&ends.reader_ready);
    }
    Some(drained)
}

/// A drain dropped signals that may have been the other half's: its set saw them
/// arrive, but epoll reports an edge only while the socket is still readable when
/// that set is waited on (it polls the file again then), so the event would be lost
/// to a set that had not been waited on yet, tokio's reactor behind it included.
/// Raising the other half's set makes it readable instead (at worst one spurious
/// wake-up: its next look finds nothing and arms again).
#[cfg(feature = "tokio")]
fn pass_on(other: &HalfReady) {
    if let Some(fds) = other.made() {
        fds.raise();
    }
}

/// The reader half's drain, as its arming makes it (at its own position, which only
/// it moves).
fn drain_for_reader(ends: &Ends, rx: &Rx) -> Option<Drained> {
    let _socket = try_socket(ends)?;
    let (head, capacity) = (rx.consumer.seen_tail(), rx.consumer.ring().capacity());
    let (drained, dropped) = wire::drain_signals_counted(ends.link.socket.as_fd(), || head, capacity);
    if dropped > 0 {
        #[cfg(feature = "tokio")]
        pass_on(&ends.writer_ready);
    }
    Some(drained)
}

impl PortReader {
    /// As [`as_fd`](AsFd::as_fd), with the error instead of a panic when the
    /// descriptor cannot be made (`epoll_create1` or `eventfd` failed: out of
    /// descriptors).
    pub fn try_as_fd(&self) -> io::Result<BorrowedFd<'_>> {
        if let Some(fds) = self.ends.reader_ready.made() {
            return Ok(fds.epoll());
        }
        let fds = self.ends.reader_ready.get_or_make(&self.rx.link)?;
        // Readable at once: the caller's loop receives until `Empty`, which arms it.
        fds.raise();
        Ok(fds.epoll())
    }

    /// A `try_` receive found the ring empty: if the reader has a readiness descriptor,
    /// arm it and look once more (what the look finds is the receive's result).
    #[cold]
    #[inline(never)]
    pub(super) fn rearm(&mut self) -> Option<Result<Record, RecvFail>> {
        let ends = &*self.ends;
        let fds = ends.reader_ready.made()?;
        let check = readiness::arm_with(fds, &mut self.rx, |rx| drain_for_reader(ends, rx));
        self.rx.poll(check)
    }

    /// A `try_` receive found the end (or an error): the descriptor, if made, is
    /// readable for good (an arming may have taken the socket's hang-up edge).
    #[cold]
    pub(super) fn ended(&self) {
        if let Some(fds) = self.ends.reader_ready.made() {
            fds.raise();
        }
    }
}

/// The reader's readiness descriptor: readable when a message may be waiting, or the
/// peer is gone (closed, dropped, killed). Wait on it with `poll`, epoll, mio or
/// tokio's `AsyncFd` (level-triggered), then receive with the `try_` calls until
/// `TryRecvError::Empty`: finding the ring empty arms the descriptor again, so such a
/// loop never misses a message. The descriptor is readable when first made (the loop
/// drains, and its `Empty` arms it), and not readable after a drain while nothing is
/// waiting (a wake-up may be spurious, once).
///
/// The peer signals it only when this reader armed it, at most once per arming: a
/// busy channel makes no system call per message. Once the descriptor exists, a
/// `try_` receive that finds the ring empty arms it (a few system calls), so it is not
/// realtime-safe then: a realtime thread polls the ring with `try_` calls and never
/// asks for the descriptor. On a busy-poll channel it is always readable.
///
/// ```
/// use std::os::fd::AsFd;
/// use shmport::MessageChannel;
///
/// let channel = MessageChannel::new()?;
/// let (_writer, mut reader) = channel.port1().split()?;
/// let fd = reader.as_fd(); // hand it to poll, epoll or mio
/// # let _ = fd;
/// assert!(reader.try_recv_bytes_with(|b| b.len()).unwrap_err().is_empty()); // armed
/// channel.port2().post_bytes(b"hello")?;
/// // ... the descriptor is readable now
/// assert_eq!(reader.try_recv_bytes_with(|b| b.len())?, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Panics
/// If the descriptor cannot be made (the process is out of file descriptors). See
/// [`PortReader::try_as_fd`].
impl AsFd for PortReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.try_as_fd().unwrap_or_else(|e| panic!("shmport: cannot make a reader's readiness descriptor: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelOptions, MessageChannel};

    #[test]
    fn a_socket_lock_poisoned_by_a_panic_is_still_taken() {
        let channel = MessageChannel::with_options(&ChannelOptions::default().process_local(true)).unwrap();
        let (_writer, reader) = channel.port1().split().unwrap();
        let ends = reader.ends.clone();
        assert!(try_socket(&ends).is_some());
        let poisoner = ends.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.socket.lock().unwrap();
            panic!("a receive's closure");
        })
        .join();
        assert!(ends.socket.is_poisoned());
        assert!(try_socket(&ends).is_some(), "poisoned is not busy");
        let held = try_socket(&ends);
        assert!(try_socket(&ends).is_none(), "held is busy");
        drop(held);
    }
}
