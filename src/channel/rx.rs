//! The reading half of a port.

use std::os::fd::AsFd;
use std::sync::Arc;

use super::incoming;
use super::link::{Link, Liveness};
use crate::error::{MessageError, RecvFail};
use crate::shm::ready;
use crate::shm::ring::{Consumer, Corrupt, Record};
use crate::shm::wait::{Check, Notifier, SpinEstimate};
use crate::value::typed;
use crate::wire;

/// The reading side of a port.
pub(crate) struct Rx {
    pub(super) link: Arc<Link>,
    pub(super) consumer: Consumer,
    /// The last record's payload, copied out of shared memory.
    pub(super) scratch: Vec<u8>,
    /// The ring's framing was broken by the peer; only `Closed` from now on.
    pub(super) broken: bool,
    /// The error that broke it, until a receiving call reports it.
    pub(super) pending_error: Option<MessageError>,
    /// The ring position where the last record with attachments taken starts.
    pub(super) record_start: u64,

    /// The peer was seen gone and the ring drained: `Closed` from now on.
    pub(super) finished: bool,
    /// When the peer's index was seen to move, for non-blocking calls' liveness checks.
    pub(super) liveness: Liveness,
    pub(super) spin: SpinEstimate,
    /// How a release wakes a producer sleeping for room.
    notifier: Notifier,
}

impl Rx {
    pub(super) fn new(link: Arc<Link>, consumer: Consumer) -> Rx {
        Rx {
            notifier: Notifier::new(link.busy_poll(), link.segment.parker()),
            link,
            consumer,
            scratch: Vec::new(),
            broken: false,
            pending_error: None,
            record_start: 0,

            finished: false,
            liveness: Liveness::new(),
            spin: SpinEstimate::default(),
        }
    }

    #[inline(always)]
    pub(super) fn release_and_notify(&mut self) {
        if self.consumer.release() {
            // The producer's room: a sleeper, or a writer whose port armed its readiness
            // descriptor for room (`ARMED` on the space word, as on the data word).
            ready::notify_reader(self.notifier, &self.consumer.ring().lines().waits.0.space, || {
                (self.link.segment.parker(), &*self.link)
            });
        }
    }

    /// One look for the next record. `None`: nothing yet, and the peer is alive.
    #[inline]
    pub(super) fn poll(&mut self, check: Check) -> Option<Result<Record, RecvFail>> {
        if self.stopped() {
            return Some(self.poll_stopped());
        }
        match self.peek() {
            Some(found) => Some(found),
            None => self.poll_empty(check),
        }
    }

    /// Something must be said before the next record: an error, or the end.
    #[inline]
    pub(super) fn stopped(&self) -> bool {
        self.pending_error.is_some() || self.broken || self.finished
    }

    /// The next record if one is there and nothing else needs saying first (no error
    /// pending, the direction open): the fast path's look, with no liveness check.
    /// `None` when the full `poll` must decide.
    #[inline]
    pub(super) fn peek_ready(&mut self) -> Option<Record> {
        if self.stopped() {
            return None;
        }
        self.consumer.peek().ok().flatten()
    }

    /// `poll` with an error to report first, or after the end.
    #[cold]
    fn poll_stopped(&mut self) -> Result<Record, RecvFail> {
        match self.pending_error.take() {
            Some(e) => Err(RecvFail::Message(e)),
            None => Err(RecvFail::Closed),
        }
    }

    /// The ring is broken: `reason` is reported once, then the direction is closed.
    #[cold]
    fn corrupt(&mut self, reason: &'static str) -> RecvFail {
        self.broken = true;
        RecvFail::Message(MessageError::new(reason))
    }

    /// `poll` on a ring found empty: is the peer still there?
    #[cold]
    #[inline(never)]
    fn poll_empty(&mut self, check: Check) -> Option<Result<Record, RecvFail>> {
        self.release_and_notify();
        let gone = match check {
            Check::Fast => self.link.peer_closed(),
            Check::Slow => self.link.peer_gone(),
        };
        if !gone {
            return None;
        }
        // The peer published its last records before it marked itself closed (or
        // died), so one more look decides between "more to read" and "closed".
        match self.peek() {
            Some(r) => Some(r),
            None => {
                self.finished = true;
                // Descriptors still queued belong to records that will never come: a
                // port among them (one the peer was moving here when it died) closes
                // now, for its own peer, instead of when this end does.
                wire::drop_unclaimed(self.link.socket.as_fd());
                Some(Err(RecvFail::Closed))
            }
        }
    }

