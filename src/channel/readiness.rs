//! A port's readiness descriptor (`impl AsFd for MessagePort`), and the iterators
//! `try_iter` / `iter`.
//!
//! The descriptor is an epoll set, made the first time it is asked for, that watches
//! two descriptors: the port's end of the channel's socket, edge-triggered (an event
//! when the writer sends a readiness signal or a record's descriptors, and when the
//! peer hangs up), and, level-triggered, an eventfd this process raises itself (the
//! port was detached, a message was already waiting when `as_fd` armed, the channel
//! is a busy-poll one). The set belongs to the port object, so its number stays valid
//! for as long as any handle of the port lives, whatever becomes of the socket: a port
//! transferred away stops watching it (and raises the eventfd). The socket itself
//! travels with the port, so the signals the writer sends follow the port to its new
//! process, where its own set watches it.
//!
//! Arming (the protocol is in `shm::ready`): `as_fd`, and every `try_` receive that
//! finds the ring empty on a port whose descriptor exists, clear the eventfd, take
//! the socket's events off the set (`epoll_harvest`), drain the signals already on
//! the socket, set `ARMED` in the port's wait word, and look at the ring again: a
//! record found then is returned (`try_`) or raises the eventfd (`as_fd`). So a loop
//! of "poll, then `try_recv` until `Empty`" never misses a message, and the descriptor
//! is not readable after such a drain (at most once spuriously, for a signal that
//! raced with the drain's last look).
//!
//! The socket is watched for its events, not its level, because a drain leaves a
//! later record's descriptors queued (sent before the record is published, or by an
//! attempt that was rolled back, which only the next record with descriptors clears):
//! watched level-triggered, they kept the set readable, and a level-triggered loop
//! spun on `Empty`. A look that finds the end (closed, gone, broken) raises the
//! eventfd instead, so the descriptor stays readable once the hang-up's edge was taken.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use super::api::{MessageEvent, MessagePort};
use super::link::Link;
use super::port::{Port, lock};
use super::rx::Rx;
use crate::error::{RecvError, RecvFail, TryRecvError};
use crate::platform::{self, Watch};
use crate::shm::ready::{self, Signal};
use crate::shm::ring::Record;
use crate::shm::sync::Ordering;
use crate::shm::wait::{ARMED, Check};
use crate::wire::{self, Drained};

/// The writer's signal to an armed reader: one byte on the channel's socket.
impl Signal for Link {
    fn signal(&self) -> bool {
        wire::send_signal(self.socket.as_fd())
    }
}

/// A port's readiness descriptor, once asked for.
#[derive(Default)]
pub(crate) struct ReadyFd {
    fds: OnceLock<Fds>,
    /// The async layer's registrations and room waiters.
    #[cfg(feature = "tokio")]
    tokio: super::async_port::AsyncState,
}

pub(super) struct Fds {
    /// What `as_fd` returns.
    epoll: OwnedFd,
    /// Raised by this process; in `epoll`.
    local: OwnedFd,
    /// Whether `local` is raised (its syscalls are made under this lock, so a raise
    /// and a clear in two threads leave the flag and the eventfd in step).
    raised: Mutex<bool>,
}

impl Fds {
    /// The set, watching `link`'s socket, or raised at once for a detached port.
    pub(super) fn new(link: Option<&Link>) -> io::Result<Fds> {
        let fds = Fds { epoll: platform::epoll_new()?, local: platform::eventfd_new()?, raised: Mutex::new(false) };
        platform::epoll_watch(fds.epoll.as_fd(), fds.local.as_fd(), 0, Watch::Input)?;
        match link {
            Some(link) => fds.watch_socket(link)?,
            None => fds.raise(),
        }
        Ok(fds)
    }

