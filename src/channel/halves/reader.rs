//! `PortReader`, the reading half of a split port.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::Arc;
use std::time::Duration;

use super::Ends;
use crate::channel::incoming;
use crate::channel::rx::Rx;
use crate::channel::{MessageEvent, Mode};
use crate::error::{RecvError, RecvFail, RecvTimeoutError, TryRecvError};
use crate::shm::ring::Record;
use crate::shm::wait::{self, Check, WaitStrategy};
use crate::wire::FLAG_ATTACHMENTS;

/// The reading half of a split port ([`MessagePort::split`](crate::MessagePort::split)),
/// owned by one thread: no lock on any call. `Send`, not `Clone`, not `Sync`.
///
/// ```compile_fail
/// fn sync<T: Sync>() {}
/// sync::<shmport::PortReader>();
/// ```
pub struct PortReader {
    pub(super) rx: ManuallyDrop<Rx>,
    pub(super) strategy: WaitStrategy,
    /// Where a message's bytes are copied out of the ring: room for the largest
    /// record is reserved when the port is split (its pages are touched only as
    /// messages that large arrive), so receiving allocates nothing.
    buf: Vec<u8>,
    pub(super) ends: Arc<Ends>,
    #[cfg(feature = "tokio")]
    pub(super) tokio: super::async_halves::AsyncHalf,
    _not_sync: PhantomData<Cell<()>>,
}

impl PortReader {
    pub(super) fn new(rx: Rx, strategy: WaitStrategy, ends: Arc<Ends>) -> PortReader {
        let mut buf = Vec::new();
        // If even the address space cannot be had, larger messages grow it later.
        let _ = buf.try_reserve_exact(rx.consumer.ring().max_payload());
        PortReader {
            rx: ManuallyDrop::new(rx),
            strategy,
            buf,
            ends,
            #[cfg(feature = "tokio")]
            tokio: Default::default(),
            _not_sync: PhantomData,
        }
    }

    /// Runs `f` on the bytes of the next message, if one is waiting
    /// (`TryRecvError::Empty` if not). The bytes are a copy in this process, never
    /// shared memory the peer can still write (a broadcast's body too large for the
    /// ring is read in place, in pages sealed against writes by anyone, as
    /// [`MessagePort::recv_bytes_with`](crate::MessagePort::recv_bytes_with) does). For a message posted with `post_message`
    /// they are its wire encoding; buffers and ports it carries are dropped (given back,
    /// closed).
    ///
    /// Realtime-safe for messages of bytes and plain-old-data (not for one that carries
    /// buffers or ports, or that its sender sent out of line): no allocation, no lock,
    /// no blocking call; at most one `FUTEX_WAKE` (the writer sleeps waiting for
    /// room), and on an empty ring at most one non-blocking `poll(2)` per 25 ms in
    /// which the writer made no progress. Once the reader's readiness descriptor
    /// exists ([`as_fd`](std::os::fd::AsFd::as_fd), an async receive), a call that
    /// finds the ring empty arms it (a few system calls, a short lock): a realtime
    /// thread polls without asking for the descriptor.
    #[inline]
    pub fn try_recv_bytes_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, TryRecvError> {
        self.bytes_mode(Mode::Try, f).map_err(TryRecvError::from)
    }

