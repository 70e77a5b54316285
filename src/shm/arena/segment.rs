//! One arena segment mapped in this process (one of ours, or a peer's): its layout,
//! its name, its state words and chunks, and this process's views of the chunks. A
//! segment is a memfd mapped shared, or, for the process-memory backend
//! (`crate::shm::backend`), a heap block of the same layout.

use std::alloc::Layout;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::MmapRaw;

use super::state::Local;
use crate::platform;
use crate::shm::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

/// The memfd name of every arena segment starts with this; the layout version and the
/// size class follow (see `segment_name`).
const NAME_PREFIX: &str = "shmport-arena.";
/// The layout version, in the name. 3: the layout is described by the name and the
/// sealed size only (2 had an in-segment header, which any receiver could overwrite).
/// 4: FREE and SENT state words carry the `own` bit (`state::OWN_BYTES`); an owner of
/// version 3 would never reuse a chunk a later process freed with it set.
const VERSION: u32 = 4;
/// The smallest chunk: 4 KiB, or the page size if larger (16 KiB and 64 KiB pages on
/// some aarch64 systems), so revoking one chunk never touches a neighbour's page.
pub(super) fn min_shift() -> u32 {
    platform::page_size().max(4096).trailing_zeros()
}
/// The largest chunk: 64 GiB.
pub(super) const MAX_SHIFT: u32 = 36;
/// Segments of small classes hold this many bytes of chunks.
const SEGMENT_BYTES: usize = 4 << 20;
/// Reserved bytes before the state words (nobody reads them).
pub(super) const HEADER_BYTES: usize = 64;
/// Segments with at most this many chunks map each chunk as a VMA of its own from the
/// start; in larger ones, a chunk becomes one the first time this process revokes it.
pub(super) const SEPARATE_VMAS_UP_TO: u32 = 64;
/// The most kernel mappings the separated chunks of this process may add (an eighth
/// of the kernel's default limit of 65,530), so that neither a large arena nor a peer
/// sending buffers from many segments can exhaust the process's mappings; a chunk
/// revoked beyond it stays in its neighbours' mapping and splits it when revoked.
pub(super) const SEPARATED_VMA_BUDGET: usize = 8192;
/// Mappings added by separating chunks, over the live segments of this process (a
/// process-local counter, not shared memory).
pub(super) static SEPARATED_VMAS: AtomicUsize = AtomicUsize::new(0);
/// The mappings one chunk separated on its own adds at most: its own, and the part of
/// its neighbours' mapping beyond it.
pub(super) const VMAS_PER_LATE_CHUNK: usize = 2;
/// Chunks of at least this size (2 MiB, a PMD on x86-64 and 4 KiB-page aarch64) start
/// at a multiple of it in their segment and are advised `MADV_HUGEPAGE`.
pub(super) const HUGE_SHIFT: u32 = 21;

/// Whether chunks of this class are laid out for huge pages.
pub(super) fn huge_class(chunk_shift: u32) -> bool {
    chunk_shift >= HUGE_SHIFT && platform::page_size() == 4096
}

/// The memfd name of a segment of chunks of `1 << chunk_shift` bytes.
pub(super) fn segment_name(chunk_shift: u32) -> String {
    format!("{NAME_PREFIX}{VERSION}.{chunk_shift}")
}

/// The size class a segment's memfd name declares, if it is an arena segment of this
/// layout version.
pub(super) fn class_from_name(name: &str) -> Result<u32, &'static str> {
    let rest = name.strip_prefix(NAME_PREFIX).ok_or("not an arena")?;
    let (version, shift) = rest.split_once('.').ok_or("not an arena")?;
    if version != VERSION.to_string() {
        return Err("incompatible arena version");
    }
    let shift: u32 = shift.parse().map_err(|_| "not an arena")?;
    // Only the canonical spelling (no sign, no leading zeros, nothing after it).
    if segment_name(shift) != name {
        return Err("not an arena");
    }
    if !(min_shift()..=MAX_SHIFT).contains(&shift) {
        return Err("arena chunk size out of range");
    }
    Ok(shift)
}

