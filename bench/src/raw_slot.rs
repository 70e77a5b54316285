//! A one-slot ping-pong in a memfd: the physical limit of a round trip through shared
//! memory, which the other transports' round trips are compared against. No shmport code.
//!
//! Layout of the shared file: one slot per direction (end 0 writes slot 0 and reads
//! slot 1, end 1 the reverse), each starting on its own 128-byte block (two 64-byte
//! cache lines, so that the adjacent-line prefetcher does not couple them):
//!
//! ```text
//! [slot 0: word 8 B | payload, `size` bytes | padding to 128 B][slot 1: the same]
//! ```
//!
//! The word holds the message's sequence number (high 32 bits, from 1) and its length
//! (low 32 bits). The writer copies the payload into its slot, then stores the word
//! (Release); the reader spins on the word (Acquire) until the next sequence number
//! appears, and copies the payload out. For an 8-byte message the slot is one cache
//! line; for 64 bytes it is 72 bytes, the word's line and the next one. A slot is as
//! big as the job's messages (the payload area is `size` bytes), so for large messages
//! this is one buffer of N bytes behind one word: the figure is then the cost of copying
//! N bytes in and out plus one flag's transfer, the copies the raw ring makes too.
//!
//! There is no "slot free" signal: the two ends take turns. End 0 sends first; each end
//! then alternates (end 0: send, receive, send, ...; end 1: receive, send, ...), and a
//! call out of turn is an error. Taking turns is what makes one slot enough: the reply
//! an end receives was written after the peer had copied the end's previous message
//! out (the peer receives before it sends), so the end may overwrite its slot. Hence
//! this transport runs the round-trip workloads only, not streams.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail, ensure};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, ftruncate, memfd_create};

use shmport_bench::link::{Link, PeerWatch};

/// Slots start on blocks of this many bytes (two cache lines).
const BLOCK: usize = 128;
/// The sequence-and-length word in front of each slot's payload.
const WORD: usize = 8;
/// Spins between two checks that the peer is still alive.
const SPINS_PER_CHECK: u32 = 1 << 16;

/// Bytes from one slot's start to the next: the word and `capacity` payload bytes,
/// rounded up to a block.
fn stride(capacity: usize) -> usize {
    (WORD + capacity).div_ceil(BLOCK) * BLOCK
}

/// Creates the shared file for messages of up to `capacity` bytes (zeroed: no message
/// in either slot). Each end attaches to it once.
pub fn create(capacity: usize) -> Result<OwnedFd> {
    ensure!(capacity <= u32::MAX as usize, "raw slot capacity must fit in 32 bits");
    let fd = memfd_create("shmport-bench-raw-slot", MemfdFlags::CLOEXEC).context("memfd_create for the raw slot")?;
    ftruncate(&fd, 2 * stride(capacity) as u64).context("sizing the raw slot memfd")?;
    Ok(fd)
}

/// One end of the slot pair.
pub struct RawSlot {
    // Keeps the mapping alive; the pointers below point into it.
    _map: MmapRaw,
    /// Our slot's word and payload.
    tx_word: &'static AtomicU64,
    tx_data: *mut u8,
    /// The peer's slot's word and payload.
    rx_word: &'static AtomicU64,
    rx_data: *const u8,
    /// Payload bytes per slot.
    capacity: usize,
    /// Sequence number of the last message sent, and of the last received.
    sent: u32,
    received: u32,
    /// Whose turn it is: true when this end may send, false when it must receive.
    my_turn: bool,
    peer: PeerWatch,
}

impl RawSlot {
    /// Maps `fd` (made by [`create`] with `capacity`, fresh) as end `end` (0 sends
    /// first, 1 receives first).
    pub fn attach(fd: impl AsFd, capacity: usize, end: usize, peer: PeerWatch) -> Result<RawSlot> {
        assert!(end < 2);
        let stride = stride(capacity);
        let len = 2 * stride;
        let actual = rustix::fs::fstat(&fd).context("fstat on the raw slot memfd")?.st_size;
        ensure!(actual as usize == len, "raw slot memfd is {actual} bytes, expected {len}");
        let map = MmapOptions::new().len(len).map_raw(&fd.as_fd()).context("mapping the raw slot")?;
        let base = map.as_mut_ptr();
        let slot = |dir: usize| -> (&'static AtomicU64, *mut u8) {
            // SAFETY: `dir * stride` is a multiple of 128 inside the page-aligned mapping,
            // so the word is 8-aligned and valid for 8 bytes, and the payload area
            // [dir * stride + 8, dir * stride + 8 + capacity) ends within the slot's
            // stride, in bounds. The mapping lives as long as the `RawSlot` (whose fields
            // hold these references and never hand them out); both processes only access
            // the words atomically.
            unsafe {
                let start = base.add(dir * stride);
                (AtomicU64::from_ptr(start.cast::<u64>()), start.add(WORD))
            }
        };
        let (tx_word, tx_data) = slot(end);
        let (rx_word, rx_data) = slot(1 - end);
        // A fresh file holds no message (both words zero). The words are not read here:
        // the first message may already be in (the parent sends as soon as it attaches).
        let (sent, received) = (0, 0);
        Ok(RawSlot {
            _map: map,
            tx_word,
            tx_data,
            rx_word,
            rx_data: rx_data.cast_const(),
            capacity,
            sent,
            received,
            my_turn: end == 0,
            peer,
        })
    }
}

