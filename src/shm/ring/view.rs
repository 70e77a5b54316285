//! The shared memory of one direction's ring: its control lines and its data area,
//! and the raw accesses the producer and consumer (the module above) build on: the
//! header word at an offset, and payload copies that wrap at the end.

use std::ptr::NonNull;

use super::{HEADER, MAX_CAPACITY, MIN_CAPACITY};
use crate::shm::sync::AtomicU64;
#[cfg(any(loom, feature = "tokio"))]
use crate::shm::sync::Ordering;
use crate::shm::wait::WaitWord;

/// One cache-line pair, so two indices written by different cores never share a line
/// (128 bytes: adjacent-line prefetch pairs lines on x86).
#[repr(C, align(128))]
pub(crate) struct Line<T>(pub(crate) T);

/// The wait words of one direction (see `wait`): written only when a side goes to
/// sleep, read on every publish, so they get a line of their own.
#[repr(C)]
pub(crate) struct WaitWords {
    /// The consumer sleeps here when the ring is empty.
    pub(crate) data: WaitWord,
    /// The producer sleeps here when the ring is full.
    pub(crate) space: WaitWord,
}

/// The control block of one direction, in shared memory. The data area follows
/// elsewhere (see `segment`).
#[repr(C)]
pub(crate) struct RingLines {
    /// Bytes ever published by the producer. Written by the producer only.
    pub(crate) tail: Line<AtomicU64>,
    /// Bytes ever consumed. Written by the consumer only.
    pub(crate) head: Line<AtomicU64>,
    pub(crate) waits: Line<WaitWords>,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<RingLines>() == 384);
    assert!(std::mem::offset_of!(RingLines, tail) == 0);
    assert!(std::mem::offset_of!(RingLines, head) == 128);
    assert!(std::mem::offset_of!(RingLines, waits) == 256);
};

/// A view of one direction: its control lines and its data area.
#[derive(Clone, Copy)]
pub(crate) struct RingRef {
    lines: NonNull<RingLines>,
    #[cfg(not(loom))]
    pub(super) data: NonNull<u8>,
    #[cfg(loom)]
    pub(super) data: NonNull<AtomicU64>,
    pub(super) cap: u64,
}

// SAFETY: a RingRef is a pair of pointers into memory built for concurrent access
// (atomics, and payload bytes that are only copied); `RingRef::new`'s contract keeps it
// alive for as long as any copy is used.
unsafe impl Send for RingRef {}
// SAFETY: as above; all access through a shared RingRef is by atomics or raw copies.
unsafe impl Sync for RingRef {}

