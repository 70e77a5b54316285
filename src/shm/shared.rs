//! The pages of a `SharedArrayBuffer`: an unnamed, sealed memfd mapped read-write by
//! every process it was sent to, accessed only through atomics and raw copies (the
//! invariants of `shm/mod.rs`, which every SAFETY comment here points to), and the
//! futex waits and wakes on its 32-bit words.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;

use crate::platform::{self, FutexWait};
use crate::shm::backend;

/// The memfd name of every shared region; a region received under another name is
/// refused (so a peer cannot pass a channel's segment or an arena off as one).
const NAME: &str = "shmport-sab";

/// The largest shared region this crate creates or maps: 4 GiB, a 32-bit wasm memory's
/// limit. A peer chooses the size of what it sends, and every region received is mapped
/// at once; without a bound, sparse memfds of terabytes would exhaust the receiver's
/// address space.
pub(crate) const MAX_LEN: u64 = 1 << 32;

/// How a [`SharedRegion::wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Woken by a notify.
    Woken,
    /// The word did not hold the expected value.
    NotEqual,
    /// The timeout passed, or the futex failed for another reason than a signal (and
    /// would fail again: `ENOSYS`, `EPERM` under a seccomp filter).
    TimedOut,
}

/// A shared region: its memfd and mapping (none for an empty one).
pub(crate) struct SharedRegion {
    /// The mapping and the memfd, or `None` for zero bytes.
    memory: Option<(MmapRaw, OwnedFd)>,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is memory shared with other processes, accessed only through
// atomics and raw copies (invariant 3), so any thread may use it.
unsafe impl Send for SharedRegion {}
// SAFETY: as for `Send`: no access through `&SharedRegion` relies on exclusivity.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// A new region of `len` zeroed bytes in a sealed memfd of exactly that size.
    pub(crate) fn create(len: usize) -> io::Result<SharedRegion> {
        if len as u64 > MAX_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a SharedArrayBuffer is at most 4 GiB"));
        }
        backend::require_memfd()?;
        if len == 0 {
            return Ok(SharedRegion::empty());
        }
        let fd = platform::memfd_create_sealed(NAME, len as u64)?;
        SharedRegion::map(fd, len)
    }

    /// The region of a memfd a peer sent, said to be `len` bytes long: refused unless
    /// it is a memfd of ours by name, sealed against resizing, of exactly `len` bytes
    /// (at most `MAX_LEN`), and this process maps memfds (not in process memory).
    pub(crate) fn open(fd: Option<OwnedFd>, len: u64) -> Result<SharedRegion, &'static str> {
        let Some(fd) = fd else {
            return if len == 0 { Ok(SharedRegion::empty()) } else { Err("shared buffer without a descriptor") };
        };
        match platform::memfd_name(fd.as_fd()) {
            Ok(name) if name == NAME => {}
            Ok(_) => return Err("shared buffer's memfd is not one"),
            Err(_) => return Err("shared buffer is not a memfd"),
        }
        let sealed = platform::sealed_len(fd.as_fd()).map_err(|_| "shared buffer is not sealed")?;
        if sealed != len || len == 0 || usize::try_from(len).is_err() {
            return Err("shared buffer's size does not match its entry");
        }
        if len > MAX_LEN {
            return Err("shared buffer too large");
        }
        if backend::require_memfd().is_err() {
            return Err("this process cannot map shared memory");
        }
        SharedRegion::map(fd, len as usize).map_err(|_| "shared buffer cannot be mapped")
    }

    fn empty() -> SharedRegion {
        SharedRegion { memory: None, base: NonNull::<u64>::dangling().cast(), len: 0 }
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<SharedRegion> {
        let map = platform::mmap_shared(fd.as_fd(), len)?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned null");
        Ok(SharedRegion { memory: Some((map, fd)), base, len })
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Its memfd, to send (`None` for zero bytes).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.memory.as_ref().map(|(_, fd)| fd.as_fd())
    }

    /// The address of the region, for identity.
    pub(crate) fn address(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// The 32-bit word at `index` (in 4-byte units), if it lies inside.
    pub(crate) fn u32_at(&self, index: usize) -> Option<&AtomicU32> {
        let end = index.checked_add(1)?.checked_mul(4)?;
        if end > self.len {
            return None;
        }
        // SAFETY: inside the mapping, which lives as long as `self` and never changes
        // size (invariants 1-2); 4-aligned (the mapping is page-aligned); shared memory
        // is accessed through an atomic (invariant 3).
        Some(unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(index * 4).cast()) })
    }

    /// The 64-bit word at `index` (in 8-byte units), if it lies inside.
    pub(crate) fn u64_at(&self, index: usize) -> Option<&AtomicU64> {
        let end = index.checked_add(1)?.checked_mul(8)?;
        if end > self.len {
            return None;
        }
        // SAFETY: as in `u32_at`, 8-aligned.
        Some(unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(index * 8).cast()) })
    }

    /// Copies `out.len()` bytes from `offset` into `out`; `false` (nothing copied) if
    /// they do not lie inside.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset.checked_add(out.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        let (head, words, tail) = self.split(offset, out.len());
        let (out_head, rest) = out.split_at_mut(head.len());
        let (out_words, out_tail) = rest.split_at_mut(8 * words.len());
        for (o, b) in out_head.iter_mut().zip(head).chain(out_tail.iter_mut().zip(tail)) {
            *o = b.load(Ordering::Relaxed);
        }
        for (o, w) in out_words.chunks_exact_mut(8).zip(words) {
            o.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        true
    }

    /// Copies `bytes` into the region at `offset`; `false` (nothing copied) if they do
    /// not fit inside.
    pub(crate) fn write(&self, offset: usize, bytes: &[u8]) -> bool {
        if offset.checked_add(bytes.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        let (head, words, tail) = self.split(offset, bytes.len());
        let (in_head, rest) = bytes.split_at(head.len());
        let (in_words, in_tail) = rest.split_at(8 * words.len());
        for (b, v) in head.iter().zip(in_head).chain(tail.iter().zip(in_tail)) {
            b.store(*v, Ordering::Relaxed);
        }
        for (w, v) in words.iter().zip(in_words.chunks_exact(8)) {
            w.store(u64::from_ne_bytes(v.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        true
    }

    /// The `len` bytes at `offset` (which the caller checked lie inside) as atomics,
    /// for `read` and `write`: the bytes before the first 8-aligned address, the
    /// aligned 64-bit words, and the bytes after the last one. Relaxed atomic copies,
    /// not `copy_nonoverlapping`, because other threads of this process may access the
    /// same bytes at the same time (through another clone of the buffer, atomically or
    /// by a copy of their own): a plain copy would be a data race (see the mixed-size
    /// exception in `shm/mod.rs`).
    fn split(&self, offset: usize, len: usize) -> (&[AtomicU8], &[AtomicU64], &[AtomicU8]) {
        if len == 0 {
            return (&[], &[], &[]);
        }
        // SAFETY: `offset..offset + len` lies inside the mapping, which lives as long as
        // `self` and never changes size (invariants 1-2), and is accessed only through
        // atomics (invariant 3; `AtomicU8` has no alignment requirement).
        let bytes: &[AtomicU8] =
            unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset).cast::<AtomicU8>(), len) };
        let head = self.base.as_ptr().wrapping_add(offset).align_offset(8).min(len);
        let words = (len - head) / 8;
        let (head_bytes, rest) = bytes.split_at(head);
        let (word_bytes, tail) = rest.split_at(8 * words);
        // SAFETY: `word_bytes` starts 8-aligned and is `8 * words` bytes of the same
        // mapping, accessed only through atomics (invariants 1-3).
        let words: &[AtomicU64] = unsafe { std::slice::from_raw_parts(word_bytes.as_ptr().cast::<AtomicU64>(), words) };
        (head_bytes, words, tail)
    }

    /// Sleeps while the word at `index` holds `expected`, until a `wake` or `timeout`
    /// (a process-shared futex: the word's key is the memfd's page, so waiters and
    /// wakers in any process that maps it meet). `None` if `index` is outside.
    pub(crate) fn wait(&self, index: usize, expected: u32, timeout: Option<Duration>) -> Option<Waited> {
        let word = self.u32_at(index)?;
        // `Atomics.wait` compares first: a word that differs is `NotEqual` even with a
        // zero or already-expired timeout (the futex below would say so, but a timeout
        // that has run out never reaches it).
        if word.load(std::sync::atomic::Ordering::SeqCst) != expected {
            return Some(Waited::NotEqual);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let left = match (timeout, deadline) {
                (None, _) => None,
                (Some(_), None) => None, // too far in the future to tell apart from for ever
                (Some(_), Some(d)) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Some(Waited::TimedOut),
                },
            };
            match platform::futex_wait_outcome(word, expected, left) {
                FutexWait::Woken => return Some(Waited::Woken),
                FutexWait::NotEqual => return Some(Waited::NotEqual),
                FutexWait::TimedOut => return Some(Waited::TimedOut),
                // Only a signal is worth another try; any other error would repeat
                // for ever (a seccomp filter's EPERM, ENOSYS): reported as a timeout.
                FutexWait::Failed => return Some(Waited::TimedOut),
                FutexWait::Interrupted => {}
            }
        }
    }

    /// Wakes at most `count` waiters on the word at `index`: how many woke (`None` if
    /// `index` is outside).
    pub(crate) fn wake(&self, index: usize, count: usize) -> Option<usize> {
        let word = self.u32_at(index)?;
        Some(platform::futex_wake_count(word, u32::try_from(count).unwrap_or(u32::MAX).min(i32::MAX as u32)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;

    fn refusal(fd: OwnedFd, len: u64) -> &'static str {
        SharedRegion::open(Some(fd), len).err().expect("refused")
    }

    #[test]
    fn a_memfd_that_is_not_ours_or_not_sealed_or_not_its_entry_s_size_or_too_large_is_refused() {
        let ours = || platform::memfd_create_sealed(NAME, 4096).unwrap();
        let other = platform::memfd_create_sealed("shmport-body", 4096).unwrap();
        assert_eq!(refusal(other, 4096), "shared buffer's memfd is not one");
        let (socket, _) = platform::socketpair().unwrap();
        assert_eq!(refusal(socket, 4096), "shared buffer is not a memfd");
        let unsealed = rustix::fs::memfd_create(NAME, rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        assert_eq!(refusal(unsealed, 4096), "shared buffer is not sealed");
        assert_eq!(refusal(ours(), 4095), "shared buffer's size does not match its entry");
        assert_eq!(refusal(ours(), 0), "shared buffer's size does not match its entry");
        assert!(SharedRegion::open(None, 8).is_err(), "a non-empty buffer without a descriptor");
        // A sparse memfd past the limit costs its sender nothing: never mapped.
        assert_eq!(
            refusal(platform::memfd_create_sealed(NAME, MAX_LEN + 1).unwrap(), MAX_LEN + 1),
            "shared buffer too large"
        );
        let too_large = SharedRegion::create(MAX_LEN as usize + 1).err().expect("refused");
        assert_eq!(too_large.kind(), io::ErrorKind::InvalidInput);
        // The crate's unit tests run in process memory, where even a good one is not
        // mapped (the integration tests map them).
        assert_eq!(refusal(ours(), 4096), "this process cannot map shared memory");
    }
}
