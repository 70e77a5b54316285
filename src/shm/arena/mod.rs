//! Shared pages for `ArrayBuffer`s, and for messages too large for a ring.
//!
//! Each process owns an *arena*: memfd segments, one size class per segment (a power of
//! two from 4 KiB up), each holding `max(1, 4 MiB / size)` chunks. The memfd's name
//! says the layout version and the size class (`shmport-arena.4.20`: version 4, 1 MiB
//! chunks); with the segment's sealed size, that is all a process mapping a peer's
//! segment trusts about it, because nobody can change either once the segment exists.
//! A segment starts with a metadata page: 64 reserved bytes, then one state word per
//! chunk (the state machine of `state`, drawn there):
//!
//! ```text
//! state = generation (32 bits) | tag (2 bits) | own (1 bit) | pid (29 bits)
//! tag:  FREE       nobody holds the chunk; its owner may hand it out again
//!       HELD(pid)  process `pid` holds it as a live ArrayBuffer
//!       SENT(pid)  `pid` posted it; it is in a ring, not yet received
//! own:  in FREE and SENT: no process but the owner wrote the chunk since the owner
//!       last cleared it
//! ```
//!
//! Every allocation bumps the generation. A transfer sends the descriptor
//! `{arena, chunk, generation, len}` (the arena by its memfd the first time per channel
//! end, then by an id: see the wire layer); the receiver maps the arena (once per
//! process, looked up by the memfd's inode), and takes the chunk by a compare-and-swap from
//! exactly `SENT(sender, generation)` to `HELD(receiver, generation)`. A forged, stale
//! or out-of-range descriptor fails that check and is rejected. A dropped buffer goes
//! back by `HELD(me) → FREE`, in whichever process drops it; the owner finds FREE
//! chunks when it allocates.
//!
//! Zeroing: a chunk never handed out is zero (a new memfd). A reused one holds what its
//! last holders wrote, and `allocate` clears what its caller needs (`Fill`): the first
//! `len` bytes for `ArrayBuffer::new`, nothing for a copy, and for
//! `ArrayBuffer::new_for_overwrite` nothing if the `own` bit is set, the whole chunk if
//! it is not. A holder that is not the owner clears the bit when it writes the pages
//! (`Chunk::note_write`, from `with_bytes_mut`) and every transition carries it on, so
//! a chunk a peer only read comes back with it set; the owner's own writes keep it.
//!
//! Chunks held by a process that died are reclaimed by their owner (`reclaim`, also run
//! before the arena grows): `HELD(pid)` with no such process becomes FREE. Chunks in
//! flight to a process that died are reclaimed by their sender (see `channel/tx.rs`,
//! `settle_in_flight`).
//!
//! Hardware revocation: when a buffer is transferred, the sender's view of its pages is
//! closed with `mprotect(PROT_NONE)`; the receiver's view is opened. Each process tracks
//! which of its views are open, so a chunk that stays put costs no syscall. In a segment
//! of at most `SEPARATE_VMAS_UP_TO` chunks, every other chunk is given `MADV_RANDOM` when
//! the segment is mapped, so each chunk is a kernel mapping (VMA) of its own: closing
//! one then changes that VMA's flags instead of splitting its neighbours' mapping in
//! three and merging it back on reopening, which halves the cost of a small chunk's
//! mprotect pair. In segments of smaller chunks (4 to 32 KiB), which start as one
//! mapping, a chunk becomes a VMA of its own the first time this process revokes it
//! (`MADV_RANDOM` if its index is even, `MADV_SEQUENTIAL` if odd, so it differs from
//! its neighbours whether they were separated or not) and stays one. Neither advice
//! changes how shared memory is read (shmem has no readahead); both make the kernel's
//! reclaim ignore the mapping's accessed bits. The mappings added this way, over our
//! segments and the peers' we map, stay within a budget of 8,192 per process (the
//! kernel's default limit is 65,530), so neither a large arena nor a peer sending
//! buffers from many segments can exhaust them; past it a chunk is revoked in its
//! neighbours' mapping, split and merged back.
//!
//! What a revoking round trip costs, measured (`shmport-bench --workloads transfer`,
//! its page-table table): four `mprotect`s in series (each side closes its view before
//! the handover and opens it when the buffer arrives), each a walk of the chunk's page
//! table entries, with no TLB-shootdown interrupt (each process runs on one CPU), no
//! page fault after reopening (the entries are kept, only their protection changes),
//! and one call per chunk. The receiving side's view is opened in the call that takes
//! the chunk, and a chunk freed while closed stays closed until it is handed out again.
//!
//! The peer is untrusted: the owner reuses a chunk only if the state word holds exactly
//! `FREE` and its own records agree it does not hold the chunk, so a forged state word
//! can make a chunk leak, never make two live buffers of this process share pages.
//! Nothing else in the segment is read by anyone: a peer that was given pages of it can
//! write anywhere in it (the metadata page included), and what it writes must not stop
//! a third process from mapping the segment (so there is no in-segment header to
//! validate: the name and the sealed size stand in for it).

//!
//! With the process-memory backend (`crate::shm::backend`: test support) a segment is
//! a zeroed heap block of the same layout instead, named on a channel's socket by a
//! token descriptor (see `segment`), and its views are never protected.
//!
//! Files: `state` (the state word and its transitions, with SYNC tags and loom models;
//! the only part built under `--cfg loom`), `segment` (one mapped segment: layout,
//! name, views), `chunk` (the chunks this process holds, sends, receives and gives
//! back), `process` (this process's arena: allocation, reclaim, statistics).

pub(crate) mod state;

#[cfg(not(loom))]
mod chunk;
#[cfg(not(loom))]
mod process;
#[cfg(not(loom))]
mod segment;

#[cfg(not(loom))]
pub(crate) use chunk::{Chunk, Descriptor, SentChunk, give_back, receive};
#[cfg(not(loom))]
pub use process::{ArenaStats, reclaim, stats};
#[cfg(not(loom))]
pub(crate) use process::{Fill, allocate, footprint, my_pid, segment_for};
#[cfg(not(loom))]
pub(crate) use segment::ArenaSegment;

#[cfg(test)]
#[cfg(not(loom))]
mod tests;
