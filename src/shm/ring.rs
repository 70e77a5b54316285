//! The single-producer single-consumer ring of one direction of a channel.
//!
//! Records are 8-byte aligned: an 8-byte header `{len: u32, kind: u16, flags: u16}`
//! (one `u64`, little-endian fields in that order from the low bits) and `len` payload
//! bytes padded to 8. The header never straddles the end of the data area (both are
//! multiples of 8); the payload may wrap to offset 0. Payloads are always copied in and
//! out, so a wrapped payload costs a second `memcpy` and nothing else, and every record
//! up to the ring's size fits whatever the offset (a record pushed with `try_push`
//! never waits for the consumer to skip padding, and an empty ring is never "full").
//!
//! The one exception is a record whose payload must lie in one piece, to be filled in
//! place (a write chunk, `Producer::try_reserve` in `chunk`): when it would wrap, the
//! producer first writes a padding record ([`KIND_PAD`]) from the offset to the end of
//! the data area and places the record at offset 0. The consumer skips padding
//! records without reporting them; one that does not end exactly at the end of the
//! data area, or that starts at offset 0 (a producer never needs one there), is
//! [`Corrupt`].
//!
//! **The header is the publication.** A header word of 0 is "nothing here yet". The
//! producer writes a record's payload, then a 0 in the header slot that follows it
//! (where the next record will go), then the record's header, last, with Release. The
//! consumer polls the header at its `head` with Acquire: nonzero means a whole record
//! is there. So a small message costs the cache lines of its own bytes and nothing
//! more: the consumer never reads the producer's index (`tail`) to find records, and
//! the line it polls is the line that brings the data. The slot after each record is
//! zeroed before the record is published, so the consumer can never find a stale
//! header of an earlier lap at its `head`: every position the producer writes lies
//! below `released head + cap`, so the slot at the consumer's `head` holds either that
//! 0 or the header of the record the producer wrote there since. A record therefore
//! takes its size plus 8 bytes of room, and the largest payload is `cap - 16`.
//!
//! `head` (consumer) and `tail` (producer) are 64-bit byte counters that only grow;
//! `counter & (cap - 1)` is the offset. The producer keeps `head` cached in process
//! memory and reads the shared one only when the cache says "full". `tail` is stored
//! at each publish for whoever takes the producing side over (a port moved to another
//! process), and read only then and at attach.
//!
//! Records written and not yet published (a message whose descriptors are still to be
//! sent) can be rolled back: the header of the first of them is held back in process
//! memory until `publish`, so its slot still reads 0 and the consumer cannot pass it.
//!
//! The peer is untrusted. Every counter and length read from shared memory is checked
//! before use, and a payload is only ever *copied out* of shared memory: no `&[u8]` is
//! formed over bytes the peer could still be writing, so a hostile writer can garble its
//! own messages but cannot make this process read out of bounds. A failed check is
//! [`Corrupt`]: framing is lost and the caller must treat the direction as broken.

use crate::shm::sync::Ordering;

mod chunk;
mod view;

pub(crate) use chunk::Reserved;
pub(crate) use view::{RingLines, RingRef};

/// Bytes of a record header.
pub(crate) const HEADER: u64 = 8;
/// The smallest data area (so the loom model can reach the wrap with few records).
pub(crate) const MIN_CAPACITY: u64 = 64;
/// The largest data area of one direction.
pub(crate) const MAX_CAPACITY: u64 = 1 << 30;
/// The kind of a padding record: the space from its start to the end of the data area,
/// skipped by the consumer (see the module docs). Never seen above this layer.
pub(crate) const KIND_PAD: u16 = u16::MAX;

/// A check of shared state failed: the peer (or a stray write) broke the ring's
/// invariants, and framing cannot be trusted any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) &'static str);

/// Why a record could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Not enough free space now.
    Full,
    /// The record can never fit this ring.
    TooLarge,
    /// The consumer's counter is invalid.
    Corrupt(Corrupt),
}

/// The Release of `SYNC: header publish`; under loom, a negative-control test can
/// weaken it to show that the model then fails.
fn publish_order() -> Ordering {
    #[cfg(loom)]
    if loom_knobs::RELAXED_PUBLISH.with(|r| r.get()) {
        return Ordering::Relaxed;
    }
    Ordering::Release
}

/// The Acquire that pairs with `publish_order()`.
fn observe_order() -> Ordering {
    #[cfg(loom)]
    if loom_knobs::RELAXED_PUBLISH.with(|r| r.get()) {
        return Ordering::Relaxed;
    }
    Ordering::Acquire
}

