//! The port object: one end of a channel, with its tx and rx halves behind separate
//! locks (a thread blocked in `recv` never blocks `post_message`): attaching, writing
//! a record, receiving, waiting, closing and detaching.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use crossbeam_utils::atomic::AtomicCell;

use super::Mode;
use super::api::MessagePort;
use super::link::{Link, wake_own_words};
use super::readiness::ReadyFd;
use super::rx::Rx;
use super::tx::Tx;
use crate::channel::dispatch::Events;
use crate::error::{PostError, RecvFail, TooLargeKind};
use crate::platform;
use crate::shm::lock::{HalfGuard, HalfLock};
use crate::shm::ring::{Consumer, Producer, PushError, Record};
use crate::shm::segment::{END_CLOSED, OpenError, Segment};
use crate::shm::sync::Ordering;
use crate::shm::wait::{self, Check, WaitStrategy};
use crate::wire;

/// The state of one port, shared by its handle and its dispatch thread.
pub(crate) struct Port {
    /// Set once, when the port is closed or transferred away.
    pub(super) detached: AtomicBool,
    /// The channel end, while attached. Its lock is only ever held briefly.
    pub(super) link: Mutex<Option<Arc<Link>>>,
    pub(super) tx: CachePadded<HalfLock<Option<Tx>>>,
    pub(super) rx: CachePadded<HalfLock<Option<Rx>>>,
    pub(super) strategy: AtomicCell<WaitStrategy>,
    pub(crate) events: Mutex<Events>,
    /// The readiness descriptor of `AsFd`, once asked for.
    pub(super) ready: ReadyFd,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes `m` as `mode` allows: at once or not at all (`Try`), or until a deadline.
/// `None` if the time ran out while another thread held it.
pub(super) fn lock_for<T>(m: &HalfLock<T>, mode: Mode) -> Option<HalfGuard<'_, T>> {
    let deadline = match mode {
        Mode::Block => return Some(m.lock()),
        Mode::Try => None,
        Mode::Until(d) => Some(d),
    };
    let mut spins = 0u32;
    loop {
        if let Some(g) = m.try_lock() {
            return Some(g);
        }
        let d = deadline?;
        if Instant::now() >= d {
            return None;
        }
        spins += 1;
        if spins < 64 { std::thread::yield_now() } else { std::thread::sleep(Duration::from_micros(100)) }
    }
}

/// The one way a port arrives from another process (in a message, from a parent, at a
/// rendezvous): its channel's segment memfd, its socket end, and which end it is, all
/// checked before anything is used (the end, the socket's type, and everything
/// `Segment::open_shared` checks).
pub(crate) fn port_from_fds(segment: OwnedFd, socket: OwnedFd, end: u32) -> Result<MessagePort, OpenError> {
    if end > 1 {
        return Err(OpenError::Invalid("a port's end is neither 0 nor 1"));
    }
    if !platform::is_seqpacket_socket(socket.as_fd()) {
        return Err(OpenError::Invalid("a port's socket is not a Unix SEQPACKET socket"));
    }
    let segment = Segment::open_shared(segment)?;
    let port =
        Port::attach(Arc::new(segment), end as usize, socket, WaitStrategy::default()).map_err(OpenError::Invalid)?;
    Ok(MessagePort::wrap(port))
}