impl RingRef {
    /// # Safety
    /// `lines` points to an initialised `RingLines` and `data` to `cap` bytes (8-byte
    /// aligned), both valid for as long as this view or any copy of it is used; `cap` is
    /// a power of two in `MIN_CAPACITY..=MAX_CAPACITY`. See the shared-memory invariants
    /// on `segment::Segment`.
    #[cfg(not(loom))]
    pub(crate) unsafe fn new(lines: NonNull<RingLines>, data: NonNull<u8>, cap: u64) -> RingRef {
        debug_assert!(cap.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&cap));
        debug_assert!((data.as_ptr() as usize).is_multiple_of(8));
        RingRef { lines, data, cap }
    }

    /// # Safety
    /// As the non-loom constructor; `data` points to `cap / 8` atomics.
    #[cfg(loom)]
    pub(crate) unsafe fn new(lines: NonNull<RingLines>, data: NonNull<AtomicU64>, cap: u64) -> RingRef {
        RingRef { lines, data, cap }
    }

    /// Bytes of the data area.
    pub(crate) fn capacity(&self) -> u64 {
        self.cap
    }

    /// The largest payload a record of this ring can carry: the ring less the record's
    /// header and the empty header slot that must follow it.
    #[inline]
    pub(crate) fn max_payload(&self) -> usize {
        (self.cap - 2 * HEADER) as usize
    }

    #[inline]
    pub(crate) fn lines(&self) -> &RingLines {
        // SAFETY: valid for the lifetime of the view (`RingRef::new`).
        unsafe { self.lines.as_ref() }
    }

    /// Whether a record may be waiting at the released `head`: a look at that header
    /// slot, without the consumer. For a waiter that cannot take the reading half (a
    /// thread of this process holds it, asleep or about to take the record): a
    /// sleeping holder has given back everything it read, so an empty slot there means
    /// nothing to read. Conservative: read-but-unreleased records count as waiting.
    /// Whatever the peer wrote, the look stays in bounds (the offset is masked).
    #[cfg(feature = "tokio")]
    pub(crate) fn maybe_unread(&self) -> bool {
        // SYNC: head release (ours, or the holder's).
        let head = self.lines().head.0.load(Ordering::Acquire);
        // SYNC: header publish.
        self.header_at(head & (self.cap - 1) & !(HEADER - 1)).load(Ordering::Acquire) != 0
    }

    /// Bytes published and not yet given back, by the shared counters (without the
    /// producer: for a writer waiting for room while another thread holds the writing
    /// half). Saturates on counters the peer broke.
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_used(&self) -> u64 {
        // SYNC: head release.
        let head = self.lines().head.0.load(Ordering::Acquire);
        let tail = self.lines().tail.0.load(Ordering::Relaxed);
        tail.saturating_sub(head).min(self.cap)
    }

    /// The header word at `offset` (8-aligned, `< cap`).
    #[inline]
    pub(super) fn header_at(&self, offset: u64) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset < self.cap);
        #[cfg(not(loom))]
        // SAFETY: offset is in bounds and 8-aligned, and AtomicU64 may alias memory
        // that others access atomically or copy.
        unsafe {
            &*self.data.as_ptr().add(offset as usize).cast::<AtomicU64>()
        }
        #[cfg(loom)]
        // SAFETY: offset/8 indexes the cap/8 atomics of the data area.
        unsafe {
            &*self.data.as_ptr().add((offset / 8) as usize)
        }
    }

    /// Copies `parts` into the data area from `offset` on, wrapping at the end (the
    /// caller reserved the room).
    #[inline]
    pub(super) fn write_payload(&self, offset: u64, parts: &[&[u8]]) {
        #[cfg(not(loom))]
        {
            let cap = self.cap as usize;
            let mut at = offset as usize;
            for part in parts {
                let first = part.len().min(cap - at);
                // SAFETY: [at, at + first) and [0, rest) lie inside the data area, in
                // space the caller reserved and the consumer does not read until we
                // publish.
                unsafe {
                    std::ptr::copy_nonoverlapping(part.as_ptr(), self.data.as_ptr().add(at), first);
                    if first < part.len() {
                        std::ptr::copy_nonoverlapping(part.as_ptr().add(first), self.data.as_ptr(), part.len() - first);
                    }
                }
                // `cap` is a power of two.
                at = (at + part.len()) & (cap - 1);
            }
        }
        #[cfg(loom)]
        {
            let bytes: Vec<u8> = parts.concat();
            for (i, chunk) in bytes.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.header_at((offset + 8 * i as u64) % self.cap).store(u64::from_le_bytes(word), Ordering::Relaxed);
            }
        }
    }

    /// Writes the first half of the payload `write_payload` would write (fault
    /// injection: a writer stopped in the middle of a record).
    #[cfg(all(feature = "fault-injection", not(loom)))]
    pub(super) fn write_payload_half(&self, offset: u64, parts: &[&[u8]]) {
        let bytes = parts.concat();
        self.write_payload(offset, &[&bytes[..bytes.len() / 2]]);
    }

    /// Copies `len` (at most `cap`) payload bytes from `offset` on, wrapping at
    /// the end, out of the data area into `out`.
    ///
    /// # Safety
    /// `out` must be valid for `len` byte writes.
    #[inline]
    pub(super) unsafe fn read_payload(&self, offset: u64, out: *mut u8, len: usize) {
        #[cfg(not(loom))]
        {
            let cap = self.cap as usize;
            let at = offset as usize;
            let first = len.min(cap - at);
            // SAFETY: `out` has room for `len` bytes (the caller's contract);
            // [at, at + first) and [0, len - first) are inside the data area
            // (len <= cap, checked by the caller), and the protocol gives them to the
            // consumer until `release`. A producer that breaks the protocol and writes
            // them concurrently races with this copy; across processes that only garbles
            // the copied bytes (which the decoders check), and no reference to the
            // shared bytes is ever formed. (Within one process such a race is undefined
            // behaviour; only the hostile-peer tests, playing the other process, do it.)
            unsafe {
                std::ptr::copy_nonoverlapping(self.data.as_ptr().add(at), out, first);
                if first < len {
                    std::ptr::copy_nonoverlapping(self.data.as_ptr(), out.add(first), len - first);
                }
            }
        }
        #[cfg(loom)]
        for i in 0..len.div_ceil(8) {
            let word = self.header_at((offset + 8 * i as u64) % self.cap).load(Ordering::Relaxed).to_le_bytes();
            let n = (len - 8 * i).min(8);
            // SAFETY: `out` has room for `len` bytes (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(word.as_ptr(), out.add(8 * i), n) };
        }
    }
}