#[cfg(loom)]
mod loom_knobs {
    std::thread_local! {
        /// Set by a negative-control test: the header is published and observed with
        /// Relaxed instead of Release/Acquire.
        pub(super) static RELAXED_PUBLISH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}

fn padded(len: u64) -> u64 {
    (len + 7) & !7
}

fn pack(len: u32, kind: u16, flags: u16) -> u64 {
    u64::from(len) | (u64::from(kind) << 32) | (u64::from(flags) << 48)
}

/// The writing half. One per direction, owned by whichever process holds the port.
pub(crate) struct Producer {
    ring: RingRef,
    /// Where the next record goes (published or not).
    tail: u64,
    /// The position up to which records are published (and the last value stored to
    /// the shared `tail`).
    published: u64,
    /// The header of the first record written since the last `publish`, held back so
    /// that its slot (at `published`) reads 0 until then; 0 when there is none (a
    /// header is never 0: its kind is not).
    pending: u64,
    /// The consumer's `head` as last read.
    cached_head: u64,
}

impl Producer {
    /// Takes over the producing side of `ring` at its current position.
    pub(crate) fn attach(ring: RingRef) -> Result<Producer, Corrupt> {
        let lines = ring.lines();
        // SYNC: attach. A port that moved here was handed over by a syscall, which
        // orders the previous owner's stores before these loads.
        let tail = lines.tail.0.load(Ordering::Acquire);
        let head = lines.head.0.load(Ordering::Acquire);
        check_counters(head, tail, ring.cap)?;
        Ok(Producer { ring, tail, published: tail, pending: 0, cached_head: head })
    }

    pub(crate) fn ring(&self) -> &RingRef {
        &self.ring
    }

    /// Whether `need` more bytes fit after `self.tail`, re-reading `head` if the cached
    /// value says no.
    #[inline]
    fn fits(&mut self, need: u64) -> Result<bool, Corrupt> {
        if self.tail + need - self.cached_head <= self.ring.cap {
            return Ok(true);
        }
        self.fits_after_refresh(need)
    }

    /// `fits` once the cached `head` said no: re-reads the shared one.
    #[cold]
    #[inline(never)]
    fn fits_after_refresh(&mut self, need: u64) -> Result<bool, Corrupt> {
        // SYNC: head release. Acquire: the consumer finished copying out the bytes it
        // released before we overwrite them.
        let head = self.ring.lines().head.0.load(Ordering::Acquire);
        if head < self.cached_head || head > self.published || !head.is_multiple_of(8) {
            return Err(Corrupt("consumer index out of range"));
        }
        self.cached_head = head;
        Ok(self.tail + need - head <= self.ring.cap)
    }

    /// Writes one record whose payload is the concatenation of `parts`. Nothing is
    /// visible to the consumer until `publish`.
    #[inline(always)]
    pub(crate) fn try_push(&mut self, kind: u16, flags: u16, parts: &[&[u8]]) -> Result<(), PushError> {
        let (offset, header, size) = self.write_record(kind, flags, parts)?;
        self.put_header(offset, header);
        self.tail += size;
        crate::fault::fault_point!(POST_WRITTEN);
        Ok(())
    }

    /// `try_push` of one record, then `publish`: the hot path of a post. With nothing
    /// pending (the usual case) the record's header is its own publication, stored
    /// at once instead of held back and taken up again.
    #[inline(always)]
    pub(crate) fn push_and_publish(&mut self, kind: u16, flags: u16, bytes: &[u8]) -> Result<(), PushError> {
        if self.tail != self.published {
            self.try_push(kind, flags, &[bytes])?;
            self.publish();
            return Ok(());
        }
        let (offset, header, size) = self.write_record(kind, flags, &[bytes])?;
        self.tail += size;
        crate::fault::fault_point!(POST_WRITTEN);
        self.store_publication(offset, header);
        Ok(())
    }

