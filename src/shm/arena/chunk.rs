//! Chunks as this process holds them: `Chunk` (a live buffer's pages), `SentChunk` (a
//! chunk in a message of ours), and the receipt and return of chunks named by a
//! message. Each changes the state word by a transition of `state`, under the
//! segment's bookkeeping lock, together with this process's marks.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use super::process::my_pid;
use super::segment::{ArenaSegment, lock};
use super::state;

/// A chunk held by this process: the pages behind one `ArrayBuffer` (or a spilled
/// message). Dropping it gives the chunk back.
pub(crate) struct Chunk {
    segment: Arc<ArenaSegment>,
    pub(super) index: u32,
    pub(super) generation: u32,
    /// No process but the segment's owner wrote the pages since the owner last cleared
    /// them, as far as this process knows: the `own` bit this chunk is sent or freed
    /// with (see `state`).
    pub(super) own: bool,
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

    /// This process is about to write the pages: if it is not the segment's owner, the
    /// chunk now holds another process's bytes as far as the owner is concerned, and is
    /// sent or freed saying so.
    pub(crate) fn note_write(&mut self) {
        self.own &= self.segment.ours;
    }

    /// Marks the chunk as posted (`HELD(me) → SENT(me)`); with `revoke`, closes this
    /// process's view of its pages. The chunk now belongs to the message.
    pub(crate) fn send(self, revoke: bool) -> SentChunk {
        {
            // The state word and our busy mark change together, under the bookkeeping
            // lock (see `Drop`): no thread of ours can see the one without the other.
            let mut local = lock(&self.segment.local);
            let word = self.segment.state(self.index);
            state::send(word, &mut local[self.index as usize], my_pid(), self.generation, self.own);
            if revoke {
                // A close refused by the budget of mappings, or whose mprotect failed,
                // leaves the view open, counted in `diagnostics()`; the transfer goes
                // ahead, detached in Rust only, as without revocation (see `vmas`).
                let _ = self.segment.close_view(&mut local, self.index);
            }
        }
        let sent =
            SentChunk { segment: self.segment.clone(), index: self.index, generation: self.generation, own: self.own };
        std::mem::forget(self);
        sent
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // Our busy mark is cleared in the same critical section as the state word goes
        // FREE. The moment it is FREE, its owner may hand the chunk out again and send
        // it to another thread of this process, whose `receive` takes this lock: it
        // must never find the chunk FREE-and-resent in shared memory but still busy
        // here (it would refuse an honest message as naming pages we hold). The mark
        // cannot be cleared first either: `receive` would then take a chunk this
        // buffer still holds if a peer forged its state word back to SENT.
        let mut local = lock(&self.segment.local);
        let word = self.segment.state(self.index);
        state::release_held(word, &mut local[self.index as usize], my_pid(), self.generation, self.own);
    }
}

/// A chunk this process posted, remembered so it can be reclaimed if the message is
/// never received.
pub(crate) struct SentChunk {
    segment: Arc<ArenaSegment>,
    index: u32,
    generation: u32,
    own: bool,
}

impl SentChunk {
    /// The message carrying the chunk can no longer be received: give it back
    /// (`SENT(me) → FREE`). Harmless if the receiver got it after all.
    pub(crate) fn reclaim(&self) {
        state::reclaim_sent(self.segment.state(self.index), my_pid(), self.generation, self.own);
    }
}

/// Takes a chunk named by a received descriptor: `SENT(any, generation) →
/// HELD(me, generation)`. Fails for a forged, stale or out-of-range descriptor.
pub(crate) fn receive(segment: Arc<ArenaSegment>, descriptor: Descriptor) -> Result<Chunk, &'static str> {
    if descriptor.chunk >= segment.chunk_count {
        return Err("buffer descriptor out of range");
    }
    let (index, generation, me) = (descriptor.chunk, descriptor.generation, my_pid());
    // Under the bookkeeping lock: a chunk this process already holds is never taken a
    // second time, whatever the shared state word says (a peer can write it), so two
    // live buffers of this process never share pages.
    let mut local = lock(&segment.local);
    let word = segment.state(index);
    let own = state::receive(word, &mut local[index as usize], me, generation)?;
    if segment.open_view(&mut local, index).is_err() {
        state::unreceive(word, &mut local[index as usize], me, generation, own);
        return Err("cannot open the received pages");
    }
    drop(local);
    Ok(Chunk { segment, index, generation, own })
}

/// Gives back a chunk named by a message that could not be received (its record was
/// read, so its sender will not reclaim it): `SENT(any, generation) → FREE`.
pub(crate) fn give_back(segment: &ArenaSegment, descriptor: Descriptor) {
    if descriptor.chunk < segment.chunk_count {
        state::give_back(segment.state(descriptor.chunk), descriptor.generation);
    }
}

/// What the bytes of a chunk just taken may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contents {
    /// Zeros: the chunk was never handed out (a new memfd or heap block reads as zero).
    Zero,
    /// Bytes only this process (the owner) wrote: every holder since the owner last
    /// cleared the chunk was this process, or another that did not write it.
    Own,
    /// Maybe another process's bytes: a holder that wrote it, a holder that died, or a
    /// word that says nothing better.
    Foreign,
}

/// Takes the first chunk of `segment` that is FREE in shared memory and idle here.
/// Returns the chunk (its `own` mark as its contents say) and what its bytes may hold.
pub(super) fn take_free(segment: &Arc<ArenaSegment>) -> Option<io::Result<(Chunk, Contents)>> {
    let me = my_pid();
    let mut local = lock(&segment.local);
    for index in 0..segment.chunk_count {
        let word = segment.state(index);
        let Some((generation, own)) = state::take(word, &mut local[index as usize], me) else { continue };
        if let Err(e) = segment.open_view(&mut local, index) {
            state::untake(word, &mut local[index as usize], me, generation, own);
            return Some(Err(e));
        }
        let entry = &mut local[index as usize];
        let contents = match (entry.used, own) {
            (false, _) => Contents::Zero,
            (true, true) => Contents::Own,
            (true, false) => Contents::Foreign,
        };
        entry.used = true;
        let own = contents != Contents::Foreign;
        return Some(Ok((Chunk { segment: segment.clone(), index, generation, own }, contents)));
    }
    None
}