/// Takes `vmas` of the process's budget of added mappings; false (and nothing taken)
/// if it would overrun it.
fn take_vma_budget(vmas: usize) -> bool {
    // Relaxed: a process-local budget; the fetch_add itself makes concurrent segments
    // share it without exceeding it.
    if SEPARATED_VMAS.fetch_add(vmas, Ordering::Relaxed) + vmas > SEPARATED_VMA_BUDGET {
        SEPARATED_VMAS.fetch_sub(vmas, Ordering::Relaxed);
        return false;
    }
    true
}

/// The bookkeeping lock, whatever a panicking holder left behind (every critical
/// section leaves the marks consistent before anything can panic).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a segment's bytes are.
enum Memory {
    /// A memfd mapped shared (ours, or a peer's); the fd travels with its buffers.
    Shared { _map: MmapRaw, fd: OwnedFd },
    /// A zeroed heap block. `token` stands for it where a descriptor is sent on a
    /// channel's socket (always a process-local channel: see `backend`): one end of a
    /// socketpair whose other end is closed, never read or written, whose inode is
    /// unique while the segment lives, so the receiver finds the segment by identity
    /// as it finds a memfd it has mapped already.
    Heap { layout: Layout, token: OwnedFd },
}

/// One arena segment mapped in this process: one of ours, or a peer's.
pub(crate) struct ArenaSegment {
    base: NonNull<u8>,
    memory: Memory,
    pub(super) identity: (u64, u64),
    pub(super) chunk_shift: u32,
    pub(super) chunk_count: u32,
    data_offset: usize,
    /// This process's marks of each chunk; the bookkeeping lock of the segment.
    pub(super) local: Mutex<Vec<Local>>,
    /// The segment is this process's (created here), not a peer's.
    pub(super) ours: bool,
    /// Mappings this segment added to `SEPARATED_VMAS` (a process-local count).
    pub(super) separated: AtomicUsize,
}

// SAFETY: the segment is memory built for concurrent access: its state words are only
// accessed as atomics, its chunks only by the holder the state machine names
// (invariants 1-3 of `crate::shm`); the pointer stays valid while the segment lives.
unsafe impl Send for ArenaSegment {}
// SAFETY: as above.
unsafe impl Sync for ArenaSegment {}

