//! Shared pages for `ArrayBuffer`s, and for messages too large for a ring.
//!
//! Each process owns an *arena*: memfd segments, one size class per segment (a power of
//! two from 4 KiB up), each holding `max(1, 4 MiB / size)` chunks. The memfd's name
//! says the layout version and the size class (`shmport-arena.3.20`: version 3, 1 MiB
//! chunks); with the segment's sealed size, that is all a process mapping a peer's
//! segment trusts about it, because nobody can change either once the segment exists.
//! A segment starts with a metadata page: 64 reserved bytes, then one state word per
//! chunk:
//!
//! ```text
//! state = generation (32 bits) | tag (2 bits) | pid (30 bits)
//! tag:  FREE       nobody holds the chunk; its owner may hand it out again
//!       HELD(pid)  process `pid` holds it as a live ArrayBuffer
//!       SENT(pid)  `pid` posted it; it is in a ring, not yet received
//! ```
//!
//! Every allocation bumps the generation. A transfer sends the descriptor
//! `{arena fd, chunk, generation, len}`; the receiver maps the arena (once per process,
//! looked up by the memfd's inode), and takes the chunk by a compare-and-swap from
//! exactly `SENT(sender, generation)` to `HELD(receiver, generation)`. A forged, stale
//! or out-of-range descriptor fails that check and is rejected. A dropped buffer goes
//! back by `HELD(me) → FREE`, in whichever process drops it; the owner finds FREE
//! chunks when it allocates.
//!
//! Chunks held by a process that died are reclaimed by their owner (`reclaim`, also run
//! before the arena grows): `HELD(pid)` with no such process becomes FREE. Chunks in
//! flight to a process that died are reclaimed by their sender (see `port`).
//!
//! Hardware revocation: when a buffer is transferred, the sender's view of its pages is
//! closed with `mprotect(PROT_NONE)`; the receiver's view is opened. Each process tracks
//! which of its views are open, so a chunk that stays put costs no syscall. In a segment
//! of at most `SEPARATE_VMAS_UP_TO` chunks, every other chunk is given `MADV_RANDOM` when
//! the segment is mapped, so each chunk is a kernel mapping (VMA) of its own: closing
//! one then changes that VMA's flags instead of splitting its neighbours' mapping in
//! three and merging it back on reopening, which halves the cost of a small chunk's
//! mprotect pair. Segments of smaller chunks keep one mapping, and the mappings added
//! this way, over our segments and the peers' we map, stay within a budget of 8,192 per
//! process (the kernel's default limit is 65,530), so neither a large arena nor a peer
//! sending buffers from many segments can exhaust them.
//!
//! The peer is untrusted: the owner reuses a chunk only if the state word holds exactly
//! `FREE` and its own records agree it does not hold the chunk, so a forged state word
//! can make a chunk leak, never make two live buffers of this process share pages.
//! Nothing else in the segment is read by anyone: a peer that was given pages of it can
//! write anywhere in it (the metadata page included), and what it writes must not stop
//! a third process from mapping the segment (so there is no in-segment header to
//! validate: the name and the sealed size stand in for it).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use memmap2::MmapRaw;

use crate::platform;

/// The memfd name of every arena segment starts with this; the layout version and the
/// size class follow (see `segment_name`).
const NAME_PREFIX: &str = "shmport-arena.";
/// The layout version, in the name. 3: the layout is described by the name and the
/// sealed size only (2 had an in-segment header, which any receiver could overwrite).
const VERSION: u32 = 3;
/// The smallest chunk: 4 KiB, or the page size if larger (16 KiB and 64 KiB pages on
/// some aarch64 systems), so revoking one chunk never touches a neighbour's page.
fn min_shift() -> u32 {
    platform::page_size().max(4096).trailing_zeros()
}
/// The largest chunk: 64 GiB.
const MAX_SHIFT: u32 = 36;
/// Segments of small classes hold this many bytes of chunks.
const SEGMENT_BYTES: usize = 4 << 20;
/// Reserved bytes before the state words (nobody reads them).
const HEADER_BYTES: usize = 64;
/// Segments with at most this many chunks map each chunk as a VMA of its own.
const SEPARATE_VMAS_UP_TO: u32 = 64;
/// The most kernel mappings all separated segments of this process may add (an eighth
/// of the kernel's default limit of 65,530), so that neither a large arena nor a peer
/// sending buffers from many segments can exhaust the process's mappings; segments
/// mapped beyond it keep one mapping and split it when revoking.
const SEPARATED_VMA_BUDGET: usize = 8192;
/// Mappings added by separating chunks, over the live segments of this process.
static SEPARATED_VMAS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Chunks of at least this size (2 MiB, a PMD on x86-64 and 4 KiB-page aarch64) start
/// at a multiple of it in their segment and are advised `MADV_HUGEPAGE`.
const HUGE_SHIFT: u32 = 21;