    /// Writes a record's payload and the empty slot after it at `self.tail`, if it
    /// fits; returns its offset, its header (not stored) and its size. Nothing moves.
    #[inline(always)]
    fn write_record(&mut self, kind: u16, flags: u16, parts: &[&[u8]]) -> Result<(u64, u64, u64), PushError> {
        debug_assert!(kind != 0);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Nothing here wraps: the parts lie in this process's address space (together
        // far below 2^62 bytes), and `tail` stays below 2^62 (`check_counters`) plus a
        // ring per record.
        let size = HEADER + padded(len as u64);
        // Room for the record and the empty header slot after it. A record that fits
        // is at most `max_payload` long (`padded(len) + 2 * HEADER <= cap`), so the
        // size limit is checked only when it does not (after a look at the shared
        // `head`: a corrupt one is then `Corrupt`, not `TooLarge`).
        if !self.fits(size + HEADER).map_err(PushError::Corrupt)? {
            return Err(if len > self.ring.max_payload() { PushError::TooLarge } else { PushError::Full });
        }
        debug_assert!(len <= self.ring.max_payload());
        let mask = self.ring.cap - 1;
        let offset = self.tail & mask;
        crate::fault::fault_point!(POST_RESERVED);
        crate::fault::fault_point!(POST_HALF_WRITTEN, || self.ring.write_payload_half((offset + HEADER) & mask, parts));
        self.ring.write_payload((offset + HEADER) & mask, parts);
        // The slot after the record reads "nothing here" until a record is written there.
        self.ring.header_at((offset + size) & mask).store(0, Ordering::Relaxed);
        Ok((offset, pack(len as u32, kind, flags), size))
    }

    /// Writes the header of the record at `self.tail` (offset `offset`), whose payload
    /// and following empty slot are written: held back if it is the first unpublished
    /// record (its header is then the publication), else stored at once, behind the
    /// held-back one, which the consumer cannot pass before `publish`.
    #[inline]
    fn put_header(&mut self, offset: u64, header: u64) {
        if self.tail == self.published {
            self.pending = header;
        } else {
            self.ring.header_at(offset).store(header, Ordering::Relaxed);
        }
    }

    /// Forgets the records written since the last `publish` (the caller could not
    /// complete the message they belong to).
    pub(crate) fn rollback(&mut self) {
        self.tail = self.published;
        self.pending = 0;
    }

    /// The position after the last record written: the consumer has read that record
    /// once its `head` reaches this.
    pub(crate) fn position(&self) -> u64 {
        self.tail
    }

    /// The consumer's `head` as last read (no shared-memory access).
    #[inline]
    pub(crate) fn seen_head(&self) -> u64 {
        self.cached_head
    }

    /// Re-reads the consumer's `head` (validated) and returns it.
    pub(crate) fn consumed(&mut self) -> Result<u64, Corrupt> {
        self.fits(self.ring.cap)?;
        Ok(self.cached_head)
    }

    /// Makes every record written so far visible. Returns whether there was anything
    /// to publish (the caller then notifies a sleeping consumer).
    #[inline]
    pub(crate) fn publish(&mut self) -> bool {
        let header = std::mem::take(&mut self.pending);
        if header == 0 {
            return false;
        }
        self.store_publication(self.published & (self.ring.cap - 1), header);
        true
    }

    /// Stores `header` at `offset`, the slot at `published`: every record written up
    /// to `tail` becomes visible.
    #[inline(always)]
    fn store_publication(&mut self, offset: u64, header: u64) {
        // SYNC: header publish. Release: the records' payloads, the headers behind this
        // one and the empty slot after the last are visible before this header.
        self.ring.header_at(offset).store(header, publish_order());
        // For whoever takes the producing side over (see `attach`); no consumer reads it.
        self.ring.lines().tail.0.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }
}

/// One record found by [`Consumer::peek`]; its payload is still in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) len: usize,
    payload_at: u64,
    start: u64,
    next: u64,
}

/// The reading half. One per direction, owned by whichever process holds the port.
pub(crate) struct Consumer {
    ring: RingRef,
    /// The start of the next record to read.
    head: u64,
    /// The last value stored to the shared `head`.
    released: u64,
}

impl Record {
    /// The ring position where this record starts.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }
}

impl Consumer {
    /// Takes over the consuming side of `ring` at its current position.
    pub(crate) fn attach(ring: RingRef) -> Result<Consumer, Corrupt> {
        let lines = ring.lines();
        // SYNC: attach (see Producer::attach).
        let head = lines.head.0.load(Ordering::Acquire);
        let tail = lines.tail.0.load(Ordering::Acquire);
        check_counters(head, tail, ring.cap)?;
        Ok(Consumer { ring, head, released: head })
    }

    pub(crate) fn ring(&self) -> &RingRef {
        &self.ring
    }

