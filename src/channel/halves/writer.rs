//! `PortWriter`, the writing half of a split port, and its `WriteChunk`s.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use super::Ends;
use crate::channel::Mode;
use crate::channel::tx::Tx;
use crate::error::{PostError, TooLargeKind};
use crate::shm::ring::{PushError, Reserved};
use crate::shm::wait::{self, Check, WaitStrategy};
use crate::wire::{KIND_BYTES, KIND_POD};

/// The writing half of a split port ([`MessagePort::split`](crate::MessagePort::split)),
/// owned by one thread: no lock on any call. `Send`, not `Clone`, not `Sync`.
///
/// ```compile_fail
/// fn sync<T: Sync>() {}
/// sync::<shmport::PortWriter>();
/// ```
///
/// ```compile_fail
/// fn clone<T: Clone>() {}
/// clone::<shmport::PortWriter>();
/// ```
pub struct PortWriter {
    pub(super) tx: ManuallyDrop<Tx>,
    strategy: WaitStrategy,
    /// Where write chunks go once the peer is gone (grown then, only); of `u64`s, so
    /// that its chunks are 8-byte aligned as the ring's are.
    sink: Vec<u64>,
    pub(super) ends: Arc<Ends>,
    #[cfg(feature = "tokio")]
    pub(super) tokio: super::async_halves::AsyncHalf,
    _not_sync: PhantomData<Cell<()>>,
}

impl PortWriter {
    pub(super) fn new(tx: Tx, strategy: WaitStrategy, ends: Arc<Ends>) -> PortWriter {
        PortWriter {
            tx: ManuallyDrop::new(tx),
            strategy,
            sink: Vec::new(),
            ends,
            #[cfg(feature = "tokio")]
            tokio: Default::default(),
            _not_sync: PhantomData,
        }
    }

    /// Posts `bytes` as one message, copied into the ring, if there is room now:
    /// `PostError::Full` at once if not. The peer reads it as it reads
    /// [`MessagePort::post_bytes`](crate::MessagePort::post_bytes). More than
    /// [`max_inline_size`](Self::max_inline_size) bytes is `PostError::TooLarge`. To a
    /// peer that is gone, a silent no-op.
    ///
    /// Realtime-safe: no allocation, no lock, no blocking call; at most one
    /// `FUTEX_WAKE` (the reader sleeps), and on a full ring at most one non-blocking
    /// `poll(2)` per 25 ms in which the reader made no progress.
    #[inline]
    pub fn try_post_bytes(&mut self, bytes: &[u8]) -> Result<(), PostError> {
        self.post(KIND_BYTES, bytes, Mode::Try)
    }

    /// As [`try_post_bytes`](Self::try_post_bytes), waiting for room.
    ///
    /// Not realtime-safe: may spin, `sched_yield` and sleep (`FUTEX_WAIT`) while the
    /// ring is full; with room, it costs what `try_post_bytes` costs.
    #[inline]
    pub fn post_bytes(&mut self, bytes: &[u8]) -> Result<(), PostError> {
        self.post(KIND_BYTES, bytes, Mode::Block)
    }

    /// As [`post_bytes`](Self::post_bytes), waiting at most `timeout` for room
    /// (`PostError::Timeout`). Not realtime-safe.
    pub fn post_bytes_timeout(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), PostError> {
        self.post(KIND_BYTES, bytes, Mode::timeout(timeout))
    }

    /// Posts a plain-old-data value by its bytes, if there is room now; the peer reads
    /// it with `recv_pod` and a type of the same size.
    ///
    /// Realtime-safe, as [`try_post_bytes`](Self::try_post_bytes).
    #[inline]
    pub fn try_post_pod<T: bytemuck::NoUninit>(&mut self, value: &T) -> Result<(), PostError> {
        self.post(KIND_POD, bytemuck::bytes_of(value), Mode::Try)
    }

    /// As [`try_post_pod`](Self::try_post_pod), waiting for room. Not realtime-safe.
    #[inline]
    pub fn post_pod<T: bytemuck::NoUninit>(&mut self, value: &T) -> Result<(), PostError> {
        self.post(KIND_POD, bytemuck::bytes_of(value), Mode::Block)
    }

