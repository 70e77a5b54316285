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
use super::vmas::{Marks, PROCESS_BUDGET, VmaBudget};
use crate::platform;
use crate::shm::sync::{AtomicU64, Mutex, MutexGuard};

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
/// start, if the budget of mappings allows when they are mapped; in larger ones, and
/// in those mapped while the budget was short, a chunk becomes one the first time this
/// process closes it (see `vmas`).
pub(super) const SEPARATE_VMAS_UP_TO: u32 = 64;
/// The most kernel mappings the separated and closed chunks of this process may add
/// (an eighth of the kernel's default limit of 65,530), over our segments and the
/// peers' we map. It bounds only what the arena's views add: the rest of the process
/// (other mappings, other libraries) can still reach `vm.max_map_count`. Past it,
/// chunks are not revoked (see `vmas`).
pub(super) const SEPARATED_VMA_BUDGET: usize = 8192;
/// The mappings marking one chunk (separating or closing it) adds at most: its own,
/// and the part of its neighbours' mapping beyond it. An upper bound: the charge is 1
/// or 0 when a neighbour or both are marked already (`vmas`).
pub(super) const VMAS_PER_SEPARATED_CHUNK: usize = 2;
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
    /// This process's marks of each chunk, and the mappings they charged to `budget`;
    /// the bookkeeping lock of the segment.
    pub(super) local: Mutex<Marks>,
    /// The segment is this process's (created here), not a peer's.
    pub(super) ours: bool,
    /// The budget of mappings its separated and closed chunks take from.
    pub(super) budget: &'static VmaBudget,
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
        self.budget.give_back(self.local.get_mut().unwrap_or_else(|e| e.into_inner()).charged);
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
        Self::new_with(memory, base, identity, chunk_shift, used, &PROCESS_BUDGET)
    }

    fn new_with(
        memory: Memory,
        base: NonNull<u8>,
        identity: (u64, u64),
        chunk_shift: u32,
        used: bool,
        budget: &'static VmaBudget,
    ) -> ArenaSegment {
        let (count, data_offset, _) = Self::layout(chunk_shift);
        let local = vec![Local { open: true, busy: false, used, separation: Default::default() }; count as usize];
        let segment = ArenaSegment {
            base,
            memory,
            identity,
            chunk_shift,
            chunk_count: count,
            data_offset,
            local: Mutex::new(Marks::new(local)),
            ours: !used,
            budget,
        };
        segment.separate_chunk_mappings();
        segment
    }

    /// A new memfd segment of this process's arena.
    pub(super) fn create(chunk_shift: u32) -> io::Result<ArenaSegment> {
        Self::create_with(chunk_shift, &PROCESS_BUDGET)
    }

    /// A new memfd segment whose views take from `budget` (tests give it one of its
    /// own).
    pub(super) fn create_with(chunk_shift: u32, budget: &'static VmaBudget) -> io::Result<ArenaSegment> {
        let (_, _, total) = Self::layout(chunk_shift);
        let fd = platform::memfd_create_sealed(&segment_name(chunk_shift), total as u64)?;
        let map = platform::mmap_shared(fd.as_fd(), total)?;
        let identity = platform::file_identity(fd.as_fd())?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned null");
        Ok(ArenaSegment::new_with(Memory::Shared { _map: map, fd }, base, identity, chunk_shift, false, budget))
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

    /// Advises huge pages for a huge class, and in a segment of at most
    /// `SEPARATE_VMAS_UP_TO` chunks makes each chunk a VMA of its own (`vmas`). Only
    /// optimisations: failures are ignored.
    fn separate_chunk_mappings(&self) {
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
        self.separate_all(&mut lock(&self.local));
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