    /// The next record; `None` when the ring is empty. A padding record is skipped
    /// (consumed, given back at the next `release`); at most one lies in the way,
    /// since the record after it starts at offset 0, where padding is corrupt.
    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Result<Option<Record>, Corrupt> {
        loop {
            let mask = self.ring.cap - 1;
            let offset = self.head & mask;
            // SYNC: header publish. Acquire: pairs with the producer's Release of this
            // header, so the record's payload (and the empty slot after it) is written.
            let word = self.ring.header_at(offset).load(observe_order());
            if word == 0 {
                return Ok(None);
            }
            let len = u64::from(word as u32);
            let kind = (word >> 32) as u16;
            let flags = (word >> 48) as u16;
            if len > self.ring.max_payload() as u64 {
                return Err(Corrupt("record length out of range"));
            }
            let size = HEADER + padded(len);
            if kind == 0 || kind == KIND_PAD {
                self.skip_padding(offset, kind, size)?;
                continue;
            }
            return Ok(Some(Record {
                kind,
                flags,
                len: len as usize,
                payload_at: (offset + HEADER) & mask,
                start: self.head,
                next: self.head + size,
            }));
        }
    }

    /// Consumes the padding record of `size` bytes at `offset`, which must reach
    /// exactly the end of the data area and not start at its beginning (`kind` is
    /// `KIND_PAD`, or 0, which no record has).
    #[cold]
    fn skip_padding(&mut self, offset: u64, kind: u16, size: u64) -> Result<(), Corrupt> {
        if kind == 0 {
            return Err(Corrupt("record without a kind"));
        }
        if offset == 0 || offset + size != self.ring.cap {
            return Err(Corrupt("padding record does not end at the end of the ring"));
        }
        self.head += size;
        Ok(())
    }

    /// Copies the payload of `record` (the one `peek` just returned) into `out`, which
    /// must be exactly `record.len` bytes.
    #[inline]
    pub(crate) fn copy_payload(&self, record: &Record, out: &mut [u8]) {
        assert_eq!(out.len(), record.len);
        // SAFETY: `out` is `record.len` writable bytes.
        unsafe { self.ring.read_payload(record.payload_at, out.as_mut_ptr(), out.len()) };
    }

    /// Copies the first `out.len()` bytes of `record`'s payload (at most its length).
    pub(crate) fn copy_payload_prefix(&self, record: &Record, out: &mut [u8]) {
        assert!(out.len() <= record.len);
        // SAFETY: `out` is `out.len()` writable bytes, within the record's payload.
        unsafe { self.ring.read_payload(record.payload_at, out.as_mut_ptr(), out.len()) };
    }

    /// As `copy_payload`, into `record.len` writable bytes at `out` (which need not be
    /// initialised).
    ///
    /// # Safety
    /// `out` must be valid for `record.len` byte writes.
    #[inline]
    pub(crate) unsafe fn copy_payload_raw(&self, record: &Record, out: *mut u8) {
        // SAFETY: forwarded from the caller.
        unsafe { self.ring.read_payload(record.payload_at, out, record.len) };
    }

    /// Marks `record` read. The space returns to the producer at `release`.
    #[inline]
    pub(crate) fn consume(&mut self, record: &Record) {
        debug_assert!(record.start == self.head && record.next > self.head);
        self.head = record.next;
    }

    /// How far the producer is known to have published: the end of the last record
    /// read (no shared-memory access). It moves only when the peer made progress.
    pub(crate) fn seen_tail(&self) -> u64 {
        self.head
    }

    /// Whether the next record is not there yet: one look at its header slot (the line
    /// the next `peek` reads anyway).
    #[inline]
    pub(crate) fn caught_up(&self) -> bool {
        // SYNC: header publish. Relaxed: only a hint for when to give space back; a
        // record found here is read by `peek`, with Acquire.
        self.ring.header_at(self.head & (self.ring.cap - 1)).load(Ordering::Relaxed) == 0
    }

    /// Bytes read but not yet given back.
    #[inline]
    pub(crate) fn unreleased(&self) -> u64 {
        self.head - self.released
    }

    /// Gives consumed space back to the producer. Returns whether anything changed (the
    /// caller then notifies a producer waiting for space).
    #[inline]
    pub(crate) fn release(&mut self) -> bool {
        if self.head == self.released {
            return false;
        }
        // SYNC: head release. Release: our copies out of the records happen before the
        // producer may overwrite them.
        self.ring.lines().head.0.store(self.head, Ordering::Release);
        self.released = self.head;
        true
    }
}