impl Port {
    /// A port on end `end` of `segment`, at the rings' current positions.
    pub(crate) fn attach(
        segment: Arc<Segment>,
        end: usize,
        socket: OwnedFd,
        strategy: WaitStrategy,
    ) -> Result<Arc<Port>, &'static str> {
        let producer = Producer::attach(segment.ring(end)).map_err(|c| c.0)?;
        let consumer = Consumer::attach(segment.ring(1 - end)).map_err(|c| c.0)?;
        let strategy = if segment.busy_poll() { WaitStrategy::BusyPoll } else { strategy };
        let closed = segment.end_state(end).load(Ordering::Acquire) == END_CLOSED;
        let link = Arc::new(Link::new(segment, end, socket));
        let port = Port {
            detached: AtomicBool::new(closed),
            link: Mutex::new((!closed).then(|| link.clone())),
            tx: CachePadded::new(HalfLock::new((!closed).then(|| Tx::new(link.clone(), producer)))),
            rx: CachePadded::new(HalfLock::new((!closed).then(|| Rx::new(link, consumer)))),
            strategy: AtomicCell::new(strategy),
            events: Mutex::new(Events::default()),
            ready: ReadyFd::default(),
        };
        Ok(Arc::new(port))
    }

    #[inline]
    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    pub(super) fn strategy(&self) -> WaitStrategy {
        self.strategy.load()
    }

    /// Writes one record, waiting for space as `mode` allows, without publishing it.
    /// A corrupt consumer index breaks the direction for good (`Tx::break_off`).
    pub(super) fn push_waiting(
        &self,
        tx: &mut Tx,
        kind: u16,
        flags: u16,
        parts: &[&[u8]],
        mode: Mode,
    ) -> Result<Pushed, PostError> {
        if tx.link.peer_closed() {
            return Ok(Pushed::PeerGone);
        }
        if let Some(reason) = tx.broken {
            return Err(PostError::Broken(reason));
        }
        let pushed = self.push_record(tx, kind, flags, parts, mode);
        if let Err(PostError::Broken(reason)) = pushed {
            tx.break_off(reason);
        }
        pushed
    }

    /// The body of `push_waiting`: the first try, the `try_` case, then the wait. It is
    /// one function (62 lines) because the wait's closure re-runs the first try with
    /// the same borrowed state; split, the three parts would pass the same six values.
    fn push_record(
        &self,
        tx: &mut Tx,
        kind: u16,
        flags: u16,
        parts: &[&[u8]],
        mode: Mode,
    ) -> Result<Pushed, PostError> {
        match tx.producer.try_push(kind, flags, parts) {
            Ok(()) => {
                tx.note_progress();
                return Ok(Pushed::Written);
            }
            Err(PushError::Full) => {}
            Err(e) => return Err(push_error(e, parts, &tx.producer)),
        }
        if let Mode::Try = mode {
            // A full ring whose reader is gone will never drain: that is a silent
            // no-op, not `Full` (rule 10). The check is a syscall, made at most every
            // few ms so a realtime caller polling `try_` stays syscall-free.
            return if tx.liveness_due() == Check::Slow && tx.link.peer_gone() {
                Ok(Pushed::PeerGone)
            } else {
                Err(PostError::Full)
            };
        }
        // About to wait for the peer to read: give back what this port has read, first.
        // Otherwise two ports that each read a message and then post to each other
        // could wait for space the other holds.
        if let Some(mut rx) = self.rx.try_lock()
            && let Some(rx) = rx.as_mut()
        {
            rx.release_and_notify();
        }
        let link = tx.link.clone();
        let mut spin = tx.spin;
        let outcome = wait::block_on(
            link.tx_space_word(),
            link.segment.parker(),
            self.strategy(),
            &mut spin,
            None,
            mode.deadline(),
            |check| {
                if self.is_detached() {
                    return Some(Ok(Pushed::Detached));
                }
                // A peer that closed while we waited made room by discarding its
                // queue: the message goes nowhere rather than into that room (so a
                // broadcast does not count it as delivered).
                if link.peer_closed() {
                    return Some(Ok(Pushed::PeerGone));
                }
                match tx.producer.try_push(kind, flags, parts) {
                    Ok(()) => Some(Ok(Pushed::Written)),
                    Err(PushError::Full) => {
                        let gone = match check {
                            Check::Fast => link.peer_closed(),
                            Check::Slow => link.peer_gone(),
                        };
                        gone.then_some(Ok(Pushed::PeerGone))
                    }
                    Err(e) => Some(Err(push_error(e, parts, &tx.producer))),
                }
            },
        );
        tx.spin = spin;
        outcome.unwrap_or(Err(PostError::Timeout))
    }

    /// Posts raw bytes that fit the ring: the allocation-free path of `post_bytes`. A
    /// detached port or a closed peer makes this a silent no-op (`Delivery::Nowhere`).
    /// Returns `Err(Spill(max))` without doing anything if the bytes are larger than
    /// a record of this ring can be: the caller sends them out of line.
    #[inline]
    pub(super) fn post_inline(&self, kind: u16, bytes: &[u8], mode: Mode) -> Result<Delivery, Inline> {
        let Some(mut guard) = lock_for(&self.tx, mode) else { return Err(Inline::Failed(busy_error(mode))) };
        let Some(tx) = guard.as_mut() else { return Ok(Delivery::Nowhere) };
        let max = tx.producer.ring().max_payload();
        if bytes.len() > max {
            return Err(Inline::Spill(max));
        }
        match self.push_waiting(tx, kind, 0, &[bytes], mode).map_err(Inline::Failed)? {
            Pushed::Written => {
                tx.publish_and_notify();
                Ok(Delivery::Posted)
            }
            Pushed::PeerGone | Pushed::Detached => Ok(Delivery::Nowhere),
        }
    }

    /// For a broadcast, now and then: whether the peer is gone, by the liveness check
    /// of a `try_` post (a syscall at most once per slice, and only while the peer
    /// has not been seen to read). `false` whenever it cannot tell at once (the
    /// writing half is busy or gone: the post itself then decides).
    pub(super) fn peer_gone_by_liveness(&self) -> bool {
        let Some(mut guard) = self.tx.try_lock() else { return false };
        let Some(tx) = guard.as_mut() else { return false };
        tx.link.peer_closed() || (tx.liveness_due() == Check::Slow && tx.link.peer_gone())
    }

    /// The uncontended fast path of a post of `bytes` as one inline record: `Some`
    /// once it is published. `None` (nothing written) whenever anything is not plain:
    /// the lock is held elsewhere, the port has no sending half, the peer is closed,
    /// the direction is broken, the ring is full or the record too large. The caller
    /// then takes the full path (`post_inline`), which decides.
    #[inline]
    pub(super) fn try_post_fast(&self, kind: u16, bytes: &[u8]) -> Option<()> {
        let mut guard = self.tx.try_lock()?;
        // One exit, so that the guard's release is inlined rather than shared by
        // several exits as a call.
        let done = match guard.as_mut() {
            Some(tx) if tx.broken.is_none() && !tx.link.peer_closed() => tx.push_and_publish(kind, bytes).ok(),
            _ => None,
        };
        drop(guard);
        done
    }

    /// The uncontended fast path of a receive into `out`: the next record's length,
    /// once its payload is copied into `out` and the record taken, if it is plain
    /// bytes (no attachments, at most `N` of them). `None` (nothing taken) whenever
    /// anything is not plain: the lock is held elsewhere, the port is detached or
    /// has no receiving half, an error is pending, the ring is empty or corrupt, the
    /// record carries attachments or is larger. The caller then takes the full path.
    #[inline]
    pub(super) fn try_recv_small_fast<const N: usize>(&self, out: &mut MaybeUninit<[u8; N]>) -> Option<usize> {
        // SAFETY: `out` is N writable bytes.
        unsafe { self.try_recv_fast_raw(out.as_mut_ptr().cast::<u8>(), N) }
    }

    /// As `try_recv_small_fast`, into `out` (a message longer than it takes the full
    /// path).
    #[inline(always)]
    pub(super) fn try_recv_fast_into(&self, out: &mut [std::mem::MaybeUninit<u8>]) -> Option<usize> {
        // SAFETY: `out` is `out.len()` writable bytes.
        unsafe { self.try_recv_fast_raw(out.as_mut_ptr().cast::<u8>(), out.len()) }
    }

    /// # Safety
    /// `out` is valid for `cap` byte writes.
    #[inline(always)]
    unsafe fn try_recv_fast_raw(&self, out: *mut u8, cap: usize) -> Option<usize> {
        let mut guard = self.rx.try_lock()?;
        // One exit, so that the guard's release is inlined (see `try_post_fast`).
        let taken = match guard.as_mut() {
            Some(rx) if !self.is_detached() => match rx.peek_ready() {
                // (`&`, not `&&`: one branch instead of two.)
                Some(rec) if (rec.flags & wire::FLAG_ATTACHMENTS == 0) & (rec.len <= cap) => {
                    // SAFETY: `out` has room for `cap >= rec.len` bytes (the caller's promise).
                    unsafe { rx.take_into_raw(&rec, out) };
                    Some(rec.len)
                }
                _ => None,
            },
            _ => None,
        };
        drop(guard);
        taken
    }

    /// Waits for the next record as `mode` allows and hands its kind and payload to
    /// `f` (a copy in process memory; the ring space is already free).
    #[inline]
    pub(super) fn recv_record<R>(
        &self,
        mode: Mode,
        f: impl FnOnce(&mut Rx, u16, u16, usize) -> R,
    ) -> Result<R, RecvFail> {
        self.recv_record_raw(mode, |rx, rec| {
            rx.take(rec)?;
            Ok(f(rx, rec.kind, rec.flags, rec.len))
        })?
    }

    /// As `recv_record`, but `f` takes the record out of the ring itself (`Rx::take` or
    /// `Rx::take_into`).
    #[inline]
    pub(super) fn recv_record_raw<R>(&self, mode: Mode, f: impl FnOnce(&mut Rx, &Record) -> R) -> Result<R, RecvFail> {
        // A `try_` call never waits for the lock, a timed call waits at most until its
        // deadline: whoever holds it (a blocked `recv`, the dispatch thread) takes the
        // next message anyway.
        let Some(mut guard) = lock_for(&self.rx, mode) else {
            return Err(match (self.is_detached(), mode) {
                (true, _) => RecvFail::Closed,
                (false, Mode::Try) => {
                    // Empty without a look: the holder takes what comes; tell the
                    // descriptor's waiter, and an async receive, to look again.
                    self.ready.busy_elsewhere();
                    #[cfg(feature = "tokio")]
                    super::async_port::note_busy();
                    RecvFail::Empty
                }
                (false, _) => RecvFail::Timeout,
            });
        };
        let Some(rx) = guard.as_mut() else {
            return Err(RecvFail::Closed);
        };
        // A port that `split` (or a transfer) has detached, and whose reading half it is
        // about to take, leaves the next message to the new owner.
        let found = match mode {
            Mode::Try if self.is_detached() => Some(Err(RecvFail::Closed)),
            Mode::Try => {
                let check = rx.liveness_due();
                // Empty: arm the readiness descriptor, if there is one, and look again.
                let found = rx.poll(check).or_else(|| self.rearm(rx));
                if let Some(Err(_)) = found {
                    // The end: the descriptor stays readable for good (an arming may
                    // have taken the socket's hang-up edge).
                    self.ready.ended();
                }
                found
            }
            Mode::Block | Mode::Until(_) => {
                // The message is usually there already: one look first, without the
                // waiting machinery (no reference count on the link, no strategy load).
                let first = if self.is_detached() { Some(Err(RecvFail::Closed)) } else { rx.poll(Check::Fast) };
                if first.is_some() { first } else { self.wait_for_record(rx, mode) }
            }
        };
        match found {
            Some(Ok(rec)) => Ok(f(rx, &rec)),
            Some(Err(fail)) => Err(fail),
            None if matches!(mode, Mode::Try) => Err(RecvFail::Empty),
            None => Err(RecvFail::Timeout),
        }
    }

    /// Waits for the next record as `mode` allows (`None`: the deadline passed).
    fn wait_for_record(&self, rx: &mut Rx, mode: Mode) -> Option<Result<Record, RecvFail>> {
        let link = rx.link.clone();
        let mut spin = rx.spin;
        let found = wait::block_on(
            link.rx_data_word(),
            link.segment.parker(),
            self.strategy(),
            &mut spin,
            Some(&link.woke_peer),
            mode.deadline(),
            |check| if self.is_detached() { Some(Err(RecvFail::Closed)) } else { rx.poll(check) },
        );
        rx.spin = spin;
        found
    }

    /// The channel end, while attached.
    pub(crate) fn link(&self) -> Option<Arc<Link>> {
        lock(&self.link).clone()
    }

    /// Detaches the port and tells the peer it is closed (SEMANTICS 15). Idempotent.
    /// Messages queued here are discarded, giving back the buffers and ports they carry.
    pub(crate) fn close(&self) {
        let Some((link, tx, rx)) = self.detach_parts() else { return };
        link.mark_closed();
        if let Some(mut rx) = rx {
            rx.discard_queued();
        }
        close_buried();
        if let Some(mut tx) = tx {
            let gone = link.peer_gone();
            tx.settle_in_flight(gone);
        }
    }

    /// Marks the port detached, wakes its blocked callers, and takes its halves.
    /// Returns the link, for a transfer; `None` if already detached.
    pub(crate) fn detach(&self) -> Option<Arc<Link>> {
        self.detach_parts().map(|(link, _, _)| link)
    }

    pub(super) fn detach_parts(&self) -> Option<(Arc<Link>, Option<Tx>, Option<Rx>)> {
        self.detach_with(|| self.tx.lock().take()).map(|h| (h.link, h.tx, h.rx))
    }

    /// Marks the port detached (once: `None` if it was already), wakes its own blocked
    /// threads, and takes its link and halves, the writing half by `take_tx` (which
    /// locks it, or takes it from a guard the caller holds).
    pub(super) fn detach_with(&self, take_tx: impl FnOnce() -> Option<Tx>) -> Option<Halves> {
        if self.detached.swap(true, Ordering::SeqCst) {
            return None;
        }
        let link = {
            let mut held = lock(&self.link);
            let link = held.take()?;
            self.ready.detached(&link);
            crate::channel::dispatch::detached(self, &link);
            link
        };
        // Our own threads blocked in recv/post see `detached` and return, releasing
        // the locks taken below.
        wake_own_words(&link);
        let tx = take_tx();
        let mut rx = self.rx.lock().take();
        if let Some(rx) = rx.as_mut() {
            // Whoever takes the port over starts after what we have read (and a writer
            // waiting for that room hears of it now).
            rx.release_and_notify();
        }
        Some(Halves { link, tx, rx })
    }

    pub(super) fn is_peer_closed(&self) -> bool {
        self.link().is_none_or(|l| l.peer_gone())
    }

    pub(super) fn set_strategy(&self, strategy: WaitStrategy) {
        let busy = self.link().is_some_and(|l| l.busy_poll());
        self.strategy.store(if busy { WaitStrategy::BusyPoll } else { strategy });
    }

    /// Capacity of one record's payload on this port's channel.
    pub(super) fn max_message(&self) -> usize {
        self.link().map_or(0, |l| l.segment.ring(l.end).max_payload())
    }
}