impl Drop for ArenaSegment {
    fn drop(&mut self) {
        // A mapping goes away with `memory`: give its share of the budget back.
        // Relaxed: a process-local count, not ordering anything.
        SEPARATED_VMAS.fetch_sub(self.separated.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Memory::Heap { layout, .. } = self.memory {
            // SAFETY: allocated in `create_heap` with exactly this layout; no chunk of
            // the segment is alive (each holds an `Arc` of it).
            unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

impl ArenaSegment {
    pub(super) fn layout(chunk_shift: u32) -> (u32, usize, usize) {
        let size = 1usize << chunk_shift;
        let count = (SEGMENT_BYTES / size).max(1);
        // Huge classes put the metadata in a 2 MiB block of its own, so each chunk is
        // aligned for huge pages (the rest of the block is never touched: a memfd only
        // uses memory for the pages written).
        let page = if huge_class(chunk_shift) { 1 << HUGE_SHIFT } else { platform::page_size().max(4096) };
        let meta = (HEADER_BYTES + 8 * count).div_ceil(page) * page;
        (count as u32, meta, meta + count * size)
    }

    /// A segment of chunks of `1 << chunk_shift` bytes at `base`, every chunk's view
    /// open; `used`: whether its chunks may hold bytes already (a peer's segment; ours
    /// are new).
    fn new(memory: Memory, base: NonNull<u8>, identity: (u64, u64), chunk_shift: u32, used: bool) -> ArenaSegment {
        let (count, data_offset, _) = Self::layout(chunk_shift);
        let local = vec![Local { open: true, busy: false, used, separate: false }; count as usize];
        let mut segment = ArenaSegment {
            base,
            memory,
            identity,
            chunk_shift,
            chunk_count: count,
            data_offset,
            local: Mutex::new(local),
            ours: !used,
            separated: AtomicUsize::new(0),
        };
        segment.separate_chunk_mappings();
        segment
    }

    /// A new memfd segment of this process's arena.
    pub(super) fn create(chunk_shift: u32) -> io::Result<ArenaSegment> {
        let (_, _, total) = Self::layout(chunk_shift);
        let fd = platform::memfd_create_sealed(&segment_name(chunk_shift), total as u64)?;
        let map = platform::mmap_shared(fd.as_fd(), total)?;
        let identity = platform::file_identity(fd.as_fd())?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned null");
        Ok(ArenaSegment::new(Memory::Shared { _map: map, fd }, base, identity, chunk_shift, false))
    }

    /// A new heap segment of this process's arena (the process-memory backend).
    pub(super) fn create_heap(chunk_shift: u32) -> io::Result<ArenaSegment> {
        let (_, _, total) = Self::layout(chunk_shift);
        let align = platform::page_size().max(4096);
        let layout = Layout::from_size_align(total, align).map_err(io::Error::other)?;
        let (token, _peer) = platform::socketpair()?;
        let identity = platform::file_identity(token.as_fd())?;
        // SAFETY: the layout has a non-zero size (at least one page of metadata).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(ArenaSegment::new(Memory::Heap { layout, token }, base, identity, chunk_shift, false))
    }

    /// Maps a peer's segment, validating its name, seals and size: facts nobody can
    /// change once the segment exists. Nothing inside the segment is consulted, since
    /// every peer that was given pages of it can write there.
    pub(super) fn open(fd: OwnedFd, identity: (u64, u64)) -> Result<ArenaSegment, &'static str> {
        // The name is read through /proc/self/fd: without /proc (some sandboxes) no
        // peer's buffer can be received. The sizes of several classes coincide, so
        // the size alone cannot stand in for the name.
        let name = platform::memfd_name(fd.as_fd()).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => "arena is not a memfd",
            _ => "cannot read the arena's memfd name (is /proc mounted?)",
        })?;
        let shift = class_from_name(&name)?;
        let len = platform::sealed_len(fd.as_fd()).map_err(|_| "arena is not a sealed memfd")?;
        let (_, _, total) = Self::layout(shift);
        if total as u64 != len {
            return Err("arena size does not match its size class");
        }
        let map = platform::mmap_shared(fd.as_fd(), total).map_err(|_| "arena cannot be mapped")?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned null");
        Ok(ArenaSegment::new(Memory::Shared { _map: map, fd }, base, identity, shift, true))
    }

    /// In a segment of at most `SEPARATE_VMAS_UP_TO` chunks, gives chunks 0, 2, 4, ...
    /// `MADV_RANDOM`, so no two neighbouring chunks (nor chunk 0 and the metadata) can
    /// share a VMA. Only an optimisation: failure is ignored.
    fn separate_chunk_mappings(&mut self) {
        if self.is_heap() {
            return;
        }
        if huge_class(self.chunk_shift) {
            // SAFETY: the chunks, 2 MiB-aligned in the file, inside our mapping.
            let _ = unsafe {
                platform::advise_huge(self.chunk_ptr(0).as_ptr(), self.chunk_size() * self.chunk_count as usize)
            };
        }
        if self.chunk_count > SEPARATE_VMAS_UP_TO {
            return;
        }
        let added = self.chunk_count as usize;
        if !take_vma_budget(added) {
            return;
        }
        *self.separated.get_mut() = added;
        for index in (0..self.chunk_count).step_by(2) {
            // SAFETY: a whole chunk, page-aligned, inside our mapping; the advice
            // changes no contents.
            let _ = unsafe { platform::advise_random(self.chunk_ptr(index).as_ptr(), self.chunk_size()) };
        }
        for entry in self.local.get_mut().unwrap_or_else(|e| e.into_inner()) {
            entry.separate = true;
        }
    }

    /// Makes one chunk a VMA of its own, the first time this process revokes it in a
    /// segment whose chunks share one: `MADV_RANDOM` for an even chunk, `MADV_SEQUENTIAL`
    /// for an odd one, so it differs from an unadvised neighbour and from an advised one
    /// alike. Its later revocations then change its own mapping's flags instead of
    /// splitting its neighbours' mapping in three and merging it back when reopened
    /// (measured: 6 µs per mprotect pair of a 4 KiB chunk in one mapping, 2.4 µs apart).
    /// Only an optimisation: past the budget, or if the advice fails, nothing changes.
    fn separate_chunk(&self, entry: &mut Local, index: u32) {
        if !take_vma_budget(VMAS_PER_LATE_CHUNK) {
            return;
        }
        let (ptr, len) = (self.chunk_ptr(index).as_ptr(), self.chunk_size());
        // SAFETY: a whole chunk, page-aligned, inside our mapping; the advice changes no
        // contents.
        let advised = unsafe {
            if index.is_multiple_of(2) {
                platform::advise_random(ptr, len)
            } else {
                platform::advise_sequential(ptr, len)
            }
        };
        if advised.is_err() {
            SEPARATED_VMAS.fetch_sub(VMAS_PER_LATE_CHUNK, Ordering::Relaxed);
            return;
        }
        // Relaxed: a process-local count, changed under the bookkeeping lock.
        self.separated.fetch_add(VMAS_PER_LATE_CHUNK, Ordering::Relaxed);
        entry.separate = true;
    }

    /// The state word of chunk `index`, in the shared metadata.
    pub(super) fn state(&self, index: u32) -> &AtomicU64 {
        assert!(index < self.chunk_count);
        // SAFETY: the state words lie inside the metadata pages (layout()), 8-aligned,
        // and are only accessed as atomics (invariant 3 of `crate::shm`).
        unsafe { self.base.add(HEADER_BYTES + 8 * index as usize).cast::<AtomicU64>().as_ref() }
    }

    pub(crate) fn chunk_size(&self) -> usize {
        1 << self.chunk_shift
    }

    pub(super) fn chunk_ptr(&self, index: u32) -> NonNull<u8> {
        assert!(index < self.chunk_count);
        // SAFETY: the chunk lies inside the mapping (layout() was checked against the
        // mapping's length).
        unsafe { self.base.add(self.data_offset + (index as usize) * self.chunk_size()) }
    }

    /// Opens or closes this process's view of a chunk (no syscall if unchanged). A heap
    /// segment's views only change in the bookkeeping: its pages are never protected.
    pub(super) fn set_open(&self, local: &mut [Local], index: u32, open: bool) -> io::Result<()> {
        let entry = &mut local[index as usize];
        if entry.open == open {
            return Ok(());
        }
        if self.is_heap() {
            entry.open = open;
            return Ok(());
        }
        if !open && !entry.separate {
            self.separate_chunk(entry, index);
        }
        // SAFETY: a whole chunk, page-aligned, inside our mapping; when closing, the
        // caller has just taken the chunk from its last buffer (no reference is alive).
        unsafe { platform::mprotect(self.chunk_ptr(index).as_ptr(), self.chunk_size(), open)? };
        entry.open = open;
        Ok(())
    }

    /// The descriptor that names the segment on a channel's socket: the memfd, or a
    /// heap segment's token.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match &self.memory {
            Memory::Shared { fd, .. } => fd.as_fd(),
            Memory::Heap { token, .. } => token.as_fd(),
        }
    }

    /// Whether the segment is a heap block (the process-memory backend).
    pub(crate) fn is_heap(&self) -> bool {
        matches!(self.memory, Memory::Heap { .. })
    }

    /// The first byte of the segment (for tests that look at its mappings).
    #[cfg(test)]
    pub(super) fn base(&self) -> *const u8 {
        self.base.as_ptr()
    }
}
