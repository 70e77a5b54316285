//! A minimal SPSC ring pair in a memfd: "the hardware limit" the other transports are
//! compared against. No shmport code.
//!
//! Layout of the shared file (each direction `d` in 0..2; end 0 produces direction 0
//! and consumes direction 1, end 1 the reverse):
//!
//! ```text
//! [d0 head line 128 B][d0 tail line 128 B][d1 head 128 B][d1 tail 128 B][d0 data][d1 data]
//! ```
//!
//! `head` (consumer's read position) and `tail` (producer's write position) are
//! monotonically increasing byte counters; the data area is `capacity` bytes (a power of
//! two) used modulo its size. A message is a 4-byte little-endian length, then the
//! payload, wrapping around the end of the area as needed. Both sides busy-poll with
//! `spin_loop()`, and each caches the other's counter so that it only touches the
//! other side's line when it must.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail, ensure};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, ftruncate, memfd_create};

use shmport_bench::link::{Link, PeerWatch};

const LINE: usize = 128;
const HEADER: usize = 4 * LINE;
/// Spins between two checks that the peer is still alive.
const SPINS_PER_CHECK: u32 = 1 << 16;

/// Bytes of the shared file for rings of `capacity` bytes each.
fn file_len(capacity: usize) -> usize {
    HEADER + 2 * capacity
}

/// Creates the shared file (zeroed: both rings empty).
pub fn create(capacity: usize) -> Result<OwnedFd> {
    ensure!(capacity.is_power_of_two() && capacity >= 64, "raw ring capacity must be a power of two ≥ 64");
    let fd = memfd_create("shmport-bench-raw-ring", MemfdFlags::CLOEXEC).context("memfd_create for the raw ring")?;
    ftruncate(&fd, file_len(capacity) as u64).context("sizing the raw ring memfd")?;
    Ok(fd)
}

/// One end of the ring pair.
pub struct RawRing {
    // Keeps the mapping alive; the pointers below point into it.
    _map: MmapRaw,
    tx: Producer,
    rx: Consumer,
    peer: PeerWatch,
}

struct Producer {
    head: &'static AtomicU64,
    tail: &'static AtomicU64,
    data: *mut u8,
    mask: u64,
    /// Our write position (the last value stored to `tail`).
    pos: u64,
    /// The consumer's position as last seen.
    head_seen: u64,
}

struct Consumer {
    head: &'static AtomicU64,
    tail: &'static AtomicU64,
    data: *const u8,
    mask: u64,
    /// Our read position (the last value stored to `head`).
    pos: u64,
    /// The producer's position as last seen.
    tail_seen: u64,
}

impl RawRing {
    /// Maps `fd` (made by [`create`] with `capacity`) as end `end` (0 or 1).
    pub fn attach(fd: impl AsFd, capacity: usize, end: usize, peer: PeerWatch) -> Result<RawRing> {
        assert!(end < 2);
        let len = file_len(capacity);
        let actual = rustix::fs::fstat(&fd).context("fstat on the raw ring memfd")?.st_size;
        ensure!(actual as usize == len, "raw ring memfd is {actual} bytes, expected {len}");
        let map = MmapOptions::new().len(len).map_raw(&fd.as_fd()).context("mapping the raw ring")?;
        let base = map.as_mut_ptr();
        let counter = |offset: usize| -> &'static AtomicU64 {
            // SAFETY: `offset` is a multiple of 128 inside the mapping, so the pointer is
            // 8-aligned and valid for 8 bytes; the mapping is page-aligned and lives as
            // long as the `RawRing` (whose fields hold these references and never hand
            // them out). Both processes only access these words atomically.
            unsafe { AtomicU64::from_ptr(base.add(offset).cast::<u64>()) }
        };
        let area = |dir: usize| -> *mut u8 {
            // SAFETY: HEADER + dir * capacity + capacity <= len: in bounds of the mapping.
            unsafe { base.add(HEADER + dir * capacity) }
        };
        // Direction `dir`: its head and tail lines, and its data area.
        let lane = |dir: usize| (counter(dir * 2 * LINE), counter(dir * 2 * LINE + LINE), area(dir));
        // Each end starts from the shared positions (zero for a fresh file).
        let load = |counter: &AtomicU64| counter.load(Ordering::Acquire);
        let mask = capacity as u64 - 1;
        let (head, tail, data) = lane(end);
        let tx = Producer { head, tail, data, mask, pos: load(tail), head_seen: load(head) };
        let (head, tail, data) = lane(1 - end);
        let rx = Consumer { head, tail, data: data.cast_const(), mask, pos: load(head), tail_seen: load(tail) };
        Ok(RawRing { _map: map, tx, rx, peer })
    }

    fn capacity(&self) -> u64 {
        self.tx.mask + 1
    }
}