    /// Watches `link`'s socket for its events, not its level: a message left queued on
    /// it (the descriptors of a record not yet published, or of a rolled-back attempt)
    /// does not keep the set readable once an arming has taken the edges off it.
    fn watch_socket(&self, link: &Link) -> io::Result<()> {
        platform::epoll_watch(self.epoll.as_fd(), link.socket.as_fd(), 0, Watch::InputEdges)
    }

    /// Makes the descriptor readable. Every raise writes, so each is a new edge for an
    /// edge-triggered waiter (epoll's `EPOLLET`, mio, tokio), not only the first.
    pub(super) fn raise(&self) {
        let mut raised = lock(&self.raised);
        platform::eventfd_raise(self.local.as_fd());
        crate::diagnostics::count_readiness_calls(1);
        *raised = true;
    }

    /// Makes the eventfd unreadable; whether it was raised.
    /// The epoll set: what `as_fd` returns.
    pub(super) fn epoll(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Takes the socket's events so far off the set (an arming does, before it arms).
    pub(super) fn harvest(&self) {
        crate::diagnostics::count_readiness_calls(platform::epoll_harvest(self.epoll.as_fd()));
    }

    pub(super) fn clear(&self) -> bool {
        let mut raised = lock(&self.raised);
        if *raised {
            platform::eventfd_clear(self.local.as_fd());
            crate::diagnostics::count_readiness_calls(1);
            *raised = false;
            return true;
        }
        false
    }
}

impl ReadyFd {
    #[cfg(feature = "tokio")]
    pub(super) fn async_state(&self) -> &super::async_port::AsyncState {
        &self.tokio
    }

    /// The port was detached (closed, transferred, split): stop watching its socket,
    /// which may go on living in another process, and be readable from now on (a
    /// receive says `Closed`). Called with the port's link lock held, as `readiness_fd`
    /// makes the set, so the two never cross.
    pub(super) fn detached(&self, link: &Link) {
        if let Some(fds) = self.fds.get() {
            platform::epoll_unwatch(fds.epoll.as_fd(), link.socket.as_fd());
            fds.raise();
        }
    }

    /// A detach was undone (a transfer whose descriptors could not be sent): watch the
    /// socket again. Called with the port's link lock held, as `detached` is. The
    /// eventfd stays raised: the next `try_` receive clears it (one spurious wake-up).
    pub(super) fn attached(&self, link: &Link) {
        if let Some(fds) = self.fds.get()
            && fds.watch_socket(link).is_err()
        {
            // Out of memory for the watch: readable for good is the safe failure (the
            // loop polls the port) where unreadable would lose its wake-ups.
            fds.raise();
        }
    }

    /// A `try_` receive found the end (closed, gone, broken): the descriptor, if made,
    /// is readable for good (the socket's hang-up no longer is, once an arming took
    /// its edge).
    pub(super) fn ended(&self) {
        if let Some(fds) = self.fds.get() {
            fds.raise();
        }
    }

    /// A `try_` receive returned `Empty` without looking, because another thread of
    /// this process holds the receiving half: that thread takes what comes, and the
    /// descriptor is made readable, so an edge-triggered waiter looks again.
    pub(super) fn busy_elsewhere(&self) {
        if let Some(fds) = self.fds.get() {
            fds.raise();
        }
    }
}

impl Port {
    /// The readiness descriptor, made on the first call; every call arms it.
    pub(super) fn readiness_fd(&self) -> io::Result<BorrowedFd<'_>> {
        let fds = self.fds()?;
        self.arm_for_fd(fds);
        Ok(fds.epoll.as_fd())
    }

    /// An async post's wait for room: arms the descriptor as `as_fd` does, which drains
    /// the reader's room signals from the socket (on a port that only posts nothing
    /// else would, and once the socket's buffer is full a signal is no event). While
    /// another thread holds the reading half, nothing: `as_fd` would raise the
    /// descriptor for the caller to look again, and the wait would spin.
    #[cfg(feature = "tokio")]
    pub(super) fn arm_for_room(&self) {
        let Ok(fds) = self.fds() else { return };
        let Some(mut guard) = self.rx.try_lock() else { return };
        let Some(rx) = guard.as_mut().filter(|_| !self.is_detached()) else { return fds.raise() };
        let check = arm(&self.ready, fds, rx);
        if self.is_detached() || something_to_receive(rx, check) {
            fds.raise();
        }
    }