    /// As [`post_pod`](Self::post_pod), waiting at most `timeout`. Not realtime-safe.
    pub fn post_pod_timeout<T: bytemuck::NoUninit>(&mut self, value: &T, timeout: Duration) -> Result<(), PostError> {
        self.post(KIND_POD, bytemuck::bytes_of(value), Mode::timeout(timeout))
    }

    /// Reserves room for a message of `len` bytes in the ring, in one piece, to be
    /// filled in place: nothing is copied. The [`WriteChunk`] derefs to the `len`
    /// bytes; [`commit`](WriteChunk::commit) sends them (the peer reads a message of
    /// bytes, as from `post_bytes`), dropping the chunk sends nothing. `PostError::Full`
    /// at once if there is no room now; more than
    /// [`max_inline_size`](Self::max_inline_size) bytes is `PostError::TooLarge`.
    ///
    /// The bytes are not cleared: they hold whatever the ring held there (earlier
    /// messages of this direction). Write every byte you send. A chunk whose
    /// payload would wrap around the end of the ring is placed at its start, behind a
    /// padding record the reader skips; so a chunk larger than half the ring may find
    /// no room even in an empty ring until the reader has skipped that padding.
    ///
    /// To a peer that is gone, the chunk is process memory (allocated the first time)
    /// and `commit` sends nothing.
    ///
    /// Realtime-safe, as [`try_post_bytes`](Self::try_post_bytes); on a full ring it
    /// may publish the padding (one `FUTEX_WAKE` if the reader sleeps) instead of a
    /// message.
    #[inline]
    pub fn try_write_chunk(&mut self, len: usize) -> Result<WriteChunk<'_>, PostError> {
        self.chunk(len, Mode::Try)
    }

    /// As [`try_write_chunk`](Self::try_write_chunk), waiting for room. Not
    /// realtime-safe: may spin, `sched_yield` and sleep while the ring is full.
    #[inline]
    pub fn write_chunk(&mut self, len: usize) -> Result<WriteChunk<'_>, PostError> {
        self.chunk(len, Mode::Block)
    }

    /// As [`write_chunk`](Self::write_chunk), waiting at most `timeout` for room
    /// (`PostError::Timeout`). Not realtime-safe.
    pub fn write_chunk_timeout(&mut self, len: usize, timeout: Duration) -> Result<WriteChunk<'_>, PostError> {
        self.chunk(len, Mode::timeout(timeout))
    }

    /// The largest message, in bytes: the ring's capacity less 16 (a record header and
    /// the empty header slot that follows it).
    pub fn max_inline_size(&self) -> usize {
        self.tx.producer.ring().max_payload()
    }

    /// Whether the peer is closed, dropped or dead. Not realtime-safe (a `poll(2)`).
    pub fn is_peer_closed(&self) -> bool {
        self.tx.link.peer_gone()
    }

    /// Changes how the waiting calls wait (ignored on a busy-poll channel). The halves
    /// start with the port's strategy.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = if self.tx.link.busy_poll() { WaitStrategy::BusyPoll } else { strategy };
    }

    /// Writes and publishes one record of `kind`, waiting for room as `mode` allows.
    #[inline]
    fn post(&mut self, kind: u16, bytes: &[u8], mode: Mode) -> Result<(), PostError> {
        let tx = &mut *self.tx;
        if tx.link.peer_closed() {
            return Ok(());
        }
        if let Some(reason) = tx.broken {
            return Err(PostError::Broken(reason));
        }
        match tx.push_and_publish(kind, bytes) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => self.post_when_room(kind, bytes, mode),
            Err(e) => Err(refuse(tx, e, bytes.len())),
        }
    }

    /// `post` on a full ring.
    #[cold]
    #[inline(never)]
    fn post_when_room(&mut self, kind: u16, bytes: &[u8], mode: Mode) -> Result<(), PostError> {
        // A write chunk leaked with `mem::forget` may have left its padding written and
        // not published; the reader must skip it before the room it holds comes free.
        self.tx.publish_and_notify();
        let written = self.wait_for_room(mode, bytes.len(), |tx| tx.producer.try_push(kind, 0, &[bytes]))?;
        if written.is_some() {
            self.tx.note_progress();
            self.tx.publish_and_notify();
        }
        Ok(())
    }

    /// Retries `attempt` while it finds the ring full, as `mode` allows. `Ok(None)`: the
    /// peer is gone, so the message goes nowhere.
    fn wait_for_room<T>(
        &mut self,
        mode: Mode,
        len: usize,
        mut attempt: impl FnMut(&mut Tx) -> Result<T, PushError>,
    ) -> Result<Option<T>, PostError> {
        let tx = &mut *self.tx;
        if let Mode::Try = mode {
            // A full ring whose reader is gone never drains: a silent no-op, not `Full`
            // (SEMANTICS 10). The check is a syscall, made at most once a slice.
            return if tx.liveness_due() == Check::Slow && tx.link.peer_gone() {
                Ok(None)
            } else {
                Err(PostError::Full)
            };
        }
        let link = tx.link.clone();
        let mut spin = tx.spin;
        let outcome = wait::block_on(
            link.tx_space_word(),
            link.segment.parker(),
            self.strategy,
            &mut spin,
            None,
            mode.deadline(),
            |check| match attempt(tx) {
                Ok(t) => Some(Ok(Some(t))),
                Err(PushError::Full) => {
                    let gone = match check {
                        Check::Fast => link.peer_closed(),
                        Check::Slow => link.peer_gone(),
                    };
                    gone.then_some(Ok(None))
                }
                Err(e) => Some(Err(e)),
            },
        );
        tx.spin = spin;
        match outcome {
            None => Err(PostError::Timeout),
            Some(Ok(found)) => Ok(found),
            Some(Err(e)) => Err(refuse(tx, e, len)),
        }
    }

    /// Reserves a write chunk of `len` bytes, waiting for room as `mode` allows.
    #[inline]
    fn chunk(&mut self, len: usize, mode: Mode) -> Result<WriteChunk<'_>, PostError> {
        let tx = &mut *self.tx;
        let max = tx.producer.ring().max_payload();
        if len > max {
            return Err(PostError::TooLarge { kind: TooLargeKind::RecordBytes, len, max });
        }
        if tx.link.peer_closed() {
            return Ok(self.sink_chunk(len));
        }
        if let Some(reason) = tx.broken {
            return Err(PostError::Broken(reason));
        }
        let reserved = match tx.producer.try_reserve(len) {
            Ok(reserved) => reserved,
            Err(PushError::Full) => match self.chunk_when_room(len, mode)? {
                Some(reserved) => reserved,
                None => return Ok(self.sink_chunk(len)),
            },
            Err(e) => return Err(refuse(tx, e, len)),
        };
        self.tx.note_progress();
        let at = self.tx.producer.reserved_payload(&reserved);
        Ok(WriteChunk { place: Place::Ring(reserved, at), writer: self })
    }

    /// `chunk` on a full ring. Padding that the reservation wrote is published at once,
    /// so the reader skips it and frees the space after it.
    #[cold]
    #[inline(never)]
    fn chunk_when_room(&mut self, len: usize, mode: Mode) -> Result<Option<Reserved>, PostError> {
        self.tx.publish_and_notify();
        self.wait_for_room(mode, len, |tx| {
            let reserved = tx.producer.try_reserve(len);
            if let Err(PushError::Full) = reserved {
                tx.publish_and_notify();
            }
            reserved
        })
    }

    /// A chunk in process memory, for a peer that is gone.
    #[cold]
    fn sink_chunk(&mut self, len: usize) -> WriteChunk<'_> {
        if self.sink.len() < len.div_ceil(8) {
            self.sink.resize(len.div_ceil(8), 0);
        }
        WriteChunk { place: Place::Sink(len), writer: self }
    }
}