impl Link for RawRing {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        let need = 4 + msg.len() as u64;
        ensure!(
            need <= self.capacity(),
            "message of {} bytes does not fit a raw ring of {} bytes",
            msg.len(),
            self.capacity()
        );
        let len = u32::try_from(msg.len()).context("message too long")?;
        let tx = &mut self.tx;
        if tx.pos + need - tx.head_seen > tx.mask + 1 {
            spin_until(&self.peer, || {
                tx.head_seen = tx.head.load(Ordering::Acquire);
                tx.pos + need - tx.head_seen <= tx.mask + 1
            })?;
        }
        // SAFETY: [pos, pos + need) is free: the consumer has released everything before
        // `head_seen` (Acquire above), and pos + need - head_seen <= capacity, so the
        // consumer reads none of these bytes until we publish them with the Release
        // store below. The copies stay inside our data area (offsets are masked).
        unsafe {
            copy_in(tx.data, tx.mask, tx.pos, &len.to_le_bytes());
            copy_in(tx.data, tx.mask, tx.pos + 4, msg);
        }
        tx.pos += need;
        tx.tail.store(tx.pos, Ordering::Release);
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        let rx = &mut self.rx;
        if rx.tail_seen == rx.pos {
            spin_until(&self.peer, || {
                rx.tail_seen = rx.tail.load(Ordering::Acquire);
                rx.tail_seen != rx.pos
            })?;
        }
        let available = rx.tail_seen - rx.pos;
        if available < 4 || available > rx.mask + 1 {
            bail!("raw ring corrupt: {available} bytes published");
        }
        let mut len = [0u8; 4];
        // SAFETY: [pos, tail_seen) was published by the producer (Acquire load of its
        // Release store) and it does not write there until we move `head` past it.
        unsafe { copy_out(rx.data, rx.mask, rx.pos, &mut len) };
        let len = u32::from_le_bytes(len) as usize;
        if 4 + len as u64 > available {
            bail!("raw ring corrupt: record of {len} bytes, {available} published");
        }
        if len > buf.len() {
            bail!("message of {len} bytes does not fit the {}-byte buffer", buf.len());
        }
        // SAFETY: as above; 4 + len <= available, so the payload is published too.
        unsafe { copy_out(rx.data, rx.mask, rx.pos + 4, &mut buf[..len]) };
        rx.pos += 4 + len as u64;
        rx.head.store(rx.pos, Ordering::Release);
        Ok(len)
    }

    /// A quarter of the ring, so that the producer fills one frame while the consumer
    /// copies out the previous ones.
    fn max_frame(&self) -> usize {
        (self.capacity() / 4) as usize
    }
}

/// Busy-polls until `ready()` (which reloads the other side's counter), checking every
/// [`SPINS_PER_CHECK`] misses that the peer is still alive.
#[inline]
fn spin_until(peer: &PeerWatch, mut ready: impl FnMut() -> bool) -> Result<()> {
    let mut spins = 0u32;
    while !ready() {
        std::hint::spin_loop();
        spins += 1;
        if spins == SPINS_PER_CHECK {
            spins = 0;
            peer.check().context("waiting on the raw ring")?;
        }
    }
    Ok(())
}

/// Copies `src` into the ring area at byte position `pos`, wrapping.
///
/// # Safety
/// `data` points to `mask + 1` writable bytes, `src.len() <= mask + 1`, and no one else
/// accesses `[pos, pos + src.len())` (modulo the size) meanwhile.
unsafe fn copy_in(data: *mut u8, mask: u64, pos: u64, src: &[u8]) {
    let cap = (mask + 1) as usize;
    let off = (pos & mask) as usize;
    let first = src.len().min(cap - off);
    // SAFETY: off + first <= cap and src.len() - first <= cap, by the caller's contract;
    // `src` is process memory, so it cannot overlap the shared area.
    unsafe {
        ptr::copy_nonoverlapping(src.as_ptr(), data.add(off), first);
        ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
    }
}

/// Copies from the ring area at byte position `pos` into `dst`, wrapping.
///
/// # Safety
/// `data` points to `mask + 1` readable bytes, `dst.len() <= mask + 1`, and no one
/// writes `[pos, pos + dst.len())` (modulo the size) meanwhile.
unsafe fn copy_out(data: *const u8, mask: u64, pos: u64, dst: &mut [u8]) {
    let cap = (mask + 1) as usize;
    let off = (pos & mask) as usize;
    let first = dst.len().min(cap - off);
    // SAFETY: as in `copy_in`, with the roles of the buffers swapped.
    unsafe {
        ptr::copy_nonoverlapping(data.add(off), dst.as_mut_ptr(), first);
        ptr::copy_nonoverlapping(data, dst.as_mut_ptr().add(first), dst.len() - first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends in one process: every record size, across many wrap-arounds.
    #[test]
    fn wraps_and_keeps_messages_intact() {
        let fd = create(256).unwrap();
        let mut a = RawRing::attach(&fd, 256, 0, PeerWatch::None).unwrap();
        let mut b = RawRing::attach(&fd, 256, 1, PeerWatch::None).unwrap();
        let mut buf = [0u8; 252];
        for i in 0..2000usize {
            let len = i % 253;
            let msg: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
            a.send(&msg).unwrap();
            assert_eq!(b.recv(&mut buf).unwrap(), len);
            assert_eq!(&buf[..len], &msg[..]);
            // And the other direction.
            b.send(&msg).unwrap();
            assert_eq!(a.recv(&mut buf).unwrap(), len);
            assert_eq!(&buf[..len], &msg[..]);
        }
        assert!(a.send(&[0u8; 253]).is_err(), "4 + 253 bytes exceed the ring");
        a.send(&[1u8; 100]).unwrap();
        assert!(b.recv(&mut buf[..99]).is_err(), "a message larger than the buffer");
    }
}