thread_local! {
    /// A close on this thread is draining `BURIED`.
    static CLOSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Ports found in messages discarded by a close, to be closed in turn.
    static BURIED: std::cell::RefCell<Vec<MessagePort>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Queues ports of a discarded message to be closed after the current close: a chain
/// of ports each queued in the next one's channel closes one after the other, not by
/// recursion (which a peer could make deep enough to overflow the stack).
pub(crate) fn bury(ports: Vec<MessagePort>) {
    BURIED.with(|b| b.borrow_mut().extend(ports));
}

/// Closes the buried ports, unless a close further up this thread's stack does it.
pub(super) fn close_buried() {
    if CLOSING.with(|c| c.replace(true)) {
        return;
    }
    while let Some(port) = BURIED.with(|b| b.borrow_mut().pop()) {
        drop(port);
    }
    CLOSING.with(|c| c.set(false));
}

/// What a detached port gave up: its link and its two halves.
pub(super) struct Halves {
    pub(super) link: Arc<Link>,
    pub(super) tx: Option<Tx>,
    pub(super) rx: Option<Rx>,
}

/// Where a post that did not fail went: the silent no-op of SEMANTICS 10 is
/// `Nowhere`, which a broadcast (`PortCollection`) does not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Published in the peer's ring.
    Posted,
    /// The peer is gone or this port is detached: the message went nowhere.
    Nowhere,
}