/// Counters never come near this (2^62 bytes is 146 years at 1 TB/s), so a peer that
/// sets them there is refused before any addition could overflow. The check is made
/// where a counter is read from shared memory (at attach); after that each side's own
/// counter grows by at most one ring per record, in process memory.
const MAX_COUNTER: u64 = 1 << 62;

fn check_counters(head: u64, tail: u64, cap: u64) -> Result<(), Corrupt> {
    if head > tail || tail - head > cap || !head.is_multiple_of(8) || !tail.is_multiple_of(8) || tail > MAX_COUNTER {
        return Err(Corrupt("ring counters out of range"));
    }
    Ok(())
}

/// A ring in process memory, for the process-local backend's tests, loom, and the
/// layer benchmarks.
#[cfg(any(test, loom, feature = "bench-internals"))]
pub(crate) mod local {
    use std::ptr::NonNull;

    use super::view::{Line, WaitWords};
    use super::*;
    use crate::shm::sync::AtomicU64;
    use crate::shm::wait::WaitWord;

    /// Owns a `RingLines` and a data area on the heap.
    pub(crate) struct LocalRing {
        lines: Box<RingLines>,
        #[cfg(not(loom))]
        data: Box<[AtomicU64]>,
        #[cfg(loom)]
        data: Box<[AtomicU64]>,
        cap: u64,
    }

    impl LocalRing {
        pub(crate) fn new(cap: u64) -> LocalRing {
            let lines = Box::new(RingLines {
                tail: Line(AtomicU64::new(0)),
                head: Line(AtomicU64::new(0)),
                waits: Line(WaitWords { data: WaitWord::new(), space: WaitWord::new() }),
            });
            let data = (0..cap / 8).map(|_| AtomicU64::new(0)).collect();
            LocalRing { lines, data, cap }
        }

        /// A view valid while `self` lives.
        pub(crate) fn view(&self) -> RingRef {
            let lines = NonNull::from(&*self.lines);
            let data = NonNull::from(&self.data[0]);
            #[cfg(not(loom))]
            let data = data.cast::<u8>();
            // SAFETY: both allocations live as long as `self`, which the tests keep
            // alive beyond every use of the view; cap is a power of two >= 64.
            unsafe { RingRef::new(lines, data, self.cap) }
        }
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::local::LocalRing;
    use super::*;

    fn pop(c: &mut Consumer) -> Option<(u16, Vec<u8>)> {
        let rec = c.peek().unwrap()?;
        let mut out = vec![0; rec.len];
        c.copy_payload(&rec, &mut out);
        c.consume(&rec);
        c.release();
        Some((rec.kind, out))
    }

    #[test]
    fn push_pop_in_order_across_many_wraps() {
        let ring = LocalRing::new(256);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        for i in 0..10_000u32 {
            let len = (i as usize * 7) % 120;
            let payload: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            // On an empty ring every record fits, wherever the wrap falls.
            p.try_push(2, 0, &[&i.to_le_bytes(), &payload]).unwrap();
            assert!(p.publish());
            let (kind, got) = pop(&mut c).unwrap();
            assert_eq!(kind, 2);
            assert_eq!(&got[..4], &i.to_le_bytes());
            assert_eq!(&got[4..], &payload[..]);
        }
        assert!(pop(&mut c).is_none());
    }

    #[test]
    fn full_then_space_after_release() {
        let ring = LocalRing::new(64);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        // 64 bytes hold three records of 8-byte header + 8-byte payload (each needs
        // the 8-byte empty slot after it too).
        for i in 0..3u64 {
            p.try_push(2, 0, &[&i.to_le_bytes()]).unwrap();
        }
        assert_eq!(p.try_push(2, 0, &[&[0u8; 8]]), Err(PushError::Full));
        p.publish();
        assert_eq!(pop(&mut c).unwrap().1, 0u64.to_le_bytes());
        c.release();
        p.try_push(2, 0, &[&[9u8; 8]]).unwrap();
        p.publish();
        for i in 1..3u64 {
            assert_eq!(pop(&mut c).unwrap().1, i.to_le_bytes());
        }
        assert_eq!(pop(&mut c).unwrap().1, [9u8; 8]);
    }

