//! The process's arena: its segments by size class, every segment mapped here (ours and
//! peers') by memfd identity, allocation, the reclaim of chunks held by dead processes,
//! and statistics.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock, Weak};

use super::chunk::{Chunk, Contents, take_free};
use super::segment::{ArenaSegment, MAX_SHIFT, lock, min_shift};
use super::state::{self, Seen};
use crate::platform;
use crate::shm::backend::{self, Backend};
use crate::shm::sync::{Mutex, MutexGuard};

/// This process's id, read once (fork without exec is not supported).
pub(crate) fn my_pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(platform::current_pid)
}

/// Counts of this process's own arena, for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Segments (memfds; heap blocks if the process keeps its buffers in process
    /// memory) in this process's arena.
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
pub(super) fn class_of(len: usize) -> Option<u32> {
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

/// What the caller of `allocate` does with the first `len` bytes of the chunk before
/// anything reads them. `allocate` clears what it must for that, and no more, so that
/// no buffer ever shows another process's bytes (`Contents`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Nothing: they must read as zero (`ArrayBuffer::new`).
    Zero,
    /// Copies `len` bytes over them before anything can read the chunk
    /// (`ArrayBuffer::from_slice`, a spilled body).
    Copy,
    /// Gives them to a caller who means to overwrite them but may read them first: they
    /// may hold this process's own earlier bytes, never another process's
    /// (`ArrayBuffer::new_for_overwrite`).
    Stale,
}

/// A chunk of at least `len` bytes, held by this process, its view open, its first
/// `len` bytes ready for `fill`:
///
/// | contents | `Zero`               | `Copy`     | `Stale`              |
/// |----------|----------------------|------------|----------------------|
/// | `Zero`   | as is                | as is      | as is                |
/// | `Own`    | `len` bytes zeroed   | as is      | as is                |
/// | `Foreign`| `len` bytes zeroed   | as is      | whole chunk zeroed   |
///
/// A foreign chunk is marked own again once every byte of it is zeroed or copied over
/// (`len` is its capacity, or `Stale` zeroed it whole): until then the rest of it may
/// hold another process's bytes, and a later `Stale` buffer must not show them.
pub(crate) fn allocate(len: usize, fill: Fill) -> io::Result<Chunk> {
    let (mut chunk, contents) = take_chunk(len)?;
    prepare(&mut chunk, contents, len, fill);
    Ok(chunk)
}

/// Clears what `allocate` says for a chunk just taken, and marks it own if no byte of
/// another process is left in it.
pub(super) fn prepare(chunk: &mut Chunk, contents: Contents, len: usize, fill: Fill) {
    let capacity = chunk.capacity();
    assert!(len <= capacity);
    let zero = match (contents, fill) {
        (Contents::Zero, _) | (Contents::Own | Contents::Foreign, Fill::Copy) | (Contents::Own, Fill::Stale) => 0,
        (Contents::Own | Contents::Foreign, Fill::Zero) => len,
        (Contents::Foreign, Fill::Stale) => capacity,
    };
    if zero > 0 {
        // SAFETY: the chunk is ours and open, `zero` is at most its capacity, and no
        // other reference to it exists yet.
        unsafe { std::ptr::write_bytes(chunk.ptr().as_ptr(), 0, zero) };
    }
    if contents == Contents::Foreign {
        chunk.own = zero == capacity || len == capacity;
    }
}

/// A chunk of at least `len` bytes, and what its bytes may hold.
fn take_chunk(len: usize) -> io::Result<(Chunk, Contents)> {
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
    let segment = Arc::new(match backend::current() {
        Backend::Memfd => ArenaSegment::create(shift)?,
        Backend::Heap => ArenaSegment::create_heap(shift)?,
    });
    arena.by_identity.insert(segment.identity, Arc::downgrade(&segment));
    arena.classes[shift as usize].push(segment.clone());
    take_free(&segment).expect("a new segment has free chunks")
}

/// Frees chunks of `segments` held by processes that no longer exist. Returns how many.
fn reclaim_class(segments: &[Arc<ArenaSegment>]) -> usize {
    let mut alive: HashMap<u32, bool> = HashMap::new();
    let me = my_pid();
    let mut reclaimed = 0;
    for segment in segments {
        for index in 0..segment.chunk_count {
            let exists = |pid| *alive.entry(pid).or_insert_with(|| platform::process_exists(pid));
            if state::reclaim_dead(segment.state(index), me, exists) {
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
            match state::seen(segment.state(index), me) {
                Seen::Free => stats.free += 1,
                Seen::HeldHere => stats.held_here += 1,
                Seen::HeldElsewhere => stats.held_elsewhere += 1,
                Seen::InFlight => stats.in_flight += 1,
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