/// Why `post_inline` did not post.
pub(crate) enum Inline {
    /// Too large for a record: send it out of line (the most a record carries).
    Spill(usize),
    /// A real error.
    Failed(PostError),
}

/// How `push_waiting` ended without an error.
pub(super) enum Pushed {
    /// The record is written, not yet published.
    Written,
    /// The peer is gone: the message goes nowhere.
    PeerGone,
    /// This port was detached meanwhile: the message goes nowhere.
    Detached,
}

/// The error of a call that could not even take its half's lock in time.
pub(super) fn busy_error(mode: Mode) -> PostError {
    match mode {
        Mode::Try => PostError::Full,
        _ => PostError::Timeout,
    }
}

fn push_error(e: PushError, parts: &[&[u8]], producer: &Producer) -> PostError {
    match e {
        PushError::TooLarge => PostError::TooLarge {
            kind: TooLargeKind::RecordBytes,
            len: parts.iter().map(|p| p.len()).sum(),
            max: producer.ring().max_payload(),
        },
        PushError::Corrupt(c) => PostError::Broken(c.0),
        PushError::Full => PostError::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment descriptor and a socket end, as a received port's table names them
    /// (the segment is never opened: the checks before it refuse).
    fn fds() -> (OwnedFd, OwnedFd) {
        let (segment, _) = platform::socketpair().unwrap();
        let (socket, _) = platform::socketpair().unwrap();
        (segment, socket)
    }

    fn refusal(result: Result<MessagePort, OpenError>) -> &'static str {
        match result {
            Err(OpenError::Invalid(why)) => why,
            other => panic!("expected a refusal, got {:?}", other.map(|_| ()).map_err(|e| e.to_string())),
        }
    }

    #[test]
    fn a_message_that_wakes_the_peer_s_reader_credits_this_end_s_next_wait() {
        use crate::shm::wait::WAITING;
        let options = crate::ChannelOptions::default().process_local(true);
        let channel = crate::MessageChannel::with_options(&options).unwrap();
        let (a, b) = (channel.port1(), channel.port2());
        let (link_a, link_b) = (a.port().link().unwrap(), b.port().link().unwrap());
        a.post_bytes(&[1]).unwrap();
        assert!(!link_a.woke_peer.take(), "nobody was asleep");
        assert_eq!(b.recv_bytes_with(|x| x.to_vec()).unwrap(), [1]);
        std::thread::scope(|s| {
            let reader = s.spawn(|| b.recv_bytes_with(|x| x.to_vec()).unwrap());
            while link_b.rx_data_word().word.load(Ordering::Relaxed) & WAITING == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            a.post_bytes(&[2]).unwrap();
            assert_eq!(reader.join().unwrap(), [2]);
        });
        assert!(link_a.woke_peer.take(), "the post woke the peer's reader");
        assert!(!link_b.woke_peer.take(), "the woken side earned nothing");
    }

    #[test]
    fn a_port_whose_end_is_not_0_or_1_is_refused() {
        let (segment, socket) = fds();
        assert_eq!(refusal(port_from_fds(segment, socket, 2)), "a port's end is neither 0 nor 1");
    }

    #[test]
    fn a_port_whose_socket_is_not_a_seqpacket_socket_is_refused() {
        let (segment, _) = fds();
        let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let why = refusal(port_from_fds(segment, OwnedFd::from(stream), 0));
        assert_eq!(why, "a port's socket is not a Unix SEQPACKET socket");
    }
}