    #[test]
    fn largest_record_fills_the_ring_and_larger_is_too_large() {
        let ring = LocalRing::new(128);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        // 128 bytes less the header and the empty slot after the record.
        assert_eq!(p.try_push(2, 0, &[&[1u8; 113]]), Err(PushError::TooLarge));
        // Move off offset 0 so the big record wraps around the end.
        p.try_push(2, 0, &[&[5u8; 8]]).unwrap();
        p.publish();
        assert_eq!(p.try_push(2, 0, &[&[7u8; 112]]), Err(PushError::Full));
        assert_eq!(pop(&mut c).unwrap().1, [5u8; 8]);
        c.release();
        // The ring is empty: the largest record fits, split across the end.
        let big: Vec<u8> = (0..112).collect();
        p.try_push(2, 0, &[&big[..50], &big[50..]]).unwrap();
        p.publish();
        assert_eq!(pop(&mut c).unwrap().1, big);
    }

    #[test]
    fn a_forged_tail_is_not_read_by_the_consumer() {
        // The consumer finds records by their headers; the shared tail is only for a
        // producer taking over. A forged one changes nothing here.
        let ring = LocalRing::new(64);
        let mut c = Consumer::attach(ring.view()).unwrap();
        ring.view().lines().tail.0.store(1 << 40, Ordering::Relaxed);
        assert_eq!(c.peek(), Ok(None));
        // ...but a producer taking over refuses it.
        assert!(Producer::attach(ring.view()).is_err());
    }

    #[test]
    fn a_record_is_seen_only_once_published_and_not_after_a_rollback() {
        let ring = LocalRing::new(64);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        p.try_push(2, 0, &[&[1u8; 8]]).unwrap();
        p.try_push(2, 0, &[&[2u8; 8]]).unwrap();
        assert_eq!(c.peek(), Ok(None), "written, not published");
        p.rollback();
        p.try_push(2, 0, &[&[3u8; 8]]).unwrap();
        assert_eq!(c.peek(), Ok(None));
        p.publish();
        assert_eq!(pop(&mut c).unwrap().1, [3u8; 8]);
        assert!(pop(&mut c).is_none(), "the rolled-back second record left nothing behind");
    }

    #[test]
    fn corrupt_record_length_is_reported_not_trusted() {
        let ring = LocalRing::new(64);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        p.try_push(2, 0, &[&[1u8; 8]]).unwrap();
        p.publish();
        // Rewrite the header with a length no record of this ring can have.
        ring.view().header_at(0).store(pack(4000, 2, 0), Ordering::Relaxed);
        assert_eq!(c.peek(), Err(Corrupt("record length out of range")));
        ring.view().header_at(0).store(pack(8, 0, 0), Ordering::Relaxed);
        assert_eq!(c.peek(), Err(Corrupt("record without a kind")));
    }