    /// As [`try_recv_bytes_with`](Self::try_recv_bytes_with), waiting for a message:
    /// `RecvError::Closed` once the peer is gone and everything it sent was read.
    ///
    /// Not realtime-safe: may spin, `sched_yield` and sleep (`FUTEX_WAIT`) while the
    /// ring is empty; a message already there costs what `try_recv_bytes_with` costs.
    #[inline]
    pub fn recv_bytes_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.bytes_mode(Mode::Block, f).map_err(RecvError::from)
    }

    /// As [`recv_bytes_with`](Self::recv_bytes_with), waiting at most `timeout`. Not
    /// realtime-safe.
    pub fn recv_bytes_timeout_with<R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RecvTimeoutError> {
        self.bytes_mode(Mode::timeout(timeout), f).map_err(RecvTimeoutError::from)
    }

    /// Copies the next message's bytes, if one is waiting, into the start of `out`
    /// and returns their length: as
    /// [`MessagePort::recv_bytes_into`](crate::MessagePort::recv_bytes_into), straight
    /// out of the ring, one copy fewer than a closure that copies. A message longer
    /// than `out` stays queued (a kept `MessageError` naming its length).
    ///
    /// Realtime-safe, as [`try_recv_bytes_with`](Self::try_recv_bytes_with).
    ///
    /// ```
    /// let channel = shmport::MessageChannel::new()?;
    /// let (mut writer, _) = channel.port1().split()?;
    /// let (_, mut reader) = channel.port2().split()?;
    /// let mut block = [0u8; 2048];
    /// writer.post_bytes(b"block")?;
    /// let n = reader.try_recv_bytes_into(&mut block)?;
    /// assert_eq!(&block[..n], b"block");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_recv_bytes_into(&mut self, out: &mut [u8]) -> Result<usize, TryRecvError> {
        self.try_recv_bytes_into_uninit(incoming::as_uninit(out))
    }

    /// As [`try_recv_bytes_into`](Self::try_recv_bytes_into), waiting for a message.
    /// Not realtime-safe (it may wait).
    #[inline]
    pub fn recv_bytes_into(&mut self, out: &mut [u8]) -> Result<usize, RecvError> {
        self.recv_bytes_into_uninit(incoming::as_uninit(out))
    }

    /// As [`recv_bytes_into`](Self::recv_bytes_into), waiting at most `timeout`.
    pub fn recv_bytes_timeout_into(&mut self, timeout: Duration, out: &mut [u8]) -> Result<usize, RecvTimeoutError> {
        self.recv_bytes_timeout_into_uninit(timeout, incoming::as_uninit(out))
    }

    /// As [`try_recv_bytes_into`](Self::try_recv_bytes_into), into memory that need
    /// not be initialised (as
    /// [`MessagePort::recv_bytes_into_uninit`](crate::MessagePort::recv_bytes_into_uninit)):
    /// on `Ok(n)` the first `n` bytes of `out` are initialised. Realtime-safe.
    #[inline]
    pub fn try_recv_bytes_into_uninit(&mut self, out: &mut [MaybeUninit<u8>]) -> Result<usize, TryRecvError> {
        self.bytes_into_mode(Mode::Try, out).map_err(TryRecvError::from)
    }

    /// As [`try_recv_bytes_into_uninit`](Self::try_recv_bytes_into_uninit), waiting
    /// for a message. Not realtime-safe (it may wait).
    #[inline]
    pub fn recv_bytes_into_uninit(&mut self, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvError> {
        self.bytes_into_mode(Mode::Block, out).map_err(RecvError::from)
    }

    /// As [`recv_bytes_into_uninit`](Self::recv_bytes_into_uninit), waiting at most
    /// `timeout`.
    pub fn recv_bytes_timeout_into_uninit(
        &mut self,
        timeout: Duration,
        out: &mut [MaybeUninit<u8>],
    ) -> Result<usize, RecvTimeoutError> {
        self.bytes_into_mode(Mode::timeout(timeout), out).map_err(RecvTimeoutError::from)
    }

    /// The next message, if one is waiting, as a plain-old-data value: a message posted
    /// with `post_pod` and a type of `T`'s size. Anything else is a `MessageError` and
    /// stays queued (as with `MessagePort::recv_pod`).
    ///
    /// Realtime-safe, as [`try_recv_bytes_with`](Self::try_recv_bytes_with).
    #[inline]
    pub fn try_recv_pod<T: bytemuck::AnyBitPattern>(&mut self) -> Result<T, TryRecvError> {
        self.pod_mode(Mode::Try).map_err(TryRecvError::from)
    }

    /// As [`try_recv_pod`](Self::try_recv_pod), waiting for a message. Not realtime-safe.
    #[inline]
    pub fn recv_pod<T: bytemuck::AnyBitPattern>(&mut self) -> Result<T, RecvError> {
        self.pod_mode(Mode::Block).map_err(RecvError::from)
    }

    /// As [`recv_pod`](Self::recv_pod), waiting at most `timeout`. Not realtime-safe.
    pub fn recv_pod_timeout<T: bytemuck::AnyBitPattern>(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.pod_mode(Mode::timeout(timeout)).map_err(RecvTimeoutError::from)
    }

    /// Waits for the next message and decodes it as `MessagePort::recv` does (any
    /// message: values with their buffers and ports, typed and raw ones as buffers).
    /// Not realtime-safe: the value is allocated.
    pub fn recv(&mut self) -> Result<MessageEvent, RecvError> {
        self.event_mode(Mode::Block).map_err(RecvError::from)
    }

    /// As [`recv`](Self::recv), if a message is waiting.
    pub fn try_recv(&mut self) -> Result<MessageEvent, TryRecvError> {
        self.event_mode(Mode::Try).map_err(TryRecvError::from)
    }

    /// As [`recv`](Self::recv), waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<MessageEvent, RecvTimeoutError> {
        self.event_mode(Mode::timeout(timeout)).map_err(RecvTimeoutError::from)
    }

    /// The largest message the peer can post through the ring, in bytes.
    pub fn max_inline_size(&self) -> usize {
        self.rx.consumer.ring().max_payload()
    }

    /// Whether the peer is closed, dropped or dead (messages it sent may still be
    /// waiting here). Not realtime-safe (a `poll(2)`).
    pub fn is_peer_closed(&self) -> bool {
        self.rx.link.peer_gone()
    }

    /// Changes how the waiting calls wait (ignored on a busy-poll channel). The halves
    /// start with the port's strategy.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = if self.rx.link.busy_poll() { WaitStrategy::BusyPoll } else { strategy };
    }

    #[inline]
    fn bytes_mode<R>(&mut self, mode: Mode, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvFail> {
        // One look without the waiting machinery first: the message is usually there.
        let rec = match self.rx.peek_ready() {
            Some(rec) => rec,
            None => self.next(mode)?,
        };
        if rec.flags & FLAG_ATTACHMENTS == 0 && rec.len <= self.buf.capacity() {
            // Into the buffer reserved at the split (every inline record fits it,
            // unless that reservation failed), without initialising it first.
            // SAFETY: the buffer has room for `rec.len` bytes (its capacity).
            unsafe { self.rx.consumer.copy_payload_raw(&rec, self.buf.as_mut_ptr()) };
            self.rx.consumed(&rec);
            // SAFETY: the copy initialised the first `rec.len` bytes of the allocation.
            return Ok(f(unsafe { std::slice::from_raw_parts(self.buf.as_ptr(), rec.len) }));
        }
        if rec.flags & FLAG_ATTACHMENTS == 0 {
            self.rx.take_into(&rec, &mut self.buf)?;
            return Ok(f(&self.buf[..rec.len]));
        }
        let body = {
            // The record's descriptors come off the socket: not while the writer drains
            // it. (Let go before `f` runs: a panic in it must not poison the lock.)
            let _socket = super::lock(&self.ends.socket);
            self.rx.take(&rec)?;
            incoming::body_in_place(&mut self.rx, rec.flags, rec.len)?
        };
        Ok(match body {
            incoming::BodyBytes::Copied(range) => f(&self.rx.scratch[range]),
            // A broadcast's large body: its read-only pages, no copy.
            incoming::BodyBytes::Frozen(frozen) => f(frozen.bytes()),
        })
    }

    #[inline]
    fn bytes_into_mode(&mut self, mode: Mode, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvFail> {
        let rec = match self.rx.peek_ready() {
            Some(rec) => rec,
            None => self.next(mode)?,
        };
        if rec.flags & FLAG_ATTACHMENTS == 0 && rec.len <= out.len() {
            // SAFETY: `out` has room for the record's `rec.len` bytes.
            unsafe { self.rx.take_into_raw(&rec, out.as_mut_ptr().cast::<u8>()) };
            return Ok(rec.len);
        }
        // Descriptors come off the socket under its lock (see `bytes_mode`).
        let _socket = (rec.flags & FLAG_ATTACHMENTS != 0).then(|| super::lock(&self.ends.socket));
        incoming::bytes_into(&mut self.rx, &rec, out)
    }

    #[inline]
    fn pod_mode<T: bytemuck::AnyBitPattern>(&mut self, mode: Mode) -> Result<T, RecvFail> {
        let rec = self.next(mode)?;
        // A value sent out of line takes its descriptors off the socket (see `bytes_mode`).
        let _socket = (rec.flags & FLAG_ATTACHMENTS != 0).then(|| super::lock(&self.ends.socket));
        self.rx.take_pod::<T>(&rec)
    }

    fn event_mode(&mut self, mode: Mode) -> Result<MessageEvent, RecvFail> {
        let rec = self.next(mode)?;
        // A record's descriptors come off the socket: not while the writer drains it.
        let _socket = (rec.flags & FLAG_ATTACHMENTS != 0).then(|| super::lock(&self.ends.socket));
        self.rx.take(&rec)?;
        incoming::decode_event(&mut self.rx, rec.kind, rec.flags, rec.len)
    }

    /// The next record, waiting as `mode` allows. It stays in the ring until taken.
    #[inline]
    fn next(&mut self, mode: Mode) -> Result<Record, RecvFail> {
        let found = match mode {
            Mode::Try => {
                let check = self.rx.liveness_due();
                // Empty: arm the readiness descriptor, if there is one, and look again.
                let found = match self.rx.poll(check) {
                    Some(found) => Some(found),
                    None => self.rearm(),
                };
                if let Some(Err(_)) = found {
                    // The end: the descriptor stays readable for good.
                    self.ended();
                }
                found
            }
            // The message is usually there already: one look first.
            Mode::Block | Mode::Until(_) => match self.rx.poll(Check::Fast) {
                Some(found) => Some(found),
                None => self.wait(mode),
            },
        };
        match found {
            Some(found) => found,
            None if matches!(mode, Mode::Try) => Err(RecvFail::Empty),
            None => Err(RecvFail::Timeout),
        }
    }

    /// Waits for the next record (`None`: the deadline passed).
    #[cold]
    #[inline(never)]
    fn wait(&mut self, mode: Mode) -> Option<Result<Record, RecvFail>> {
        let rx = &mut *self.rx;
        let link = rx.link.clone();
        let mut spin = rx.spin;
        let found = wait::block_on(
            link.rx_data_word(),
            link.segment.parker(),
            self.strategy,
            &mut spin,
            Some(&link.woke_peer),
            mode.deadline(),
            |check| rx.poll(check),
        );
        rx.spin = spin;
        found
    }
}

impl Drop for PortReader {
    fn drop(&mut self) {
        // SAFETY: `rx` is taken once, here, and never used again (the reader is going).
        let mut rx = unsafe { ManuallyDrop::take(&mut self.rx) };
        // What was read goes back to the writer now; the end closes when the writer has
        // gone too (`Ends::drop`), which discards what is still queued.
        rx.release_now();
        self.ends.give_back_rx(rx);
    }
}

impl std::fmt::Debug for PortReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortReader").field("max_inline_size", &self.max_inline_size()).finish_non_exhaustive()
    }
}
