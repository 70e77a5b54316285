//! Records whose payload lies in one piece of the data area, to be filled in place
//! (the write chunks of `PortWriter`): `Producer::try_reserve`, then the caller's
//! writes, then `Producer::commit_reserved`, then `publish` as for any record.
//!
//! A payload that would wrap around the end of the data area is placed at offset 0
//! instead, behind a padding record ([`KIND_PAD`]) that fills the space to the end;
//! the consumer skips it (`Consumer::peek`). That costs the padding's bytes of room,
//! and for a record larger than the current offset, a wait on an empty ring: the
//! padding must be published and skipped before the space it leaves at offset 0 is
//! free. `try_reserve` then reports `Full` with the padding written (the caller
//! publishes it and waits, or returns `Full`); a record of at most half the ring minus
//! a header never meets this, whatever the offset.

use super::{HEADER, KIND_PAD, Producer, PushError, pack, padded};
use crate::shm::sync::Ordering;

/// Room for one record of `len` payload bytes at ring position `at`, in one piece,
/// from [`Producer::try_reserve`]. Only the producer that made it may commit it, and
/// only before anything else is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserved {
    at: u64,
    len: usize,
}

impl Reserved {
    /// Payload bytes reserved.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Producer {
    /// Reserves a record of `len` payload bytes whose payload does not wrap around the
    /// end of the data area, writing a padding record first if it would have. Nothing
    /// is visible to the consumer until `commit_reserved` and `publish`; `rollback`
    /// forgets the reservation and its padding.
    ///
    /// `Full` may come with a padding record written (not published): publish it, so
    /// the consumer skips it and the space it leaves at offset 0 comes free.
    #[inline]
    pub(crate) fn try_reserve(&mut self, len: usize) -> Result<Reserved, PushError> {
        if len > self.ring.max_payload() {
            return Err(PushError::TooLarge);
        }
        let size = HEADER + padded(len as u64);
        let to_end = self.ring.cap - (self.tail & (self.ring.cap - 1));
        if size > to_end {
            self.pad_to_end(to_end)?;
            crate::fault::fault_point!(CHUNK_PADDED);
        }
        // Room for the record and the empty slot after it.
        if !self.fits(size + HEADER).map_err(PushError::Corrupt)? {
            return Err(PushError::Full);
        }
        crate::fault::fault_point!(CHUNK_RESERVED);
        Ok(Reserved { at: self.tail, len })
    }

    /// `try_reserve` for a payload that would wrap: a padding record over the `to_end`
    /// bytes before the end of the data area. `to_end` is at least a header (offsets
    /// are 8-aligned) and the offset is not 0 (a record of at most `cap` bytes fits
    /// there), so the padding is a record the consumer accepts. It is written as any
    /// record is (see the module docs of `ring`): the slot after it (at offset 0)
    /// emptied first, then its header, held back if it is the first unpublished record.
    #[cold]
    #[inline(never)]
    fn pad_to_end(&mut self, to_end: u64) -> Result<(), PushError> {
        if !self.fits(to_end + HEADER).map_err(PushError::Corrupt)? {
            return Err(PushError::Full);
        }
        let offset = self.tail & (self.ring.cap - 1);
        self.ring.header_at(0).store(0, Ordering::Relaxed);
        self.put_header(offset, pack((to_end - HEADER) as u32, KIND_PAD, 0));
        self.tail += to_end;
        Ok(())
    }

