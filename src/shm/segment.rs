//! The shared layout of one channel: a header, then two directions.
//!
//! ```text
//! offset 0                         128              512              896   896 + cap
//! | Header (magic, version, ...)  | RingLines dir 0 | RingLines dir 1 | data 0 | data 1 |
//! ```
//!
//! Direction `e` carries messages posted by end `e` to end `1 - e`.
//!
//! The invariants every access relies on are stated once, in [`crate::shm`].

use std::alloc::Layout;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::MmapRaw;

use crate::platform;
use crate::shm::ring::{self, RingLines, RingRef};
use crate::shm::sync::{AtomicU32, AtomicU64, Ordering};
use crate::shm::wait::Parker;

/// "SHMPORT" + a format byte.
const MAGIC: u64 = u64::from_le_bytes(*b"SHMPORT\x01");
/// Bumped on any change of the layout or the record format. 4: a record is published
/// by its header, and the slot after it is zeroed first. 5: the arena generation words
/// (`Header::arena_generations`), and attachment tables that name an arena by an id its
/// receiver was told once (see the wire layer's `arenas`). 6: padding records
/// (`ring::KIND_PAD`, written before a write chunk that would wrap), which an earlier
/// consumer would report as messages of an unknown kind. 7: the wait word's `ARMED`
/// bit (the epoch moved up a bit) and readiness signals on the socket, which an
/// earlier writer would never send and an earlier reader would take for broken
/// descriptor messages. 8: the attachment table's header grew to 8 words (a count of
/// shared-buffer entries, and a reserved word), which an earlier reader would take
/// for the first buffer entry.
const VERSION: u32 = 8;
/// Changes whenever a size or offset below changes, so that two builds that disagree
/// on the layout refuse each other even at the same version.
const LAYOUT: u32 = (HEADER_SIZE as u32) ^ ((LINES_SIZE as u32) << 12) ^ 0x5a00_0000;

const HEADER_SIZE: usize = 128;
const LINES_SIZE: usize = std::mem::size_of::<RingLines>();
const DATA_OFFSET: usize = HEADER_SIZE + 2 * LINES_SIZE;

/// `Header::flags`: the channel busy-polls (writers skip the wake-up check).
pub(crate) const FLAG_BUSY_POLL: u32 = 1;
/// `Header::flags`: transferred buffers are detached in Rust only; the sender's view of
/// the pages is not revoked with `mprotect`.
pub(crate) const FLAG_NO_REVOKE: u32 = 2;
/// `Header::flags`: sleepers issue `membarrier` so writers can skip their fence.
pub(crate) const FLAG_ASYMMETRIC: u32 = 4;
const KNOWN_FLAGS: u32 = FLAG_BUSY_POLL | FLAG_NO_REVOKE | FLAG_ASYMMETRIC;

/// An end's state word (`Header::ends`) is 0 while the end is open, and this once it
/// was closed, dropped, or doomed: its peer drains and then reports closed.
pub(crate) const END_CLOSED: u32 = 1;

/// The first 128 bytes of a segment. Every field is atomic because the peer may write
/// any of them at any time; the configuring ones are read once at `open`.
#[repr(C, align(128))]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    layout: AtomicU32,
    total_len: AtomicU64,
    capacity: AtomicU64,
    flags: AtomicU32,
    /// Stored last, with Release, when the rest is written.
    initialised: AtomicU32,
    ends: [AtomicU32; 2],
    /// One word per direction: the arena generation its sender's arena ids belong to
    /// (see the wire layer's `arenas`). The sender starts a new generation when it finds the word
    /// changed; the receiver bumps it to ask for one. Only a hint: whatever it holds
    /// costs at most descriptors sent again.
    arena_generations: [AtomicU32; 2],
}

const _: () = {
    assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
    assert!(std::mem::offset_of!(Header, total_len) == 16);
    assert!(std::mem::offset_of!(Header, initialised) == 36);
    assert!(std::mem::offset_of!(Header, ends) == 40);
    assert!(std::mem::offset_of!(Header, arena_generations) == 48);
    assert!(DATA_OFFSET == 896);
    assert!(DATA_OFFSET.is_multiple_of(128));
};