    /// The descriptor's set, made on the first call.
    fn fds(&self) -> io::Result<&Fds> {
        let link = lock(&self.link);
        if let Some(fds) = self.ready.fds.get() {
            return Ok(fds);
        }
        let made = Fds::new(link.as_deref())?;
        // Cannot be set already: it is only set here, under the link lock.
        let _ = self.ready.fds.set(made);
        Ok(self.ready.fds.get().expect("the readiness set was just made, under the link lock"))
    }

    /// The readiness descriptor if it was made, without arming it.
    pub(super) fn readiness_fd_made(&self) -> Option<BorrowedFd<'_>> {
        self.ready.fds.get().map(|fds| fds.epoll.as_fd())
    }

    /// `as_fd`'s arming: if something is there to receive already, the descriptor is
    /// made readable at once. While another thread holds the receiving half (a blocked
    /// `recv`, a message handler), that thread takes what comes, and the descriptor is
    /// made readable so the caller looks again.
    fn arm_for_fd(&self, fds: &Fds) {
        let Some(mut guard) = self.rx.try_lock() else { return fds.raise() };
        let Some(rx) = guard.as_mut().filter(|_| !self.is_detached()) else { return fds.raise() };
        let check = arm(&self.ready, fds, rx);
        if self.is_detached() || something_to_receive(rx, check) {
            fds.raise();
        }
    }

    /// A `try_` receive found the ring empty: if the port has a readiness descriptor,
    /// arm it and look once more (what the look finds is the receive's result).
    #[cold]
    #[inline(never)]
    pub(super) fn rearm(&self, rx: &mut Rx) -> Option<Result<Record, RecvFail>> {
        let fds = self.ready.fds.get()?;
        #[cfg(feature = "tokio")]
        if super::async_port::looking() {
            return None;
        }
        let check = arm(&self.ready, fds, rx);
        if self.is_detached() {
            // A detach (a close in another thread) raised the descriptor before `arm`
            // cleared it, and no longer watches the socket: raise it again, for good.
            // (`detached` is set before that raise, and both run under `raised`'s
            // lock, so this load sees it whenever the clear undid the raise.)
            fds.raise();
            return Some(Err(RecvFail::Closed));
        }
        // What it finds is the receive's result; the end raises the descriptor there.
        rx.poll(check)
    }
}

/// Clears the eventfd, drains the socket and arms the port's wait word. Returns the
/// check the look that must follow needs: `Slow` when the socket hung up or keeps
/// something (the peer may be gone).
fn arm(#[allow(unused_variables)] ready: &ReadyFd, fds: &Fds, rx: &mut Rx) -> Check {
    arm_with(fds, rx, |rx| {
        let link = &*rx.link;
        let drained = wire::drain_signals(link.socket.as_fd(), rx.consumer.seen_tail(), rx.consumer.ring().capacity());
        // A writer of this port waiting for room may have lost its signal to this drain.
        #[cfg(feature = "tokio")]
        if ready.tokio.room_moved(link) {
            fds.raise();
        }
        Some(drained)
    })
}