    /// The first payload byte of `reserved`: `reserved.len()` bytes from here lie in
    /// the data area, in one piece, in space the consumer does not read before the
    /// record is committed and published.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn reserved_payload(&self, reserved: &Reserved) -> std::ptr::NonNull<u8> {
        let at = (reserved.at & (self.ring.cap - 1)) + HEADER;
        debug_assert!(at + reserved.len as u64 <= self.ring.cap);
        // SAFETY: `at` is inside the data area (the payload of a reservation ends at or
        // before its end, `try_reserve`), so the pointer stays in the mapping
        // (invariants 1, 2).
        unsafe { self.ring.data.add(at as usize) }
    }

    /// Copies `bytes` (at most `reserved.len()`) to the start of the reserved payload
    /// (the unit tests' and loom's way to fill it).
    #[cfg(any(test, loom))]
    pub(crate) fn fill_reserved(&self, reserved: &Reserved, bytes: &[u8]) {
        assert!(bytes.len() <= reserved.len);
        self.ring.write_payload((reserved.at & (self.ring.cap - 1)) + HEADER, &[bytes]);
    }

    /// Writes the header of `reserved` as a record of `kind` and `flags`, after the
    /// caller filled its payload. Visible to the consumer at the next `publish`.
    ///
    /// Panics if anything was written or rolled back since the reservation was made.
    #[inline]
    pub(crate) fn commit_reserved(&mut self, reserved: Reserved, kind: u16, flags: u16) {
        assert_eq!(reserved.at, self.tail, "a reservation committed after other writes");
        debug_assert!(kind != 0 && kind != KIND_PAD);
        let mask = self.ring.cap - 1;
        let offset = reserved.at & mask;
        let size = HEADER + padded(reserved.len as u64);
        // The slot after the record empty, then its header (see `try_push`).
        self.ring.header_at((offset + size) & mask).store(0, Ordering::Relaxed);
        self.put_header(offset, pack(reserved.len as u32, kind, flags));
        self.tail += size;
        crate::fault::fault_point!(CHUNK_COMMITTED);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::local::LocalRing;
    use super::super::{Consumer, Corrupt};
    use super::*;

    /// The next record, if any; everything consumed (padding too) is released.
    fn pop(c: &mut Consumer) -> Option<(u16, Vec<u8>)> {
        let Some(rec) = c.peek().unwrap() else {
            c.release();
            return None;
        };
        let mut out = vec![0; rec.len];
        c.copy_payload(&rec, &mut out);
        c.consume(&rec);
        c.release();
        Some((rec.kind, out))
    }

    fn reserve_fill_commit(p: &mut Producer, bytes: &[u8]) -> Result<(), PushError> {
        let r = p.try_reserve(bytes.len())?;
        p.fill_reserved(&r, bytes);
        p.commit_reserved(r, 2, 0);
        p.publish();
        Ok(())
    }

    #[test]
    fn a_reservation_that_would_wrap_goes_to_offset_0_behind_padding() {
        let ring = LocalRing::new(128);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        p.try_push(2, 0, &[&[1u8; 64]]).unwrap(); // 72 bytes: the next record starts at 72
        p.publish();
        assert_eq!(pop(&mut c).unwrap().1, [1u8; 64]);
        let data = ring.view().data.as_ptr() as usize;
        // A header and 48 bytes fill the 56 before the end exactly: in place, no padding.
        let r = p.try_reserve(48).unwrap();
        assert_eq!(p.reserved_payload(&r).as_ptr() as usize - data, 80);
        p.rollback();
        // A header and 49 bytes (padded to 56) do not: padding of 56 bytes, the record
        // at offset 0, its payload at 8.
        let r = p.try_reserve(49).unwrap();
        assert_eq!(p.reserved_payload(&r).as_ptr() as usize - data, 8);
        let bytes: Vec<u8> = (0..49).collect();
        p.fill_reserved(&r, &bytes);
        p.commit_reserved(r, 2, 0);
        p.publish();
        assert_eq!(pop(&mut c).unwrap(), (2, bytes), "the padding is skipped, never returned");
        assert!(pop(&mut c).is_none());
        assert_eq!(c.head, 128 + 64, "padding and record consumed");
    }

    #[test]
    fn an_uncommitted_reservation_and_its_padding_are_never_seen() {
        let ring = LocalRing::new(128);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        p.try_push(2, 0, &[&[1u8; 64]]).unwrap();
        p.publish();
        pop(&mut c).unwrap();
        // 8 + 56 bytes from offset 72: padding of 56, the record at offset 0 (and the
        // empty slot after it).
        let r = p.try_reserve(56).unwrap();
        p.fill_reserved(&r, &[7; 56]);
        p.rollback();
        assert!(!p.publish(), "nothing to publish: neither the record nor its padding");
        assert!(pop(&mut c).is_none());
        // The space is as it was: an ordinary record wraps there as before.
        p.try_push(2, 0, &[&[3u8; 64]]).unwrap();
        p.publish();
        assert_eq!(pop(&mut c).unwrap().1, [3u8; 64]);
        assert_eq!(c.head, 72 + 72, "no padding was consumed");
    }

    #[test]
    fn a_large_reservation_on_an_empty_ring_waits_for_its_padding_to_be_skipped() {
        let ring = LocalRing::new(128);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        p.try_push(2, 0, &[&[1u8; 8]]).unwrap(); // the next record starts at 16
        p.publish();
        pop(&mut c).unwrap();
        // The largest record (the ring less a header and the empty slot), from offset
        // 16: padding of 112, then Full.
        assert_eq!(p.try_reserve(112), Err(PushError::Full));
        assert!(p.publish(), "the padding is there to publish");
        assert!(pop(&mut c).is_none(), "the consumer skips it and sees nothing");
        reserve_fill_commit(&mut p, &[9; 112]).unwrap();
        assert_eq!(pop(&mut c).unwrap().1, [9u8; 112]);
        assert_eq!(p.try_reserve(113), Err(PushError::TooLarge));
    }

    #[test]
    fn reservations_of_every_size_at_every_offset_round_trip() {
        let ring = LocalRing::new(256);
        let mut p = Producer::attach(ring.view()).unwrap();
        let mut c = Consumer::attach(ring.view()).unwrap();
        for i in 0..5_000usize {
            let len = (i * 37) % 241;
            let bytes: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            loop {
                match reserve_fill_commit(&mut p, &bytes) {
                    Ok(()) => break,
                    Err(PushError::Full) => {
                        p.publish();
                        assert!(pop(&mut c).is_none(), "only padding was in the way");
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
            if i % 3 == 0 {
                p.try_push(2, 0, &[&bytes[..len / 2]]).unwrap_or(());
                p.publish();
            }
            while let Some((kind, got)) = pop(&mut c) {
                assert_eq!(kind, 2);
                assert!(got == bytes || got == bytes[..len / 2]);
            }
        }
    }

    #[test]
    fn forged_padding_is_corrupt() {
        let ring = LocalRing::new(128);
        let view = ring.view();
        let mut p = Producer::attach(view).unwrap();
        // Padding at offset 0 (a producer never needs it there), even one that ends
        // at the end of the data area.
        p.try_push(2, 0, &[&[0u8; 112]]).unwrap();
        p.publish();
        view.header_at(0).store(pack(112, KIND_PAD, 0), Ordering::Relaxed);
        let mut c = Consumer::attach(view).unwrap();
        assert_eq!(c.peek(), Err(Corrupt("padding record does not end at the end of the ring")));
        // Padding that stops short of the end.
        let ring = LocalRing::new(128);
        let view = ring.view();
        let mut p = Producer::attach(view).unwrap();
        let mut c = Consumer::attach(view).unwrap();
        p.try_push(2, 0, &[&[0u8; 8]]).unwrap();
        p.try_push(2, 0, &[&[0u8; 8]]).unwrap();
        p.publish();
        pop(&mut c).unwrap();
        view.header_at(16).store(pack(8, KIND_PAD, 0), Ordering::Relaxed);
        assert_eq!(c.peek(), Err(Corrupt("padding record does not end at the end of the ring")));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::super::local::LocalRing;
    use super::super::{Consumer, Producer, PushError};
    use loom::sync::Arc;

    /// A reservation across the wrap, filled and then rolled back (a write chunk
    /// dropped uncommitted): the padding goes with it unless it was already published
    /// (after a `Full`), and the record pushed next is the one the consumer sees, whole,
    /// after the first. The rolled-back bytes are never delivered.
    #[test]
    fn a_rolled_back_reservation_behind_padding_is_never_seen() {
        loom::model(|| {
            let ring = Arc::new(LocalRing::new(64));
            let r2 = ring.clone();
            let producer = loom::thread::spawn(move || {
                let mut p = Producer::attach(r2.view()).unwrap();
                let first = p.try_reserve(48).unwrap();
                p.fill_reserved(&first, &[0xA0; 48]);
                p.commit_reserved(first, 2, 0);
                p.publish();
                loop {
                    match p.try_reserve(8) {
                        Ok(r) => {
                            p.fill_reserved(&r, &[0xEE; 8]);
                            p.rollback();
                            // Nothing is left to publish (a writer publishes before
                            // it waits for room).
                            assert!(!p.publish());
                            break;
                        }
                        Err(PushError::Full) => {
                            p.publish();
                            loom::thread::yield_now();
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                loop {
                    match p.try_push(3, 0, &[&[0x11; 8]]) {
                        Ok(()) => break,
                        Err(PushError::Full) => loom::thread::yield_now(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                p.publish();
            });
            let mut c = Consumer::attach(ring.view()).unwrap();
            let mut seen = Vec::new();
            while seen.len() < 2 {
                match c.peek().unwrap() {
                    Some(rec) => {
                        let mut out = vec![0u8; rec.len];
                        c.copy_payload(&rec, &mut out);
                        c.consume(&rec);
                        c.release();
                        seen.push((rec.kind, out));
                    }
                    None => {
                        c.release();
                        loom::thread::yield_now();
                    }
                }
            }
            producer.join().unwrap();
            assert_eq!(seen, [(2, vec![0xA0; 48]), (3, vec![0x11; 8])]);
            assert_eq!(c.peek().unwrap(), None);
        });
    }

    /// A reservation across the wrap: padding, then the record at offset 0. Depending
    /// on when the consumer frees the first record, the padding is published with the
    /// record, or alone (the record does not fit yet: `Full`) and skipped before the
    /// record fits. The consumer sees both records whole and in order, and never the
    /// padding. (Without the skip in `Consumer::peek` the padding arrives as a record
    /// and the model fails.)
    #[test]
    fn reserved_records_behind_padding_across_the_wrap() {
        loom::model(|| {
            // In a 64-byte ring: a record of 56 bytes at 0; then one of 16, which does
            // not fit in the 8 before the end: padding of 8, the record at 64.
            const LENS: [usize; 2] = [48, 8];
            let ring = Arc::new(LocalRing::new(64));
            let r2 = ring.clone();
            let producer = loom::thread::spawn(move || {
                let mut p = Producer::attach(r2.view()).unwrap();
                for (i, len) in LENS.into_iter().enumerate() {
                    loop {
                        match p.try_reserve(len) {
                            Ok(r) => {
                                let mut bytes = vec![0xC0 | i as u8; len];
                                bytes[0] = i as u8;
                                p.fill_reserved(&r, &bytes);
                                p.commit_reserved(r, 2, 0);
                                p.publish();
                                break;
                            }
                            Err(PushError::Full) => {
                                p.publish();
                                loom::thread::yield_now();
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                }
            });
            let mut c = Consumer::attach(ring.view()).unwrap();
            let mut expect = 0usize;
            while expect < LENS.len() {
                match c.peek().unwrap() {
                    Some(rec) => {
                        assert_eq!((rec.kind, rec.len), (2, LENS[expect]));
                        let mut out = vec![0u8; rec.len];
                        c.copy_payload(&rec, &mut out);
                        assert_eq!(out[0], expect as u8);
                        assert!(out[1..].iter().all(|&b| b == 0xC0 | expect as u8));
                        c.consume(&rec);
                        c.release();
                        expect += 1;
                    }
                    None => {
                        c.release();
                        loom::thread::yield_now();
                    }
                }
            }
            producer.join().unwrap();
        });
    }
}