/// Whether chunks of this class are laid out for huge pages.
fn huge_class(chunk_shift: u32) -> bool {
    chunk_shift >= HUGE_SHIFT && platform::page_size() == 4096
}

const TAG_FREE: u64 = 0;
const TAG_HELD: u64 = 1;
const TAG_SENT: u64 = 2;
const PID_MASK: u64 = (1 << 30) - 1;

fn pack(generation: u32, tag: u64, pid: u32) -> u64 {
    (u64::from(generation) << 32) | (tag << 30) | (u64::from(pid) & PID_MASK)
}

fn unpack(word: u64) -> (u32, u64, u32) {
    ((word >> 32) as u32, (word >> 30) & 3, (word & PID_MASK) as u32)
}

/// This process's id, read once (fork without exec is not supported).
pub(crate) fn my_pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(platform::current_pid)
}

/// The memfd name of a segment of chunks of `1 << chunk_shift` bytes.
fn segment_name(chunk_shift: u32) -> String {
    format!("{NAME_PREFIX}{VERSION}.{chunk_shift}")
}

/// The size class a segment's memfd name declares, if it is an arena segment of this
/// layout version.
fn class_from_name(name: &str) -> Result<u32, &'static str> {
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

/// What this process knows of one chunk, apart from the shared state word.
#[derive(Clone, Copy, Default)]
struct Local {
    /// Our view of the chunk's pages is readable and writable.
    open: bool,
    /// A buffer of this process holds the chunk (or a message of ours carries it).
    busy: bool,
    /// Handed out at least once by this process (so its bytes are not known zero).
    used: bool,
}

/// One arena segment mapped in this process: one of ours, or a peer's.
pub(crate) struct ArenaSegment {
    map: MmapRaw,
    fd: OwnedFd,
    identity: (u64, u64),
    chunk_shift: u32,
    chunk_count: u32,
    data_offset: usize,
    local: Mutex<Vec<Local>>,
    /// Mappings this segment added to `SEPARATED_VMAS`.
    separated: usize,
}

impl Drop for ArenaSegment {
    fn drop(&mut self) {
        // The mapping goes away with `map`: give its share of the budget back.
        SEPARATED_VMAS.fetch_sub(self.separated, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ArenaSegment {
    fn layout(chunk_shift: u32) -> (u32, usize, usize) {
        let size = 1usize << chunk_shift;
        let count = (SEGMENT_BYTES / size).max(1);
        // Huge classes put the metadata in a 2 MiB block of its own, so each chunk is
        // aligned for huge pages (the rest of the block is never touched: a memfd only
        // uses memory for the pages written).
        let page = if huge_class(chunk_shift) { 1 << HUGE_SHIFT } else { platform::page_size().max(4096) };
        let meta = (HEADER_BYTES + 8 * count).div_ceil(page) * page;
        (count as u32, meta, meta + count * size)
    }

    /// A new segment of this process's arena.
    fn create(chunk_shift: u32) -> io::Result<ArenaSegment> {
        let (count, data_offset, total) = Self::layout(chunk_shift);
        let fd = platform::memfd_create_sealed(&segment_name(chunk_shift), total as u64)?;
        let map = platform::mmap_shared(fd.as_fd(), total)?;
        let identity = platform::file_identity(fd.as_fd())?;
        let segment = ArenaSegment {
            map,
            fd,
            identity,
            chunk_shift,
            chunk_count: count,
            data_offset,
            local: Mutex::new(vec![Local { open: true, busy: false, used: false }; count as usize]),
            separated: 0,
        };
        let mut segment = segment;
        segment.separate_chunk_mappings();
        Ok(segment)
    }

    /// Maps a peer's segment, validating its name, seals and size: facts nobody can
    /// change once the segment exists. Nothing inside the segment is consulted, since
    /// every peer that was given pages of it can write there.
    fn open(fd: OwnedFd, identity: (u64, u64)) -> Result<ArenaSegment, &'static str> {
        // The name is read through /proc/self/fd: without /proc (some sandboxes) no
        // peer's buffer can be received. The sizes of several classes coincide, so
        // the size alone cannot stand in for the name.
        let name = platform::memfd_name(fd.as_fd()).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => "arena is not a memfd",
            _ => "cannot read the arena's memfd name (is /proc mounted?)",
        })?;
        let shift = class_from_name(&name)?;
        let len = platform::sealed_len(fd.as_fd()).map_err(|_| "arena is not a sealed memfd")?;
        let (count, data_offset, total) = Self::layout(shift);
        if total as u64 != len {
            return Err("arena size does not match its size class");
        }
        let map = platform::mmap_shared(fd.as_fd(), total).map_err(|_| "arena cannot be mapped")?;
        let mut segment = ArenaSegment {
            map,
            fd,
            identity,
            chunk_shift: shift,
            chunk_count: count,
            data_offset,
            local: Mutex::new(vec![Local { open: true, busy: false, used: true }; count as usize]),
            separated: 0,
        };
        segment.separate_chunk_mappings();
        Ok(segment)
    }