/// The error for a failed push of `len` bytes; a corrupt consumer index breaks the
/// direction for good (`Tx::break_off`).
fn refuse(tx: &mut Tx, e: PushError, len: usize) -> PostError {
    match e {
        PushError::TooLarge => {
            PostError::TooLarge { kind: TooLargeKind::RecordBytes, len, max: tx.producer.ring().max_payload() }
        }
        PushError::Full => PostError::Full,
        PushError::Corrupt(c) => {
            tx.break_off(c.0);
            PostError::Broken(c.0)
        }
    }
}

impl Drop for PortWriter {
    fn drop(&mut self) {
        // SAFETY: `tx` is taken once, here, and never used again (the writer is going).
        let tx = unsafe { ManuallyDrop::take(&mut self.tx) };
        // The end closes when the reader has gone too (`Ends::drop`).
        self.ends.give_back_tx(tx);
    }
}

/// Where a write chunk's bytes are.
#[derive(Clone, Copy)]
enum Place {
    /// Reserved in the ring: the payload's first byte.
    Ring(Reserved, NonNull<u8>),
    /// The first bytes of the writer's sink (the peer is gone).
    Sink(usize),
}

/// A message being written in place, in the ring: from
/// [`PortWriter::try_write_chunk`] / [`write_chunk`](PortWriter::write_chunk). Derefs
/// to its bytes (`&mut [u8]`); [`commit`](Self::commit) sends it, dropping it sends
/// nothing (and leaves the ring as it was), and so does leaking it (`mem::forget`: its
/// record's header is written only by `commit`).
///
/// The bytes start at an 8-byte aligned address (every record's payload does), so
/// they can be viewed as a slice of `f32`, `u64` and the like (`bytemuck::cast_slice_mut`)
/// when the length allows.
///
/// Its bytes are shared memory of the channel: a peer that breaks the protocol (a
/// hostile process mapping the segment) can change them while the chunk is filled,
/// as it can change any bytes of its messages; write them, and read back only what
/// you need not trust.
pub struct WriteChunk<'a> {
    writer: &'a mut PortWriter,
    place: Place,
}