    #[inline]
    pub(super) fn peek(&mut self) -> Option<Result<Record, RecvFail>> {
        match self.consumer.peek() {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => None,
            Err(Corrupt(reason)) => Some(Err(self.corrupt(reason))),
        }
    }

    /// Whether a slow (syscall) liveness check is due for a non-blocking call.
    pub(super) fn liveness_due(&mut self) -> Check {
        let progress = self.consumer.seen_tail();
        self.liveness.due(progress)
    }

    /// The payload of the record `take` returned last.
    pub(crate) fn payload(&self, len: usize) -> &[u8] {
        &self.scratch[..len]
    }

    /// The ring position where the last record with attachments that `take` returned
    /// starts.
    pub(super) fn record_start(&self) -> u64 {
        self.record_start
    }

    /// Gives consumed space back now (and wakes a writer waiting for it).
    pub(super) fn release_now(&mut self) {
        self.release_and_notify();
    }

    /// The channel end this half reads.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Makes `body` (a spilled message, copied out of its chunk) the current payload.
    pub(super) fn replace_payload(&mut self, body: Vec<u8>) -> std::ops::Range<usize> {
        let len = body.len();
        self.scratch = body;
        0..len
    }

    /// Copies `rec`'s payload into `scratch` and frees its ring space. If the copy
    /// cannot be allocated, the record is dropped and reported as a message error.
    pub(super) fn take(&mut self, rec: &Record) -> Result<(), RecvFail> {
        let limit = self.consumer.ring().max_payload();
        if self.scratch.capacity() > 2 * limit {
            // A large copy was left here (or a big receive buffer swapped in by
            // `recv_bytes_with`); do not keep it alive.
            self.scratch = Vec::new();
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let taken = self.take_into(rec, &mut scratch);
        self.scratch = scratch;
        taken
    }

    /// As `take`, into `out` (whose first `rec.len` bytes receive the payload).
    #[inline]
    pub(super) fn take_into(&mut self, rec: &Record, out: &mut Vec<u8>) -> Result<(), RecvFail> {
        let fits = out.len() >= rec.len || out.try_reserve(rec.len - out.len()).is_ok();
        if fits {
            if out.len() < rec.len {
                out.resize(rec.len, 0);
            }
            self.consumer.copy_payload(rec, &mut out[..rec.len]);
        }
        self.consumed(rec);
        if fits { Ok(()) } else { Err(RecvFail::Message(MessageError::new("out of memory for the message"))) }
    }

    /// Takes a record without attachments of at most `N` bytes into the first
    /// `rec.len` bytes of `out`.
    #[inline(always)]
    pub(super) fn take_into_uninit<const N: usize>(&mut self, rec: &Record, out: &mut std::mem::MaybeUninit<[u8; N]>) {
        assert!(rec.len <= N);
        // SAFETY: `out` has room for N >= rec.len bytes.
        unsafe { self.take_into_raw(rec, out.as_mut_ptr().cast::<u8>()) };
    }

    /// Takes a record without attachments into the `rec.len` bytes at `out`.
    ///
    /// # Safety
    /// `out` must be valid for `rec.len` byte writes.
    #[inline(always)]
    pub(super) unsafe fn take_into_raw(&mut self, rec: &Record, out: *mut u8) {
        // SAFETY: forwarded from the caller.
        unsafe { self.consumer.copy_payload_raw(rec, out) };
        self.consumed(rec);
    }

    /// The length of the bytes `recv_bytes_with` would hand over for `rec` (its body,
    /// for a record with attachments), read without taking it; `None` if its table is
    /// malformed.
    pub(super) fn bytes_len(&self, rec: &Record) -> Option<usize> {
        if rec.flags & wire::FLAG_ATTACHMENTS == 0 {
            return Some(rec.len);
        }
        let mut table = [0u8; wire::TABLE_WITH_SPILL];
        let n = table.len().min(rec.len);
        self.consumer.copy_payload_prefix(rec, &mut table[..n]);
        wire::body_len(&table[..n], rec.len)
    }

    /// Copies `rec`'s payload into the first `rec.len` bytes of `out`, leaving the
    /// record in the ring.
    fn copy_out(&self, rec: &Record, out: &mut Vec<u8>) -> Result<(), RecvFail> {
        if out.len() < rec.len {
            out.try_reserve(rec.len - out.len())
                .map_err(|_| RecvFail::Message(MessageError::new("out of memory for the message").kept()))?;
            out.resize(rec.len, 0);
        }
        self.consumer.copy_payload(rec, &mut out[..rec.len]);
        Ok(())
    }

    /// Takes `rec` if it is a typed message that decodes as a `T`; a message of another
    /// kind stays queued (a kept `MessageError`), and so does a typed message whose
    /// body is in the ring and which carries nothing else (it is decoded from a copy).
    /// A typed message that carries buffers or ports, or whose body travelled out of
    /// line, is taken before it is decoded (its descriptors come off the socket), so if
    /// it is not a `T` it is consumed: its buffers go back to their owner and its ports
    /// close.
    pub(super) fn take_typed<T: serde::de::DeserializeOwned>(
        &mut self,
        rec: &Record,
        buf: &mut Vec<u8>,
    ) -> Result<T, RecvFail> {
        if rec.kind != wire::KIND_TYPED {
            return Err(RecvFail::Message(MessageError::new("the next message was not posted with post_typed").kept()));
        }
        if rec.flags & wire::FLAG_ATTACHMENTS == 0 {
            self.copy_out(rec, buf)?;
            let value = typed::decode::<T>(&buf[..rec.len], &[], &[]).map_err(|e| RecvFail::Message(e.kept()))?;
            self.consumed(rec);
            return Ok(value);
        }
        self.take(rec)?;
        incoming::decode_typed(self, rec.len)
    }

    /// Takes `rec` if it is a plain-old-data message of `T`'s size; anything else stays
    /// queued (a kept `MessageError`).
    pub(super) fn take_pod<T: bytemuck::AnyBitPattern>(&mut self, rec: &Record) -> Result<T, RecvFail> {
        let size = size_of::<T>();
        let refuse = |why| Err(RecvFail::Message(MessageError::new(why).kept()));
        if rec.kind != wire::KIND_POD {
            return refuse("the next message was not posted with post_pod");
        }
        if rec.flags & wire::FLAG_ATTACHMENTS != 0 {
            // A value larger than the ring: its size is in the table, read before the
            // body is taken (and copied).
            let mut table = [0u8; wire::TABLE_WITH_SPILL];
            let n = table.len().min(rec.len);
            self.consumer.copy_payload_prefix(rec, &mut table[..n]);
            if wire::spilled_len(&table[..n]) != Some(size as u64) {
                return refuse("plain-old-data message has the wrong size");
            }
            self.take(rec)?;
            let range = incoming::body_of(self, rec.flags, rec.len)?;
            let body = &self.scratch[range];
            return if body.len() == size {
                Ok(bytemuck::pod_read_unaligned(body))
            } else {
                Err(RecvFail::Message(MessageError::new("plain-old-data message has the wrong size")))
            };
        }
        if rec.len != size {
            return refuse("plain-old-data message has the wrong size");
        }
        let mut value = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `value` has room for `size_of::<T>() == rec.len` bytes.
        unsafe { self.consumer.copy_payload_raw(rec, value.as_mut_ptr().cast::<u8>()) };
        self.consumed(rec);
        // SAFETY: every byte of `value` was written, and any bit pattern is a `T`.
        Ok(unsafe { value.assume_init() })
    }

    /// Marks `rec` read, giving its space back in batches.
    #[inline(always)]
    pub(super) fn consumed(&mut self, rec: &Record) {
        crate::fault::fault_point!(RECV_COPIED);
        self.consumer.consume(rec);
        // Space goes back in batches: when everything known is read (so an idle reader
        // holds nothing back) or a quarter of the ring has been read. A release per
        // message would make a writer that outpaces this reader re-read `head` for
        // every message, bouncing its cache line between the cores (measured: twice the
        // time per 64 B message). A port that must wait to post gives its read space
        // back first (see `push_waiting`). A record with attachments is given back
        // only once they are taken (see `incoming::attachments`).
        if rec.flags & wire::FLAG_ATTACHMENTS != 0 {
            // Where its descriptors are checked against (`incoming::attachments`).
            self.record_start = rec.start();
            return;
        }
        if self.consumer.caught_up() || self.consumer.unreleased() >= self.consumer.ring().capacity() / 4 {
            self.release_and_notify();
        }
    }

    /// Swaps the payload buffer with `other` (to hand a spilled body out without copying it).
    pub(super) fn swap_scratch(&mut self, other: &mut Vec<u8>) {
        std::mem::swap(&mut self.scratch, other);
    }

    /// Reads and drops everything queued, giving back what the records carry: the
    /// port is closing (SEMANTICS 15). Bounded by one ring's worth of records.
    pub(super) fn discard_queued(&mut self) {
        let most = self.consumer.ring().max_payload() / 8 + 1;
        for _ in 0..most {
            match self.consumer.peek() {
                Ok(Some(rec)) => {
                    if self.take(&rec).is_ok() {
                        incoming::discard_record(self, rec.flags, rec.len);
                    }
                }
                _ => break,
            }
        }
        self.consumer.release();
    }
}