    /// Gives chunks 0, 2, 4, ... `MADV_RANDOM`, so no two neighbouring chunks (nor chunk
    /// 0 and the metadata) can share a VMA. Only an optimisation: failure is ignored.
    fn separate_chunk_mappings(&mut self) {
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
        if SEPARATED_VMAS.fetch_add(added, Ordering::Relaxed) + added > SEPARATED_VMA_BUDGET {
            SEPARATED_VMAS.fetch_sub(added, Ordering::Relaxed);
            return;
        }
        self.separated = added;
        for index in (0..self.chunk_count).step_by(2) {
            // SAFETY: a whole chunk, page-aligned, inside our mapping; the advice
            // changes no contents.
            let _ = unsafe { platform::advise_random(self.chunk_ptr(index).as_ptr(), self.chunk_size()) };
        }
    }

    fn state(&self, index: u32) -> &AtomicU64 {
        assert!(index < self.chunk_count);
        // SAFETY: the state words lie inside the metadata pages (layout()), 8-aligned.
        unsafe { &*self.map.as_mut_ptr().add(HEADER_BYTES + 8 * index as usize).cast::<AtomicU64>() }
    }

    pub(crate) fn chunk_size(&self) -> usize {
        1 << self.chunk_shift
    }

    fn chunk_ptr(&self, index: u32) -> NonNull<u8> {
        assert!(index < self.chunk_count);
        // SAFETY: the chunk lies inside the mapping (layout() was checked against the
        // mapping's length).
        let p = unsafe { self.map.as_mut_ptr().add(self.data_offset + (index as usize) * self.chunk_size()) };
        NonNull::new(p).expect("mapping is not null")
    }