/// Bytes of a segment whose directions each hold `capacity` bytes.
fn segment_len(capacity: u64) -> u64 {
    DATA_OFFSET as u64 + 2 * capacity
}

/// Why a received segment was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("invalid segment: {0}")]
    Invalid(&'static str),
}

enum Memory {
    /// A memfd mapped shared; the fd travels when the port does.
    Shared { _map: MmapRaw, fd: OwnedFd },
    /// A zeroed heap block (the process-local backend).
    Heap { layout: Layout },
}

/// One channel's shared memory, mapped in this process. See the module docs for the
/// invariants every access relies on.
pub(crate) struct Segment {
    base: NonNull<u8>,
    /// The memfd's (device, inode); for a heap segment, (0, its address).
    identity: (u64, u64),
    capacity: u64,
    flags: u32,
    memory: Memory,
    parker: Parker,
}

// SAFETY: the segment is memory built for concurrent access (invariant 3); the pointer
// stays valid while the Segment lives (invariant 1).
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Segment {
    /// A new memfd segment, sealed, with both ends open and both rings empty.
    pub(crate) fn create_shared(capacity: u64, flags: u32) -> io::Result<Segment> {
        let flags = if crate::shm::wait::asymmetric_available() { flags | FLAG_ASYMMETRIC } else { flags };
        check_capacity(capacity).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        crate::shm::backend::require_memfd()?;
        let len = segment_len(capacity);
        let fd = platform::memfd_create_sealed("shmport-channel", len)?;
        let map = platform::mmap_shared(fd.as_fd(), len as usize)?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned null");
        let identity = platform::file_identity(fd.as_fd())?;
        let segment = Segment {
            base,
            identity,
            capacity,
            flags,
            memory: Memory::Shared { _map: map, fd },
            parker: Parker::futex(flags & FLAG_ASYMMETRIC != 0),
        };
        segment.initialise(len);
        Ok(segment)
    }

    /// A new segment on the heap, usable only inside this process.
    pub(crate) fn create_local(capacity: u64, flags: u32) -> io::Result<Segment> {
        check_capacity(capacity).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let len = segment_len(capacity);
        let layout = Layout::from_size_align(len as usize, 128).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let segment = Segment {
            base,
            identity: (0, base.as_ptr() as u64),
            capacity,
            flags,
            memory: Memory::Heap { layout },
            parker: Parker::local(),
        };
        segment.initialise(len);
        Ok(segment)
    }

    fn initialise(&self, len: u64) {
        let h = self.header();
        h.magic.store(MAGIC, Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.layout.store(LAYOUT, Ordering::Relaxed);
        h.total_len.store(len, Ordering::Relaxed);
        h.capacity.store(self.capacity, Ordering::Relaxed);
        h.flags.store(self.flags, Ordering::Relaxed);
        // SYNC: initialised. Everything above is visible to whoever sees 1 here.
        h.initialised.store(1, Ordering::Release);
    }

    /// Maps a segment received from another process, validating everything it will
    /// rely on: seals, size, magic, version, layout, capacity and flags.
    pub(crate) fn open_shared(fd: OwnedFd) -> Result<Segment, OpenError> {
        crate::shm::backend::require_memfd()?;
        let len = platform::sealed_len(fd.as_fd())?;
        if len < DATA_OFFSET as u64 || len > segment_len(ring::MAX_CAPACITY) {
            return Err(OpenError::Invalid("size out of range"));
        }
        let map = platform::mmap_shared(fd.as_fd(), len as usize)?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned null");
        let identity = platform::file_identity(fd.as_fd())?;
        // Build the Segment first so the mapping is released on every error path; its
        // capacity is fixed below, after validation, and nothing reads it before.
        let mut segment = Segment {
            base,
            identity,
            capacity: 0,
            flags: 0,
            memory: Memory::Shared { _map: map, fd },
            parker: Parker::futex(false),
        };
        let h = segment.header();
        // SYNC: initialised.
        if h.initialised.load(Ordering::Acquire) != 1 {
            return Err(OpenError::Invalid("not initialised"));
        }
        if h.magic.load(Ordering::Relaxed) != MAGIC {
            return Err(OpenError::Invalid("bad magic"));
        }
        if h.version.load(Ordering::Relaxed) != VERSION || h.layout.load(Ordering::Relaxed) != LAYOUT {
            return Err(OpenError::Invalid("incompatible version or layout"));
        }
        let capacity = h.capacity.load(Ordering::Relaxed);
        check_capacity(capacity).map_err(OpenError::Invalid)?;
        if h.total_len.load(Ordering::Relaxed) != len || segment_len(capacity) != len {
            return Err(OpenError::Invalid("size does not match the header"));
        }
        let flags = h.flags.load(Ordering::Relaxed);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(OpenError::Invalid("unknown flags"));
        }
        segment.capacity = capacity;
        segment.flags = flags;
        // On an asymmetric channel this registers the process, before anything uses
        // the channel, so the peer's sleepers' `membarrier` reaches our writers.
        segment.parker = Parker::futex(flags & FLAG_ASYMMETRIC != 0);
        Ok(segment)
    }

    fn header(&self) -> &Header {
        // SAFETY: the first HEADER_SIZE bytes are in the mapping (checked at open), and
        // Header is all atomics (invariant 3).
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// The ring of direction `dir` (0 or 1): end `dir` produces into it.
    pub(crate) fn ring(&self, dir: usize) -> RingRef {
        assert!(dir < 2);
        // SAFETY: both offsets are inside the mapping, whose size was checked against
        // the capacity (invariants 1, 2, 4); the data area is 128-aligned.
        unsafe {
            let lines = self.base.add(HEADER_SIZE + dir * LINES_SIZE).cast::<RingLines>();
            let data = self.base.add(DATA_OFFSET + dir * self.capacity as usize);
            RingRef::new(lines, data, self.capacity)
        }
    }

    /// The control lines of direction `dir`, borrowed for the segment's life.
    pub(crate) fn lines(&self, dir: usize) -> &RingLines {
        assert!(dir < 2);
        // SAFETY: inside the mapping (invariants 1, 2); RingLines is all atomics.
        unsafe { self.base.add(HEADER_SIZE + dir * LINES_SIZE).cast::<RingLines>().as_ref() }
    }

    /// The state word of end `end` (0 while open, `END_CLOSED` after).
    #[inline]
    pub(crate) fn end_state(&self, end: usize) -> &AtomicU32 {
        &self.header().ends[end]
    }

    /// The arena generation word of direction `dir` (0 or 1): see `Header`.
    pub(crate) fn arena_generation(&self, dir: usize) -> &AtomicU32 {
        &self.header().arena_generations[dir]
    }

    #[inline]
    pub(crate) fn parker(&self) -> &Parker {
        &self.parker
    }

    /// The memfd, for a segment that can cross processes.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.memory {
            Memory::Shared { fd, .. } => Some(fd.as_fd()),
            Memory::Heap { .. } => None,
        }
    }

    /// Names the channel: equal for every mapping of the same segment.
    pub(crate) fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Whether transferred buffers keep their pages open in the sender.
    pub(crate) fn revokes(&self) -> bool {
        self.flags & FLAG_NO_REVOKE == 0
    }

    #[inline]
    pub(crate) fn busy_poll(&self) -> bool {
        self.flags & FLAG_BUSY_POLL != 0
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Memory::Heap { layout } = self.memory {
            // SAFETY: allocated in create_local with exactly this layout.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

fn check_capacity(capacity: u64) -> Result<(), &'static str> {
    if !capacity.is_power_of_two() || !(ring::MIN_CAPACITY..=ring::MAX_CAPACITY).contains(&capacity) {
        return Err("ring capacity must be a power of two between 64 B and 1 GiB");
    }
    Ok(())
}