impl Link for RawSlot {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        ensure!(self.my_turn, "raw slot: a send out of turn (the peer may not have read the last message)");
        ensure!(
            msg.len() <= self.capacity,
            "message of {} bytes does not fit a raw slot of {} bytes",
            msg.len(),
            self.capacity
        );
        // SAFETY: msg.len() <= capacity, so the copy stays in our slot's payload area.
        // The peer does not read it meanwhile: it read our previous message before it
        // sent the reply we received (Acquire, in `recv`) since, and it reads this one
        // only after the Release store below.
        unsafe { ptr::copy_nonoverlapping(msg.as_ptr(), self.tx_data, msg.len()) };
        self.sent = self.sent.wrapping_add(1);
        self.tx_word.store((u64::from(self.sent) << 32) | msg.len() as u64, Ordering::Release);
        self.my_turn = false;
        Ok(())
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        ensure!(!self.my_turn, "raw slot: a receive out of turn (the peer waits for this end's message)");
        let expected = self.received.wrapping_add(1);
        let mut spins = 0u32;
        let word = loop {
            let word = self.rx_word.load(Ordering::Acquire);
            let seq = (word >> 32) as u32;
            if seq == expected {
                break word;
            }
            if seq != self.received {
                bail!("raw slot corrupt: message {seq} published, expected {expected}");
            }
            std::hint::spin_loop();
            spins += 1;
            if spins == SPINS_PER_CHECK {
                spins = 0;
                self.peer.check().context("waiting on the raw slot")?;
            }
        };
        let len = (word & u64::from(u32::MAX)) as usize;
        if len > self.capacity {
            bail!("raw slot corrupt: a message of {len} bytes in a {}-byte slot", self.capacity);
        }
        if len > buf.len() {
            bail!("message of {len} bytes does not fit the {}-byte buffer", buf.len());
        }
        // SAFETY: len <= capacity: inside the peer's slot's payload area, which the peer
        // wrote before its Release store of `word` (loaded with Acquire above) and does
        // not write again until we send it our next message.
        unsafe { ptr::copy_nonoverlapping(self.rx_data, buf.as_mut_ptr(), len) };
        self.received = expected;
        self.my_turn = true;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends in one process: every size up to the slot's, taking turns.
    #[test]
    fn ping_pongs_messages_intact() {
        let capacity = 300;
        assert_eq!(stride(capacity), 384);
        assert_eq!(stride(64), 128);
        assert_eq!(stride(1 << 20), (1 << 20) + BLOCK);
        let fd = create(capacity).unwrap();
        let mut a = RawSlot::attach(&fd, capacity, 0, PeerWatch::None).unwrap();
        let mut b = RawSlot::attach(&fd, capacity, 1, PeerWatch::None).unwrap();
        let mut buf = [0u8; 300];
        for i in 0..2000usize {
            let len = i % 301;
            let msg: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
            a.send(&msg).unwrap();
            assert_eq!(b.recv(&mut buf).unwrap(), len);
            assert_eq!(&buf[..len], &msg[..]);
            let echo: Vec<u8> = msg.iter().map(|x| !x).collect();
            b.send(&echo).unwrap();
            assert_eq!(a.recv(&mut buf).unwrap(), len);
            assert_eq!(&buf[..len], &echo[..]);
        }
        assert!(a.send(&[0u8; 301]).is_err(), "301 bytes exceed the slot");
        assert!(a.recv(&mut buf).is_err(), "end 0 must send before it receives");
        a.send(&[1u8; 100]).unwrap();
        assert!(a.send(&[1u8; 100]).is_err(), "a second send before the reply");
        assert!(b.recv(&mut buf[..99]).is_err(), "a message larger than the buffer");
    }

    /// A word whose sequence number is neither the last one nor the next is corrupt.
    #[test]
    fn a_wild_sequence_number_is_an_error() {
        let fd = create(64).unwrap();
        let a = RawSlot::attach(&fd, 64, 0, PeerWatch::None).unwrap();
        let mut b = RawSlot::attach(&fd, 64, 1, PeerWatch::None).unwrap();
        a.tx_word.store((7 << 32) | 8, Ordering::Release);
        let mut buf = [0u8; 64];
        assert!(b.recv(&mut buf).is_err());
        a.tx_word.store((1 << 32) | 65, Ordering::Release);
        let err = b.recv(&mut buf).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