    #[test]
    fn corrupt_head_is_reported_to_the_producer() {
        let ring = LocalRing::new(64);
        let mut p = Producer::attach(ring.view()).unwrap();
        for _ in 0..3 {
            p.try_push(2, 0, &[&[0u8; 8]]).unwrap();
        }
        p.publish();
        ring.view().lines().head.0.store(999_992, Ordering::Relaxed);
        assert!(matches!(p.try_push(2, 0, &[&[0u8; 8]]), Err(PushError::Corrupt(_))));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::local::LocalRing;
    use super::*;
    use loom::sync::Arc;

    /// The publish protocol across the wrap: the consumer sees every record whole and
    /// in order, and never a stale header of an earlier lap.
    #[test]
    fn publish_then_consume_across_wrap() {
        loom::model(|| publish_and_consume(false));
    }

    /// The same with the hot path's `push_and_publish` (the header stored at once).
    #[test]
    fn push_and_publish_then_consume_across_wrap() {
        loom::model(|| publish_and_consume(true));
    }

    /// Negative control: with the header published and observed Relaxed, loom finds a
    /// consumer that sees a header before the payload it announces. If this test ever
    /// passes, the model above has lost its teeth.
    #[test]
    #[should_panic]
    fn without_release_and_acquire_a_header_arrives_before_its_payload() {
        loom::model(|| {
            loom_knobs::RELAXED_PUBLISH.with(|r| r.set(true));
            publish_and_consume(false);
        });
    }

    /// The negative control of `push_and_publish`'s model.
    #[test]
    #[should_panic]
    fn without_release_and_acquire_a_pushed_and_published_header_arrives_before_its_payload() {
        loom::model(|| {
            loom_knobs::RELAXED_PUBLISH.with(|r| r.set(true));
            publish_and_consume(true);
        });
    }

    /// A record written and rolled back is never seen; the one written after it is.
    #[test]
    fn a_rolled_back_record_is_never_seen() {
        loom::model(|| {
            let ring = Arc::new(LocalRing::new(64));
            let r2 = ring.clone();
            let producer = loom::thread::spawn(move || {
                let mut p = Producer::attach(r2.view()).unwrap();
                p.try_push(2, 0, &[&[0xEE; 8]]).unwrap();
                p.rollback();
                p.try_push(2, 0, &[&[0x11; 8]]).unwrap();
                p.publish();
            });
            let mut c = Consumer::attach(ring.view()).unwrap();
            loop {
                match c.peek().unwrap() {
                    Some(rec) => {
                        let mut out = [0u8; 8];
                        c.copy_payload(&rec, &mut out);
                        assert_eq!(out, [0x11; 8]);
                        c.consume(&rec);
                        break;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            producer.join().unwrap();
            assert_eq!(c.peek().unwrap(), None);
        });
    }

    /// Three records through a 64-byte ring, pushed then published, or (`fused`) with
    /// `push_and_publish`.
    fn publish_and_consume(fused: bool) {
        let ring = Arc::new(LocalRing::new(64));
        let r2 = ring.clone();
        let producer = loom::thread::spawn(move || {
            let mut p = Producer::attach(r2.view()).unwrap();
            let mut sent = 0u64;
            while sent < 3 {
                // 24-byte records (and their 8-byte empty slot) in a 64-byte ring: the
                // third wraps around the end.
                let pushed = if fused {
                    let mut payload = [0xAB; 16];
                    payload[..8].copy_from_slice(&sent.to_le_bytes());
                    p.push_and_publish(2, 0, &payload)
                } else {
                    p.try_push(2, 0, &[&sent.to_le_bytes(), &[0xAB; 8]]).map(|()| {
                        p.publish();
                    })
                };
                match pushed {
                    Ok(()) => {
                        sent += 1;
                    }
                    Err(PushError::Full) => loom::thread::yield_now(),
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        let mut c = Consumer::attach(ring.view()).unwrap();
        let mut expect = 0u64;
        while expect < 3 {
            match c.peek().unwrap() {
                Some(rec) => {
                    let mut out = [0u8; 16];
                    c.copy_payload(&rec, &mut out);
                    assert_eq!(out[..8], expect.to_le_bytes());
                    assert_eq!(out[8..], [0xAB; 8]);
                    c.consume(&rec);
                    c.release();
                    expect += 1;
                }
                None => loom::thread::yield_now(),
            }
        }
        producer.join().unwrap();
    }
}

#[cfg(all(test, not(loom)))]
mod concurrent_tests {
    use super::local::LocalRing;
    use super::*;

    #[test]
    fn two_threads_random_sizes() {
        let ring = LocalRing::new(1024);
        let view = ring.view();
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut p = Producer::attach(view).unwrap();
                let mut x = 12345u64;
                for i in 0..200_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = 8 + (x % 1001) as usize;
                    let mut buf = vec![0u8; len];
                    buf[..8].copy_from_slice(&i.to_le_bytes());
                    let mut spins = 0u64;
                    loop {
                        match p.try_push(2, 0, &[&buf]) {
                            Ok(()) => break,
                            Err(PushError::Full) => {
                                spins += 1;
                                if spins == 100_000_000 {
                                    panic!(
                                        "producer stuck at {i} len {len} tail {} published {} cached_head {}",
                                        p.tail, p.published, p.cached_head
                                    );
                                }
                                std::hint::spin_loop();
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    p.publish();
                }
            });
            let mut c = Consumer::attach(view).unwrap();
            for i in 0..200_000u64 {
                let mut spins = 0u64;
                let rec = loop {
                    if let Some(r) = c.peek().unwrap() {
                        break r;
                    }
                    c.release();
                    spins += 1;
                    if spins == 100_000_000 {
                        panic!("consumer stuck at {i} head {}", c.head);
                    }
                };
                let mut out = vec![0u8; rec.len];
                c.copy_payload(&rec, &mut out);
                assert_eq!(out[..8], i.to_le_bytes());
                c.consume(&rec);
                c.release();
            }
        });
    }
}

/// Fuzzing the ring over hostile memory: an input is a sequence of operations of an
/// honest producer and consumer, interleaved with a peer's writes of any word of the
/// data area and of the counters. The consumer gets only records within bounds, or
/// `Corrupt` (after which it stops, as a port treats the direction as broken), never a
/// panic or a hang; while nobody wrote what the protocol does not allow, it gets
/// exactly what was published, in order.
#[cfg(test)]
#[cfg(not(loom))]
mod fuzz {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::local::LocalRing;
    use super::*;
    use crate::fuzz::{Input, corpus};

    /// Runs the operations `input` encodes (see the module above).
    pub(super) fn run(input: &[u8]) {
        let mut input = Input(input);
        let first = input.u8();
        let cap = MIN_CAPACITY << (first % 6);
        // Half the inputs keep to what the protocol allows (push, read, release), so
        // the check of what arrives runs for long sequences too.
        let honest_only = first & 0x80 != 0;
        let ring = LocalRing::new(cap);
        let view = ring.view();
        let mut producer = Some(Producer::attach(view).expect("a fresh ring"));
        let mut consumer = Some(Consumer::attach(view).expect("a fresh ring"));
        // What was published and not yet read, while no hostile write happened.
        let mut expected: VecDeque<(u16, Vec<u8>)> = VecDeque::new();
        let mut hostile = false;
        let mut seq = 0u8;
        while !input.is_empty() {
            let op = match honest_only {
                true => [0, 2, 4][usize::from(input.u8() % 3)],
                false => input.u8() % 6,
            };
            match op {
                0 => {
                    let Some(p) = producer.as_mut() else { continue };
                    let len = usize::from(input.u8()) * (usize::from(input.u8() % 4) + 1);
                    let kind = 1 + u16::from(input.u8() % 3);
                    seq = seq.wrapping_add(1);
                    let payload: Vec<u8> = (0..len).map(|i| seq.wrapping_add(i as u8)).collect();
                    match p.try_push(kind, 0, &[&payload]) {
                        Ok(()) => {
                            p.publish();
                            expected.push_back((kind, payload));
                        }
                        Err(PushError::Full) => {}
                        Err(PushError::TooLarge) => assert!(len > view.max_payload(), "{len} refused"),
                        Err(PushError::Corrupt(_)) => {
                            assert!(hostile, "the producer found corruption nobody made");
                            producer = None;
                        }
                    }
                }
                1 => {
                    // A peer's write of any word of the data area.
                    let offset = (u64::from(input.u32()) % cap) & !(HEADER - 1);
                    view.header_at(offset).store(input.u64(), Ordering::Relaxed);
                    hostile = true;
                }
                2 => {
                    let Some(c) = consumer.as_mut() else { continue };
                    match c.peek() {
                        Ok(Some(rec)) => {
                            assert!(rec.len <= view.max_payload(), "a record of {} bytes", rec.len);
                            assert!(rec.kind != 0 && rec.kind != KIND_PAD);
                            let mut out = vec![0; rec.len];
                            c.copy_payload(&rec, &mut out);
                            c.consume(&rec);
                            if !hostile {
                                assert_eq!(Some((rec.kind, out)), expected.pop_front(), "in order, whole");
                            }
                        }
                        Ok(None) => assert!(hostile || expected.is_empty(), "a published record not found"),
                        Err(_) => {
                            assert!(hostile, "the consumer found corruption nobody made");
                            consumer = None;
                        }
                    }
                }
                3 => {
                    // A peer's write of a counter: any value, often a small one.
                    let value = input.u64() >> (input.u8() % 64);
                    let lines = view.lines();
                    let counter = if input.u8().is_multiple_of(2) { &lines.head.0 } else { &lines.tail.0 };
                    counter.store(value, Ordering::Relaxed);
                    hostile = true;
                }
                4 => {
                    if let Some(c) = consumer.as_mut() {
                        c.release();
                    }
                }
                _ => {
                    // The consuming side taken over (a port that moved) from the
                    // shared counters: it reads again what was read but not released.
                    consumer = Consumer::attach(view).ok();
                    producer = producer.and_then(|_| Producer::attach(view).ok());
                    hostile = true;
                }
            }
        }
    }

    #[test]
    fn the_corpus_replays() {
        for (name, input) in corpus("ring") {
            let replay = std::panic::catch_unwind(|| run(&input));
            assert!(replay.is_ok(), "tests/corpus/ring/{name} fails");
        }
    }

    proptest! {
        #[test]
        fn hostile_memory_never_panics_or_hangs(input in proptest::collection::vec(any::<u8>(), 0..1024)) {
            run(&input);
        }
    }
}