    /// Opens or closes this process's view of a chunk (no syscall if unchanged).
    fn set_open(&self, local: &mut [Local], index: u32, open: bool) -> io::Result<()> {
        let entry = &mut local[index as usize];
        if entry.open == open {
            return Ok(());
        }
        // SAFETY: a whole chunk, page-aligned, inside our mapping; when closing, the
        // caller has just taken the chunk from its last buffer (no reference is alive).
        unsafe { platform::mprotect(self.chunk_ptr(index).as_ptr(), self.chunk_size(), open)? };
        entry.open = open;
        Ok(())
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A chunk held by this process: the pages behind one `ArrayBuffer` (or a spilled
/// message). Dropping it gives the chunk back.
pub(crate) struct Chunk {
    segment: Arc<ArenaSegment>,
    index: u32,
    generation: u32,
}

/// How a chunk is named in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub(crate) chunk: u32,
    pub(crate) generation: u32,
}

impl Chunk {
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.segment.chunk_ptr(self.index)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.segment.chunk_size()
    }

    pub(crate) fn segment(&self) -> &Arc<ArenaSegment> {
        &self.segment
    }

    pub(crate) fn descriptor(&self) -> Descriptor {
        Descriptor { chunk: self.index, generation: self.generation }
    }

    /// Marks the chunk as posted (`HELD(me) → SENT(me)`); with `revoke`, closes this
    /// process's view of its pages. The chunk now belongs to the message.
    pub(crate) fn send(self, revoke: bool) -> SentChunk {
        let me = my_pid();
        let state = self.segment.state(self.index);
        {
            // The state word and our busy mark change together, under the bookkeeping
            // lock (see `Drop`): no thread of ours can see the one without the other.
            let mut local = lock(&self.segment.local);
            // SYNC: chunk transfer. Release: our writes to the pages are visible to the
            // receiver that takes the chunk (its Acquire load in `receive`).
            let _ = state.compare_exchange(
                pack(self.generation, TAG_HELD, me),
                pack(self.generation, TAG_SENT, me),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            local[self.index as usize].busy = false;
            if revoke {
                // A failed mprotect leaves the view open: Rust-level detachment still holds.
                let _ = self.segment.set_open(&mut local, self.index, false);
            }
        }
        let sent = SentChunk { segment: self.segment.clone(), index: self.index, generation: self.generation };
        std::mem::forget(self);
        sent
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let me = my_pid();
        // Our busy mark is cleared in the same critical section as the state word goes
        // FREE. The moment it is FREE, its owner may hand the chunk out again and send
        // it to another thread of this process, whose `receive` takes this lock: it
        // must never find the chunk FREE-and-resent in shared memory but still busy
        // here (it would refuse an honest message as naming pages we hold). The mark
        // cannot be cleared first either: `receive` would then take a chunk this
        // buffer still holds if a peer forged its state word back to SENT.
        let mut local = lock(&self.segment.local);
        // SYNC: chunk release. Release: our writes to the pages happen before the owner
        // hands them out again (its Acquire load in `take_free`).
        let _ = self.segment.state(self.index).compare_exchange(
            pack(self.generation, TAG_HELD, me),
            pack(self.generation, TAG_FREE, 0),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        local[self.index as usize].busy = false;
    }
}

/// A chunk this process posted, remembered so it can be reclaimed if the message is
/// never received.
pub(crate) struct SentChunk {
    segment: Arc<ArenaSegment>,
    index: u32,
    generation: u32,
}

impl SentChunk {
    /// The message carrying the chunk can no longer be received: give it back
    /// (`SENT(me) → FREE`). Harmless if the receiver got it after all.
    pub(crate) fn reclaim(&self) {
        let _ = self.segment.state(self.index).compare_exchange(
            pack(self.generation, TAG_SENT, my_pid()),
            pack(self.generation, TAG_FREE, 0),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// Takes a chunk named by a received descriptor: `SENT(any, generation) →
/// HELD(me, generation)`. Fails for a forged, stale or out-of-range descriptor.
pub(crate) fn receive(segment: Arc<ArenaSegment>, descriptor: Descriptor) -> Result<Chunk, &'static str> {
    if descriptor.chunk >= segment.chunk_count {
        return Err("buffer descriptor out of range");
    }
    // Under the bookkeeping lock: a chunk this process already holds is never taken a
    // second time, whatever the shared state word says (a peer can write it), so two
    // live buffers of this process never share pages.
    let mut local = lock(&segment.local);
    if local[descriptor.chunk as usize].busy {
        return Err("buffer descriptor names pages this process already holds");
    }
    let state = segment.state(descriptor.chunk);
    // SYNC: chunk transfer. Acquire: the sender's writes to the pages are visible.
    let current = state.load(Ordering::Acquire);
    let (generation, tag, _) = unpack(current);
    if tag != TAG_SENT || generation != descriptor.generation {
        return Err("stale or forged buffer descriptor");
    }
    state
        .compare_exchange(current, pack(generation, TAG_HELD, my_pid()), Ordering::AcqRel, Ordering::Relaxed)
        .map_err(|_| "buffer descriptor raced with another receiver")?;
    if segment.set_open(&mut local, descriptor.chunk, true).is_err() {
        let _ = state.compare_exchange(
            pack(generation, TAG_HELD, my_pid()),
            pack(generation, TAG_FREE, 0),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        return Err("cannot open the received pages");
    }
    local[descriptor.chunk as usize].busy = true;
    drop(local);
    Ok(Chunk { segment, index: descriptor.chunk, generation })
}

/// Gives back a chunk named by a message that could not be received (its record was
/// read, so its sender will not reclaim it): `SENT(any, generation) → FREE`.
pub(crate) fn give_back(segment: &ArenaSegment, descriptor: Descriptor) {
    if descriptor.chunk >= segment.chunk_count {
        return;
    }
    let state = segment.state(descriptor.chunk);
    let current = state.load(Ordering::Acquire);
    let (generation, tag, _) = unpack(current);
    if tag == TAG_SENT && generation == descriptor.generation {
        let _ = state.compare_exchange(current, pack(generation, TAG_FREE, 0), Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Counts of this process's own arena, for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Segments (memfds) in this process's arena.
    pub segments: usize,
    /// Chunks in them.
    pub chunks: usize,
    /// Chunks held by this process.
    pub held_here: usize,
    /// Chunks held by other processes.
    pub held_elsewhere: usize,
    /// Chunks posted and not yet received.
    pub in_flight: usize,
    /// Chunks free for reuse.
    pub free: usize,
}

/// The process's arena, and every peer segment mapped here.
struct Arena {
    /// Our segments, by size class.
    classes: Vec<Vec<Arc<ArenaSegment>>>,
    /// Every segment mapped here, ours and peers', by memfd identity.
    by_identity: HashMap<(u64, u64), Weak<ArenaSegment>>,
}

fn arena() -> MutexGuard<'static, Arena> {
    static ARENA: OnceLock<Mutex<Arena>> = OnceLock::new();
    lock(ARENA.get_or_init(|| {
        Mutex::new(Arena { classes: (0..=MAX_SHIFT).map(|_| Vec::new()).collect(), by_identity: HashMap::new() })
    }))
}

/// The size class of a request.
fn class_of(len: usize) -> Option<u32> {
    let shift = len.max(1).next_power_of_two().trailing_zeros().max(min_shift());
    (shift <= MAX_SHIFT && len <= 1usize << MAX_SHIFT).then_some(shift)
}

/// The bytes of shared memory a buffer of `len` bytes takes (its chunk; 0 when empty):
/// what a decoder charges a message for each buffer it copies.
pub(crate) fn footprint(len: usize) -> usize {
    match len {
        0 => 0,
        _ => class_of(len).map_or(usize::MAX, |shift| 1 << shift),
    }
}

/// A chunk of at least `len` bytes, held by this process, its view open. Returns the
/// chunk and whether its bytes are known to be zero.
pub(crate) fn allocate(len: usize) -> io::Result<(Chunk, bool)> {
    let shift = class_of(len).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
    let mut arena = arena();
    for pass in 0..2 {
        for segment in &arena.classes[shift as usize] {
            if let Some(found) = take_free(segment) {
                return found;
            }
        }
        if pass == 0 && reclaim_class(&arena.classes[shift as usize]) == 0 {
            break;
        }
    }
    let segment = Arc::new(ArenaSegment::create(shift)?);
    arena.by_identity.insert(segment.identity, Arc::downgrade(&segment));
    arena.classes[shift as usize].push(segment.clone());
    take_free(&segment).expect("a new segment has free chunks")
}

/// Takes the first chunk of `segment` that is FREE in shared memory and idle here.
fn take_free(segment: &Arc<ArenaSegment>) -> Option<io::Result<(Chunk, bool)>> {
    let me = my_pid();
    let mut local = lock(&segment.local);
    for index in 0..segment.chunk_count {
        if local[index as usize].busy {
            continue;
        }
        let state = segment.state(index);
        let current = state.load(Ordering::Acquire);
        let (generation, tag, _) = unpack(current);
        if tag != TAG_FREE || current != pack(generation, TAG_FREE, 0) {
            continue;
        }
        let next = generation.wrapping_add(1);
        // SYNC: chunk release (pairs with the Release of whoever freed it).
        if state.compare_exchange(current, pack(next, TAG_HELD, me), Ordering::AcqRel, Ordering::Relaxed).is_err() {
            continue;
        }
        if let Err(e) = segment.set_open(&mut local, index, true) {
            state.store(current, Ordering::Release);
            return Some(Err(e));
        }
        let entry = &mut local[index as usize];
        let zeroed = !entry.used;
        entry.busy = true;
        entry.used = true;
        return Some(Ok((Chunk { segment: segment.clone(), index, generation: next }, zeroed)));
    }
    None
}

/// Frees chunks of `segments` held by processes that no longer exist. Returns how many.
fn reclaim_class(segments: &[Arc<ArenaSegment>]) -> usize {
    let mut alive: HashMap<u32, bool> = HashMap::new();
    let me = my_pid();
    let mut reclaimed = 0;
    for segment in segments {
        for index in 0..segment.chunk_count {
            let state = segment.state(index);
            let current = state.load(Ordering::Acquire);
            let (generation, tag, pid) = unpack(current);
            if tag != TAG_HELD || pid == me || pid == 0 {
                continue;
            }
            if *alive.entry(pid).or_insert_with(|| platform::process_exists(pid)) {
                continue;
            }
            if state
                .compare_exchange(current, pack(generation, TAG_FREE, 0), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                reclaimed += 1;
            }
        }
    }
    reclaimed
}

/// Gives back every chunk of this process's arena that a dead process held. Also runs
/// on its own before the arena grows. Returns how many chunks came back.
pub fn reclaim() -> usize {
    let arena = arena();
    arena.classes.iter().map(|segments| reclaim_class(segments)).sum()
}

/// Counts of this process's own arena (chunks by state).
pub fn stats() -> ArenaStats {
    let arena = arena();
    let me = my_pid();
    let mut stats = ArenaStats::default();
    for segment in arena.classes.iter().flatten() {
        stats.segments += 1;
        for index in 0..segment.chunk_count {
            stats.chunks += 1;
            let (_, tag, pid) = unpack(segment.state(index).load(Ordering::Relaxed));
            match tag {
                TAG_FREE => stats.free += 1,
                TAG_HELD if pid == me => stats.held_here += 1,
                TAG_HELD => stats.held_elsewhere += 1,
                _ => stats.in_flight += 1,
            }
        }
    }
    stats
}

/// The segment behind a received arena descriptor: already mapped here (ours or a
/// peer's), or mapped now. Takes ownership of `fd` either way.
pub(crate) fn segment_for(fd: OwnedFd) -> Result<Arc<ArenaSegment>, &'static str> {
    let identity = platform::file_identity(fd.as_fd()).map_err(|_| "arena descriptor is not a file")?;
    let mut arena = arena();
    if let Some(segment) = arena.by_identity.get(&identity).and_then(Weak::upgrade) {
        return Ok(segment);
    }
    let segment = Arc::new(ArenaSegment::open(fd, identity)?);
    arena.by_identity.retain(|_, weak| weak.strong_count() > 0);
    arena.by_identity.insert(identity, Arc::downgrade(&segment));
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk of ours, posted (SENT), and a second mapping of its segment as a peer
    /// would see it.
    fn sent_chunk() -> (SentChunk, Arc<ArenaSegment>, Descriptor) {
        let (chunk, _) = allocate(5000).unwrap();
        let descriptor = chunk.descriptor();
        let fd = platform::dup_fd(chunk.segment().fd()).unwrap();
        let identity = chunk.segment().identity;
        let sent = chunk.send(false);
        let peer_view = Arc::new(ArenaSegment::open(fd, identity).unwrap());
        (sent, peer_view, descriptor)
    }

    #[test]
    fn a_forged_stale_or_out_of_range_descriptor_is_rejected() {
        let (_sent, view, d) = sent_chunk();
        let stale = Descriptor { generation: d.generation.wrapping_sub(1), ..d };
        assert_eq!(receive(view.clone(), stale).err(), Some("stale or forged buffer descriptor"));
        let out = Descriptor { chunk: view.chunk_count, ..d };
        assert_eq!(receive(view.clone(), out).err(), Some("buffer descriptor out of range"));
        let chunk = receive(view.clone(), d).expect("the real descriptor");
        // Taken once: the same descriptor again is stale.
        assert!(receive(view.clone(), d).is_err());
        drop(chunk);
        // Given back: FREE, and no longer receivable.
        assert!(receive(view, d).is_err());
    }

    #[test]
    fn a_chunk_this_process_holds_is_never_received_a_second_time() {
        let (chunk, _) = allocate(5000).unwrap();
        let d = chunk.descriptor();
        let segment = chunk.segment().clone();
        // A hostile peer marks the chunk we hold as sent and names it in a message.
        segment.state(d.chunk).store(pack(d.generation, TAG_SENT, 4242), Ordering::Release);
        assert_eq!(receive(segment.clone(), d).err(), Some("buffer descriptor names pages this process already holds"));
        // Received once, then forged back to SENT: the second receipt is refused too.
        drop(chunk);
        let (sent, view, d) = sent_chunk();
        let first = receive(view.clone(), d).unwrap();
        view.state(d.chunk).store(pack(d.generation, TAG_SENT, 4242), Ordering::Release);
        assert!(receive(view.clone(), d).is_err());
        drop(first);
        drop(sent);
    }

    #[test]
    fn a_chunk_held_by_a_dead_process_is_reclaimed() {
        let (chunk, _) = allocate(3 << 20).unwrap();
        let (segment, index, generation) = (chunk.segment().clone(), chunk.index, chunk.generation);
        std::mem::forget(chunk);
        // No process has a pid this large (pid_max is at most 2^22).
        let ghost = (1 << 30) - 1;
        segment.state(index).store(pack(generation, TAG_HELD, ghost), Ordering::Release);
        assert!(reclaim() >= 1);
        let (_, tag, _) = unpack(segment.state(index).load(Ordering::Acquire));
        assert_eq!(tag, TAG_FREE);
        lock(&segment.local)[index as usize].busy = false;
    }

    #[test]
    fn a_segment_that_is_not_a_sealed_arena_is_refused() {
        let fd = platform::memfd_create_sealed("not-an-arena", 1 << 20).unwrap();
        let identity = platform::file_identity(fd.as_fd()).unwrap();
        assert_eq!(ArenaSegment::open(fd, identity).err(), Some("not an arena"));
        // Named as an arena, but of another size than its class has.
        let fd = platform::memfd_create_sealed(&segment_name(20), 1 << 20).unwrap();
        let identity = platform::file_identity(fd.as_fd()).unwrap();
        assert_eq!(ArenaSegment::open(fd, identity).err(), Some("arena size does not match its size class"));
        // Only the canonical name of a class of this version is an arena.
        assert_eq!(class_from_name(&segment_name(20)), Ok(20));
        assert_eq!(class_from_name("shmport-arena.3.020"), Err("not an arena"));
        assert_eq!(class_from_name("shmport-arena.3.+20"), Err("not an arena"));
        assert_eq!(class_from_name("shmport-arena.3.20 "), Err("not an arena"));
        assert_eq!(class_from_name("shmport-arena.2.20"), Err("incompatible arena version"));
        assert_eq!(class_from_name("shmport-arena.3.99"), Err("arena chunk size out of range"));
    }

    /// A segment of 8 KiB chunks that no other test allocates from, and a second
    /// mapping of it, as a receiving process has.
    fn private_segment_and_view() -> (Arc<ArenaSegment>, Arc<ArenaSegment>) {
        let owner = Arc::new(ArenaSegment::create(13).unwrap());
        let fd = platform::dup_fd(owner.fd()).unwrap();
        let view = Arc::new(ArenaSegment::open(fd, owner.identity).unwrap());
        (owner, view)
    }

    /// The handoff of bug 4: a receiving process drops a buffer; the moment its chunk
    /// is FREE, the owner may reuse it and send it to another thread of that process.
    /// That thread's `receive` (which takes the bookkeeping lock) must never find the
    /// chunk FREE in shared memory while this process still marks it busy.
    #[test]
    fn a_dropped_chunk_is_never_free_in_shared_memory_while_still_marked_busy_here() {
        let (owner, view) = private_segment_and_view();
        let (chunk, _) = take_free(&owner).unwrap().unwrap();
        let d = chunk.descriptor();
        let _sent = chunk.send(false);
        let received = receive(view.clone(), d).unwrap();
        // Another thread of the receiving process holds the bookkeeping lock (as its
        // `receive` would) while this buffer drops.
        let guard = lock(&view.local);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let dropper = std::thread::spawn({
            let barrier = barrier.clone();
            move || {
                barrier.wait();
                drop(received);
            }
        });
        barrier.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut freed_while_busy = false;
        while std::time::Instant::now() < deadline {
            let (_, tag, _) = unpack(view.state(d.chunk).load(Ordering::Acquire));
            if tag == TAG_FREE {
                freed_while_busy = guard[d.chunk as usize].busy;
                break;
            }
            std::thread::yield_now();
        }
        drop(guard);
        dropper.join().unwrap();
        assert!(!freed_while_busy, "the chunk was FREE in shared memory while still marked busy here");
        // The owner reuses the chunk and sends it again; another thread takes it.
        let (again, _) = take_free(&owner).unwrap().unwrap();
        assert_eq!(again.index, d.chunk);
        let d2 = again.descriptor();
        let _sent = again.send(false);
        let taken = std::thread::spawn(move || receive(view, d2).map(drop)).join().unwrap();
        assert_eq!(taken, Ok(()));
    }

    /// Bug 7: a peer that was given pages of a segment writes over its first bytes;
    /// a third process that maps the segment afterwards still accepts it.
    #[test]
    fn a_peer_writing_over_the_start_of_a_segment_does_not_stop_others_mapping_it() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let (owner, view) = private_segment_and_view();
        let path = format!("/proc/self/fd/{}", view.fd().as_raw_fd());
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[0xA5; HEADER_BYTES], 0).unwrap();
        drop(view);
        let (chunk, _) = take_free(&owner).unwrap().unwrap();
        let d = chunk.descriptor();
        let _sent = chunk.send(false);
        let fd = platform::dup_fd(owner.fd()).unwrap();
        let third = Arc::new(ArenaSegment::open(fd, owner.identity).expect("the segment still maps"));
        receive(third, d).expect("and its chunks can still be received");
    }

    /// The kernel mappings (VMAs) inside `segment`, from /proc/self/maps.
    fn vmas(segment: &ArenaSegment) -> usize {
        let start = segment.map.as_ptr() as usize;
        let end = start + segment.map.len();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|line| line.split_once(' ')?.0.split_once('-'))
            .filter_map(|(a, b)| Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?)))
            .filter(|&(a, b)| a >= start && b <= end)
            .count()
    }

    #[test]
    fn closing_a_large_chunk_changes_its_own_mapping_and_splits_none() {
        // 1 MiB chunks: four per segment, each a VMA of its own beside the metadata.
        let segment = ArenaSegment::create(20).unwrap();
        assert_eq!(vmas(&segment), 5);
        let mut local = lock(&segment.local).clone();
        for index in [1, 2, 0] {
            segment.set_open(&mut local, index, false).unwrap();
            assert_eq!(vmas(&segment), 5, "closing chunk {index} split no mapping");
        }
        for index in [2, 0, 1] {
            segment.set_open(&mut local, index, true).unwrap();
            assert_eq!(vmas(&segment), 5, "reopening chunk {index} merged no mapping");
        }
        assert_eq!(segment.separated, 4);
        // Past the process's budget, a segment keeps one mapping (the budget is only
        // used up here for a moment; other tests may map arenas meanwhile, unharmed).
        SEPARATED_VMAS.fetch_add(SEPARATED_VMA_BUDGET, Ordering::Relaxed);
        let over = ArenaSegment::create(20).unwrap();
        SEPARATED_VMAS.fetch_sub(SEPARATED_VMA_BUDGET, Ordering::Relaxed);
        assert_eq!((over.separated, vmas(&over)), (0, 1));
        // The smallest chunks (a page: 1024 per segment with 4 KiB pages) share one VMA;
        // closing one splits it in three. (With 64 KiB pages the segment has only 64
        // chunks, so each is a VMA of its own, beside the metadata.)
        let small = ArenaSegment::create(min_shift()).unwrap();
        let mut local = lock(&small.local).clone();
        if small.chunk_count > SEPARATE_VMAS_UP_TO {
            assert_eq!(vmas(&small), 1);
            small.set_open(&mut local, 5, false).unwrap();
            assert_eq!(vmas(&small), 3);
            small.set_open(&mut local, 5, true).unwrap();
            assert_eq!(vmas(&small), 1);
        } else {
            let separate = 1 + small.chunk_count as usize;
            assert_eq!(vmas(&small), separate);
            small.set_open(&mut local, 5, false).unwrap();
            assert_eq!(vmas(&small), separate);
        }
    }

    #[test]
    fn chunks_of_2_mib_and_up_start_on_a_huge_page_boundary() {
        // With 4 KiB pages, classes of 2 MiB and up are laid out for huge pages; with
        // larger base pages (16 or 64 KiB on some aarch64 systems) a PMD is not 2 MiB,
        // so no class is, and chunks start on the first page after the metadata.
        let page = platform::page_size();
        for shift in [HUGE_SHIFT, 22, 26, 30] {
            let (count, data_offset, total) = ArenaSegment::layout(shift);
            if page == 4096 {
                assert!(huge_class(shift), "class {shift}");
                assert_eq!(data_offset, 1 << HUGE_SHIFT, "class {shift}");
            } else {
                assert!(!huge_class(shift), "class {shift} with {page}-byte pages");
                assert_eq!(data_offset, page, "class {shift} with {page}-byte pages");
            }
            assert_eq!(total, data_offset + ((count as usize) << shift));
        }
        // Smaller classes keep their metadata in as few pages as it needs: one here.
        assert!(!huge_class(20));
        assert_eq!(ArenaSegment::layout(20).1, page.max(4096));
    }

    #[test]
    fn size_classes_cover_zero_to_64_gib() {
        // The smallest class is a page (4 KiB, or the larger base page of the system).
        let page = platform::page_size().max(4096);
        let page_shift = page.trailing_zeros();
        assert_eq!(min_shift(), page_shift);
        assert_eq!(class_of(0), Some(page_shift));
        assert_eq!(class_of(1), Some(page_shift));
        assert_eq!(class_of(page), Some(page_shift));
        assert_eq!(class_of(page + 1), Some(page_shift + 1));
        assert_eq!(class_of(2 * page + 1), Some(page_shift + 2));
        assert_eq!(class_of(1 << 30), Some(30));
        assert_eq!(class_of((1 << 36) + 1), None);
    }
}