/// `arm`, for any reader of `rx` with its own set `fds`: `drain` drains the socket's
/// signals (`None`: it could not now, and the look checks the peer the slow way).
pub(super) fn arm_with(fds: &Fds, rx: &mut Rx, drain: impl FnOnce(&Rx) -> Option<Drained>) -> Check {
    let link = &*rx.link;
    if link.busy_poll() {
        // The writers of a busy-poll channel never look at the wait word: the
        // descriptor stays readable, and a loop on it busy-polls as the channel asked.
        fds.raise();
        return Check::Fast;
    }
    let was_raised = fds.clear();
    // The socket's events so far are taken off the set: what they announced, the drain
    // and the look that follow find (a signal's record, a hang-up), and a message still
    // queued after the drain (a later record's descriptors) no longer keeps the set
    // readable. An event from now on (a signal sent because of the `ARMED` set below,
    // a hang-up) makes it readable again.
    fds.harvest();
    let drained = drain(rx);
    let link = &*rx.link;
    let word = &link.rx_data_word().word;
    // Still armed since the last arming (the writer clears the flag as it signals, and
    // that arming's barrier was not degraded, or it would have raised the eventfd):
    // its barrier still orders the flag before this look, so the `membarrier` (an
    // interrupt to every CPU) is not issued again for every empty `try_` receive.
    let still_armed = !was_raised && word.load(Ordering::Relaxed) & ARMED != 0;
    if !still_armed && ready::arm(word, link.segment.parker()) {
        // The barrier could not be issued: a writer without a fence may miss the flag.
        // Readable at once: the caller's loop polls instead of risking a lost signal.
        fds.raise();
    }
    if drained == Some(Drained::Nothing) { Check::Fast } else { Check::Slow }
}

/// Whether a receive would return now (a record, an error, the end), without taking
/// anything.
pub(super) fn something_to_receive(rx: &mut Rx, check: Check) -> bool {
    if rx.stopped() {
        return true;
    }
    match rx.consumer.peek() {
        Ok(None) => match check {
            Check::Fast => rx.link.peer_closed(),
            Check::Slow => rx.link.peer_gone(),
        },
        Ok(Some(_)) | Err(_) => true,
    }
}

/// The readiness descriptor: readable when a message may be waiting on this port, or
/// its peer is gone (closed, dropped, killed), or the port is detached. Wait on it with
/// `poll`, epoll, mio or tokio's `AsyncFd` (level-triggered), then receive with the
/// `try_` calls until `TryRecvError::Empty`: finding the port empty arms the
/// descriptor again, so such a loop never misses a message, and the descriptor is not
/// readable after it while nothing is waiting (a wake-up may be spurious, once).
///
/// The writer signals the descriptor only when the reader armed it, at most once per
/// arming: a busy channel whose reader finds messages waiting makes no system call
/// per message. A thread blocked in `recv` keeps its futex wake-up.
///
/// Only the `try_` receives (and this call) drain and arm the descriptor: a loop that
/// wakes and then calls a blocking `recv` leaves its signal queued.
///
/// Each call arms the descriptor, and makes it readable at once if a message is
/// already waiting. The descriptor (an epoll set, made by the first call) belongs to
/// the port: the same number on every call, valid while any handle lives. Once the
/// port is detached it is readable for good. While another thread of this process
/// receives from the port (a blocked `recv`, a message handler), that thread takes the
/// messages, and the descriptor may wake its waiter spuriously. On a busy-poll
/// channel it is always readable.
///
/// # Panics
/// If the descriptor cannot be made (the process is out of file descriptors). See
/// [`MessagePort::try_as_fd`].
impl AsFd for MessagePort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.try_as_fd().unwrap_or_else(|e| panic!("shmport: cannot make a port's readiness descriptor: {e}"))
    }
}

impl MessagePort {
    /// As [`as_fd`](AsFd::as_fd), with the error instead of a panic when the descriptor
    /// cannot be made (`epoll_create1` or `eventfd` failed: out of descriptors).
    pub fn try_as_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.port().readiness_fd()
    }

    /// The messages waiting now, until the port is empty or closed (as std's
    /// `Receiver::try_iter`). A message that cannot be decoded is skipped (receive
    /// with [`try_recv`](Self::try_recv) to see it).
    pub fn try_iter(&self) -> TryIter<'_> {
        TryIter { port: self }
    }

    /// The messages of this port, waiting for each, until it is closed or its peer is
    /// gone and everything it sent was received (as std's `Receiver::iter`). A message
    /// that cannot be decoded is skipped.
    pub fn iter(&self) -> Iter<'_> {
        Iter { port: self }
    }
}