impl WriteChunk<'_> {
    /// Sends the chunk's bytes as one message.
    ///
    /// Realtime-safe: no allocation, no lock, no blocking call; at most one
    /// `FUTEX_WAKE` (the reader sleeps).
    #[inline]
    pub fn commit(self) {
        let mut this = ManuallyDrop::new(self);
        if let Place::Ring(reserved, _) = this.place {
            let tx = &mut *this.writer.tx;
            tx.producer.commit_reserved(reserved, KIND_BYTES, 0);
            tx.publish_and_notify();
        }
    }
}

impl Drop for WriteChunk<'_> {
    /// Forgets the chunk (and the padding written for it), leaving the ring as it was.
    fn drop(&mut self) {
        if let Place::Ring(..) = self.place {
            self.writer.tx.producer.rollback();
        }
    }
}

impl Deref for WriteChunk<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self.place {
            // SAFETY: `at` is the first of `reserved.len()` bytes inside the data area
            // (`Producer::reserved_payload`), which stays mapped while the writer holds
            // its link (invariant 1) and which the consumer does not read before
            // `commit`; the `&mut` borrow of the writer keeps anything else of this
            // process from writing there. A hostile peer can: this is the exception to
            // invariant 3 stated for write chunks in `shm`.
            Place::Ring(reserved, at) => unsafe { std::slice::from_raw_parts(at.as_ptr(), reserved.len()) },
            Place::Sink(len) => &bytemuck::cast_slice(&self.writer.sink)[..len],
        }
    }
}

impl DerefMut for WriteChunk<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        match self.place {
            // SAFETY: as in `deref`; `&mut self` makes this the only slice of the chunk.
            Place::Ring(reserved, at) => unsafe { std::slice::from_raw_parts_mut(at.as_ptr(), reserved.len()) },
            Place::Sink(len) => &mut bytemuck::cast_slice_mut(&mut self.writer.sink)[..len],
        }
    }
}

impl std::fmt::Debug for WriteChunk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteChunk").field("len", &self.len()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PortWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortWriter").field("max_inline_size", &self.max_inline_size()).finish_non_exhaustive()
    }
}
