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
//! which of its views are open, so a chunk that stays put costs no syscall. Closing a
//! chunk that shares a kernel mapping (VMA) with its neighbours splits it, so chunks
//! are kept VMAs of their own by a flag that changes nothing else (`vmas`: every other
//! chunk of a segment of at most `SEPARATE_VMAS_UP_TO` chunks when it is mapped;
//! smaller chunks, 4 to 32 KiB, the first time they are closed, `MADV_DONTFORK` for
//! an even index and `MADV_DONTDUMP` for an odd one, so they differ from their
//! neighbours whether those were separated or not): closing one then changes its own
//! VMA's flags instead of splitting its neighbours' mapping in three and merging it
//! back on reopening, which halves the cost of a small chunk's mprotect pair. What
//! separated and closed chunks can add to the process's mappings, over our segments
//! and the peers' we map, is counted against a budget of 8,192 (the kernel's default
//! `vm.max_map_count` is 65,530): past it, a chunk is not revoked but detached in Rust
//! only, as on a channel without revocation, and counted
//! (`diagnostics().revocations_skipped`), after the segment's free chunks have given
//! back what they held. The budget bounds only what the arena's views add; the rest of
//! the process can still exhaust its mappings, and a revoking `mprotect` that fails
//! then is counted too (`revocations_failed`) and the transfer goes ahead, detached in
//! Rust only.
//!
//! What a revoking round trip costs (`shmport-bench --workloads transfer`, its
//! page-table table): four `mprotect`s in series (each side closes its view before the
//! handover and opens it when the buffer arrives), each a walk of the chunk's page
//! table entries, one call per chunk. Nothing else should be paid, by reasoning, not
//! measurement (the bench counts neither faults nor interrupts): the entries are kept
//! and only their protection changes, so reopening should not fault; a TLB shootdown
//! is needed only for other CPUs that run the process, which the bench's
//! single-threaded, pinned processes never have (a multi-threaded process would pay
//! an interrupt per such CPU). The receiving side's view is opened in the call that
//! takes the chunk, and a chunk freed while closed stays closed until it is handed out
//! again (or given back when the budget is short).
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
//! name), `vmas` (this process's views of a segment's chunks and the kernel mappings
//! they cost), `chunk` (the chunks this process holds, sends, receives and gives back),
//! `process` (this process's arena: allocation, reclaim, statistics).

pub(crate) mod state;

#[cfg(not(loom))]
mod chunk;
#[cfg(not(loom))]
mod process;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
mod vmas;

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
#[cfg(test)]
#[cfg(not(loom))]
mod vma_tests;