/// The messages waiting on a port now: [`MessagePort::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a> {
    port: &'a MessagePort,
}

impl Iterator for TryIter<'_> {
    type Item = MessageEvent;

    fn next(&mut self) -> Option<MessageEvent> {
        loop {
            match self.port.try_recv() {
                Ok(event) => return Some(event),
                Err(TryRecvError::MessageError(_)) => continue,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
            }
        }
    }
}

/// The messages of a port, blocking for each: [`MessagePort::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    port: &'a MessagePort,
}

impl Iterator for Iter<'_> {
    type Item = MessageEvent;

    fn next(&mut self) -> Option<MessageEvent> {
        loop {
            match self.port.recv() {
                Ok(event) => return Some(event),
                Err(RecvError::MessageError(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

impl<'a> IntoIterator for &'a MessagePort {
    type Item = MessageEvent;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {

    use rustix::event::{PollFd, PollFlags, poll};

    use super::*;
    use crate::{ChannelOptions, MessageChannel};

    /// Whether `fd` is readable now (poll(2) with no wait).
    fn readable_now(fd: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap() > 0
    }

    /// A descriptor message as `wire::fds` tags it, for the record at ring `position`.
    fn send_tagged(socket: BorrowedFd<'_>, position: u64, fd: BorrowedFd<'_>) {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&position.to_le_bytes());
        header[8..12].copy_from_slice(&7u32.to_le_bytes());
        header[12..].copy_from_slice(&1u32.to_le_bytes());
        platform::send_with_fds(socket, &header, &[fd]).unwrap();
    }

    #[test]
    fn descriptors_queued_for_a_record_to_come_do_not_keep_the_descriptor_readable() {
        let options = ChannelOptions::default().process_local(true);
        let channel = MessageChannel::with_options(&options).unwrap();
        let (writer, reader) = (channel.port1(), channel.port2());
        let link = writer.port().link().unwrap();
        let (spare, _other) = platform::socketpair().unwrap();
        let fd = reader.as_fd();
        assert!(!readable_now(fd), "nothing waiting");
        let before = crate::diagnostics().readiness_calls;
        assert!(matches!(reader.try_recv(), Err(TryRecvError::Empty)));
        assert!(crate::diagnostics().readiness_calls > before, "an arming's calls are counted");
        // The descriptors of a record that is not published (yet, or ever: an attempt
        // rolled back): a drain must leave them queued for that record.
        send_tagged(link.socket.as_fd(), 64, spare.as_fd());
        assert!(readable_now(fd), "the message queued is an event");
        assert!(matches!(reader.try_recv(), Err(TryRecvError::Empty)));
        assert!(!readable_now(fd), "after a drain to Empty, the queued message no longer makes it readable");
        assert!(matches!(reader.try_recv(), Err(TryRecvError::Empty)));
        assert!(!readable_now(fd), "nor after a second Empty");
        writer.post_bytes(&[1]).unwrap();
        assert!(readable_now(fd), "a message posted then wakes it");
        assert_eq!(reader.try_recv_bytes_with(|b| b.to_vec()).unwrap(), [1]);
        assert!(matches!(reader.try_recv(), Err(TryRecvError::Empty)));
        assert!(!readable_now(fd));
        writer.close();
        assert!(readable_now(fd), "the peer's close wakes it");
        assert!(matches!(reader.try_recv(), Err(TryRecvError::Closed)));
        assert!(readable_now(fd), "and it stays readable once the end was received");
        assert!(matches!(reader.try_recv(), Err(TryRecvError::Closed)));
        assert!(readable_now(fd), "for good");
    }
}
